"""A version's outputs are never overwritten: a second `make train` stops before anything runs, naming the earlier
run's files and the ways on; `RESTART=1` moves them into output_dir/earlier-<UTC time>/ and the run record lists
them. Through the real Makefile, the trainer stand-in writing LoRAs, states and samples as musubi-tuner names them."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from conftest import error_line

from runs.test_ledger import HF_TOKEN, PYLIB, records
from runs.test_pod import wait_for

NAME = "example-1f_v1"
# 200 of the 1000 steps: LoRAs and states at steps 100 and 200 (save_every_n_steps = 100, save_state), samples at
# the start and at 100, 200 (sample_at_first, sample_every_n_steps = 100), tensorboard events in outputs/v1/logs.
FIRST_RUN = {"STANDIN_STEPS": "200", "STANDIN_STEP_SECONDS": "0.001", "STANDIN_OUTPUTS": "1"}
EARLIER = [
    f"{NAME}-step00000100.safetensors",
    f"{NAME}-step00000200.safetensors",
    f"{NAME}-step00000100-state/",
    f"{NAME}-step00000200-state/",
]
# configs/v1 names a validation set: the stand-in trainer writes the JSON beside each LoRA and the run's series.
VALIDATION = [
    f"{NAME}-step00000100.validation.json",
    f"{NAME}-step00000200.validation.json",
    f"{NAME}.validation.jsonl",
]


def tree(root: Path) -> dict[str, str]:
    """Every file and folder below root: relative path -> sha256 of the content ("dir" for a folder)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def trained(w, env: dict | None = None) -> None:
    r = w.make("train", "AUTO_STOP=0", env={**FIRST_RUN, **(env or {})})
    assert r.returncode == 0, r.stderr
    assert (w.root / "outputs/v1" / EARLIER[1]).is_file()


def refusal(target: str, outputs: int, changed: str = "") -> str:
    samples = outputs - 7
    why = f"; {changed}" if changed else ""
    return (
        f"error: outputs/v1 already holds {outputs} output(s) of {NAME} from an earlier run "
        f"(2 LoRA(s), 2 state(s), 3 validation(s), {samples} sample(s): {', '.join(EARLIER)}, +{outputs - 4} more)"
        f"{why}: "
        f"`make {target}` would overwrite them. Ways on: `make new` (a changed config is a new version: the normal "
        f"path), `make resume` (same config, go on from its newest state), or `make {target} RESTART=1` (moves them "
        f"into outputs/v1/earlier-<UTC time>/, deletes nothing)"
    )


def edit_learning_rate(w) -> None:
    cfg = w.read("configs/v1/config.toml")
    assert "\nlearning_rate = 2e-4\n" in cfg
    w.write("configs/v1/config.toml", cfg.replace("\nlearning_rate = 2e-4\n", "\nlearning_rate = 1e-4\n"))


def test_a_second_train_after_a_config_change_stops_naming_the_files_and_the_change_and_changes_nothing(cached):
    trained(cached)
    [first] = records(cached, "train")
    samples = sorted(p.name for p in (cached.root / "outputs/v1/sample").iterdir())
    assert len(samples) == 3  # one prompt: start, step 100, step 200
    edit_learning_rate(cached)
    before = tree(cached.root)
    r = cached.make("train", "AUTO_STOP=0", env=FIRST_RUN)
    assert r.returncode == 2
    changed = f"configs/v1/config.toml changed since its last run ({first['id']})"
    assert error_line(r) == refusal("train", 10, changed)
    assert tree(cached.root) == before  # no file changed, none lost, no run record, nothing run
    assert [c["prog"] for c in cached.calls()].count("accelerate") == 1


def test_the_same_config_stops_too_and_a_dry_run_says_the_same(cached):
    trained(cached)
    before = tree(cached.root / "outputs")
    for args in ((), ("DRY_RUN=1",)):
        r = cached.make("train", "AUTO_STOP=0", *args, env=FIRST_RUN)
        assert r.returncode == 2, args
        assert error_line(r) == refusal("train", 10), args  # no config change named: `make resume` is the way on
    assert len(records(cached, "train")) == 1
    assert tree(cached.root / "outputs") == before


def test_train_bg_stops_before_tmux_starts(cached):
    trained(cached)
    before = tree(cached.root / "outputs")
    r = cached.make("train-bg", "AUTO_STOP=0")
    assert r.returncode == 2
    assert error_line(r) == refusal("train-bg", 10)
    assert cached.calls("tmux") == []
    assert tree(cached.root / "outputs") == before


def test_restart_moves_every_earlier_file_aside_and_the_new_run_record_lists_them(cached):
    trained(cached)
    [first] = records(cached, "train")
    out = cached.root / "outputs/v1"
    earlier = {k: v for k, v in tree(out).items() if k.split("/")[0] != "logs"}
    moved = EARLIER + VALIDATION + sorted(k for k in earlier if k.startswith("sample/"))
    assert len(moved) == 10 and sorted(k for k in earlier if k != "sample" and k.count("/") == 0) == sorted(
        m.rstrip("/") for m in EARLIER + VALIDATION
    )
    logs = {k: v for k, v in tree(out).items() if k.split("/")[0] == "logs"}
    edit_learning_rate(cached)

    r = cached.make("train", "AUTO_STOP=0", "RESTART=1", env=FIRST_RUN)
    assert r.returncode == 0, r.stderr
    [folder] = [p for p in out.iterdir() if p.name.startswith("earlier-")]
    assert re.fullmatch(r"earlier-\d{8}T\d{6}Z", folder.name)
    assert tree(folder) == earlier  # every file, the same bytes, at the same place below the folder
    assert {k: v for k, v in tree(out).items() if k.split("/")[0] == "logs"}.items() >= logs.items()  # logs stay
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESTART=1")]
    shown = ", ".join(m.rstrip("/") for m in moved)
    assert lines == [
        f"RESTART=1: moved 10 output(s) of the earlier run into outputs/v1/{folder.name}/ (nothing deleted; the run "
        f"record lists them): {shown}"
    ]
    first_again, second = records(cached, "train")
    assert first_again["id"] == first["id"] and "restart" not in first_again
    assert second["restart"] == {
        "moved_to": f"outputs/v1/{folder.name}",
        "moved": shown.split(", "),
        "earlier_run": first["id"],
        "changed": ["configs/v1/config.toml"],
    }
    assert second["status"] == "succeeded"
    # the new run wrote its own files where the earlier ones were
    assert (out / EARLIER[1]).is_file() and (out / EARLIER[3].rstrip("/")).is_dir()
    # and a third train stops again, now over the restarted run's files
    again = cached.make("train", "AUTO_STOP=0", env=FIRST_RUN)
    assert again.returncode == 2 and "already holds 10 output(s)" in error_line(again)


def test_restart_in_a_dry_run_says_what_would_move_and_moves_nothing(cached):
    trained(cached)
    before = tree(cached.root / "outputs")
    r = cached.make("train", "DRY_RUN=1", "RESTART=1")
    assert r.returncode == 0, r.stderr
    assert (
        "RESTART=1: would move 10 output(s) of the earlier run into outputs/v1/earlier-<UTC time>/ (dry run: nothing "
        f"moved): 2 LoRA(s), 2 state(s), 3 validation(s), 3 sample(s): {', '.join(EARLIER)}, +6 more"
    ) in r.stdout.splitlines()
    assert "accelerate launch" in r.stdout
    assert tree(cached.root / "outputs") == before
    assert len(records(cached, "train")) == 1


def test_train_bg_carries_restart_into_its_tmux_command(cached):
    trained(cached)
    r = cached.make("train-bg", "DRY_RUN=1", "RESTART=1")
    assert r.returncode == 0, r.stderr
    inner = shlex.split(r.stdout.splitlines()[0])[-1]
    assert shlex.split(inner)[-2:] == ["--restart", "1"]


def test_a_first_train_and_restart_without_outputs_move_nothing(cached):
    r = cached.make("train", "AUTO_STOP=0", "RESTART=1")
    assert r.returncode == 0, r.stderr
    assert "RESTART=1: no earlier outputs of this output_name in output_dir; nothing to move" in r.stdout
    assert not (cached.root / "outputs/v1").exists() or not any(
        p.name.startswith("earlier-") for p in (cached.root / "outputs/v1").iterdir()
    )
    [rec] = records(cached, "train")
    assert "restart" not in rec


def test_resume_after_a_config_change_warns_in_one_line(cached):
    trained(cached)
    [first] = records(cached, "train")
    edit_learning_rate(cached)
    r = cached.make("resume", "AUTO_STOP=0", env={"STANDIN_STEPS": "5", "STANDIN_STEP_SECONDS": "0.001"})
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if "changed since" in l]
    assert warnings == [
        f"warning: configs/v1/config.toml changed since its last run ({first['id']}); `make resume` goes on with "
        "the changed files (a changed config is a new version: `make new`)"
    ]


def test_resume_with_the_same_config_does_not_warn(cached):
    trained(cached)
    r = cached.make("resume", "AUTO_STOP=0", env={"STANDIN_STEPS": "5", "STANDIN_STEP_SECONDS": "0.001"})
    assert r.returncode == 0, r.stderr
    assert "changed since" not in r.stderr


def test_restart_while_the_version_trains_stops_and_moves_nothing(cached):
    """Here the version's lock (runs/lock.py) stops the second run first; the run record guards as well."""
    trained(cached)
    slow = {"STANDIN_STEPS": "200", "STANDIN_STEP_SECONDS": "0.03"}
    first = subprocess.Popen(
        ["make", "--no-print-directory", "train", "AUTO_STOP=0", "RESTART=1"],
        cwd=cached.root,
        env={**cached.env, **slow},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(records(cached, "train")) == 2 and cached.calls("accelerate")[1:], timeout=60)
        [folder] = [p for p in (cached.root / "outputs/v1").iterdir() if p.name.startswith("earlier-")]
        moved = tree(folder)
        r = cached.make("train", "AUTO_STOP=0", "RESTART=1", env=FIRST_RUN)
        assert r.returncode != 0 and error_line(r)
        assert tree(folder) == moved  # the first restart's folder as it was; no second one
        assert [p.name for p in (cached.root / "outputs/v1").iterdir() if p.name.startswith("earlier-")] == [
            folder.name
        ]
    finally:
        assert first.wait(timeout=120) == 0
    assert len(records(cached, "train")) == 2


def test_restart_while_a_run_of_another_machine_trains_on_the_shared_volume_stops(cached):
    """A run record of another host (two pods on one volume) that says running: no lock of this machine sees it."""
    trained(cached)
    [rec_path] = (cached.root / "runs/v1").glob("*-train/run.json")
    data = json.loads(rec_path.read_text())
    data.update(status="running", host="pod-b", pid=4242, end=None)
    rec_path.write_text(json.dumps(data))
    before = tree(cached.root / "outputs")
    for target in ("train", "train-bg"):
        r = cached.make(target, "AUTO_STOP=0", "RESTART=1", env=FIRST_RUN)
        assert r.returncode == 2
        assert error_line(r) == (
            f"error: RESTART=1: v1 is training now (run {data['id']}, pid 4242, since {data['start']}): moving its "
            "outputs would pull them from under it; wait for it to end (`make logs` follows it) and restart then"
        )
    assert tree(cached.root / "outputs") == before
    assert cached.calls("tmux") == []


def test_after_a_restart_resume_takes_no_state_of_the_earlier_run_from_hugging_face(cached):
    cfg = cached.read("configs/v1/config.toml")
    assert '# huggingface_repo_id = "your-hf-name/example-1f"' in cfg
    cached.write(
        "configs/v1/config.toml",
        cfg.replace('# huggingface_repo_id = "your-hf-name/example-1f"', 'huggingface_repo_id = "me/example-1f"'),
    )
    cached.write(".env", f"HF_TOKEN={HF_TOKEN}\n")
    trained(cached, PYLIB)  # states at steps 100 and 200, "uploaded"
    r = cached.make("train", "AUTO_STOP=0", "RESTART=1", env={**FIRST_RUN, "STANDIN_STEPS": "100", **PYLIB})
    assert r.returncode == 0, r.stderr
    assert (
        "RESTART=1: note: me/example-1f gets this run's uploads under the earlier run's names (Hugging Face keeps the "
        "earlier files in the repository's history); `make resume` takes only the states this run saved"
    ) in r.stdout.splitlines()
    # the repository: the restarted run's step-100 state over the earlier one's, the earlier run's step-200 state
    files = [f"v1/{NAME}-step00000100-state/model.safetensors", f"v1/{NAME}-step00000200-state/model.safetensors"]
    shutil.rmtree(cached.root / f"outputs/v1/{NAME}-step00000100-state")  # only the Hugging Face copies count
    r = cached.make("resume", "DRY_RUN=1", env={"STANDIN_HF_FILES": json.dumps(files), **PYLIB})
    assert r.returncode == 0, r.stderr
    [restart] = [d for d in records(cached, "train") if "restart" in d]
    assert (
        f"resume: 1 state(s) on Hugging Face are from before the RESTART=1 of run {restart['id']} and not taken: "
        f"{NAME}-step00000200-state"
    ) in r.stderr.splitlines()
    assert (
        f"resume: from me/example-1f/v1/{NAME}-step00000100-state (Hugging Face, the newest state: step 100 of 1000)"
    ) in r.stdout.splitlines()
