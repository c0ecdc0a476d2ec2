"""The validation Records on disk: the series and the JSON beside each LoRA read back as written, a second write
replaces the first whole, a cut line is skipped, and `best` picks the lowest loss among the LoRAs still there."""

from __future__ import annotations

import json

from musubi_workspace.validation import records
from musubi_workspace.validation.records import Record


def rec(step: int, loss: float, lora: str | None = None, set_hash: str = "abcd" * 4) -> Record:
    return Record(
        step=step,
        loss=loss,
        by_timestep={"0.1": loss * 0.5, "0.9": loss * 1.5},
        items=3,
        set=set_hash,
        dataset_config="validation/dataset.toml",
        timesteps=[0.1, 0.9],
        lora=lora,
        ratio=None if step == 0 else loss / 0.2,
        seconds=1.5,
    )


def lora_file(folder, name: str):
    (folder / name).write_bytes(b"lora")
    return folder / name


def test_series_and_json_beside_read_back_as_written(tmp_path):
    first, second = rec(0, 0.2), rec(500, 0.15, "x-step00000500.safetensors")
    records.append_series(tmp_path, "x", first)
    records.append_series(tmp_path, "x", second)
    assert records.read_series(tmp_path, "x") == [first, second]
    lora = lora_file(tmp_path, "x-step00000500.safetensors")
    path = records.write_beside(lora, second)
    assert path == tmp_path / "x-step00000500.validation.json"
    assert records.read_beside(lora) == second
    on_disk = json.loads(path.read_text())
    assert on_disk["seed"] == "item-content+timestep" and on_disk["by"] == "training"
    assert sorted(on_disk) == sorted(
        ["step", "loss", "by_timestep", "items", "set", "dataset_config", "timesteps", "seed", "by", "lora", "ratio"]
        + ["seconds", "time"]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_second_write_replaces_the_first_and_the_series_keeps_the_last_of_each_step(tmp_path):
    lora = lora_file(tmp_path, "x.safetensors")
    records.write_beside(lora, rec(1000, 0.3, "x.safetensors"))
    again = rec(1000, 0.25, "x.safetensors")
    again.by = records.BY_VALIDATE
    records.write_beside(lora, again)
    assert records.read_beside(lora) == again
    records.append_series(tmp_path, "x", rec(1000, 0.3, "x.safetensors"))
    records.append_series(tmp_path, "x", rec(0, 0.2))
    records.append_series(tmp_path, "x", again)
    assert [(r.step, r.loss) for r in records.read_series(tmp_path, "x")] == [(0, 0.2), (1000, 0.25)]


def test_a_line_cut_short_is_skipped_and_a_broken_json_reads_as_none(tmp_path):
    records.append_series(tmp_path, "x", rec(0, 0.2))
    with open(records.series_path(tmp_path, "x"), "a") as f:
        f.write('{"step": 5, "loss": 0.1')  # a pod stopped while writing
    assert [r.step for r in records.read_series(tmp_path, "x")] == [0]
    lora = lora_file(tmp_path, "x.safetensors")
    records.json_path(lora).write_text("{not json")
    assert records.read_beside(lora) is None
    assert records.best(tmp_path, "x") is None


def test_best_is_the_lowest_loss_with_its_lora_on_disk_on_the_set_asked(tmp_path):
    for step, loss in ((500, 0.20), (1000, 0.12), (1500, 0.15)):
        name = f"x-step{step:08d}.safetensors"
        records.write_beside(lora_file(tmp_path, name), rec(step, loss, name))
    other = "ffff" * 4
    records.write_beside(lora_file(tmp_path, "x.safetensors"), rec(2000, 0.05, "x.safetensors", other))
    # another run's LoRA in the same folder, with a name that starts alike
    records.write_beside(lora_file(tmp_path, "x2.safetensors"), rec(10, 0.01, "x2.safetensors", other))
    assert records.best(tmp_path, "x").step == 2000
    assert records.best(tmp_path, "x", set_hash="abcd" * 4).step == 1000
    (tmp_path / "x-step00001000.safetensors").unlink()  # removed by save_last_n_steps
    assert records.best(tmp_path, "x", set_hash="abcd" * 4).step == 1500
    assert records.best(tmp_path, "y") is None


def test_tracker_logs_name_the_loss_each_timestep_and_the_ratio():
    assert rec(500, 0.1).tracker_logs() == {
        "loss/validation": 0.1,
        "loss/validation_t0.1": 0.05,
        "loss/validation_t0.9": 0.1 * 1.5,
        "loss/validation_ratio": 0.1 / 0.2,
    }
    assert "loss/validation_ratio" not in rec(0, 0.2).tracker_logs()


def test_the_base_record_is_step_0_without_a_lora_on_the_same_set(tmp_path):
    records.append_series(tmp_path, "x", rec(0, 0.2, set_hash="1111" * 4))
    records.append_series(tmp_path, "x", rec(0, 0.3))
    records.append_series(tmp_path, "x", rec(500, 0.1, "x-step00000500.safetensors"))
    assert records.base_record(tmp_path, "x", "abcd" * 4).loss == 0.3
    assert records.base_record(tmp_path, "x", "2222" * 4) is None
