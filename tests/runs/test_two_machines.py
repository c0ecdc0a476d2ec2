"""Two machines on one host: `make train` in two workspace copies (two "pods"), MACHINE_RANK 0 and 1, the README's
commands with a MULTI_GPU accelerate config of 2 machines x 1 process, through the real `accelerate launch`.

The trainer module is a recording stand-in (musubi-tuner's needs a GPU): it joins accelerate's process group on the
CPU, all-reduces its rank + 1 (1 + 2 = 3 only if both "machines" took part) and writes what it saw. Needs the real
accelerate and torch (the train extra); skipped elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import VENV, TmpWorkspace

pytestmark = pytest.mark.skipif(
    find_spec("accelerate") is None or find_spec("torch") is None or not (VENV / "bin" / "accelerate").exists(),
    reason="two machines on one host need the real accelerate and torch (the train extra: `uv sync --extra train`)",
)

ACCELERATE_MULTI = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 2
num_processes: 2
mixed_precision: bf16
"""

TRAINER = """\
import json, os, sys
import torch
from accelerate import Accelerator

acc = Accelerator(cpu=True)  # no GPU here: the gloo backend; on a pod the same launch uses NCCL
total = acc.reduce(torch.tensor([acc.process_index + 1.0]), "sum").item()
record = {"rank": acc.process_index, "world": acc.num_processes, "sum": total, "argv": sys.argv[1:],
          "cwd": os.getcwd(), "machine_rank": os.environ.get("GROUP_RANK")}
with open(os.path.join(os.environ["TWO_MACHINES_OUT"], f"rank{acc.process_index}.json"), "w") as f:
    json.dump(record, f)
acc.wait_for_everyone()
acc.end_training()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workspaces_train_as_two_machines_of_one_run(cached, tmp_path):
    pods = [cached, TmpWorkspace(root=tmp_path / "pod1", env=dict(cached.env))]
    shutil.copytree(cached.root, pods[1].root, symlinks=True)  # the second pod: same commit, configs, models, caches
    fake = tmp_path / "trainer" / "musubi_tuner"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "fpack_train_network.py").write_text(TRAINER)
    out = tmp_path / "seen"
    out.mkdir()
    port = str(free_port())
    procs = []
    for rank, pod in enumerate(pods):
        pod.write("accelerate_multi.yaml", ACCELERATE_MULTI)
        cfg = pod.read("configs/v1/config.toml").replace(
            "\n[workspace]\n", '\n[workspace]\naccelerate_config = "accelerate_multi.yaml"\n'
        )
        pod.write("configs/v1/config.toml", cfg)
        env = {
            **pod.env,
            # The real accelerate before the stand-ins (nvidia-smi stays a stand-in); the stand-in trainer first.
            "PATH": os.pathsep.join([str(VENV / "bin"), pod.env["PATH"]]),
            "PYTHONPATH": str(fake.parent),
            "TWO_MACHINES_OUT": str(out),
            "MACHINE_RANK": str(rank),
            "MAIN_PROCESS_IP": "127.0.0.1",
            "MAIN_PROCESS_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                ["make", "--no-print-directory", "train", "AUTO_STOP=0"],
                cwd=pod.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    seen = sorted((json.loads(f.read_text()) for f in out.glob("rank*.json")), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"], r["sum"]) for r in seen] == [(0, 2, 3.0), (1, 2, 3.0)]
    assert [Path(r["cwd"]) for r in seen] == [pods[0].root, pods[1].root]  # each machine's process in its own pod
    assert [r["machine_rank"] for r in seen] == ["0", "1"]  # torch's node rank: the pod's MACHINE_RANK
    assert all(r["argv"] == ["--config_file", "configs/v1/config.toml"] for r in seen)
    for pod in pods:
        (record,) = pod.root.glob("runs/v1/*-train/run.json")
        data = json.loads(record.read_text())
        assert data["status"] == "succeeded", data
        argv = data["commands"][0]["argv"]
        assert argv[argv.index("--machine_rank") + 1] == str(pods.index(pod))
        assert argv[argv.index("--main_process_port") + 1] == port
