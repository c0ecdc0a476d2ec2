"""What GPUs this machine shows, without importing torch."""

from __future__ import annotations

import shutil
import subprocess

# nvidia-smi's answers within one `ws` command (the GPUs do not change while it runs), by query and environment:
# the checks, the estimate and the run record each ask, and each call costs a process.
_ANSWERS: dict[tuple, str | None] = {}


def _smi(env: dict[str, str], *args: str) -> str | None:
    """nvidia-smi's output for `args`, or None without nvidia-smi or on a failure."""
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if not smi:
        return None
    key = (smi, args, frozenset(env.items()))
    if key not in _ANSWERS:
        try:
            _ANSWERS[key] = subprocess.run([smi, *args], capture_output=True, text=True, timeout=20, env=env).stdout
        except (OSError, subprocess.TimeoutExpired):
            _ANSWERS[key] = None
    return _ANSWERS[key]


def visible_gpu_count(env: dict[str, str]) -> int:
    """GPUs a process started with `env` will see: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`."""
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"])
    out = _smi(env, "-L")
    if out is None:
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def gpu_memory(env: dict[str, str]) -> list[tuple[str, int]]:
    """(name, total memory in MiB) of each GPU `nvidia-smi` lists; empty without nvidia-smi or on any failure."""
    out = _smi(env, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
    if out is None:
        return []
    found = []
    for line in out.splitlines():
        name, _, mib = line.rpartition(",")
        if name.strip() and mib.strip().isdigit():
            found.append((name.strip(), int(mib.strip())))
    return found


def visible_gpu(env: dict[str, str]) -> tuple[str, int] | None:
    """(name, MiB) of the GPU a process started with `env` uses first: nvidia-smi's GPU at the first index of
    CUDA_VISIBLE_DEVICES (when it is a number), else its first; None without nvidia-smi."""
    gpus = gpu_memory(env)
    if not gpus:
        return None
    first = (env.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0].strip()
    if first.isdigit() and int(first) < len(gpus):
        return gpus[int(first)]
    return gpus[0]


def gpu_names(env: dict[str, str]) -> list[str]:
    """Names of the GPUs `nvidia-smi -L` lists, in its order; empty without nvidia-smi."""
    out = _smi(env, "-L")
    if out is None:
        return []
    names = []
    for line in out.splitlines():
        if line.startswith("GPU ") and ": " in line:
            names.append(line.split(": ", 1)[1].split(" (UUID")[0].strip())
    return names
