"""benchmarks/group_timing.py (issue 29 item 4): its bad-input exits, and the whole script run
against a stand-in ``run.py`` that trains nothing, so that what is checked is the script's own
part: the commands it runs, in alternating order, the CPU time of the whole process tree, the
arithmetic and the table. A real benchmark (two commands of two Pendulum seeds, TensorFlow
started four times) takes a minute on a loaded 2-core machine: too long for the suite; the
benchmark's --seeds-per-process itself is tests/test_benchmark.py's."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks"

# A stand-in for run.py: records its command line, starts a child that burns BURN CPU seconds
# (a grandchild of the measuring process, as a benchmark's workers are) and writes the
# results.json of --seeds finished runs.
FAKE_RUN_PY = """\
import json, os, subprocess, sys
from pathlib import Path

argv = sys.argv[1:]
config = Path(argv[argv.index("--config") + 1]).read_text()
with open(os.environ["FAKE_COMMANDS"], "a") as f:
    f.write(json.dumps({"argv": argv, "config": json.loads(config)}) + "\\n")
subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < %(burn)s: pass"],
               check=True)
out, seeds = Path(argv[argv.index("--out") + 1]), int(argv[argv.index("--seeds") + 1])
out.mkdir(parents=True)
status = os.environ.get("FAKE_STATUS", "ok")
(out / "results.json").write_text(json.dumps({"runs": [
    {"seed": k, "status": status, "final_return": -100.0 - k} for k in range(seeds)]}))
"""
BURN = 0.3


@pytest.fixture(scope="module")
def gt():
    spec = importlib.util.spec_from_file_location("group_timing", SCRIPTS / "group_timing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["group_timing"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)  # it puts benchmarks/ on sys.path for throughput.py
    yield module
    sys.path.remove(str(SCRIPTS))
    for name in ("group_timing", "throughput"):
        sys.modules.pop(name, None)


@pytest.fixture
def fake_run(gt, monkeypatch, tmp_path):
    """Every measurement runs FAKE_RUN_PY; returns the file of the command lines it got."""
    script = tmp_path / "run.py"
    script.write_text(FAKE_RUN_PY % {"burn": BURN})
    commands = tmp_path / "commands.jsonl"
    monkeypatch.setenv("FAKE_COMMANDS", str(commands))
    real = gt.measure
    monkeypatch.setattr(gt, "measure", lambda run_py, cell, args, k: real(script, cell, args, k))
    return commands


def test_the_script_times_both_modes_alternately_and_prints_the_table(gt, fake_run, capsys,
                                                                      tmp_path):
    out = tmp_path / "timing.json"
    assert gt.main(["--cells", "pendulum-sac-batch", "--seeds", "3", "--pendulum-steps", "300",
                    "--repeats", "2", "--json", str(out)]) == 0
    runs = [json.loads(line) for line in fake_run.read_text().splitlines()]
    commands = [run["argv"] for run in runs]

    def flag(argv, name):
        return argv[argv.index(name) + 1]

    # Single first in the first repeat, grouped first in the second; K=3: all seeds grouped.
    assert [flag(c, "--seeds-per-process") for c in commands] == ["1", "3", "3", "1"]
    for argv in commands:
        assert argv[0] == "benchmark"
        assert [flag(argv, f) for f in ("--agent", "--env", "--variants", "--seeds", "--steps",
                                        "--eval-every", "--workers")] == [
            "sac", "Pendulum-v1", "batch", "3", "300", "300", "2"]
    assert len({flag(c, "--out") for c in commands}) == 4  # a fresh --out each time
    assert not any(Path(flag(c, "--out")).exists() for c in commands)  # removed after
    # One evaluation (2 episodes) and one checkpoint, at the last step; Pendulum's preset.
    assert all(run["config"] == {"train": {"eval_episodes": 2, "checkpoint_every": 300},
                                 "agent": {}} for run in runs)

    result = json.loads(out.read_text())
    cell = result["cells"]["pendulum-sac-batch"]
    assert [s["seeds_per_process"] for s in cell["grouped"]] == [3, 3]
    for mode in ("single", "grouped"):
        assert len(cell[mode]) == 2
        for s in cell[mode]:
            # The grandchild's CPU time is counted: the whole process tree's.
            assert s["cpu_s"] >= BURN and s["wall_s"] > 0
            assert s["runs_per_hour"] == pytest.approx(3 * 3600 / s["wall_s"])
            assert s["cpu_s_per_run"] == pytest.approx(s["cpu_s"] / 3)
            assert s["final_returns"] == [-100.0, -101.0, -102.0]
    [row] = result["table"]
    per_repeat = [g["runs_per_hour"] / s["runs_per_hour"]
                  for g, s in zip(cell["grouped"], cell["single"], strict=True)]
    assert row["speed_up"] == pytest.approx([statistics.median(per_repeat), min(per_repeat),
                                             max(per_repeat)])
    assert result["versions"]["tensorflow"] and result["machine"] and result["cpus"] >= 1

    text = capsys.readouterr().out.strip().splitlines()
    assert text[0].startswith(f"{result['machine']}, {result['cpus']} cores, ")
    assert "tensorflow" in text[0] and "bnrl" in text[0]
    assert text[-3] == ("| cell | single runs/h | grouped runs/h | speed-up | single CPU s/run "
                        "| grouped CPU s/run |")
    assert text[-1].startswith("| pendulum-sac-batch | ") and text[-1].count("|") == 7
    assert f"{row['speed_up'][0]:.2f}x" in text[-1]


def test_a_failed_benchmark_stops_the_script_with_one_line(gt, fake_run, monkeypatch):
    monkeypatch.setenv("FAKE_STATUS", "failed")
    with pytest.raises(SystemExit) as info:
        gt.main(["--cells", "pendulum-sac-none", "--seeds", "2", "--repeats", "1"])
    message = str(info.value.code)
    assert "\n" not in message
    assert "benchmark of sac on Pendulum-v1 (none, K=1)" in message
    assert "['failed', 'failed']" in message


def test_a_cell_whose_env_is_missing_is_skipped_in_one_line(gt, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mujoco" else real(name, *a))
    assert gt.runnable(["mujoco-sac", "pendulum-sac-none"]) == ["pendulum-sac-none"]
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("group_timing: skipping mujoco-sac: Hopper-v5 needs mujoco (pip ")
    assert gt.main(["--cells", "mujoco-sac"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "group_timing: no cell can run here"


@pytest.mark.parametrize("argv, message", [
    (["--cells", "pendulum-sac,minatar-dqn"], "unknown cell 'pendulum-sac': use minatar-dqn, "),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--hopper-steps", "0"], "--hopper-steps must be >= 1"),
    (["--seeds-per-process", "1"], "--seeds-per-process must be between 2 and --seeds (5)"),
    (["--seeds", "3", "--seeds-per-process", "4"], "between 2 and --seeds (3), got 4"),
    (["--json", os.path.join("no", "such", "dir", "t.json")], "not a file in an existing dir"),
])
def test_bad_input_exits_2(gt, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        gt.parse_args(argv)
    assert info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert message in line
