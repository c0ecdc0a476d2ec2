"""The trainer stand-in (`accelerate launch ... -m musubi_tuner.fpack_train_network ...`): behaves like
musubi-tuner's training loop as far as the workspace can see it, per environment variables the tests set.

  STANDIN_STEPS=<k>|all        steps to run (default 0: exit at once, as before); `all` = --max_train_steps
  STANDIN_STEP_SECONDS=<s>     sleep per step (default 0.01)
  STANDIN_FAIL_AT=<k>          after step k: a traceback and exit 1
  STANDIN_KILL_AT=<k>          after step k: SIGKILL itself (what an out-of-memory kill looks like)
  STANDIN_HANG_AT=<k>          after step k: sleep for an hour, printing nothing
  STANDIN_WAIT_FOR=<path>      before anything else, wait (printing nothing) while this file is absent, at most
                               STANDIN_WAIT_SECONDS (default 60): a test holds the run there until it is ready
  STANDIN_UPLOAD_SECONDS=<s>   at the end, leave a process in the group that "uploads" for s seconds, then
                               records prog "upload-done" (musubi-tuner's async upload, wandb's sync)
  STANDIN_LEAK=1               print the HF_TOKEN and WANDB_API_KEY values (a library logging its secrets)
  STANDIN_REAL_FILES=1         files in their real formats (`make smoke`): LoRAs as safetensors with
                               `lora_unet_` keys and a "saving checkpoint: <file>" line each, states with
                               model.safetensors and optimizer.bin, and what STANDIN_OUTPUTS writes
  STANDIN_LORA_KEYS=<prefix>   with STANDIN_REAL_FILES: the LoRA keys' prefix (default lora_unet_)
  STANDIN_NO_LORA=1            save no LoRA files at all (a trainer that dies quietly in its save)
  STANDIN_OUTPUTS=1            also write what `make report` reads, where and as musubi-tuner writes it:
                               tensorboard events (loss/current, loss/average, lr/unet every step) in
                               `{logging_dir}/{log_prefix}{local time}/{log_tracker_name}/`, and one-frame samples
                               `{output_dir}/sample/{output_name}_{tag}_{NN}_{local time}_{seed}_000.png` for every
                               prompt (sample_at_first, sample_every_n_steps), steps counted from 0 in a resumed run
  WS_VALIDATION=<dataset.toml> the validation loss as `musubi_workspace.launch` writes it (the series, the JSON
                               beside each LoRA; numbers and knobs in `_standin_validation.py`)
`-m musubi_workspace.validation.offline ...` (`make validate`) writes the JSON beside each `--lora` at once.

Progress goes to stderr the way tqdm draws it (`steps:  12%|...| 120/1000 [00:06<00:46,  0.05s/it,
avr_loss=0.0832]`, redrawn with carriage returns). With save_every_n_steps / save_state in the config it
writes LoRA files and state folders named as musubi-tuner names them and logs "saving state at step N".
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import tomllib


def _opt(args: list[str], name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def _bar(n: int, total: int, spi: float, loss: float) -> str:
    pct = int(100 * n / total) if total else 100
    fill = "█" * (pct // 10) + " " * (10 - pct // 10)
    left = int((total - n) * spi)
    return (
        f"steps: {pct:3d}%|{fill}| {n}/{total} [00:{min(n, 59):02d}<{left // 60:02d}:{left % 60:02d}, "
        f"{spi:.2f}s/it, avr_loss={loss:.4f}]"
    )


def _upload_child(seconds: float) -> None:
    code = (
        "import json, os, sys, time\n"
        f"time.sleep({seconds})\n"
        "p = os.environ.get('WS_RECORD')\n"
        "p and open(p, 'a').write(json.dumps({'prog': 'upload-done', 'argv': [], 'time': time.time()}) + '\\n')\n"
    )
    subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _real() -> bool:
    return os.environ.get("STANDIN_REAL_FILES") == "1"


def _save_lora(path: Path) -> None:
    if os.environ.get("STANDIN_NO_LORA") == "1":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _real():
        path.write_bytes(b"lora")
        return
    from _fpack_dataset import safetensors

    prefix = os.environ.get("STANDIN_LORA_KEYS", "lora_unet_")
    print(f"\nsaving checkpoint: {path}", flush=True)
    block = f"{prefix}transformer_blocks_0_attn_to_q"
    safetensors(
        str(path),
        {
            f"{block}.alpha": ("F32", ()),
            f"{block}.lora_down.weight": ("BF16", (4, 3072)),
            f"{block}.lora_up.weight": ("BF16", (3072, 4)),
        },
        {"ss_network_module": "networks.lora_framepack"},
    )


def _save_state(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"state")
    if _real():
        (folder / "optimizer.bin").write_bytes(b"optimizer")


def behave(argv: list[str]) -> int | None:
    if "musubi_workspace.tune.probe" in argv:  # `make tune` / `make bench`: the probe's stand-in
        from _behave_tune import behave as probe

        return probe(argv)
    if "musubi_workspace.validation.offline" in argv:  # `make validate`
        from _standin_validation import offline

        return offline(argv[argv.index("-m") + 2 :])
    if os.environ.get("STANDIN_WAIT_FOR"):
        deadline = time.monotonic() + float(os.environ.get("STANDIN_WAIT_SECONDS", "60"))
        while not os.path.exists(os.environ["STANDIN_WAIT_FOR"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    steps_env = os.environ.get("STANDIN_STEPS", "0")
    if steps_env == "0" and not os.environ.get("STANDIN_LEAK"):
        return None
    args = argv[argv.index("-m") + 2 :] if "-m" in argv else []
    cfg = tomllib.loads(Path(_opt(args, "--config_file")).read_text()) if "--config_file" in args else {}
    total = int(_opt(args, "--max_train_steps", cfg.get("max_train_steps", 1600)))
    name = _opt(args, "--output_name", cfg.get("output_name", "lora"))
    out = Path(cfg.get("output_dir", "outputs"))
    every = cfg.get("save_every_n_steps")
    save_state = cfg.get("save_state") is True
    steps = total if steps_env == "all" else min(int(steps_env), total)
    spi = float(os.environ.get("STANDIN_STEP_SECONDS", "0.01"))
    at = {k: int(os.environ[f"STANDIN_{k}_AT"]) for k in ("FAIL", "KILL", "HANG") if os.environ.get(f"STANDIN_{k}_AT")}

    print("Trying to import sageattention", flush=True)
    if os.environ.get("STANDIN_LEAK"):
        print(
            f"debug: HF_TOKEN={os.environ.get('HF_TOKEN')} WANDB_API_KEY={os.environ.get('WANDB_API_KEY')}", flush=True
        )
    if "--resume" in args:
        print(f"INFO resume training from local state: {_opt(args, '--resume')}", flush=True)
    err = sys.stderr
    err.write(f"steps:   0%|          | 0/{total} [00:00<?, ?it/s]\r")
    err.flush()
    loss = 0.2
    # A resumed run restores the weights: its loss goes on from the state's step (named in --output_name).
    offset = int(re.search(r"-resume(\d+)$", name).group(1)) if re.search(r"-resume(\d+)$", name) else 0
    outputs = _Outputs(cfg, name) if os.environ.get("STANDIN_OUTPUTS") == "1" or _real() else None
    if outputs:
        outputs.sample("e000000", first=True)
    validation = None
    if os.environ.get("WS_VALIDATION"):
        from _standin_validation import Training

        validation = Training(cfg, name, out, total, offset, every)
    for n in range(1, steps + 1):
        time.sleep(spi)
        loss = 0.05 + 0.15 * 0.97 ** (n + offset)
        err.write(_bar(n, total, spi, loss) + "\r")
        err.flush()
        if outputs:
            outputs.step(n, loss)
            if cfg.get("sample_every_n_steps") and n % cfg["sample_every_n_steps"] == 0:
                outputs.sample(f"{n:06d}")
        if validation:
            validation.after_step(n)
        if every and n % every == 0:
            out.mkdir(parents=True, exist_ok=True)
            _save_lora(out / f"{name}-step{n:08d}.safetensors")
            if validation:
                validation.saved(n, out / f"{name}-step{n:08d}.safetensors")
            if save_state:
                print(f"\nINFO saving state at step {n}", flush=True)
                _save_state(out / f"{name}-step{n:08d}-state")
        if at.get("FAIL") == n:
            if outputs:
                outputs.close()  # what the tracker had flushed before the crash
            err.write("\nTraceback (most recent call last):\nRuntimeError: CUDA error: an illegal memory access\n")
            err.flush()
            return 1
        if at.get("KILL") == n:
            os.kill(os.getpid(), signal.SIGKILL)
        if at.get("HANG") == n:
            time.sleep(3600)
    err.write("\n")
    err.flush()
    if outputs:
        outputs.close()
    if steps == total:
        out.mkdir(parents=True, exist_ok=True)
        every_epochs = cfg.get("sample_every_n_epochs")
        if outputs and every_epochs and steps % every_epochs == 0:
            # The stand-in counts one batch per epoch (as the smoke's 4 items at batch 4): an epoch-end sample.
            outputs.sample(f"e{steps:06d}")
        if save_state:
            print("INFO saving last state.", flush=True)
            if _real():
                _save_state(out / f"{name}-state")
            else:
                (out / f"{name}-state").mkdir(exist_ok=True)
        _save_lora(out / f"{name}.safetensors")
        if validation:
            validation.saved(steps, out / f"{name}.safetensors")
        print("INFO model saved.", flush=True)
    if os.environ.get("STANDIN_UPLOAD_SECONDS"):
        _upload_child(float(os.environ["STANDIN_UPLOAD_SECONDS"]))
    return None


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _EventFile:
    """A tensorboard event file as tensorboard's EventFileWriter writes it (the same name and first event; each
    record: its length, the length's masked CRC-32C, the serialized Event, its masked CRC-32C), buffered until
    close as that writer's queue is. Written here rather than through EventFileWriter, whose import (all of
    tensorboard.summary, numpy with it) took half a second of every trainer start."""

    def __init__(self, folder: Path):
        import socket

        from tensorboard.compat.proto import event_pb2

        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self.file = open(folder / name, "wb")  # closed in close()
        source = event_pb2.SourceMetadata(writer="tensorboard.summary.writer.event_file_writer")
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2", source_metadata=source))
        self.file.flush()

    def add_event(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self.file.write(header + struct.pack("<I", _masked_crc32c(header)) + data)
        self.file.write(struct.pack("<I", _masked_crc32c(data)))

    def close(self) -> None:
        self.file.close()


class _Outputs:
    """Tensorboard events and samples, named and placed as musubi-tuner names and places them."""

    def __init__(self, cfg: dict, name: str):
        self.cfg, self.name = cfg, name
        self.writer = None
        log_with = cfg.get("log_with") or ("tensorboard" if cfg.get("logging_dir") else None)
        if log_with in ("tensorboard", "wandb", "all") and cfg.get("logging_dir"):
            base = Path(cfg["logging_dir"])
            while True:  # musubi-tuner's folder is the local time in seconds; a real run takes minutes to get here
                run = base / (str(cfg.get("log_prefix") or "") + time.strftime("%Y%m%d%H%M%S", time.localtime()))
                if not run.exists():
                    break
                time.sleep(0.2)
            if log_with in ("tensorboard", "all"):
                self.writer = _EventFile(run / str(cfg.get("log_tracker_name") or "network_train"))
            if log_with in ("wandb", "all") and os.environ.get("WANDB_MODE") == "offline":
                # musubi-tuner sets WANDB_DIR to the run's logging folder; wandb writes its offline run below it
                offline = run / "wandb" / f"offline-run-{time.strftime('%Y%m%d_%H%M%S')}-standin"
                offline.mkdir(parents=True, exist_ok=True)
                (offline / "run-standin.wandb").write_bytes(b"")
        prompts = Path(cfg["sample_prompts"]) if cfg.get("sample_prompts") else None
        self.prompts = (
            [l for l in prompts.read_text().splitlines() if l.strip() and not l.startswith("#")]
            if prompts and prompts.is_file()
            else []
        )
        self.sum, self.count = 0.0, 0

    def step(self, n: int, loss: float) -> None:
        if self.writer is None:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self.sum, self.count = self.sum + loss, self.count + 1
        values = [
            summary_pb2.Summary.Value(tag="loss/current", simple_value=loss),
            summary_pb2.Summary.Value(tag="loss/average", simple_value=self.sum / self.count),
            summary_pb2.Summary.Value(tag="lr/unet", simple_value=float(self.cfg.get("learning_rate", 1e-4))),
        ]
        self.writer.add_event(event_pb2.Event(step=n, wall_time=time.time(), summary=summary_pb2.Summary(value=values)))

    def sample(self, tag: str, first: bool = False) -> None:
        if first and not self.cfg.get("sample_at_first"):
            return
        from PIL import Image

        folder = Path(self.cfg["output_dir"]) / "sample"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
        for i, _ in enumerate(self.prompts):
            shade = (int(tag.lstrip("e")) * 7 + i * 60) % 256
            Image.new("RGB", (32, 48), (shade, 90, 255 - shade)).save(
                folder / f"{self.name}_{tag}_{i:02d}_{stamp}_42_000.png"
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
