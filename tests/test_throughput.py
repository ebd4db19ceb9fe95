"""benchmarks/throughput.py: which peer each bnrl row is matched with, the ratio arithmetic, the
bad-input exits, and one tiny bnrl-only run end to end (peers need the optional extras); and
benchmarks/call_cost.py: its fit, bad-input exits and one tiny run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def tp():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["throughput"]


@pytest.fixture(scope="module")
def cc(tp):
    # call_cost imports throughput by name: tp has put it in sys.modules.
    spec = importlib.util.spec_from_file_location(
        "call_cost", SCRIPT.parent / "call_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crossq_is_matched_like_with_like(tp):
    rows = tp.bnrl_rows(["sac", "crossq"], ["none", "batch", "batch_renorm"])
    keys = [r.key for r in rows]
    assert "bnrl/crossq/batch_renorm/batch_renorm" in keys  # the peers' default CrossQ
    assert len(keys) == 7
    peers = {r.key: [p.key for p in tp.matched_peers(r, ["sb3", "sbx"])] for r in rows}
    # Batch Renorm in critic and actor: sb3-contrib's and SBX's defaults.
    assert peers["bnrl/crossq/batch_renorm/batch_renorm"] == [
        "sb3/crossq/batch_renorm/batch_renorm", "sbx/crossq/batch_renorm/batch_renorm"]
    # Critic only: SBX with batch_norm_actor=False; sb3-contrib has no such switch.
    assert peers["bnrl/crossq/batch_renorm/none"] == ["sbx/crossq/batch_renorm/none"]
    assert peers["bnrl/crossq/batch/none"] == peers["bnrl/crossq/none/none"] == []
    # SAC/TD3 peers have no BN: only the no-BN row is matched.
    assert peers["bnrl/sac/none/none"] == ["sb3/sac/none/none", "sbx/sac/none/none"]
    assert peers["bnrl/sac/batch/none"] == []


def test_ratios_are_per_round_and_costs_against_no_norm(tp):
    assert tp.ratio([100, 50, 90], [50, 50, 30]) == (2.0, 1.0, 3.0)
    assert tp.ratio([], [1.0]) is None
    none, batch = tp.Row("td3", "none"), tp.Row("td3", "batch")
    samples = {none.key: {"updates_per_s": [100.0, 200.0], "loop_steps_per_s": [10.0, 10.0],
                          "many_per_s": [100.0, 100.0]},
               batch.key: {"updates_per_s": [90.0, 100.0], "loop_steps_per_s": [8.0, 10.0],
                           "many_per_s": [95.0, 85.0]}}
    (cost,) = tp.bn_cost_rows([none, batch], samples)
    assert cost["updates_cost"] == pytest.approx([0.3, 0.1, 0.5])  # median, min, max
    assert cost["many_cost"] == pytest.approx([0.1, 0.05, 0.15])
    assert cost["loop_cost"] == pytest.approx([0.1, 0.0, 0.2])
    del samples[none.key]["many_per_s"]  # a run without the many column prints "-"
    assert tp.bn_cost_rows([none, batch], samples)[0]["many_cost"] is None


def test_the_bn_cost_table_prints_what_bn_cost_rows_computes(tp, capsys):
    none, batch = tp.Row("td3", "none"), tp.Row("td3", "batch")
    row = {"updates_per_s": [100.0], "updates_per_cpu_s": [50.0], "loop_steps_per_s": [10.0],
           "act_latency_us": [12.0]}
    samples = {none.key: row, batch.key: {**row, "updates_per_s": [75.0]}}
    results = {"ratios": [], "bn_cost": tp.bn_cost_rows([none, batch], samples),
               "machine": "AMD EPYC 9B14", "cpus": 2, "threads": 2}
    tp.print_tables([none, batch], [], samples, results)
    out = capsys.readouterr().out
    assert "| td3/batch/none | 25% [25-25] | - | 0% [0-0] |" in out
    # The machine kind, and the cores each row kept busy: 100 updates/s at 50 per CPU-second.
    assert out.splitlines()[1] == "AMD EPYC 9B14, 2 CPUs, 2 threads"
    assert "| 100 [100-100] | - | 50 / - | 2.00 / - |" in out
    assert tp.cpu_model()  # this machine's, never empty


@pytest.mark.parametrize("script,argv,message", [
    ("tp", ["--agents", "dqn"], "unknown agent 'dqn'"),
    ("tp", ["--norms", "group"], "unknown norm 'group'"),
    ("tp", ["--repeats", "0"], "--repeats must be >= 1"),
    ("cc", ["--agent", "dqn"], "unknown agent 'dqn'"),
    ("cc", ["--ks", "0,2"], "--ks needs two or more counts >= 1"),
    ("cc", ["--ks", "1,x"], "--ks must be whole numbers"),
])
def test_bad_input_exits_2(request, capsys, script, argv, message):
    """throughput.py (tp) and call_cost.py (cc) refuse bad flags in one line, exit code 2."""
    with pytest.raises(SystemExit) as info:
        request.getfixturevalue(script).parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_peer_library_exits_2(tp, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sbx" else real(name, *a))
    with pytest.raises(SystemExit) as info:
        tp.parse_args(["--compare-sbx"])
    assert info.value.code == 2
    assert "pip install '.[sbx]'" in capsys.readouterr().err


def test_bnrl_only_run_prints_tables_and_writes_json(tp, tmp_path, capsys):
    out = tmp_path / "t.json"
    # One configuration, without BN (the BN cost table is the test above's; BN would add two
    # XLA compiles of single updates): each measurement builds three agents.
    assert tp.main(["--agents", "td3", "--norms", "none", "--updates", "4", "--many", "2",
                    "--loop-steps", "3", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| bnrl | td3 | none | none |" in text
    result = json.loads(out.read_text())
    samples = result["samples"]["bnrl/td3/none/none"]
    assert len(samples["updates_per_s"]) == 1 and samples["graph_ops"][0] > 0
    # bnrl's many-updates path ran: 2 calls of 2 updates after its compile.
    assert samples["many_per_s"][0] > 0 and samples["many_per_cpu_s"][0] > 0
    assert samples["compile_s"][0] > 0
    assert result["ratios"] == [] and result["bn_cost"] == []


# ------------------------------------------------------------------------ benchmarks/call_cost.py
def test_call_cost_fit_recovers_loop_and_call_time(cc):
    loop, call = 3.5, 1.3
    loop_fit, call_fit = cc.fit_call_cost({k: loop + call / k for k in (1, 2, 4, 8, 16)})
    assert loop_fit == pytest.approx(loop) and call_fit == pytest.approx(call)
    with pytest.raises(ValueError, match="two K"):
        cc.fit_call_cost({4: 3.8})


def test_call_cost_profiles_a_compiled_update_call(cc, capsys):
    """A BN critic's single update is one XLA call: the sweep and all profiler events print."""
    assert cc.main(["--critic-norm", "batch", "--ks", "1,2", "--calls", "4", "--repeats", "1",
                    "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "single update:" in text and "2 per call:" in text
    assert "ms per call; a single update's call cost" in text
    for label in cc.EVENTS.values():
        assert f"{label}: " in text
