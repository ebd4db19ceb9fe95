"""The benchmark grid's live progress line (issue 28): what it says, and how it is written to a
terminal and to a log file."""

from __future__ import annotations

import io

import pytest

from bnrl.compare import progress as gp
from bnrl.training.loop import Progress


def _plain_lines(capsys, updates) -> str:
    """What ``training.loop.Progress`` prints in plain mode (a worker's log) for ``updates``."""
    bar = Progress(6000, 0, "plain", "td3/Pendulum-v1/s1")
    for step, info in updates:
        bar.update(step, **info)
    return capsys.readouterr().out


def test_a_running_run_reads_its_step_and_last_evaluation_from_its_log(capsys):
    run = gp.Running("batch s1", 6000, started=100.0)
    run.read_log(_plain_lines(capsys, [(1000, {"eval": "-1201.5"}), (1500, {"eval": "-812.3"})]))
    assert (run.step, run.last_eval) == (1500, "-812.3")
    run.read_log("[td3/Pendulum-v1/s1] step 2100/6000\n")  # a 30-second line: no evaluation
    assert (run.step, run.last_eval) == (2100, "-812.3")
    assert run.rate(now=130.0) == pytest.approx(70.0)
    assert gp.Running("none s0", 6000, started=100.0).rate(now=130.0) is None  # no step yet


def test_the_line_counts_runs_and_takes_the_eta_from_the_runs_rates():
    grid = gp.GridProgress(total=15, workers=2, stream=io.StringIO(), tty=False)
    grid.done = 4  # finished in an earlier sitting
    grid.finished(6000, 60.0)  # 100 steps/s
    assert grid.done == 5
    a = gp.Running("batch s1", 6000, started=10.0, step=3000, last_eval="-812.3")  # 100 steps/s
    b = gp.Running("none s2", 6000, started=20.0, step=600)  # 30 steps/s
    # Left: 3000 + 5400 running, 8 queued runs of 6000: 56,400 steps at 2 x mean(100, 30, 100)
    line = grid.line([a, b], queued_steps=8 * 6000, queued=8, now=40.0)
    eta = gp.duration(56_400 / (2 * (100 + 30 + 100) / 3))
    assert line == (f"grid: 5/15 done, 2 running, 8 queued, ETA {eta} | batch s1 3000/6000 "
                    "eval -812.3 | none s2 600/6000")
    assert eta == "6m08s"
    fresh = gp.GridProgress(total=2, workers=2, stream=io.StringIO(), tty=False)
    assert fresh.line([gp.Running("x", 10, 0.0)], 10, 1, now=1.0) == (
        "grid: 0/2 done, 1 running, 1 queued, ETA ? | x 0/10")


def test_in_a_log_file_it_is_plain_lines_at_a_slow_pace(monkeypatch):
    out = io.StringIO()
    grid = gp.GridProgress(total=3, workers=1, stream=out, tty=False)
    assert not grid.due()  # the first line only after PLAIN_EVERY seconds
    monkeypatch.setattr(gp, "PLAIN_EVERY", 0.0)
    assert grid.due()
    grid.show([gp.Running("none s0", 100, 0.0, step=50)], 200, 2)
    grid.clear()  # nothing to clear in a log
    text = out.getvalue()
    assert text.startswith("grid: 0/3 done, 1 running, 2 queued, ETA ") and text.endswith("\n")
    assert text.count("\n") == 1 and not any(ord(c) < 32 for c in text.rstrip("\n"))


def test_on_a_terminal_it_is_one_line_rewritten_in_place():
    out = io.StringIO()
    grid = gp.GridProgress(total=3, workers=1, stream=out, tty=True)
    assert grid.due()
    grid.show([], 300, 3)
    grid.show([], 300, 3)
    grid.clear()
    assert out.getvalue() == ("\r" + "grid: 0/3 done, 0 running, 3 queued, ETA ?" + "\x1b[K") * 2 \
        + "\r\x1b[K"


@pytest.mark.parametrize("seconds, text", [(59.4, "59s"), (61, "1m01s"), (3725, "1h02m")])
def test_durations(seconds, text):
    assert gp.duration(seconds) == text


def test_a_resumed_run_is_rated_on_the_steps_of_this_sitting():
    # Resumed at 4000 of 6000, now at 4600 after 60 s: 10 steps/s, not 4600 / 60.
    run = gp.Running("batch s1", 6000, started=100.0, step=4600, initial=4000)
    assert run.rate(now=160.0) == pytest.approx(10.0)
    assert gp.Running("x", 6000, 100.0, step=4000, initial=4000).rate(now=160.0) is None


def test_a_ray_grid_shows_the_runs_whose_task_started(tmp_path):
    from bnrl.compare import workers
    from bnrl.compare.results import RunSpec

    specs = [RunSpec("sac", "Pendulum-v1", v, 0, 200, None, str(tmp_path / v), 1, 100)
             for v in ("none", "batch")]
    workers._log_file(specs[0]).write_text("[none s0] step 100/200 eval=-5.0\n")
    stream = io.StringIO()
    grid = gp.GridProgress(2, workers=2, stream=stream, tty=False)
    refs, status = {"ref-a": [specs[0]], "ref-b": [specs[1]]}, {}
    workers._show_ray_progress(refs, status, grid, lambda s: f"{s.variant} s{s.seed}")
    line = stream.getvalue()
    # Started (its task opened its log): running, at its step; the other queued.
    assert line.startswith("grid: 0/2 done, 1 running, 1 queued, ")
    assert line.rstrip().endswith("| none s0 100/200 eval -5.0")
    assert list(status) == ["ref-a"]
