"""The probe's stand-in (`accelerate launch ... -m musubi_workspace.tune.probe --config_file <derived config>`), for
`make tune` and `make bench`: it reads the derived config and dataset the tool wrote, and writes the probe's
JSON record to $WS_PROBE_OUT with step times and memory from a simple model of the settings, so the tests see
settings that fit, do not fit, and differ in speed:

  memory GiB = weights (26 bf16, 14 fp8) x (1 - blocks_to_swap/60) + batch x (2.5 with checkpointing, 6 without)
               - 2 with compile + batch x 0.4 x N
  s/step     = batch x 1.4 x (1 + 0.005 x blocks_to_swap) x (0.8 with compile) x (0.95 with fp8) x (1 + 0.3 x
               (60 - N) / 60 with checkpointing) x (0.97 with compile and $WS_SPLIT_ATTN_ONE_GRAPH=1)
  N: $WS_BLOCKS_WITHOUT_CHECKPOINTING, the blocks the launcher keeps out of checkpointing (launch.py; the real
  probe applies it), only with checkpointing
  STANDIN_GPU_MEM_GIB=<g>      the GPU's memory (default 80); above it: out of memory at the first step
  STANDIN_GPU_NAME=<name>      the GPU's name the probe records (default NVIDIA H100 80GB HBM3)
  WS_PROBE_MEMORY=<bytes>      the memory cap (MEMORY=): the GPU's memory counts as at most this much, as with
                               torch.cuda.set_per_process_memory_fraction in the real probe
  --num_processes N            N processes: each writes its record (rank 0 $WS_PROBE_OUT, rank k
                               $WS_PROBE_OUT.rankk), steps 5 % slower (the gradients' all-reduce)
  host memory (max_rss) GiB = 4 + 0.6 x blocks_to_swap, per process
  STANDIN_PROBE_CRASH=<name>   a run whose config's blocks_to_swap/compile match `swapN+compile` dies without a
                               record (a segfault in the trainer), e.g. STANDIN_PROBE_CRASH=swap8+compile
  STANDIN_PROBE_HANG=<name>    the same match: the run never ends, in a child process as accelerate's trainer
                               (a pod stopped under it, or RUN_TIMEOUT: the test or the tool kills it)
  STANDIN_PROBE_SECONDS=<s>    every run takes this long (runs side by side overlap)
Losses are 0.1 + step/100 (+0.001 with fp8), so fp8 rows differ from bf16 ones.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import tomllib


def behave(argv: list[str]) -> int:
    args = argv[argv.index("-m") + 2 :]
    cfg = tomllib.loads(Path(args[args.index("--config_file") + 1]).read_text())
    ds = tomllib.loads(Path(cfg["dataset_config"]).read_text())
    batch = ds["general"]["batch_size"]
    swap = cfg.get("blocks_to_swap", 0)
    fp8 = cfg.get("fp8_base") is True
    ckpt = cfg.get("gradient_checkpointing") is True
    compiled = cfg.get("compile") is True
    unchecked = int(os.environ.get("WS_BLOCKS_WITHOUT_CHECKPOINTING") or 0) if ckpt else 0
    one_graph = os.environ.get("WS_SPLIT_ATTN_ONE_GRAPH") == "1"
    crash = os.environ.get("STANDIN_PROBE_CRASH", "")
    if crash and crash == f"swap{swap}" + ("+compile" if compiled else ""):
        print("Command '[...]' died with <Signals.SIGSEGV: 11>.", file=sys.stderr)
        return 1
    if os.environ.get("STANDIN_PROBE_HANG", "-") == f"swap{swap}" + ("+compile" if compiled else ""):
        # As `accelerate launch` runs the trainer: in a child process, which hangs (with the config in its argv).
        import subprocess

        subprocess.run([sys.executable, "-c", "import time; time.sleep(3600)", *args])
    time.sleep(float(os.environ.get("STANDIN_PROBE_SECONDS") or 0))
    total = float(os.environ.get("STANDIN_GPU_MEM_GIB", "80")) * 2**30
    cap = int(os.environ.get("WS_PROBE_MEMORY") or 0)
    usable = min(total, cap) if cap else total
    mem = (14 if fp8 else 26) * (1 - swap / 60) + batch * (2.5 if ckpt else 6) - (2 if compiled else 0)
    mem = (mem + batch * 0.4 * unchecked) * 2**30
    step = batch * 1.4 * (1 + 0.005 * swap) * (0.8 if compiled else 1) * (0.95 if fp8 else 1)
    step *= 1 + 0.3 * (60 - unchecked) / 60 if ckpt else 1
    step *= 0.97 if compiled and one_graph else 1
    processes = int(argv[argv.index("--num_processes") + 1]) if "--num_processes" in argv else 1
    step *= 1.05 if processes > 1 else 1
    for rank in range(processes):
        out = os.environ["WS_PROBE_OUT"] + (f".rank{rank}" if rank else "")
        code = write_record(out, cfg, fp8, mem, usable, step, cap, total, (4 + 0.6 * swap) * 2**30)
    return code


def write_record(out, cfg, fp8, mem, usable, step, cap, total, rss) -> int:
    record = {
        "status": "running",
        "steps": [],
        "total_memory": total,
        "device_name": os.environ.get("STANDIN_GPU_NAME", "NVIDIA H100 80GB HBM3"),
    }
    if cap:
        record["memory_cap"] = cap
    if mem > usable:
        record.update(status="oom", message="CUDA out of memory. Tried to allocate 2.00 GiB")
        Path(out).write_text(json.dumps(record))
        return 1
    for i in range(cfg["max_train_steps"]):
        record["steps"].append(
            {
                "t": 100 + i * step + 0.01 * (i % 2),
                "max_allocated": mem,
                "max_reserved": mem * 1.1,
                "max_rss": rss,
                "loss": 0.1 + i / 100 + (0.001 if fp8 else 0),
            }
        )
    record["status"] = "ok"
    Path(out).write_text(json.dumps(record))
    return 0
