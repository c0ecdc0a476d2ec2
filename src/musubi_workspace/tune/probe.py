"""The timing and memory probe inside musubi-tuner's trainer, for `make tune` and `make bench`.

Run as `accelerate launch ... -m musubi_workspace.tune.probe <fpack_train_network arguments>`: it registers a
global optimizer step hook (fired by every torch optimizer, bitsandbytes' 8-bit AdamW included), then calls
musubi-tuner's own `fpack_train_network.main()` with the same arguments, so the real trainer runs unchanged (but
for what the workspace's own launcher changes, launch.py, as in `make train`).

After each optimizer step the hook synchronises the GPU and records the time, the peak GPU memory so far
(allocated by tensors, and reserved by PyTorch's allocator: the figure that decides out-of-memory), the
process's peak host memory (its resident set: block swap keeps the swapped blocks there) and the step's loss.
The record is rewritten to `$WS_PROBE_OUT` (JSON) after every step, so a run that is killed still leaves what
it measured. With several processes each writes its own: rank 0 `$WS_PROBE_OUT`, rank N `$WS_PROBE_OUT.rankN`
(`rank_paths`). Out of memory ends the run with status "oom" and exit code 3; any other error
with status "error", its last message line, and exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
import time

OUT_ENV = "WS_PROBE_OUT"
# MEMORY= of `make tune`/`make bench`, in bytes: the most GPU memory this process may use
# (torch.cuda.set_per_process_memory_fraction), so "fits" is decided as on a smaller card.
MEMORY_ENV = "WS_PROBE_MEMORY"
EXIT_OOM = 3


def rank_path(out: str, rank: int) -> str:
    return out if rank == 0 else f"{out}.rank{rank}"


def rank_paths(out: str, processes: int) -> list[str]:
    """The records of a run of `processes` processes, rank 0 first."""
    return [rank_path(out, r) for r in range(processes)]


def host_peak_bytes() -> int:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Probe:
    def __init__(self, out: str | None, rank: int = 0, device: int = 0):
        self.out = rank_path(out, rank) if out else None
        self.device = device
        self.record: dict = {"status": "running", "steps": [], "started": time.time(), "rank": rank}
        self._loss = None

    def write(self) -> None:
        if not self.out:
            return
        tmp = self.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.record, f, indent=1)
        os.replace(tmp, self.out)

    def install(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(self.device)
            self.record.update(device_name=props.name, total_memory=props.total_memory)
            cap = int(os.environ.get(MEMORY_ENV) or 0)
            if cap:
                # The allocator raises out-of-memory beyond this share of the device, as on a card of `cap` bytes.
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap / props.total_memory), self.device)
                self.record["memory_cap"] = min(cap, props.total_memory)
        self.record["torch"] = torch.__version__

        # The loss is what the trainer passes to accelerator.backward; keep a reference to read after the step.
        from accelerate import Accelerator

        backward = Accelerator.backward

        def recording_backward(accel, loss, **kwargs):
            self._loss = loss.detach()
            return backward(accel, loss, **kwargs)

        Accelerator.backward = recording_backward

        def after_step(optimizer, args, kwargs):
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.synchronize()
            step = {"t": time.perf_counter(), "max_rss": host_peak_bytes()}
            if cuda:
                step["max_allocated"] = torch.cuda.max_memory_allocated(self.device)
                step["max_reserved"] = torch.cuda.max_memory_reserved(self.device)
            if self._loss is not None:
                step["loss"] = float(self._loss.float().mean().item())
            self.record["steps"].append(step)
            self.write()

        register_optimizer_step_post_hook(after_step)

    def finish(self, status: str, message: str = "") -> None:
        self.record["status"] = status
        if message:
            self.record["message"] = message
        self.record["ended"] = time.time()
        self.write()


def is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return "OutOfMemoryError" in type(exc).__name__ or "out of memory" in text.lower()


def main() -> int:
    # accelerate launch gives each process its rank and its GPU (LOCAL_RANK) in the environment.
    rank, local = int(os.environ.get("RANK") or 0), int(os.environ.get("LOCAL_RANK") or 0)
    probe = Probe(os.environ.get(OUT_ENV), rank, local)
    probe.write()
    probe.install()
    from musubi_workspace.launch import apply_from_env

    apply_from_env()  # [workspace] blocks_without_checkpointing, as `make train` runs it
    from musubi_tuner import fpack_train_network

    sys.argv[0] = fpack_train_network.__file__
    try:
        fpack_train_network.main()
    except BaseException as e:  # noqa: BLE001 - the probe reports every ending, then re-raises the unexpected
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1][:500]
        if is_oom(e):
            probe.finish("oom", last)
            print(f"[probe] out of memory: {last}", file=sys.stderr, flush=True)
            return EXIT_OOM
        probe.finish("error", f"{type(e).__name__}: {last}")
        raise
    probe.finish("ok")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
