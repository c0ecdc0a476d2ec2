"""Reading musubi-tuner's tqdm progress (`training/trainer_base.py`: desc "steps", smoothing=0, postfix
avr_loss) into step, loss, s/step and time left."""

from __future__ import annotations

from musubi_workspace.runs.console import Splitter
from musubi_workspace.runs.progress import Progress


def test_a_slow_step_line_gives_every_figure():
    p = Progress()
    assert p.feed("steps:  12%|█▏        | 120/1000 [06:24<46:58,  3.20s/it, avr_loss=0.0832]")
    assert (p.step, p.total, p.loss, p.seconds_per_step) == (120, 1000, 0.0832, 3.2)
    assert p.status() == "step 120/1000 · loss 0.0832 · 3.20 s/step · 46m56s left"


def test_fast_steps_come_as_iterations_per_second_and_the_first_as_unknown():
    p = Progress()
    assert p.feed("steps:   0%|          | 0/500 [00:00<?, ?it/s]")
    assert p.status() == "step 0/500"
    assert p.feed("steps:   1%|          | 5/500 [00:02<03:18,  2.50it/s, avr_loss=0.11]")
    assert p.seconds_per_step == 0.4 and p.status() == "step 5/500 · loss 0.11 · 0.40 s/step · 3m18s left"
    assert not p.feed("steps:   1%|          | 5/500 [00:02<03:18,  2.50it/s, avr_loss=0.11]")  # a redraw


def test_a_resumed_run_shows_absolute_steps():
    p = Progress(offset=400)
    p.feed("steps:  10%|█         | 60/600 [01:00<09:00,  1.00s/it, avr_loss=0.05]")
    assert (p.step, p.total) == (460, 1000)


def test_saved_states_are_noted_with_their_absolute_step():
    p = Progress(offset=400)
    p.feed("steps:  33%|███▎      | 200/600 [01:00<02:00,  1.00s/it, avr_loss=0.05]")
    for line in ("INFO saving state at step 200", "INFO saving state at epoch 3", "INFO saving last state."):
        assert not p.feed(line)
    assert p.states == [("step", 200, 600), ("epoch", 3, 600), ("last", 0, 600)]


def test_carriage_returns_and_newlines_cut_the_stream_and_a_rest_waits():
    s = Splitter()
    assert s.feed("a\rb\nc") == [("a", "\r"), ("b", "\n")]
    assert s.feed("d\r") == [("cd", "\r")]
    assert s.close() == []


def test_off_a_terminal_the_status_is_a_line_now_and_then_not_one_per_step():
    import io

    from musubi_workspace.runs.console import Display

    out = io.StringIO()
    display = Display(Progress(), stream=out, tty=False)
    for n in range(1, 301):
        display.feed(f"steps: {n // 3:3d}%|█         | {n}/300 [00:01<00:01,  0.01s/it, avr_loss=0.05]\r")
    display.feed("INFO saving last state.\n")
    display.flush()
    lines = out.getvalue().splitlines()
    assert [l.split(" · ")[0] for l in lines if l.startswith("step ")] == ["step 1/300", "step 300/300"]
    assert "INFO saving last state." in lines
