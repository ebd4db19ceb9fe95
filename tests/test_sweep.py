"""``benchmark --sweep KEY=V1,V2,...`` (issue 30): every variant at every value of one setting,
each value's variants compared with the baseline at that value, and a sensitivity section."""

from __future__ import annotations

import re

import pytest

from bnrl.compare import cli, results

from _cli import one_line, run_captured

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RATES = {"1e-4": 1e-4, "1e-3": 1e-3}


def _fake_run_grid(monkeypatch) -> dict:
    """A run_grid that trains nothing: each run's returns follow from its settings (BN's final
    return better at the larger learning rate only), so the report has something to show."""
    seen = {}

    def fake(specs, out, workers, backend="local", address=None, on_result=None, progress=None,
             seeds_per_process=1):
        seen["specs"] = specs
        records = []
        for s in specs:
            lr, bn = s.settings["learning_rate"], s.settings.get("critic_norm") == "batch"
            final = -200.0 - s.seed - (300.0 if bn and lr < 5e-4 else 0.0)
            records.append({**results.base_record(s, "ok"), "eval_steps": [100, 200],
                            "eval_returns": [-1000.0, final], "final_return": final})
            results.write_result(records[-1], out)
        return records

    monkeypatch.setattr(cli, "run_grid", fake)
    return seen


def test_a_sweep_runs_every_variant_at_every_value_and_reports_its_sensitivity(
        monkeypatch, capsys, tmp_path):
    seen = _fake_run_grid(monkeypatch)
    out = tmp_path / "out"
    code, stdout, err = run_captured(
        ["benchmark", "--agent", "td3", "--env", "Pendulum-v1", "--variants", "none,batch",
         "--sweep", "learning_rate=1e-4,1e-3", "--seeds", "2", "--steps", "200", "--out", out],
        capsys)
    assert code == 0, err
    specs = seen["specs"]
    assert sorted({(s.variant, s.settings["learning_rate"]) for s in specs}) == sorted(
        (f"{v}@learning_rate={text}", rate) for v in ("none", "batch")
        for text, rate in RATES.items())
    assert len(specs) == 8 and {s.seed for s in specs} == {0, 1}
    # The setting reaches the agent as the worker resolves it.
    for spec in specs:
        assert results.resolve_spec(spec).agent_config.learning_rate == spec.settings[
            "learning_rate"]
    assert len(list((out / "results").rglob("*.json"))) == 8

    report = (out / "report.md").read_text()
    # Each value is its own comparison: batch against none at the same learning rate.
    for text in RATES:
        assert f"### td3 / Pendulum-v1, learning_rate={text}" in report
        assert f"At learning_rate={text}:" in report
        assert f"- `batch@learning_rate={text}` vs `none@learning_rate={text}`" in report
    assert "Baseline: `none` at each value of `learning_rate`" in report
    section = report.split("## Sensitivity to learning_rate")[1]
    assert "| Variant | learning_rate=1e-4 | learning_rate=1e-3 |" in section
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", section,
                                                          re.M)}
    # IQM of the two seeds' finals (-200, -201) and mean AUC: (-1000 + final) / 2 averaged.
    assert rows["none"].split(" | ")[0].startswith("-200.5 ")
    assert rows["none"].split(" | ")[0].endswith(" / -600.2")
    assert rows["batch"].split(" | ")[0].startswith("-500.5 ")
    assert rows["batch"].split(" | ")[1].startswith("-200.5 ")
    assert (out / "sensitivity.png").read_bytes().startswith(PNG_SIGNATURE)


def test_without_a_sweep_the_report_has_no_sensitivity_section(monkeypatch, capsys,
                                                               tmp_path):
    from _cli import record_planned_runs

    record_planned_runs(monkeypatch)
    code, _, err = run_captured(["benchmark", "--agent", "td3", "--env", "Pendulum-v1",
                                 "--variants", "none,batch", "--seeds", "1", "--steps", "200",
                                 "--out", tmp_path], capsys)
    assert code == 0, err
    report = (tmp_path / "report.md").read_text()
    assert "Sensitivity" not in report and "### td3 / Pendulum-v1\n" in report
    assert not (tmp_path / "sensitivity.png").exists()


@pytest.mark.parametrize("sweep, variants, message", [
    ("learning_rate=1e-4", "none,batch", "two or more values"),
    ("learning_rate", "none,batch", "expected KEY=V1,V2"),
    ("learning_rate=1e-4,,1e-3", "none,batch", "two or more values"),
    ("agent=sac,td3", "none,batch", "cannot sweep agent"),
    ("learning_rate=1e-4,0.0001", "none,batch", "a value is given twice"),
    ("critic_norm=none,batch", "none,batch", "variant 'none' sets critic_norm itself"),
    ("no_such_setting=1,2", "none,batch", "no_such_setting"),
    ("learning_rate=1e-4,abc", "none,batch", "learning_rate"),
])
def test_a_bad_sweep_is_one_line_and_exit_2(sweep, variants, message, capsys, tmp_path):
    code, stdout, err = run_captured(
        ["benchmark", "--agent", "td3", "--env", "Pendulum-v1", "--variants", variants,
         "--sweep", sweep, "--seeds", "1", "--steps", "200", "--out", tmp_path / "out"], capsys)
    assert code == 2 and stdout == ""
    assert message in one_line(err)
    assert not (tmp_path / "out" / "grid.json").exists()
