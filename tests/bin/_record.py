"""Recording stand-in for programs that only exist on a GPU pod (accelerate, python -m musubi_tuner.*,
runpodctl, nvidia-smi, nvitop). Each stand-in is a small script that runs this with its own name.

It appends one JSON line per call to $WS_RECORD: the program, argv, cwd, and the environment variables the tests
look at. What it then does is set by environment variables, so a test can make it fail, hang or be killed:
  STANDIN_EXIT=<n>            exit with code n (default 0)
  STANDIN_EXIT_<PROG>=<n>     the same for one program (PROG upper-cased, e.g. ACCELERATE, RUNPODCTL)
  STANDIN_STDOUT=<text>       print this first
  STANDIN_RECORD_ENV=all      record the whole environment too (as "env_all"), for tests of whole commands
Program-specific behaviour (writing cache files, printing training steps, hanging) lives in
`_behave_<name>.py` beside this file: when it exists, its `behave(argv) -> int | None` runs after recording and
its return value (if not None) is the exit code.
  STANDIN_GPUS=<n>            nvidia-smi: how many GPUs it lists (default 1), STANDIN_GPU_NAME, STANDIN_GPU_MEM_MIB
"""

from __future__ import annotations

import json
import os
import sys
import time

WATCHED_ENV = (
    "HF_TOKEN",
    "WANDB_API_KEY",
    "RUNPOD_API_KEY",
    "RUNPOD_POD_ID",
    "HF_HUB_OFFLINE",
    "CUDA_VISIBLE_DEVICES",
    "TORCHINDUCTOR_CACHE_DIR",
    "WANDB_MODE",
    "PYTHONUNBUFFERED",
    "MACHINE_RANK",
    "MAIN_PROCESS_IP",
    "MAIN_PROCESS_PORT",
    "WS_BLOCKS_WITHOUT_CHECKPOINTING",
    "WS_SPLIT_ATTN_ONE_GRAPH",
    "WS_VALIDATION",
    "WS_VALIDATION_EVERY",
    "WS_VALIDATION_TIMESTEPS",
    "WS_VALIDATION_SET",
    "TORCHINDUCTOR_AUTOGRAD_CACHE",
    "TORCHDYNAMO_CAPTURE_SCALAR_OUTPUTS",
    "WS_PROBE_MEMORY",
)


def record(prog: str, argv: list[str]) -> None:
    path = os.environ.get("WS_RECORD")
    if not path:
        return
    entry = {
        "prog": prog,
        "argv": argv,
        "cwd": os.getcwd(),
        "env": {k: os.environ[k] for k in WATCHED_ENV if k in os.environ},
        **({"env_all": dict(os.environ)} if os.environ.get("STANDIN_RECORD_ENV") == "all" else {}),
        "time": time.time(),
        "pid": os.getpid(),
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def program_name(prog: str, argv: list[str]) -> str:
    """`python -m musubi_tuner.fpack_cache_latents` records as prog `fpack_cache_latents`."""
    if prog == "python" and len(argv) >= 2 and argv[0] == "-m":
        return argv[1].rsplit(".", 1)[-1]
    if prog == "accelerate" and "-m" in argv:
        return "accelerate"
    return prog


def nvidia_smi(argv: list[str]) -> None:
    n = int(os.environ.get("STANDIN_GPUS", "1"))
    name = os.environ.get("STANDIN_GPU_NAME", "NVIDIA H100 80GB HBM3")
    mem = os.environ.get("STANDIN_GPU_MEM_MIB", "81559")
    for i in range(n):
        if "-L" in argv:
            print(f"GPU {i}: {name} (UUID: GPU-standin-{i})")
        elif any(a.startswith("--query-gpu") for a in argv):
            print(f"{name}, {mem}")


def main(prog: str) -> int:
    argv = sys.argv[1:]
    name = program_name(prog, argv)
    record(name, argv)
    if prog == "nvidia-smi":
        nvidia_smi(argv)
    if os.environ.get("STANDIN_STDOUT"):
        print(os.environ["STANDIN_STDOUT"], flush=True)
    behaviour = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"_behave_{name}.py")
    if os.path.exists(behaviour):
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"_behave_{name}", behaviour)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = module.behave(argv)
        if result is not None:
            return int(result)
    code = os.environ.get(f"STANDIN_EXIT_{name.upper()}", os.environ.get("STANDIN_EXIT", "0"))
    return int(code)
