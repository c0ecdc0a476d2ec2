"""The run ledger: run.json and log.txt for cache, train and generate; `make runs`; secrets never recorded;
the record on Hugging Face (huggingface_hub stand-in in tests/pylib)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess

from conftest import REPO, VENV

from runs.test_pod import POD, RP_KEY, wait_for

HF_TOKEN = "hf_" + "a" * 34
WANDB_KEY = "b" * 40
# Ahead of any PYTHONPATH of the test run (a side environment points it at the code under test).
PYLIB = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "tests" / "pylib"), os.environ.get("PYTHONPATH")) if p)}


def records(w, target="*", version="v1") -> list[dict]:
    # `<stamp>-<target>` or, for a second run started in the same second, `<stamp>-<target>-<n>`
    paths = (w.root / "runs").glob(f"{version}/*/run.json")
    found = [d for d in map(lambda p: json.loads(p.read_text()), paths) if target == "*" or d.get("target") == target]
    return sorted(found, key=lambda d: d["started_at"])


def test_train_fills_run_json_from_the_run(cached):
    ready = cached
    cfg = ready.read("configs/v1/config.toml").replace("price_per_hour = 2.5", "price_per_hour = 3600.0")
    ready.write("configs/v1/config.toml", cfg)
    r = ready.make(
        "train", "AUTO_STOP=0", env={"STANDIN_STEPS": "5", "STANDIN_STEP_SECONDS": "0.2", "STANDIN_GPUS": "2"}
    )
    assert r.returncode == 0, r.stderr
    [data] = records(ready, "train")
    folder = ready.root / "runs" / "v1" / data["id"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-train", data["id"])
    assert f"==> run record: runs/v1/{data['id']} (`make runs` lists runs, `make logs` follows this one)" in r.stdout
    assert data["status"] == "succeeded" and data["exit_code"] == 0 and data["target"] == "train"
    assert data["commands"][0]["argv"] == ["accelerate", *ready.calls("accelerate")[0]["argv"]]
    cfg_bytes = (ready.root / "configs/v1/config.toml").read_bytes()
    assert data["files"]["config"] == {
        "path": "configs/v1/config.toml",
        "sha256": hashlib.sha256(cfg_bytes).hexdigest(),
        "text": cfg_bytes.decode(),
    }
    assert data["files"]["dataset"]["path"] == "configs/v1/dataset.toml"
    assert data["files"]["prompts"]["path"] == "configs/v1/prompts.txt"
    assert re.fullmatch(r"[0-9a-f]{64}", data["dataset"]["sha256"]) and data["dataset"]["files"] > 0
    assert data["workspace_git"] is None  # the test copy is not a git checkout
    assert data["musubi_tuner"]["pinned"] == "30c658c4f4b0bf05038b3346eff9670259b10fc7"
    assert data["gpus"] == {"model": "NVIDIA H100 80GB HBM3", "count": 2}
    assert data["progress"]["last_step"] == 5 and data["progress"]["total_steps"] == 1000
    assert data["progress"]["last_loss"] == round(0.05 + 0.15 * 0.97**5, 4)
    assert data["progress"]["seconds_per_step"] == 0.2
    assert data["duration_s"] >= 1 and data["cost_usd"] == float(data["duration_s"])  # $3600/h: a dollar a second
    assert data["start"] < data["end"] or data["start"] == data["end"]
    log = (folder / "log.txt").read_text()
    # The shipped version compiles: the compile environment comes first (data/compile_env.toml).
    assert log.startswith(
        "==> train: TORCHINDUCTOR_AUTOGRAD_CACHE=0 TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS=1 WS_SPLIT_ATTN_ONE_GRAPH=1 "
        "WS_VALIDATION=validation/dataset.toml WS_VALIDATION_EVERY=100 WS_VALIDATION_TIMESTEPS=0.1,0.3,0.5,0.7,0.9 "
        "WS_VALIDATION_SET="
    )
    assert "| 5/1000 [" in log
    # while it trains the terminal shows step, loss, s/step and time left
    assert "step 5/1000 · loss 0.1788 · 0.20 s/step · 3m19s left" in r.stdout


def lora(w) -> None:
    out = w.root / "outputs" / "v1"
    out.mkdir(parents=True, exist_ok=True)
    (out / "example-1f_v1.safetensors").write_bytes(b"x")


def test_workspace_git_commit_and_dirty_flag(ready):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=ready.root, check=True)
    subprocess.run([*git, "add", "."], cwd=ready.root, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=ready.root, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ready.root, capture_output=True, text=True).stdout.strip()
    lora(ready)
    assert ready.make("generate").returncode == 0
    ready.write("configs/v1/prompts.txt", ready.read("configs/v1/prompts.txt") + "# changed\n")
    assert ready.make("generate").returncode == 0
    first, second = records(ready)
    assert first["workspace_git"] == {"commit": head, "dirty": False}
    assert second["workspace_git"] == {"commit": head, "dirty": True}


def test_cache_and_generate_leave_records_and_the_dataset_hash_follows_the_data(ready):
    assert ready.make("cache").returncode == 0
    lora(ready)
    assert ready.make("generate").returncode == 0
    jsonl = ready.root / "datasets/example-1f/train.jsonl"
    item = json.loads(jsonl.read_text().splitlines()[0])
    image = ready.root / item["image_path"]
    image.write_bytes(image.read_bytes() + b"\0")
    assert ready.make("cache").returncode == 0
    a, b, c = records(ready)
    assert [x["target"] for x in (a, b, c)] == ["cache", "generate", "cache"]
    assert [x["label"] for x in a["commands"]] == [
        "cache latents",
        "cache text encoder outputs",
        "cache latents of the validation set",
        "cache text encoder outputs of the validation set",
    ]
    assert b["status"] == "succeeded"
    assert a["dataset"]["sha256"] == b["dataset"]["sha256"] != c["dataset"]["sha256"]
    assert a["dataset"]["files"] == c["dataset"]["files"] > 0


def test_a_failed_cache_run_is_recorded_as_failed(ready):
    r = ready.make("cache", env={"STANDIN_EXIT_FPACK_CACHE_LATENTS": "7"})
    assert r.returncode == 2
    [data] = records(ready)
    assert data["status"] == "failed" and data["exit_code"] == 7


def test_run_json_survives_a_crash_of_the_tool(cached):
    ready = cached
    p = subprocess.Popen(
        [str(VENV / "bin" / "ws"), "train", "--auto-stop", "0"],
        cwd=ready.root,
        env={**ready.env, "STANDIN_STEPS": "all", "STANDIN_STEP_SECONDS": "0.05"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: any("| 3/1000" in f.read_text() for f in (ready.root / "runs").glob("v1/*/log.txt")))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        for c in ready.calls("accelerate"):
            try:
                os.killpg(c["pid"], signal.SIGKILL)  # the orphaned trainer
            except ProcessLookupError:
                pass
    [data] = records(ready, "train")
    assert data["status"] == "running" and data["end"] is None and data["start"]
    assert data["commands"][0]["argv"][:2] == ["accelerate", "launch"]
    folder = ready.root / "runs" / "v1" / data["id"]
    assert "| 3/1000" in (folder / "log.txt").read_text()
    r = ready.make("runs")
    assert r.returncode == 0
    row = r.stdout.splitlines()[-1].split()
    assert row[:4] == [data["id"], "v1", "train", "crashed"]


def test_make_runs_prints_a_table(ready):
    assert (
        ready.make("runs").stdout
        == "no runs yet (runs/ is empty): `make cache`, `make train` and `make generate` record theirs\n"
    )
    assert ready.make("cache").returncode == 0
    assert ready.make("train", "AUTO_STOP=0", env={"STANDIN_STEPS": "4", "STANDIN_FAIL_AT": "4"}).returncode == 2
    r = ready.make("runs")
    assert r.returncode == 0, r.stderr
    head, cache, train = r.stdout.splitlines()
    assert head.split() == [
        "run",
        "version",
        "target",
        "status",
        "duration",
        "steps",
        "last",
        "loss",
        "best",
        "val",
        "loss",
        "cost",
        "estimated",
    ]
    assert cache.split()[1:4] == ["v1", "cache", "succeeded"] and cache.split()[5:] == ["-", "-", "-", "$0.00", "-"]
    assert re.fullmatch(r"\d+s", cache.split()[4])
    assert train.split()[1:4] == ["v1", "train", "failed"]
    # no validation set here: no best val loss; no measurement: no estimate
    assert train.split()[5:] == ["4/1000", f"{0.05 + 0.15 * 0.97**4:.4g}", "-", "$0.00", "-"]


def test_no_secret_reaches_argv_output_log_or_run_json(cached):
    ready = cached
    (ready.root.parent / "rp_environment").write_text(
        f'export RUNPOD_POD_ID="{POD}"\nexport RUNPOD_API_KEY="{RP_KEY}"\n'
    )
    ready.write(".env", f"HF_TOKEN={HF_TOKEN}\nWANDB_API_KEY={WANDB_KEY}\n")
    cfg = ready.read("configs/v1/config.toml").replace(
        '# huggingface_repo_id = "your-hf-name/example-1f"', 'huggingface_repo_id = "me/example-1f"'
    )
    ready.write("configs/v1/config.toml", cfg)
    # the trainer prints the secrets (a library logging them), the upload fails with the token in its message
    r = ready.make(
        "train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "3", "STANDIN_LEAK": "1", "STANDIN_HF_FAIL": "1", **PYLIB}
    )
    assert r.returncode == 0, r.stderr
    [data] = records(ready, "train")
    folder = ready.root / "runs" / "v1" / data["id"]
    log = (folder / "log.txt").read_text()
    assert "debug: HF_TOKEN=*** WANDB_API_KEY=***" in log and "debug: HF_TOKEN=*** WANDB_API_KEY=***" in r.stdout
    assert (
        f"warning: run record not uploaded to me/example-1f/v1/runs/{data['id']} (RuntimeError: 503 Server Error"
        in r.stdout
    )
    texts = [r.stdout, r.stderr, log, (folder / "run.json").read_text()]
    texts += [json.dumps(c["argv"]) for c in ready.calls()]
    for secret in (HF_TOKEN, WANDB_KEY, RP_KEY):
        for text in texts:
            assert secret not in text
    # ...while the programs got them through their environment
    [train] = ready.calls("accelerate")
    assert train["env"]["HF_TOKEN"] == HF_TOKEN and train["env"]["WANDB_API_KEY"] == WANDB_KEY
    assert data["hf_upload"] == {"repo": "me/example-1f", "path": f"v1/runs/{data['id']}", "ok": False}


def test_the_run_record_goes_up_beside_the_lora_before_the_pod_stops(cached):
    ready = cached
    (ready.root.parent / "rp_environment").write_text(f"RUNPOD_POD_ID={POD}\n")
    ready.write(".env", f"HF_TOKEN={HF_TOKEN}\n")
    cfg = ready.read("configs/v1/config.toml").replace(
        '# huggingface_repo_id = "your-hf-name/example-1f"', 'huggingface_repo_id = "me/example-1f"'
    )
    ready.write("configs/v1/config.toml", cfg)
    r = ready.make("train", "AUTO_STOP=1s", env={"STANDIN_STEPS": "2", **PYLIB})
    assert r.returncode == 0, r.stderr
    [data] = records(ready, "train")
    [up] = [c for c in ready.calls("huggingface_hub") if c["call"] == "upload_folder"]
    assert up["repo_id"] == "me/example-1f" and up["repo_type"] == "model"
    assert up["path_in_repo"] == f"v1/runs/{data['id']}" and up["files"] == ["log.txt", "run.json"]
    assert up["token"] == HF_TOKEN
    assert up["time"] < ready.calls("runpodctl")[0]["time"]
    assert f"==> run record uploaded to me/example-1f/v1/runs/{data['id']}" in r.stdout
