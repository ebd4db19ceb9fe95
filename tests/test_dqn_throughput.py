"""benchmarks/dqn_throughput.py: which rows are compared with which, the bad-input exits, and one
tiny bnrl-only run on MinAtar end to end (the peers need the sb3 and sbx extras)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, and the spawned measuring process, find it by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dq():
    sys.path.insert(0, str(SCRIPTS))  # it imports throughput's helpers by name
    module = _load("dqn_throughput")
    yield module
    sys.path.remove(str(SCRIPTS))
    for name in ("dqn_throughput", "throughput"):
        sys.modules.pop(name, None)


def test_each_norm_is_compared_with_the_peers_and_with_none(dq):
    jobs = dq.jobs_of(["minatar"], ["none", "batch"], ["sb3", "sbx"])
    assert [j.key for j in jobs] == ["bnrl/minatar/none", "bnrl/minatar/batch",
                                     "sb3/minatar/none", "sbx/minatar/none"]
    samples = {j.key: {"updates_per_s": [10.0, 20.0], "loop_1_per_s": [5.0, 5.0],
                       "loop_4_per_s": [8.0, 8.0]} for j in jobs}
    samples["bnrl/minatar/batch"]["updates_per_s"] = [5.0, 30.0]
    rows = {(r["bnrl"], r["against"]): r for r in dq.ratio_rows(jobs, samples, 4)}
    assert set(rows) == {("bnrl/minatar/none", "sb3/minatar/none"),
                         ("bnrl/minatar/none", "sbx/minatar/none"),
                         ("bnrl/minatar/batch", "bnrl/minatar/none"),
                         ("bnrl/minatar/batch", "sb3/minatar/none"),
                         ("bnrl/minatar/batch", "sbx/minatar/none")}
    # Per-round ratios 0.5 and 1.5: median 1.0, min 0.5, max 1.5; a column nobody has is None.
    batch = rows[("bnrl/minatar/batch", "bnrl/minatar/none")]
    assert batch["updates_per_s"] == (1.0, 0.5, 1.5)
    assert batch["loop_n_per_s"] == (1.0, 1.0, 1.0) and batch["many_per_s"] is None


def test_a_compiled_bn_row_is_compared_with_the_default_one(dq):
    jobs = dq.jobs_of(["minatar"], ["none", "batch"], [], compiled_bn=True)
    assert [j.key for j in jobs] == ["bnrl/minatar/none", "bnrl/minatar/batch",
                                     "bnrl/minatar/batch+xla"]
    samples = {j.key: {"updates_per_s": [10.0, 20.0]} for j in jobs}
    samples["bnrl/minatar/batch+xla"]["updates_per_s"] = [5.0, 10.0]
    rows = {(r["bnrl"], r["against"]): r for r in dq.ratio_rows(jobs, samples, 4)}
    assert set(rows) == {("bnrl/minatar/batch", "bnrl/minatar/none"),
                         ("bnrl/minatar/batch+xla", "bnrl/minatar/none"),
                         ("bnrl/minatar/batch+xla", "bnrl/minatar/batch")}
    assert rows[("bnrl/minatar/batch+xla", "bnrl/minatar/batch")]["updates_per_s"] == (
        0.5, 0.5, 0.5)


@pytest.mark.parametrize("argv, message", [
    (["--networks", "mujoco"], "unknown network 'mujoco'"),
    (["--norms", "group"], "unknown norm 'group'"),
    (["--n-envs", "0"], "--n-envs must be >= 1"),
])
def test_bad_input_exits_2(dq, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        dq.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_tiny_minatar_run_prints_its_tables(dq, tmp_path, capsys):
    pytest.importorskip("minatar")
    out = tmp_path / "dqn.json"
    assert dq.main(["--networks", "minatar", "--norms", "none", "--updates", "4",
                    "--many", "2", "--loop-steps", "40", "--n-envs", "2", "--fill", "40",
                    "--repeats", "1",
                    "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| bnrl | minatar | none |" in text and "ratios, median of per-round" in text
    samples = json.loads(out.read_text())["samples"]["bnrl/minatar/none"]
    for key in ("updates_per_s", "many_per_s", "updates_per_cpu_s", "loop_1_per_s",
                "loop_2_per_s"):
        assert len(samples[key]) == 1 and samples[key][0] > 0, key
