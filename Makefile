SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules
.DEFAULT_GOAL := help

# The preamble needs GNU make >= 3.82 (.SHELLFLAGS, .ONESHELL-era features); macOS ships 3.81.
ifeq ($(filter oneshell,$(.FEATURES)),)
$(error GNU make >= 3.82 is needed (this is $(MAKE_VERSION)); install a newer make, e.g. `brew install make` and run gmake)
endif

# ------------------------------------------------------------------------------------------------------------
# Variables: set them on the command line, e.g. `make train CONFIG_FILE=configs/v3/config.toml DRY_RUN=1`.
# ------------------------------------------------------------------------------------------------------------
# config.toml of the version to use (or just v3); empty = the newest configs/vN (announced)
CONFIG_FILE ?=
# 1 (true/yes/on) = print every command as it would run, run nothing, need no GPU, models or GPU stack; 0 (false/no/off) = run
DRY_RUN ?= 0
# 1 = `make check` (and the check before cache/train/generate) treats warnings as errors
STRICT ?= 0
# 1 = `make cache` re-encodes everything; 0 = only what changed since the last finished `make cache`
FORCE ?= 0
# version to copy with `make new`; empty = the newest
FROM ?=
# versions to compare with `make diff`; both empty = the newest two
A ?=
B ?=
# LoRA file for `make generate`; empty = the version's newest
LORA ?=
# LoRA multiplier for `make generate`; empty = 1.0
MULTIPLIER ?=
# grace period before the pod stops after `make train`/`resume` (0 = off, 30s, 10m); empty = [workspace] auto_stop
AUTO_STOP ?=
# 1 = `make train`/`train-bg` of a version that trained before moves that run's LoRAs, states, samples into output_dir/earlier-<UTC time>/ (deletes nothing); 0 = stop and say the ways on
RESTART ?= 0
# versions for `make report`, e.g. v3,v4; empty = every version with tensorboard logs or samples
VERSIONS ?=
# 1 = `make tune` writes the fastest setting that fits into a new version (through `make new`)
APPLY ?= 0
# settings for `make tune`/`make bench` to measure, e.g. ONLY=current,swap12,fp8+swap0; empty = the candidates
ONLY ?=
# measured steps per setting after one warm-up step; empty = 3 (the median of 3 hides one slow step)
STEPS ?=
# 1 = tune/bench may pick settings that change the numbers (fp8 weights, another batch size); 0 keeps them
ALLOW_CHANGES ?= 0
# GPU memory `make tune`/`make bench` may use, e.g. MEMORY=80GB (GB = 10^9 bytes, GiB = 2^30): "fits" as on that card; empty = all
MEMORY ?=
# GPUs each `make tune`/`make bench` run trains on, e.g. 1 on a 4-GPU pod: 4 runs side by side; empty = all, one run at a time
GPUS_PER_RUN ?=
# 1 = `make tune`/`make bench` go on with their last unfinished session (cut short): what it measured is not run again
CONTINUE ?= 0
# The most one `make tune`/`make bench` run may take, e.g. RUN_TIMEOUT=6m: a run still going is stopped (timeout) and the next starts; empty = 30m
RUN_TIMEOUT ?=
# uv's cache folder; on a pod put it on the volume beside .venv (e.g. /workspace/.cache/uv) so installs hardlink
UV_CACHE_DIR ?=
# `make smoke`: start at this step (e.g. resume) when the steps before it passed in the last smoke; empty = all
SMOKE_FROM ?=
# arguments for pytest in `make test`, e.g. PYTEST_ARGS="-k diff -x"
PYTEST_ARGS ?=
# `make lock`: move the musubi-tuner pin to this full commit first; empty = keep the pin
MUSUBI_REV ?=
# `make lock`: a local clone of musubi-tuner to lock from instead of GitHub; empty = GitHub
MUSUBI_SNAPSHOT ?=

ifneq ($(UV_CACHE_DIR),)
export UV_CACHE_DIR
endif

# The workspace tool, run straight from the venv (no per-call `uv run` re-check: the stamps below guard it).
WS := .venv/bin/ws
# The installed GPU stack, needed by cache/train/generate/tune/bench unless DRY_RUN. Only a "no" (the values `ws` takes for
# off) installs it: a dry run, or a value `ws` refuses (DRY_RUN=banana), never starts a download of several GB.
GPU_STACK := $(if $(filter-out 0 false no off,$(strip $(DRY_RUN))),.venv/.stamp-base,.venv/.stamp-train)
# Common options of the targets that read a version.
CFG := --config "$(CONFIG_FILE)" --dry-run "$(DRY_RUN)" --strict "$(STRICT)"

##@ The loop: setup, new, diff, check, cache, train, generate

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^##@/ {printf "\n%s\n", substr($$0, 5)} /^[a-z][a-zA-Z_-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))

.PHONY: setup
setup: .venv/.stamp-base ## Make the environment with the workspace tool (any machine; no GPU, no GitHub)

.PHONY: example
example: .venv/.stamp-base ## Write the tiny example datasets (datasets/example-1f and its validation set validation/ for configs/v1, datasets/example-video); never overwrites
	@$(WS) example

.PHONY: new
new: .venv/.stamp-base ## Copy a version to the next number  [FROM]
	@$(WS) new --from "$(FROM)"

.PHONY: diff
diff: .venv/.stamp-base ## Compare two versions key by key  [A B]
	@$(WS) diff --a "$(A)" --b "$(B)"

.PHONY: check
check: .venv/.stamp-base ## Find mistakes that would waste a GPU run; off the pod: DRY_RUN=1  [CONFIG_FILE DRY_RUN STRICT]
	@$(WS) check $(CFG)

.PHONY: cache
cache: $(GPU_STACK) ## Cache latents and text-encoder outputs; redoes only what changed  [CONFIG_FILE DRY_RUN FORCE]
	@$(WS) cache $(CFG) --force "$(FORCE)"

.PHONY: train
train: $(GPU_STACK) ## Train the LoRA; the pod stops itself afterwards  [CONFIG_FILE DRY_RUN AUTO_STOP RESTART]
	@$(WS) train $(CFG) --auto-stop "$(AUTO_STOP)" --restart "$(RESTART)"

.PHONY: generate
generate: $(GPU_STACK) ## Render prompts.txt with a trained LoRA  [CONFIG_FILE LORA MULTIPLIER DRY_RUN]
	@$(WS) generate $(CFG) --lora "$(LORA)" --multiplier "$(MULTIPLIER)"

.PHONY: validate
validate: $(GPU_STACK) ## Score saved LoRAs on the version's validation set (the JSON beside each)  [CONFIG_FILE LORA DRY_RUN]
	@$(WS) validate $(CFG) --lora "$(LORA)"

.PHONY: report
report: .venv/.stamp-base ## Versions side by side, offline: loss, flags, sample grids (runs/report/)  [VERSIONS]
	@$(WS) report --versions "$(VERSIONS)"

##@ Runs: resume, background, records

.PHONY: resume
resume: $(GPU_STACK) ## Train the steps left from the version's newest saved state  [CONFIG_FILE DRY_RUN AUTO_STOP]
	@$(WS) resume $(CFG) --auto-stop "$(AUTO_STOP)"

.PHONY: train-bg
train-bg: $(GPU_STACK) ## `make train` in a detached tmux session (survives SSH)  [CONFIG_FILE DRY_RUN AUTO_STOP RESTART]
	@$(WS) train-bg $(CFG) --auto-stop "$(AUTO_STOP)" --restart "$(RESTART)"

.PHONY: logs
logs: .venv/.stamp-base ## Follow the newest run: its log, with step, loss, s/step and time left
	@$(WS) logs

.PHONY: runs
runs: .venv/.stamp-base ## List every run: version, target, status, duration, steps, last loss, cost
	@$(WS) runs

##@ Speed and memory: the fastest settings that fit the GPU

.PHONY: tune
tune: $(GPU_STACK) ## Time the memory/speed settings on this version's models and caches; pick the fastest that fits  [CONFIG_FILE DRY_RUN APPLY ONLY STEPS ALLOW_CHANGES MEMORY GPUS_PER_RUN CONTINUE RUN_TIMEOUT]
	@$(WS) tune --config "$(CONFIG_FILE)" --dry-run "$(DRY_RUN)" --apply "$(APPLY)" --only "$(ONLY)" --steps "$(STEPS)" --allow-changes "$(ALLOW_CHANGES)" --memory "$(MEMORY)" --gpus-per-run "$(GPUS_PER_RUN)" --continue "$(CONTINUE)" --run-timeout "$(RUN_TIMEOUT)"

.PHONY: bench
bench: $(GPU_STACK) ## The same on random weights and caches, no downloads: which GPU and settings to rent  [CONFIG_FILE DRY_RUN ONLY STEPS ALLOW_CHANGES MEMORY GPUS_PER_RUN CONTINUE RUN_TIMEOUT]
	@$(WS) bench --config "$(CONFIG_FILE)" --dry-run "$(DRY_RUN)" --only "$(ONLY)" --steps "$(STEPS)" --allow-changes "$(ALLOW_CHANGES)" --memory "$(MEMORY)" --gpus-per-run "$(GPUS_PER_RUN)" --continue "$(CONTINUE)" --run-timeout "$(RUN_TIMEOUT)"

.PHONY: smoke
smoke: .venv/.stamp-train ## The whole loop (cache, train, resume, generate, report) on random weights, no downloads: a health check of a fresh pod  [SMOKE_FROM]
	@$(WS) smoke --from "$(SMOKE_FROM)"

##@ Pod and models

.PHONY: stop
stop: .venv/.stamp-base ## Stop this RunPod pod now
	@$(WS) stop

.PHONY: cancel-stop
cancel-stop: .venv/.stamp-base ## Keep the pod: cancel the auto-stop of a `make train` (while it trains or counts down)
	@$(WS) cancel-stop

.PHONY: models
models: .venv/.stamp-base ## Download the model files the config names, and the tokenizers  [CONFIG_FILE DRY_RUN]
	@$(WS) models --config "$(CONFIG_FILE)" --dry-run "$(DRY_RUN)"

.PHONY: monitor
monitor: .venv/.stamp-train ## Watch GPU use (nvitop)
	@$(WS) monitor

##@ Development

.PHONY: test
test: lint ## Lint, then run the test suite on every core (no GPU, no musubi-tuner needed)  [PYTEST_ARGS]
	.venv/bin/python -m pytest -n auto $(PYTEST_ARGS)

.PHONY: lint
lint: .venv/.stamp-base ## Check the code: ruff's lint rules and its formatting (`ruff format` fixes the latter)
	.venv/bin/ruff check --quiet
	.venv/bin/ruff format --check --quiet

.PHONY: test-musubi
test-musubi: .venv/.stamp-train ## Run the tests against the real musubi-tuner (needs the train extra)
	.venv/bin/python -m pytest tests/musubi -ra

.PHONY: lock
lock: .venv/.stamp-base ## Re-lock uv.lock, e.g. after moving the musubi-tuner pin  [MUSUBI_REV MUSUBI_SNAPSHOT]
	@$(WS) lock --rev "$(MUSUBI_REV)" --snapshot "$(MUSUBI_SNAPSHOT)"

.PHONY: schema
schema: .venv/.stamp-train ## Regenerate the committed musubi-tuner option schema from the pinned parsers
	@$(WS) schema

# ------------------------------------------------------------------------------------------------------------
# Internal: the environment. The stamps record a finished `uv sync`; .DELETE_ON_ERROR drops a failed one.
# --frozen installs exactly uv.lock without re-resolving (which would need GitHub for musubi-tuner); the
# base sync is --inexact so it never removes an installed GPU stack.
# ------------------------------------------------------------------------------------------------------------
.PHONY: .uv
.uv: # uv must be installed
	@command -v uv >/dev/null || { echo "uv not found: install it with 'pip install uv' (or see https://docs.astral.sh/uv/)" >&2; exit 1; }

.venv/.stamp-base: pyproject.toml uv.lock | .uv
	uv sync --frozen --inexact
	touch "$@"

.venv/.stamp-train: .venv/.stamp-base
	uv sync --frozen --inexact --extra train
	touch "$@"
