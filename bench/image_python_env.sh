#!/usr/bin/env bash
# Make `.venv` stand for this machine's own Python, for a GPU machine whose image already has torch and the GPU
# stack (and no uv or network): `.venv/bin/python` runs that Python, `.venv/bin/ws` runs the workspace
# tool with it, the Makefile's stamps are fresh so make never runs `uv sync`, and `.venv/bin/uv` refuses (a
# stale stamp then fails with one line instead of trying to download). An existing real .venv is not touched.
#
#   export PYTHONPATH=$PWD/src:<musubi-tuner>/src     # the workspace and musubi-tuner, importable
#   bash bench/image_python_env.sh [python3]          # once
#   PATH=$PWD/.venv/bin:$PATH make smoke               # or make bench, make train, ...
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(command -v "${1:-python3}")"
if [ -e .venv ] && [ ! -f .venv/.image-python ]; then
  echo ".venv exists and is a real environment: not touched (move it aside to use the image's python)" >&2
  exit 1
fi
mkdir -p .venv/bin
printf '#!/bin/sh\nexec "%s" "$@"\n' "$py" > .venv/bin/python
printf '#!/bin/sh\nexec "%s" -m musubi_workspace.cli "$@"\n' "$PWD/.venv/bin/python" > .venv/bin/ws
printf '#!/bin/sh\necho "uv: not used on this machine: .venv stands for the image'"'"'s python (bench/image_python_env.sh)" >&2\nexit 1\n' > .venv/bin/uv
chmod +x .venv/bin/python .venv/bin/ws .venv/bin/uv
touch .venv/.image-python .venv/.stamp-base .venv/.stamp-train
.venv/bin/python -c "import musubi_workspace, musubi_tuner, torch; print('.venv: the image python', torch.__version__)"
