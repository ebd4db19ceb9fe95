"""The comparison side of issue 25: no verdict over runs that are not comparable, no run without a
finite result counted as a success, no variant that silently means something else, no argument
of ``benchmark`` ignored, and ``merge`` and ``report`` refusing malformed or incomparable
results in one line, leaving nothing behind.

Result files here are written directly (settings resolved as a worker resolves them), so no test
trains anything.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest

import bnrl
from bnrl import run
from bnrl.common.errors import UserError
from bnrl.compare import cli, collect, grid, results, variants, write_report
from bnrl.compare.records import record_problem, result_problem

from _cli import one_line as _one_line
from _cli import run_captured as _main

REPO = Path(__file__).resolve().parent.parent
COMMITTED = [REPO / "docs" / "benchmark-mujoco", REPO / "docs" / "benchmark-mujoco" /
             "learning-starts", REPO / "docs" / "benchmark-minatar" / "breakout-dqn",
             REPO / "docs" / "benchmark-minatar" / "pqn", REPO / "docs" / "benchmark-minatar" /
             "pqn-10m", REPO / "docs" / "benchmark-quick"]
NONE, BATCH = {"critic_norm": "none"}, {"critic_norm": "batch"}


def _record(out: Path, variant: str, settings: dict, seed: int = 0, *, steps: int = 200,
            final: float = -500.0, made_with: dict | None = None, version: str | None = None,
            env: str = "Pendulum-v1", write: bool = True) -> dict:
    """A finished run's record as a worker writes it: its settings resolved from the variant's
    ``settings`` (``made_with`` replaces them to make a run with other settings than its
    variant's), its result file written under ``out`` unless ``write`` is false."""
    made_with = dict(settings if made_with is None else made_with)
    spec = results.RunSpec("sac", env, variant, seed, steps, None,
                           str(out / "runs" / variant / f"seed{seed}"), 1, 100, made_with,
                           str(out))
    config = results.resolve_spec(spec)
    deciding = results.deciding_settings(config)
    record = {**results.base_record(spec, "ok"), "eval_steps": [steps // 2, steps],
              "eval_returns": [final - 100.0, final], "final_return": final, "auc": final - 50,
              "wall_time_s": 1.0, "updates_per_second": 10.0, "resumes": 0, "bn_stats": {},
              "run_agent": config.agent, "steps": steps,
              "bnrl_version": version or bnrl.__version__,
              "settings_hash": results.settings_hash(deciding), "settings": deciding,
              "variant_settings": dict(settings)}
    if write:
        results.write_result(record, out)
    return record


@pytest.fixture
def no_training(monkeypatch):
    """A benchmark that would start runs fails at once (on code that refuses too late)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the benchmark started runs instead of refusing its arguments")

    monkeypatch.setattr(cli, "run_grid", refuse)


def _benchmark_dir(out: Path, variant_list=(("none", NONE), ("batch", BATCH)), seeds: int = 2,
                   steps: int = 200) -> Path:
    """A benchmark directory: grid.json and a comparable result file for every run."""
    out.mkdir(parents=True)
    chosen = [variants.Variant(name, settings) for name, settings in variant_list]
    record = grid.grid_record([("sac", "Pendulum-v1", steps)], chosen, chosen[0].name, seeds,
                              None, 100)
    (out / "grid.json").write_text(json.dumps(record))
    for name, settings in variant_list:
        for seed in range(seeds):
            _record(out, name, settings, seed, steps=steps, final=-500.0 - 10 * seed)
    return out


# --------------------------------------------------------------------- 1. only what compares
def test_a_result_of_another_step_budget_is_refused_by_report_and_merge(tmp_path, capsys):
    """The issue's 20,000-step result averaged into a grid of 200-step runs."""
    out = _benchmark_dir(tmp_path / "out")
    _record(out, "batch", BATCH, 1, steps=20_000)
    code, stdout, err = _main(["report", out], capsys)
    assert code == 2 and stdout == ""
    line = _one_line(err)
    assert ("not comparable: sac/Pendulum-v1/batch/seed1 ran 20,000 steps, its grid cell sac on "
            "Pendulum-v1 has 200") in line
    assert not (out / "report.md").exists()

    piece = _benchmark_dir(tmp_path / "piece")
    _record(piece, "batch", BATCH, 1, steps=20_000)
    merged = tmp_path / "merged"
    code, _, err = _main(["merge", "--out", merged, piece], capsys)
    assert code == 2 and "ran 20,000 steps, its grid cell" in _one_line(err)
    assert not merged.exists()  # a refused merge leaves no --out behind
    # Merged where the user means it: the report says so at its top.
    code, _, err = _main(["merge", "--out", merged, piece, "--allow-incomparable"], capsys)
    assert code == 0, err
    head = (merged / "report.md").read_text().split("## Answer", 1)[0]
    assert "- sac/Pendulum-v1/batch/seed1 ran 20,000 steps, its grid cell" in head


def test_runs_of_another_bnrl_version_are_refused(tmp_path, capsys):
    """The issue's baseline made by one bnrl version merged with a variant made by another."""
    a = _benchmark_dir(tmp_path / "a", seeds=1)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "results")
    shutil.rmtree(a / "results" / "sac" / "Pendulum-v1" / "batch")
    _record(b, "batch", BATCH, 0, version="0.1.0")
    merged = tmp_path / "merged"
    code, _, err = _main(["merge", "--out", merged, a, b], capsys)
    assert code == 2
    assert ("sac/Pendulum-v1/none/seed0 and sac/Pendulum-v1/batch/seed0 were made by different "
            f"bnrl versions (bnrl {bnrl.__version__} vs bnrl 0.1.0)") in _one_line(err)
    assert not merged.exists()


def test_a_setting_outside_the_variants_own_is_refused_unless_allowed(tmp_path, capsys):
    """The issue's baseline and variant trained with different learning rates: the report would
    have credited the learning rate to the critic's BN."""
    out = _benchmark_dir(tmp_path / "out", seeds=1)
    _record(out, "batch", BATCH, 0, made_with={**BATCH, "learning_rate": 0.0123})
    code, _, err = _main(["report", out], capsys)
    assert code == 2
    line = _one_line(err)
    assert ("not comparable: sac/Pendulum-v1/batch/seed0 differs from the baseline run "
            "sac/Pendulum-v1/none/seed0 in agent_config.learning_rate 0.0123 (") in line
    assert "which variant 'batch' does not set" in line and "--allow-incomparable" in line

    # Where the user means it: reported, and the report says so before anything else.
    code, _, err = _main(["report", out, "--allow-incomparable"], capsys)
    assert code == 0 and err == ""
    text = (out / "report.md").read_text()
    assert text.startswith("# Benchmark report\n\n**Not comparable, reported anyway "
                           "(`--allow-incomparable`)")
    head = text.split("## Answer", 1)[0]
    assert "- sac/Pendulum-v1/batch/seed0 differs from the baseline run" in head


def test_differences_a_variant_makes_are_its_own(tmp_path):
    """What a variant changes besides the keys it names is no refusal: another agent's defaults
    and presets (CrossQ as a variant of SAC), the ``auto`` settings BN turns on, including when
    a --config file, not the variant, set the norm."""
    out = tmp_path / "out"
    none = _record(out, "none", NONE, write=False)
    for name, settings, made_with in (
            ("crossq", {"agent": "crossq"}, None),
            ("batch", BATCH, None),
            # A --config with critic_norm: batch under a variant that only sets target_bn.
            ("polyak", {"target_bn": "polyak"}, {**BATCH, "target_bn": "polyak"})):
        other = _record(out, name, settings, made_with=made_with, write=False)
        assert other["settings"] != none["settings"]
        assert results.unexplained_differences(none, other, NONE, settings) == [], name
    # ... but a setting the agents share and no variant sets is not.
    other = _record(out, "crossq", {"agent": "crossq"},
                    made_with={"agent": "crossq", "gamma": 0.9}, write=False)
    assert results.unexplained_differences(none, other, NONE, {"agent": "crossq"}) == [
        "agent_config.gamma 0.9 (0.99)"]


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.name)
def test_the_committed_grids_are_comparable(committed):
    """SAC vs CrossQ (another agent, its own presets), the BN variants of docs/, whose older
    result files hold unresolved ``auto`` settings, and the grids run with a --config file pass
    the rule unchanged, every committed result file with them."""
    found = collect.collect(committed)
    assert found.incomparable == []
    # Each committed grid is complete: every run its grid.json plans has a result, all read.
    planned = json.loads((committed / "grid.json").read_text())
    runs = len(planned["cells"]) * len(planned["variants"]) * planned["seeds"]
    assert len(found.runs) == len(list((committed / "results").rglob("*.json"))) == runs >= 6


def test_a_run_without_a_finite_result_is_a_failed_run(tmp_path):
    """The issue's NaN final return, counted "ok" in the grid's summary and silently left out of
    the statistics ("1 vs 2 runs")."""
    out = tmp_path / "out"
    runs = [_record(out, "none", NONE, s, final=-500.0 - s, write=False) for s in range(2)]
    runs += [_record(out, "batch", BATCH, s, final=-400.0 - s, write=False) for s in range(2)]
    runs[3].update(final_return=math.nan)
    runs[3]["eval_returns"][-1] = math.nan
    assert result_problem(runs[3]) == "final return is nan"
    text = write_report(runs, out).read_text()
    assert "Runs: 4 planned, 3 ok, 1 failed, 0 missing" in text
    assert "| `batch` | 1 / 2 |" in text
    failed = text.split("## Failed runs", 1)[1].split("##", 1)[0]
    assert ("- sac / Pendulum-v1 / `batch` / seed 1 (`" in failed
            and "no finite result (final return is nan): counted as a failed run" in failed)
    # An infinite evaluation return mid-run is no result either (its AUC would be dropped).
    runs[3].update(final_return=-400.0, eval_returns=[math.inf, -400.0])
    assert result_problem(runs[3]) == "evaluation return at step 100 is inf"
    assert "1 failed" in write_report(runs, out).read_text()


def test_a_result_file_without_a_finite_result_is_run_again(tmp_path):
    """A rerun retries failed runs: one whose result file holds a NaN return is one."""
    out = tmp_path / "out"
    spec = grid.plan(out, ["sac"], ["Pendulum-v1"], ["none", "batch"], 1, 200,
                     eval_every=100)[0]
    _record(out, "none", NONE, 0, final=-500.0)
    assert results.finished(spec) is not None
    _record(out, "none", NONE, 0, final=math.nan)
    assert results.finished(spec) is None


def test_a_worker_marks_a_run_without_a_finite_result_failed(tmp_path, monkeypatch):
    from bnrl.compare import workers

    def nan_train(config, run_dir, resume=False, progress="auto", threads=None):
        return {"eval_steps": [100, 200], "eval_returns": [-1.0, math.nan],
                "final_return": math.nan, "wall_time_s": 1.0, "updates_per_second": 10.0,
                "bn_stats": {}}

    monkeypatch.setattr(workers, "train", nan_train)
    record = workers.run_one(results.RunSpec("sac", "Pendulum-v1", "none", 0, 200, None,
                                             str(tmp_path / "run"), 1, 100))
    assert record["status"] == "failed"
    assert record["error"] == "the run ended without a finite result (final return is nan)"
    assert not collect.usable(record)


@pytest.mark.parametrize("flag", [
    ["--variant", "batch:critic_norm=layer"],
    ["--variants-file", "{file}"],
])
def test_a_variant_cannot_take_a_builtin_name_with_other_settings(flag, capsys, tmp_path,
                                                                  no_training):
    """The issue's ``--variant batch:critic_norm=layer``: the answer read "`batch` vs `none`"
    for a LayerNorm critic."""
    (tmp_path / "v.yaml").write_text("batch: {critic_norm: layer}\n")
    out = tmp_path / "out"
    argv = ["benchmark", "--agent", "sac", "--env", "Pendulum-v1", "--seeds", "1", "--steps",
            "300", "--out", out, *(a.replace("{file}", str(tmp_path / "v.yaml")) for a in flag)]
    code, stdout, err = _main(argv, capsys)
    assert code == 2 and stdout == "" and not out.exists()
    assert ("'batch' is a built-in variant (critic_norm=batch), not critic_norm=layer: give "
            "your variant a name of its own") in _one_line(err)
    # The same settings under the built-in's name are that variant.
    defined, own = cli._defined_variants(cli_args(variant=["batch:critic_norm=batch"]))
    assert own == ["batch"] and defined["batch"].settings == BATCH


def cli_args(**given):
    """``run.py benchmark`` arguments as argparse gives them to the cli helpers."""
    args = run.build_parser().parse_args(["benchmark"])
    for key, value in given.items():
        setattr(args, key, value)
    return args


def test_variants_that_resolve_alike_are_refused_everywhere(tmp_path, capsys, monkeypatch,
                                                           no_training):
    """The issue's variants-file entry with no settings: the baseline's settings hash, run and
    compared anyway."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v.yaml").write_text("plain: {}\n")
    out = tmp_path / "out"
    code, _, err = _main(["benchmark", "--agent", "sac", "--env", "Pendulum-v1", "--seeds", "1",
                          "--steps", "300", "--variants-file", "v.yaml", "--out", out], capsys)
    assert code == 2 and not out.exists()
    assert ("variants 'none' and 'plain' resolve to the same settings on sac/Pendulum-v1: their "
            "runs would be the same") in _one_line(err)

    # --extend cannot bring one in either.
    planned = tmp_path / "planned"
    grid.plan(planned, ["sac"], ["Pendulum-v1"], ["none", "batch"], 1, 300)
    with pytest.raises(UserError, match="variants 'batch' and 'bn2' resolve to the same"):
        grid.plan(planned, ["sac"], ["Pendulum-v1"],
                  ["none", "batch", variants.Variant("bn2", {"critic_norm": "batch"})], 1, 300,
                  extend=True)

    # Nor can result files of two variants made with the same settings be reported.
    results_dir = _benchmark_dir(tmp_path / "dup", variant_list=(("none", NONE),
                                                                 ("plain", {})), seeds=1)
    code, _, err = _main(["report", results_dir], capsys)
    assert code == 2
    assert ("variants 'none' and 'plain' of sac on Pendulum-v1 were made with the same "
            "settings") in _one_line(err)


# ------------------------------------------------------- 4. malformed results, merge's --out
@pytest.mark.parametrize(("change", "problem"), [
    (dict(eval_returns=[[1.0, 2.0], [3.0, 4.0]]), "eval_returns is not a list of numbers"),
    (dict(eval_steps=["100", "200"]), "eval_steps is not a list of numbers"),
    (dict(bn_stats={"steps": [[1], [2]]}), "bn_stats.steps is not a list of numbers"),
    (dict(bn_stats={"steps": [1, 2], "bn_Q_moving_mean": [[1.0], [1.0, 2.0]]}),
     "bn_stats.bn_Q_moving_mean is not a list of numbers"),
])
def test_a_malformed_result_file_is_refused_naming_file_and_key(change, problem, tmp_path,
                                                                capsys):
    """The issue's nested ``eval_returns``: it crashed ``report``, and once merged, every later
    report of that directory."""
    piece = _benchmark_dir(tmp_path / "piece", seeds=1)
    path = results.result_path(piece, "sac", "Pendulum-v1", "batch", 0)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    assert record_problem(json.loads(path.read_text())) == problem
    code, _, err = _main(["report", piece], capsys)
    assert code == 2
    assert f"{path} is not a bnrl result file ({problem})" in _one_line(err)

    merged = _benchmark_dir(tmp_path / "merged", seeds=1)
    before = sorted(p for p in merged.rglob("*"))
    code, _, err = _main(["merge", "--out", merged, piece], capsys)
    assert code == 2
    assert f"{path} is not a bnrl result file ({problem})" in _one_line(err)
    assert sorted(p for p in merged.rglob("*")) == before  # nothing copied in
    # A per-unit BN statistic (rows of one length per step) is a well-formed series.
    record = json.loads(path.read_text())
    record.update(eval_steps=[100, 200], eval_returns=[1.0, 2.0],
                  bn_stats={"steps": [1, 2], "bn_Q_moving_mean": [[1.0, 2.0], [3.0, 4.0]]})
    assert record_problem(record) is None


def test_merge_out_under_a_file_or_refused_leaves_nothing(tmp_path, capsys):
    piece = _benchmark_dir(tmp_path / "piece", seeds=1)
    (tmp_path / "file").write_text("x")
    code, stdout, err = _main(["merge", "--out", tmp_path / "file" / "merged", piece], capsys)
    assert code == 2 and stdout == ""
    assert (f"cannot create --out {tmp_path / 'file' / 'merged'}: Not a directory"
            in _one_line(err))

    # A refused merge removes the directories it created for --out, parents included.
    out = tmp_path / "new" / "deeper" / "merged"
    code, _, err = _main(["merge", "--out", out, piece, tmp_path / "nothing"], capsys)
    assert code == 2 and "is not a benchmark directory (no grid.json)" in _one_line(err)
    assert not (tmp_path / "new").exists()
    # An --out that existed before stays.
    (tmp_path / "kept").mkdir()
    code, _, _ = _main(["merge", "--out", tmp_path / "kept", piece, tmp_path / "nothing"],
                       capsys)
    assert code == 2 and (tmp_path / "kept").is_dir()


# ----------------------------------------------------------------- 5. no argument ignored
def test_a_suite_env_no_agent_fits_is_refused_or_said(tmp_path, capsys, monkeypatch,
                                                      no_training):
    """The issue's ``--suite classic --env Pendulum-v1,CartPole-v1 --agent dqn`` dropped
    Pendulum-v1 without a word."""
    monkeypatch.chdir(tmp_path)
    code, stdout, err = _main(["benchmark", "--suite", "classic", "--env",
                               "Pendulum-v1,CartPole-v1", "--agent", "dqn", "--seeds", "1"],
                              capsys)
    assert code == 2 and stdout == "" and not (tmp_path / "bench_out").exists()
    assert ("no agent of --agent dqn fits Pendulum-v1 in suite classic (it takes sac, td3, "
            "ddpg, crossq): drop it from --env or add one of its agents to --agent"
            in _one_line(err))
    code, _, err = _main(["benchmark", "--suite", "classic", "--env", "Pendulum-v1", "--agent",
                          "sac,dqn", "--seeds", "1"], capsys)
    assert code == 2
    assert ("--agent dqn fits none of the envs chosen from suite classic (Pendulum-v1)"
            in _one_line(err))

    # Without --env the suite's other envs are left out, and the command says so.
    seen = {}

    def fake_run_grid(specs, out, workers, backend="local", address=None, on_result=None,
                      progress=None, seeds_per_process=1):
        seen["envs"] = sorted({s.env for s in specs})
        return [results.base_record(s, "ok") for s in specs[:0]]

    monkeypatch.setattr(cli, "run_grid", fake_run_grid)
    monkeypatch.setattr(cli, "report_directory", lambda out: out / "report.md")
    code, _, err = _main(["benchmark", "--suite", "classic", "--agent", "sac", "--seeds", "1",
                          "--variants", "none,batch"], capsys)
    assert code == 0, err
    assert seen["envs"] == ["MountainCarContinuous-v0", "Pendulum-v1"]
    assert _one_line(err) == ("bnrl: warning: suite classic: CartPole-v1, Acrobot-v1 left out, "
                              "no agent of --agent sac fits them")


def test_address_without_the_ray_backend_is_refused(tmp_path, capsys, no_training):
    out = tmp_path / "out"
    code, stdout, err = _main(["benchmark", "--address", "ray://host:10001", "--out", out],
                              capsys)
    assert code == 2 and stdout == "" and not out.exists()
    assert "--address is a Ray cluster's address: it needs --backend ray" in _one_line(err)


@pytest.mark.parametrize(("text", "message"), [
    ("- {name: copy, critic_norm: batch}\n", "must hold a YAML mapping of variant name to "
     "settings, e.g. 'copy: {critic_norm: batch, target_bn: copy}' (like configs/variants.yaml), "
     "not a list"),
    ("", "defines no variants: expected a YAML mapping of variant name to settings"),
])
def test_a_variants_file_error_names_the_variants_file_format(text, message, tmp_path, capsys,
                                                             no_training):
    path = tmp_path / "variants.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    code, _, err = _main(["benchmark", "--variants-file", path, "--out", out], capsys)
    assert code == 2 and not out.exists()
    line = _one_line(err)
    assert message in line and "config file" not in line and "train:" not in line
    code, _, err = _main(["benchmark", "--variants-file", tmp_path / "missing.yaml"], capsys)
    assert f"variants file not found: {tmp_path / 'missing.yaml'}" in _one_line(err)


def test_an_empty_variant_value_is_refused_not_dropped(tmp_path, capsys, no_training):
    """The issue's ``--variant 'x:gamma='`` kept the default gamma without a word."""
    out = tmp_path / "out"
    code, _, err = _main(["benchmark", "--agent", "sac", "--env", "Pendulum-v1", "--seeds", "1",
                          "--steps", "300", "--variant", "x:gamma=", "--out", out], capsys)
    assert code == 2 and not out.exists()
    line = _one_line(err)
    assert "variant 'x' on sac/Pendulum-v1: " in line and "gamma cannot be empty or null" in line


# -------------------------------------------------------------------------------- smaller
def test_a_one_variant_report_says_why_it_has_no_answer(tmp_path):
    out = tmp_path / "out"
    runs = [_record(out, "none", NONE, s, final=-500.0 - s, write=False) for s in range(2)]
    text = write_report(runs, out).read_text()
    answer = text.split("## Answer", 1)[1].split("## Grid", 1)[0]
    assert ("- sac: only one variant, `none`: nothing to compare it with (a benchmark compares "
            "variants with a baseline: give --variants two or more).") in answer


def test_huge_or_nan_results_print_no_warnings(tmp_path, capsys):
    out = tmp_path / "out"
    runs = [_record(out, "none", NONE, s, final=1e308 * (1 - 0.1 * s), write=False)
            for s in range(3)]
    runs += [_record(out, "batch", BATCH, s, final=-1e308 * (1 - 0.1 * s), write=False)
             for s in range(3)]
    runs[-1].update(final_return=math.nan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = write_report(runs, out).read_text()
    assert [str(w.message) for w in caught] == []
    assert capsys.readouterr().err == ""
    assert "| `batch` | 2 / 3 |" in text
