"""End-to-end tests of ``run.py benchmark`` / ``run.py report`` (compare/: grid, results, workers,
collect, cli).

Every grid here is tiny (SAC with 32-unit nets, a few hundred env steps) so the whole module runs
in a few minutes on 2 cores; the grid's worker processes are real (one fresh Python process per
run) and so are the Ray tasks.
The 4-run grid is trained once per module and shared by the tests that only read it; tests
that change a benchmark work on their own copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bnrl
from bnrl import run
from bnrl.common import files
from bnrl.common.errors import UserError
from bnrl.compare import cli, grid, results, workers

from _cli import record_planned_runs

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIG = """\
agent: {hidden: [32, 32], actor_hidden: [32, 32], batch_size: 32, learning_starts: 50, xla: false}
train: {eval_episodes: 1, checkpoint_every: 300}
"""
RUN_KEYS = ("eval_steps", "eval_returns", "final_return", "auc", "wall_time_s",
            "updates_per_second")
FAILING_ENV = "tests._failing_env:BnrlFailing-v0"
KILLING_ENV = "tests._failing_env:BnrlSelfKilling-v0"


def _grid_args(out: Path, config: Path, *extra: str, variants: str = "none,batch",
               seeds: int = 2, steps: int = 300, env: str = "Pendulum-v1",
               eval_every: int = 100) -> list[str]:
    return ["benchmark", "--agent", "sac", "--env", env, "--variants", variants,
            "--seeds", str(seeds), "--steps", str(steps), "--eval-every", str(eval_every),
            "--out", str(out), "--workers", "2", "--config", str(config), *extra]


def _bench(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # drop whatever earlier code printed
    rc = run.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("bnrl: error: "), lines[0]
    return lines[0]


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def _summary_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted((out / "runs").rglob("summary.json"))}


def _no_workers(*args, **kwargs):
    raise AssertionError("the grid started runs although every run was finished")


def _pythonpath_with_repo() -> str:
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(paths))


@pytest.fixture(autouse=True)
def _repo_on_pythonpath(monkeypatch):
    """Ray workers are separate processes that do not get pytest's sys.path (``pythonpath = .``
    in pyproject.toml), so they need PYTHONPATH to import the repo's packages and
    tests._failing_env. (Local grid workers receive the benchmark's sys.path anyway; PYTHONPATH
    makes them independent of that too.)"""
    monkeypatch.setenv("PYTHONPATH", _pythonpath_with_repo())


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench_config") / "tiny.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory, config_file):
    """sac on Pendulum-v1, none vs batch, 2 seeds, 300 steps, 2 workers: trained once."""
    out = tmp_path_factory.mktemp("bench") / "out"
    argv = _grid_args(out, config_file)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _pythonpath_with_repo()  # the autouse fixture is function-scoped
    try:
        started = time.perf_counter()
        rc = run.main(argv)
        elapsed = time.perf_counter() - started
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return {"out": out, "argv": argv, "rc": rc, "elapsed": elapsed,
            "results": (out / "results.json").read_text(),
            "report": (out / "report.md").read_text(), "mtimes": _summary_mtimes(out)}


# --------------------------------------------------------------------------- #
# 1. A tiny grid end to end
# --------------------------------------------------------------------------- #
def test_small_grid_writes_results_report_figures_and_run_dirs(small_grid, capsys):
    out = small_grid["out"]
    assert small_grid["rc"] == 0
    runs = _runs(out)
    assert [(r["agent"], r["env"], r["variant"], r["seed"]) for r in runs] == [
        ("sac", "Pendulum-v1", v, s) for v in ("none", "batch") for s in (0, 1)]
    for r in runs:
        assert r["status"] == "ok" and r["error"] is None, r
        for key in RUN_KEYS:
            assert r.get(key) is not None, (key, r)
        assert r["eval_steps"] == [100, 200, 300]
        assert len(r["eval_returns"]) == 3
        assert r["final_return"] == r["eval_returns"][-1]
        assert r["wall_time_s"] > 0 and r["updates_per_second"] > 0
        assert r["resumes"] == 0
        run_dir = Path(r["run_dir"])
        assert run_dir == out / "runs" / "sac" / "Pendulum-v1" / r["variant"] / f"seed{r['seed']}"
        summary = json.loads((run_dir / "summary.json").read_text())
        # The variant really reached the agent, and the grid's step budget was trained.
        assert summary["critic_norm"] == r["variant"] and summary["steps"] == 300
        assert summary["seed"] == r["seed"]
        assert not (run_dir / "error.txt").exists()
        if r["variant"] == "batch":
            bn = r["bn_stats"]
            assert bn and bn["steps"] and len(bn["bn_Q_moving_mean"]) == len(bn["steps"])
        else:
            assert not r["bn_stats"]
    assert json.loads((out / "grid.json").read_text()) == {
        "cells": [{"agent": "sac", "env": "Pendulum-v1", "steps": 300}],
        "variants": [{"name": "none", "settings": {"critic_norm": "none"}},
                     {"name": "batch", "settings": {"critic_norm": "batch"}}],
        "baseline": "none", "seeds": 2, "config": CONFIG, "eval_every": 100, "n_envs": None}

    # Each run's portable result file: its record, run_dir relative, what made it.
    hashes = {}
    for r in runs:
        result = json.loads((out / "results" / "sac" / "Pendulum-v1" / r["variant"]
                             / f"seed{r['seed']}.json").read_text())
        assert result["run_dir"] == f"runs/sac/Pendulum-v1/{r['variant']}/seed{r['seed']}"
        assert {**result, "run_dir": r["run_dir"]} == json.loads(json.dumps(r))
        assert result["bnrl_version"] == bnrl.__version__ and result["steps"] == 300
        assert result["run_agent"] == "sac"
        assert result["settings"]["agent_config.critic_norm"] == r["variant"]
        assert "seed" not in result["settings"] and "steps" not in result["settings"]
        assert result["settings_hash"] == results.settings_hash(result["settings"])
        hashes.setdefault(r["variant"], set()).add(result["settings_hash"])
    # One hash per variant (the seed is not part of it), different between variants.
    assert [len(h) for h in hashes.values()] == [1, 1] and hashes["none"] != hashes["batch"]

    report = small_grid["report"]
    assert report.startswith("# Benchmark report\n\n## Answer\n")
    answer = report.split("## Answer", 1)[1].split("## Grid", 1)[0]
    [line] = [line for line in answer.splitlines() if line.startswith("- `batch` vs `none`: ")]
    # 2 vs 2 runs on one env: the exact test cannot reach 5% (p >= 1/3), so no verdict.
    assert "IQM normalized score" in line and "P(improvement)" in line
    assert line.endswith("**no significant difference** (1 env, 2 vs 2 runs)"), line
    assert "Incomplete" not in answer
    assert "Runs: 4 planned, 4 ok, 0 failed, 0 missing" in report
    verdicts = [line for line in report.splitlines() if line.startswith("- `batch`: ")]
    assert len(verdicts) == 1 and verdicts[0].endswith("runs): no significant difference")
    assert "## Failed runs\n\nNone." in report
    for name in ("curves.png", "bn_stats.png", "aggregate.png", "profiles.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name

    # Each run dir is an ordinary training run: `run.py evaluate` works on it.
    for r in runs:
        rc, stdout, _ = _bench(capsys, ["evaluate", "--run", r["run_dir"], "--episodes", "1"])
        assert rc == 0
        assert "mean return" in stdout


def test_seeds_trained_together_give_the_same_records(small_grid, config_file, capsys,
                                                     tmp_path):
    """--seeds-per-process 2: each variant's two seeds train in one process, one graph and one
    sess.run per step (issue 29); every record equals the one-process-per-seed grid's (xla is
    off in CONFIG: bit for bit) but for timings and where it ran, and so does the report."""
    out = tmp_path / "out"
    rc, stdout, _ = _bench(capsys, [*_grid_args(out, config_file), "--seeds-per-process", "2"])
    assert rc == 0, stdout

    def results(records):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "updates_per_second",
                                                            "run_dir")} for r in records]

    assert results(_runs(out)) == results(json.loads(small_grid["results"])["runs"])
    assert all(r["status"] == "ok" for r in _runs(out))


# --------------------------------------------------------------------------- #
# 2. Rerunning the same command skips every finished run
# --------------------------------------------------------------------------- #
def test_rerun_skips_finished_runs(small_grid, capsys, monkeypatch):
    out = small_grid["out"]
    monkeypatch.setattr(workers, "_run_local", _no_workers)
    started = time.perf_counter()
    rc, stdout, _ = _bench(capsys, small_grid["argv"])
    elapsed = time.perf_counter() - started
    assert rc == 0
    assert "benchmark: 4 runs" in stdout and "report:" in stdout
    assert elapsed < small_grid["elapsed"] / 4, (elapsed, small_grid["elapsed"])
    assert _summary_mtimes(out) == small_grid["mtimes"]
    # Same records (compared as JSON text: NaNs in BN stats are not == to themselves).
    assert json.dumps(_runs(out), sort_keys=True) == json.dumps(
        json.loads(small_grid["results"])["runs"], sort_keys=True)
    assert (out / "report.md").read_text() == small_grid["report"]


# --------------------------------------------------------------------------- #
# 3. A different grid in the same --out: refused, or grown with --extend
# --------------------------------------------------------------------------- #
def test_changed_grid_is_refused_unless_extended(small_grid, config_file, capsys, monkeypatch,
                                                 tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_grid["out"], out)
    grid_json = (out / "grid.json").read_text()
    before = _summary_mtimes(out)

    for change in (dict(steps=400), dict(seeds=3), dict(variants="none,layer"),
                   dict(eval_every=50)):
        rc, stdout, err = _bench(capsys, _grid_args(out, config_file, **change))
        assert rc == 2, change
        line = _one_error_line(err)
        assert "different benchmark" in line and "--extend" in line
        # what the directory holds
        assert "sac on Pendulum-v1 (300 steps); variants none,batch; 2 seeds, --eval-every 100" \
            in line
        assert stdout == ""
    # --extend grows a grid but cannot change how its finished runs were trained or evaluated.
    other_config = tmp_path / "other.yaml"
    other_config.write_text(CONFIG.replace("batch_size: 32", "batch_size: 64"))
    for config, change, flag in ((config_file, dict(eval_every=50), "--eval-every"),
                                 (other_config, dict(seeds=3), "--config")):
        rc, _, err = _bench(capsys, _grid_args(out, config, "--extend", **change))
        assert rc == 2
        assert f"--extend cannot change {flag}" in _one_error_line(err)
    assert (out / "grid.json").read_text() == grid_json
    assert _summary_mtimes(out) == before

    rc, stdout, _ = _bench(capsys, _grid_args(out, config_file, "--extend", seeds=3))
    assert rc == 0
    assert "benchmark: 6 runs" in stdout
    progress = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 2 and all("seed 2: final" in line for line in progress), stdout
    # Each line gives the run's own training time, then the time since the benchmark started.
    wall = {r["variant"]: r["wall_time_s"] for r in _runs(out) if r["seed"] == 2}
    for line in progress:
        variant = line.split()[3]
        assert f" in {wall[variant]:.0f}s (" in line and line.endswith("s elapsed)"), line
    after = _summary_mtimes(out)
    assert {k: after[k] for k in before} == before  # the finished runs were not touched
    assert sorted(set(after) - set(before)) == [
        f"runs/sac/Pendulum-v1/{v}/seed2/summary.json" for v in ("batch", "none")]
    runs = _runs(out)
    assert len(runs) == 6 and all(r["status"] == "ok" for r in runs)
    assert json.loads((out / "grid.json").read_text())["seeds"] == 3
    assert "Runs: 6 planned, 6 ok, 0 failed, 0 missing" in (out / "report.md").read_text()

    # The extended grid is now the directory's benchmark: its plain command just skips.
    monkeypatch.setattr(workers, "_run_local", _no_workers)
    rc, _, _ = _bench(capsys, _grid_args(out, config_file, seeds=3))
    assert rc == 0


# --------------------------------------------------------------------------- #
# 4. A failing run is reported while the others finish
# --------------------------------------------------------------------------- #
def test_failed_run_is_reported_and_others_finish(config_file, capsys, monkeypatch, tmp_path):
    from tests import _failing_env

    out = tmp_path / "out"
    argv = _grid_args(out, config_file, variants="none", steps=200, env=FAILING_ENV)
    rc, stdout, _ = _bench(capsys, argv)
    assert rc == 1
    assert "1 failed runs; rerun to retry them" in stdout
    # The env's fault, as the training loop words it in one line (naming the env and the step).
    crash = f"{_failing_env.MESSAGE} at step {_failing_env.FAIL_AFTER} (seed 1)"
    [line] = [line for line in stdout.splitlines() if "FAILED: " in line]
    assert "RuntimeError" in line and crash in line

    ok, failed = _runs(out)
    assert ok["seed"] == 0 and ok["status"] == "ok" and ok["error"] is None
    assert ok["eval_steps"] == [100, 200] and ok["final_return"] is not None
    assert failed["seed"] == _failing_env.FAILING_SEED and failed["status"] == "failed"
    assert "\n" not in failed["error"] and "RuntimeError" in failed["error"]
    assert crash in failed["error"]
    run_dir = Path(failed["run_dir"])
    assert run_dir == out / "runs" / "sac" / FAILING_ENV.replace(":", "_") / "none" / "seed1"
    traceback = (run_dir / "error.txt").read_text()
    assert traceback.startswith("Traceback") and crash in traceback
    assert not (run_dir / "summary.json").exists()
    assert not (Path(ok["run_dir"]) / "error.txt").exists()

    report = (out / "report.md").read_text()
    assert "Runs: 2 planned, 1 ok, 1 failed, 0 missing" in report
    assert "**Incomplete grid: 0 of 2 runs missing, 1 failed.**" in report
    assert "Not in the aggregate (no normalization scores in configs/suites.yaml): " \
        f"{FAILING_ENV}" in report
    failed_section = report.split("## Failed runs", 1)[1].split("##", 1)[0]
    assert f"seed 1 (`{run_dir}`): " in failed_section and crash in failed_section

    # A rerun retries the failed run only; here the env no longer crashes, so it now succeeds.
    ok_mtime = (Path(ok["run_dir"]) / "summary.json").stat().st_mtime_ns
    monkeypatch.setenv("BNRL_FAILING_ENV_OFF", "1")
    rc, stdout, _ = _bench(capsys, argv)
    assert rc == 0
    progress = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 1 and "seed 1: final" in progress[0], stdout
    assert "failed runs" not in stdout and "FAILED" not in stdout
    assert (Path(ok["run_dir"]) / "summary.json").stat().st_mtime_ns == ok_mtime
    assert [r["status"] for r in _runs(out)] == ["ok", "ok"]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 200
    assert not (run_dir / "error.txt").exists()
    assert "Runs: 2 planned, 2 ok, 0 failed, 0 missing" in (out / "report.md").read_text()


def test_a_run_killed_by_sigkill_fails_alone(config_file, capsys, tmp_path):
    """A worker process that dies (SIGKILL, as the OOM killer sends) is recorded with its cause
    and its log's last lines; the run queued behind it (seed 2, 2 workers) still runs."""
    from tests import _failing_env

    out = tmp_path / "out"
    argv = _grid_args(out, config_file, variants="none", seeds=3, steps=200, env=KILLING_ENV)
    rc, stdout, _ = _bench(capsys, argv)
    assert rc == 1
    runs = _runs(out)
    assert [(r["seed"], r["status"]) for r in runs] == [(0, "ok"), (1, "failed"), (2, "ok")]
    assert runs[2]["eval_steps"] == [100, 200] and runs[2]["final_return"] is not None
    killed = runs[1]
    log = Path(killed["run_dir"] + ".log")
    # The log's last lines end with the env's own; before it, the run's progress lines.
    assert killed["error"].startswith("worker process killed by SIGKILL (out of memory, or "
                                      "killed); last log lines: ")
    assert killed["error"].endswith(f"{_failing_env.KILL_LINE} (log: {log})")
    assert _failing_env.KILL_LINE in log.read_text()
    assert "FAILED: worker process killed by SIGKILL" in stdout
    assert "Runs: 3 planned, 2 ok, 1 failed, 0 missing" in (out / "report.md").read_text()
    os.close(files.lock_directory(killed["run_dir"]))  # its lock died with it: resumable


def test_a_grouped_worker_killed_by_sigkill_records_each_of_its_seeds(config_file, capsys,
                                                                      tmp_path):
    """--seeds-per-process 2: seed 1's env kills the process both seeds train in; each seed is
    recorded failed with the cause, in its own record (issue 29 item 3)."""
    from tests import _failing_env

    out = tmp_path / "out"
    argv = _grid_args(out, config_file, "--seeds-per-process", "2", variants="none", seeds=2,
                      steps=200, env=KILLING_ENV)
    rc, _, _ = _bench(capsys, argv)
    assert rc == 1
    runs = _runs(out)
    assert [(r["seed"], r["status"]) for r in runs] == [(0, "failed"), (1, "failed")]
    for r in runs:
        assert r["error"].startswith("worker process killed by SIGKILL"), r["error"]
        assert _failing_env.KILL_LINE in r["error"]
        os.close(files.lock_directory(r["run_dir"]))  # its lock died with it: resumable


def _alive(pid: int) -> bool:
    """Whether any thread of process ``pid`` still runs (and so may still hold its files).

    A killed process's leader turns zombie as soon as *it* has exited, while its other threads
    (TensorFlow runs dozens) may still be tearing down and holding the descriptors, the run
    directory's lock among them. Ended threads other than the leader leave ``task/`` at once.
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False
    return state not in ("Z", "X") or threads > 1  # a lone zombie only awaits its reaping


def test_killing_the_benchmark_kills_its_workers_and_a_second_one_is_refused(config_file,
                                                                            capsys, tmp_path):
    """SIGKILL of the benchmark's own process leaves no orphan training on, and while it runs a
    second benchmark on the same --out stops at once."""
    out = tmp_path / "out"
    argv = _grid_args(out, config_file, variants="none", seeds=2, steps=50_000)
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *argv], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dirs = [out / "runs" / "sac" / "Pendulum-v1" / "none" / f"seed{k}" for k in (0, 1)]
    workers = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not all(
                (d / "config.yaml").exists() for d in run_dirs):
            time.sleep(0.5)
        assert proc.poll() is None, "the benchmark ended early"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [int(pid) for pid in children]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)

        rc, stdout, err = _bench(capsys, argv)
        assert rc == 2 and stdout == ""
        assert f"another benchmark is running in {out}" in _one_error_line(err)

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "orphaned workers still run"
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    for run_dir in run_dirs:  # no one holds the run directories any more
        os.close(files.lock_directory(run_dir))


# Grouped (issue 29): the first worker trains seeds 0 and 1 together, seed 2 would be the next.
@pytest.mark.parametrize("seeds_per_process, seeds", [(1, 2), (2, 3)], ids=["single", "grouped"])
def test_ctrl_c_stops_the_workers_and_says_how_to_continue(seeds_per_process, seeds,
                                                          config_file, capsys, monkeypatch,
                                                          tmp_path):
    started = []
    real_start = workers._start_worker

    def start_then_ctrl_c(unit):
        if started:  # Ctrl-C while the first worker runs
            raise KeyboardInterrupt
        assert [spec.seed for spec in unit] == list(range(seeds_per_process))
        started.append(real_start(unit))
        return started[-1]

    monkeypatch.setattr(workers, "_start_worker", start_then_ctrl_c)
    rc, _, err = _bench(capsys, _grid_args(tmp_path / "out", config_file, "--seeds-per-process",
                                           str(seeds_per_process), variants="none", seeds=seeds))
    assert rc == 130
    assert err.splitlines() == [  # benchmark takes no --resume: it just resumes
        "bnrl: benchmark interrupted; finished runs are kept and interrupted ones continue from "
        "their last checkpoint: run the same command again"]
    assert len(started) == 1 and started[0].poll() is not None  # stopped, not orphaned


def test_retry_after_a_failure_before_the_run_started(config_file, monkeypatch, tmp_path):
    """A run that failed before train() wrote config.yaml (e.g. its env could not be made in the
    worker) leaves only error.txt in its directory; the retry must not trip over it."""
    from bnrl.training.loop import prepare_run_dir

    run_dir = tmp_path / "runs" / "seed0"
    spec = results.RunSpec("sac", "no_such_module:Nope-v0", "none", 0, 200, str(config_file),
                           str(run_dir), 1, 100)
    record = workers.run_one(spec)  # fails in make_env, before the run directory is prepared
    assert record["status"] == "failed" and "cannot import module" in record["error"]
    assert [p.name for p in run_dir.iterdir()] == ["error.txt"]

    def fake_train(config, run_dir, resume=False, progress="auto", threads=None):
        prepare_run_dir(run_dir, config, resume).release()  # what train() does first with it
        return {"eval_steps": [100, 200], "eval_returns": [-1.0, -0.5], "final_return": -0.5,
                "wall_time_s": 1.0, "updates_per_second": 10.0, "bn_stats": {}}

    monkeypatch.setattr(workers, "train", fake_train)
    record = workers.run_one(results.RunSpec("sac", "Pendulum-v1", "none", 0, 200,
                                             str(config_file), str(run_dir), 1, 100))
    assert record["status"] == "ok", record["error"]
    assert not (run_dir / "error.txt").exists()


# --------------------------------------------------------------------------- #
# 5. run.py report
# --------------------------------------------------------------------------- #
def test_report_regenerates_report_and_figures(small_grid, capsys, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_grid["out"], out)
    figures = ("curves.png", "bn_stats.png", "aggregate.png", "profiles.png")
    for name in ("report.md", *figures):
        (out / name).unlink()
    rc, stdout, _ = _bench(capsys, ["report", str(out)])
    assert rc == 0
    assert stdout.strip() == f"report: {out / 'report.md'}"
    # Deterministic (seeded bootstrap): the same report as the benchmark wrote.
    assert (out / "report.md").read_text() == small_grid["report"]
    for name in figures:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)


def test_report_reads_the_results_of_a_namespaced_env(capsys, tmp_path):
    """MinAtar/Breakout-v1's result files are one directory deeper than Pendulum-v1's."""
    for variant, final in (("none", 10.0), ("batch", 12.0)):
        spec = results.RunSpec("dqn", "MinAtar/Breakout-v1", variant, 0, 200, None,
                               str(tmp_path / "runs" / variant), 1, 100, out=str(tmp_path))
        results.write_result({**results.base_record(spec, "ok"), "eval_steps": [100, 200],
                              "eval_returns": [1.0, final], "final_return": final}, tmp_path)
    assert (tmp_path / "results/dqn/MinAtar/Breakout-v1/none/seed0.json").is_file()
    rc, _, err = _bench(capsys, ["report", str(tmp_path)])
    assert rc == 0, err
    assert "### dqn / MinAtar/Breakout-v1" in (tmp_path / "report.md").read_text()


def test_report_without_results_is_one_line_error(capsys, tmp_path):
    rc, stdout, err = _bench(capsys, ["report", str(tmp_path)])
    assert rc == 2 and stdout == ""
    assert f"{tmp_path} has no results" in _one_error_line(err)
    assert not (tmp_path / "report.md").exists()

    (tmp_path / "results.json").write_text('["not", "a", "results", "file"]')
    rc, _, err = _bench(capsys, ["report", str(tmp_path)])
    assert rc == 2
    assert "is not a bnrl results file" in _one_error_line(err)


# --------------------------------------------------------------------------- #
# 6. Bad input fails fast, before any run starts
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("flags", "message"), [
    (dict(agent="sac,nosuch"), "unknown agent 'nosuch'"),
    (dict(variants="none,bogus"), "unknown variant 'bogus'"),
    (dict(agent="dqn"), "agent 'dqn' needs a discrete"),
    (dict(agent="sac,dqn"), "agent 'dqn' needs a discrete"),
    (dict(env="Pendulum-v1,NoSuchEnv-v9"), "unknown environment 'NoSuchEnv-v9'"),
    (dict(config="missing.yaml"), "config file not found"),
    # A --config key one agent of the grid does not take (dqn has no actor).
    (dict(agent="dqn", env="CartPole-v1", config="tiny.yaml"),
     "unknown config key(s) actor_hidden"),
])
def test_bad_input_exits_2_before_any_run(flags, message, config_file, capsys, tmp_path):
    out = tmp_path / "out"
    args = {"agent": "sac", "env": "Pendulum-v1", "variants": "none,batch", **flags}
    argv = ["benchmark", "--agent", args["agent"], "--env", args["env"], "--variants",
            args["variants"], "--seeds", "2", "--steps", "300", "--out", str(out)]
    if "config" in args:
        config = config_file if args["config"] == "tiny.yaml" else tmp_path / args["config"]
        argv += ["--config", str(config)]
    rc, stdout, err = _bench(capsys, argv)
    assert rc == 2
    assert message in _one_error_line(err)
    assert stdout == ""
    assert not out.exists()  # no grid.json, no run dirs


@pytest.mark.parametrize(("extra", "message"), [
    (["--variants", "none,batch", "--baseline", "layer"],
     "--baseline 'layer' is not one of the variants (none, batch)"),
    (["--variants", "batch,bn2", "--variant", "bn2:critic_norm=batch"],
     "variants 'batch' and 'bn2' have the same settings"),
    (["--variant", "a:critic_norm=batch", "--variant", "a:critic_norm=layer"],
     "variant 'a' is defined twice"),
    (["--variant", "nocolon"], "bad --variant 'nocolon': expected NAME:key=value"),
    (["--variant", "x:hidden=[1,2"], "malformed YAML in --variant 'x:hidden=[1,2'"),
    (["--variant", "x:bn_momentum=abc"], "variant 'x' on sac/Pendulum-v1: "),
    (["--variant", "x:no_such_key=1"], "no_such_key"),
    (["--variants-file", "missing.yaml"], "variants file not found: missing.yaml"),
    (["--variants", "none,crossq", "--agent", "dqn", "--env", "CartPole-v1"],
     "variant 'crossq' on dqn/CartPole-v1: "),
    (["--suite", "atari"], "unknown suite 'atari': use one of classic, mujoco, bn-critics"),
    (["--suite", "classic", "--env", "Hopper-v5"],
     "Hopper-v5 is not in suite classic: use some of Pendulum-v1"),
    (["--suite", "classic", "--env", "CartPole-v1", "--agent", "sac"],
     "no agent of --agent sac fits the envs of suite classic: use one of dqn"),
])
def test_bad_variants_and_suites_exit_2_before_any_run(extra, message, capsys, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["benchmark", "--seeds", "1", "--steps", "300", "--out", str(out), *extra]
    if "--agent" not in extra and "--suite" not in extra:
        argv += ["--agent", "sac", "--env", "Pendulum-v1"]
    rc, stdout, err = _bench(capsys, argv)
    assert rc == 2
    assert message in _one_error_line(err)
    assert stdout == "" and not out.exists()


def _planned(monkeypatch, capsys, argv) -> tuple[list, str]:
    """The specs ``run.py benchmark argv`` plans (run_grid replaced by a fake that records
    them and leaves one result file per run, so that the report has runs)."""
    seen = record_planned_runs(monkeypatch)
    rc, stdout, err = _bench(capsys, argv)
    assert rc == 0, err
    return seen["specs"], stdout


def test_suites_bring_envs_agents_and_step_budgets(capsys, monkeypatch, tmp_path):
    from bnrl.compare import suites

    monkeypatch.chdir(tmp_path)
    specs, stdout = _planned(monkeypatch, capsys, ["benchmark", "--suite", "classic",
                                                   "--seeds", "1", "--variants", "none,batch"])
    assert "in bench_out/classic" in stdout
    classic = suites.suite("classic")
    # The first fitting agent of each env (sac, or dqn for discrete actions), the suite's steps.
    assert [(s.agent, s.env, s.variant, s.steps) for s in specs] == [
        (classic.envs[e]["agents"][0], e, v, classic.envs[e]["steps"])
        for e in ("Pendulum-v1", "MountainCarContinuous-v0", "CartPole-v1", "Acrobot-v1")
        for v in ("none", "batch")]
    assert {s.run_agent for s in specs} == {"sac", "dqn"}

    # --env picks envs of the suite, --agent its agents, --steps overrides. (An env or agent
    # named but left without a run is refused: tests/test_reliability_compare.py.)
    specs, _ = _planned(monkeypatch, capsys, [
        "benchmark", "--suite", "classic", "--env", "Pendulum-v1", "--agent",
        "td3,sac", "--seeds", "2", "--steps", "500", "--variants", "none", "--out", "b"])
    assert [(s.agent, s.env, s.seed, s.steps) for s in specs] == [
        (a, "Pendulum-v1", k, 500) for a in ("td3", "sac") for k in (0, 1)]


def test_mujoco_suite_plans_its_envs(capsys, monkeypatch, tmp_path):
    pytest.importorskip("mujoco")
    from bnrl.compare import suites

    monkeypatch.chdir(tmp_path)
    specs, _ = _planned(monkeypatch, capsys, ["benchmark", "--suite", "mujoco", "--seeds", "1",
                                              "--variants", "none,crossq"])
    mujoco = suites.suite("mujoco")
    assert [(s.env, s.steps, s.variant, s.run_agent) for s in specs] == [
        (e, mujoco.envs[e]["steps"], v, a) for e in mujoco.envs
        for v, a in (("none", "sac"), ("crossq", "crossq"))]
    report = (tmp_path / "bench_out" / "mujoco" / "report.md").read_text()
    assert "### sac on InvertedDoublePendulum-v5, Hopper-v5, HalfCheetah-v5, Walker2d-v5" \
        in report
    # The suites' thresholds reach the per-env tables.
    assert "Median steps to 4800 (seeds reached)" in report  # HalfCheetah-v5


def test_variants_defined_inline_or_in_a_file_reach_the_runs(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    variants_file = tmp_path / "variants.yaml"
    variants_file.write_text("copy: {critic_norm: batch, target_bn: copy}\n"
                             "polyak: {critic_norm: batch, target_bn: polyak}\n")
    specs, stdout = _planned(monkeypatch, capsys, [
        "benchmark", "--agent", "sac", "--env", "Pendulum-v1", "--seeds", "1", "--steps", "300",
        "--variants-file", str(variants_file), "--variant", "cq:agent=crossq,hidden=[64,64]",
        "--baseline", "polyak"])
    # Without --variants: none, then the defined ones in order.
    assert [(s.variant, s.run_agent, s.settings) for s in specs] == [
        ("none", "sac", {"critic_norm": "none"}),
        ("copy", "sac", {"critic_norm": "batch", "target_bn": "copy"}),
        ("polyak", "sac", {"critic_norm": "batch", "target_bn": "polyak"}),
        ("cq", "crossq", {"agent": "crossq", "hidden": [64, 64]})]
    config = results.resolve_spec(specs[3])
    assert config.agent == "crossq" and config.agent_config.hidden == (64, 64)
    assert results.resolve_spec(specs[1]).agent_config.target_bn == "copy"
    assert len({s.settings_hash for s in specs}) == 4
    out = tmp_path / "bench_out" / "benchmark"
    assert json.loads((out / "grid.json").read_text())["baseline"] == "polyak"
    report = (out / "report.md").read_text()
    assert "`polyak` (baseline): critic_norm=batch, target_bn=polyak" in report
    assert "- `none` vs `polyak`: " in report and "- `cq` vs `polyak`: " in report


def test_a_variant_can_train_another_agent(config_file, capsys, tmp_path):
    """CrossQ as a variant of a SAC grid, and the explicit baseline, end to end."""
    out = tmp_path / "out"
    rc, _, err = _bench(capsys, _grid_args(
        out, config_file, "--variant", "cq32:agent=crossq,hidden=[32,32]", "--baseline", "cq32",
        variants="none,cq32", seeds=1, steps=200))
    assert rc == 0, err
    runs = {r["variant"]: r for r in _runs(out)}
    assert runs["cq32"]["run_agent"] == "crossq" and runs["none"]["run_agent"] == "sac"
    summary = json.loads((Path(runs["cq32"]["run_dir"]) / "summary.json").read_text())
    assert summary["agent"] == "crossq" and summary["critic_norm"] == "batch_renorm"
    assert runs["cq32"]["settings"]["agent_config.hidden"] == [32, 32]
    report = (out / "report.md").read_text()
    assert "`cq32` (baseline): agent=crossq, hidden=[32, 32]" in report
    assert "- `none` vs `cq32`: IQM normalized score" in report


# --------------------------------------------------------------------------- #
# Result files: settings hash, version, merging pieces
# --------------------------------------------------------------------------- #
def _edit_result(out: Path, variant: str, seed: int, **changes) -> Path:
    path = out / "results" / "sac" / "Pendulum-v1" / variant / f"seed{seed}.json"
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))
    return path


def test_a_result_file_of_other_settings_or_version_is_refused(small_grid, capsys,
                                                               monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "_run_local", _no_workers)
    for changes, message in (
            (dict(settings_hash="0" * 16, settings={"agent_config.tau": 0.01}),
             "was made with other settings (agent_config.tau 0.01 in the file, 0.005 now"),
            (dict(bnrl_version="0.1.0"), "was made by bnrl 0.1.0, this is bnrl"),
            (dict(steps=400), "was trained for 400 steps, this grid has 300")):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(small_grid["out"], out)
        path = _edit_result(out, "batch", 1, **changes)
        argv = list(small_grid["argv"])
        argv[argv.index("--out") + 1] = str(out)
        rc, stdout, err = _bench(capsys, argv)
        assert rc == 2 and stdout == ""
        line = _one_error_line(err)
        assert line.startswith("bnrl: error: sac/Pendulum-v1/batch/seed1 " + message[:4])
        assert message in line and f"move {path} away" in line
        # `report` refuses to average seed 1 with seeds made differently.
        rc, _, err = _bench(capsys, ["report", str(out)])
        assert rc == 2
        line = _one_error_line(err)
        assert line.startswith("bnrl: error: not comparable: sac/Pendulum-v1/")
        assert {"settings_hash": "sac/Pendulum-v1/batch/seed0 and sac/Pendulum-v1/batch/seed1 "
                                 "were made with different settings",
                "bnrl_version": "sac/Pendulum-v1/none/seed0 and sac/Pendulum-v1/batch/seed1 "
                                "were made by different bnrl versions (bnrl "
                                f"{bnrl.__version__} vs bnrl 0.1.0)",
                "steps": "sac/Pendulum-v1/batch/seed1 ran 400 steps, its grid cell sac on "
                         "Pendulum-v1 has 300"}[next(iter(changes))] in line


COMMITTED = REPO / "docs" / "benchmark-mujoco"
"""A committed benchmark whose result files were made before the run config held the agent's
resolved config: their settings keep ``auto`` BN settings and ``xla_single_update: null``."""
COMMITTED_RUN = "sac/Pendulum-v1/batch/seed0"


def _committed_run(out: Path) -> tuple[results.RunSpec, Path]:
    """``out`` with the committed grid.json and one committed result file (sac with a BN
    critic, whose critic_batch, target, bootstrap_mode and actor_loss_mode are ``auto`` in it),
    and the spec that grid plans for that run."""
    (out / "results").mkdir(parents=True)
    shutil.copy(COMMITTED / "grid.json", out / "grid.json")
    specs = {s.key: s for s in grid.specs_of(grid.read_grid(out / "grid.json"), out)}
    spec = specs[COMMITTED_RUN]
    spec.result_file.parent.mkdir(parents=True)
    shutil.copy(results.result_path(COMMITTED, "sac", "Pendulum-v1", "batch", 0),
                spec.result_file)
    return spec, spec.result_file


def test_a_committed_result_made_with_auto_settings_is_finished(tmp_path):
    """Rerunning or extending a committed benchmark keeps its results: a result file whose
    settings resolve (auto -> its value) to the spec's settings is finished, and a report puts
    it with the runs made since."""
    from bnrl.compare.collect import collect

    out = tmp_path / "out"
    spec, path = _committed_run(out)
    stored = json.loads(path.read_text())
    assert stored["settings"]["agent_config.critic_batch"] == "auto"
    assert stored["settings_hash"] != spec.settings_hash  # hashed with the auto values
    record = results.finished(spec)
    assert record is not None and record["final_return"] == stored["final_return"]
    # A run made now (resolved settings, their hash) is reported together with it.
    now = results.deciding_settings(results.resolve_spec(spec))
    assert now["agent_config.critic_batch"] == "joint"
    seed1 = dataclasses.replace(spec, seed=1)
    results.write_result({**stored, "seed": 1, "run_dir": str(out / "runs" / "seed1"),
                          "settings": now, "settings_hash": spec.settings_hash}, out)
    assert results.finished(seed1) is not None
    assert [r["seed"] for r in collect(out).runs] == [0, 1]


def test_a_committed_result_with_another_setting_is_still_refused(tmp_path):
    out = tmp_path / "out"
    spec, path = _committed_run(out)
    record = json.loads(path.read_text())
    record["settings"]["agent_config.learning_starts"] = 5000  # the hash stays the old one
    path.write_text(json.dumps(record))
    with pytest.raises(UserError) as refused:
        results.finished(spec)
    message = str(refused.value)
    assert message.startswith(f"{COMMITTED_RUN} was made with other settings "
                              "(agent_config.learning_starts 5000 in the file, 1000 now): ")
    assert "auto" not in message  # the auto settings, resolved, are not what differs


def test_a_shorter_result_is_continued_not_refused(small_grid, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_grid["out"], out)
    _edit_result(out, "none", 0, steps=200)
    specs = grid.specs_of(grid.read_grid(out / "grid.json"), out,
                          str(small_grid["argv"][small_grid["argv"].index("--config") + 1]))
    assert [results.finished(s) is None for s in specs] == [True, False, False, False]
    # A result file that is not a run record is refused, not taken as done or trained over.
    path = _edit_result(out, "batch", 0, eval_returns="high")
    with pytest.raises(UserError, match=f"{path} is not a bnrl result file \\(bad eval_returns"):
        results.finished(specs[2])


def _grid(cells, variants, seeds=2, config=None, eval_every=None, baseline="none") -> dict:
    from bnrl.compare.variants import Variant

    return grid.grid_record(cells, [Variant(n, s) for n, s in variants], baseline, seeds, config,
                            eval_every)


def test_merge_grids_unions_comparable_grids_and_refuses_the_rest():
    none, batch = ("none", {"critic_norm": "none"}), ("batch", {"critic_norm": "batch"})
    old = _grid([("sac", "Pendulum-v1", 300)], [none, batch])
    new = _grid([("sac", "Pendulum-v1", 300), ("sac", "Hopper-v5", 500)],
                [none, ("cq", {"agent": "crossq"})], seeds=3)
    merged = grid.merge_grids(old, new, "--extend", steps_may_change=True)
    assert merged["cells"] == new["cells"] and merged["seeds"] == 3
    assert [v["name"] for v in merged["variants"]] == ["none", "batch", "cq"]

    longer = _grid([("sac", "Pendulum-v1", 600)], [none])
    assert grid.merge_grids(old, longer, "--extend", steps_may_change=True)["cells"] == [
        {"agent": "sac", "env": "Pendulum-v1", "steps": 600}]
    for other, message in (
            (longer, "merging x: sac on Pendulum-v1 has 300 steps in one piece and 600"),
            (_grid([("sac", "Pendulum-v1", 300)], [("batch", {"critic_norm": "layer"})]),
             "merging x cannot change the settings of variant 'batch' (critic_norm=batch "
             "before, critic_norm=layer now)"),
            (_grid([("sac", "Pendulum-v1", 300)], [none], config="agent: {tau: 0.1}\n"),
             "merging x cannot change --config"),
            (_grid([("sac", "Pendulum-v1", 300)], [none], eval_every=50),
             "merging x cannot change --eval-every")):
        with pytest.raises(UserError, match=re.escape(message)):
            grid.merge_grids(old, other, "merging x", steps_may_change=False)


def test_a_grid_json_of_the_previous_layout_is_read(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"agents": ["sac", "td3"], "envs": ["Pendulum-v1"],
                                "variants": ["none", "batch"], "seeds": 3, "steps": 20000,
                                "config": None}))
    assert grid.read_grid(path) == _grid([("sac", "Pendulum-v1", 20000),
                                          ("td3", "Pendulum-v1", 20000)],
                                         [("none", {"critic_norm": "none"}),
                                          ("batch", {"critic_norm": "batch"})], seeds=3)


@pytest.mark.parametrize(("argv", "message"), [
    (["report", "{d}/nope"], "{d}/nope is not a directory"),
    (["merge", "--out", "{d}/f", "{d}"], "--out {d}/f is a file"),
    (["merge", "--out", "{d}/m", "{d}/m"], "is the --out directory itself"),
])
def test_report_and_merge_bad_input_is_one_line(argv, message, capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "grid.json").write_text(json.dumps(_grid(
        [("sac", "Pendulum-v1", 300)], [("none", {"critic_norm": "none"})])))
    rc, stdout, err = _bench(capsys, [a.replace("{d}", str(tmp_path)) for a in argv])
    assert rc == 2 and stdout == ""
    assert message.replace("{d}", str(tmp_path)) in _one_error_line(err)


def _piece(source: Path, dest: Path, seed: int) -> Path:
    """A benchmark directory holding only ``seed``'s result files (no run directories)."""
    dest.mkdir()
    shutil.copy(source / "grid.json", dest / "grid.json")
    for path in (source / "results").rglob(f"seed{seed}.json"):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return dest


def test_pieces_merge_into_the_same_report(small_grid, capsys, tmp_path):
    source = small_grid["out"]
    a, b = _piece(source, tmp_path / "a", 0), _piece(source, tmp_path / "b", 1)

    # A piece alone is a partial grid, and its report says so.
    rc, _, _ = _bench(capsys, ["report", str(a)])
    assert rc == 0
    report = (a / "report.md").read_text()
    assert "**Incomplete grid: 2 of 4 runs missing, 0 failed.**" in report
    assert ("Missing runs: sac/Pendulum-v1/none/seed1, sac/Pendulum-v1/batch/seed1"
            in report)

    merged = tmp_path / "merged"
    rc, stdout, _ = _bench(capsys, ["merge", "--out", str(merged), str(a), str(b)])
    assert rc == 0
    assert stdout.strip() == f"merged 4 result files into {merged}; report: {merged}/report.md"
    assert sorted(p.relative_to(merged).as_posix() for p in (merged / "results").rglob("*")
                  if p.is_file()) == [f"results/sac/Pendulum-v1/{v}/seed{k}.json"
                                      for v in ("batch", "none") for k in (0, 1)]
    assert json.loads((merged / "grid.json").read_text()) == json.loads(
        (source / "grid.json").read_text())
    # Same runs, same report as the grid run in one piece (the report is deterministic).
    assert (merged / "report.md").read_text() == small_grid["report"]
    # Merging again copies nothing; copying result files in by hand and `report` works too.
    rc, stdout, _ = _bench(capsys, ["merge", "--out", str(merged), str(a), str(b)])
    assert rc == 0 and stdout.startswith("merged 0 result files")
    shutil.copytree(b / "results", a / "results", dirs_exist_ok=True)
    rc, _, _ = _bench(capsys, ["report", str(a)])
    assert rc == 0 and (a / "report.md").read_text() == small_grid["report"]


def test_merge_refuses_conflicting_pieces(small_grid, capsys, tmp_path):
    source = small_grid["out"]
    a = _piece(source, tmp_path / "a", 0)
    twin = _piece(source, tmp_path / "twin", 0)
    path = _edit_result(twin, "none", 0, final_return=-1.0)
    other = _piece(source, tmp_path / "other", 1)
    record = json.loads((other / "grid.json").read_text())
    record["cells"][0]["steps"] = 400
    (other / "grid.json").write_text(json.dumps(record))
    for pieces, message in (
            ([a, twin], f"sac/Pendulum-v1/none/seed0 has different results in {path} and in "),
            ([a, other], "Pendulum-v1 has 300 steps in one piece and 400 in another"),
            ([a, tmp_path / "nothing"], "is not a benchmark directory (no grid.json)")):
        out = tmp_path / f"merged{len(message)}"
        rc, stdout, err = _bench(capsys, ["merge", "--out", str(out), *map(str, pieces)])
        assert rc == 2 and stdout == ""
        assert message in _one_error_line(err)
        assert not out.exists()  # a refused merge leaves no --out behind


# --------------------------------------------------------------------------- #
# 7. The Ray backend
# --------------------------------------------------------------------------- #
@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    try:
        # The raylet and its workers inherit this process's environment, so the autouse
        # fixture's PYTHONPATH lets the Ray workers import compare.workers and the agents.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - e.g. no shared memory or sockets in a sandbox
        pytest.skip(f"cannot start a local Ray cluster here: {type(exc).__name__}: {exc}")
    yield ray
    ray.shutdown()


def test_ray_backend_runs_the_grid(local_ray, config_file, capsys, monkeypatch, tmp_path):
    """Through Ray, with --seeds-per-process 2: each variant's two seeds train together in one
    task (issue 29; a task of one run is a unit like any other, as the local workers' are)."""
    out = tmp_path / "out"
    monkeypatch.setattr(workers, "_run_local", _no_workers)  # every run must go through Ray
    argv = _grid_args(out, config_file, "--backend", "ray", "--seeds-per-process", "2",
                      steps=200)
    rc, stdout, _ = _bench(capsys, argv)
    assert rc == 0, stdout
    runs = _runs(out)
    assert [(r["variant"], r["seed"], r["status"]) for r in runs] == [
        (v, k, "ok") for v in ("none", "batch") for k in (0, 1)]
    for r in runs:
        assert all(r.get(key) is not None for key in RUN_KEYS), r
        assert json.loads((Path(r["run_dir"]) / "summary.json").read_text())["steps"] == 200
    assert runs[2]["bn_stats"]["bn_Q_moving_mean"]
    assert runs[0]["eval_returns"] != runs[1]["eval_returns"]  # grouped seeds trained apart
    assert "IQM" in (out / "report.md").read_text()
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    # Each task logged its progress where the grid's line reads it: in its first run's log,
    # both its seeds.
    for variant in ("none", "batch"):
        cell = out / "runs" / "sac" / "Pendulum-v1" / variant
        text = (cell / "seed0.log").read_text()
        assert "s0] step 200/200" in text and "s1] step 200/200" in text, text
        assert not (cell / "seed1.log").exists()

    # The Ray backend skips finished runs like the local one (and does not submit tasks).
    monkeypatch.setattr(workers, "_run_ray", _no_workers)
    rc, _, _ = _bench(capsys, argv)
    assert rc == 0


# --------------------------------------------------------------------------- #
# 8. The quick default benchmark (planned, not run)
# --------------------------------------------------------------------------- #
def test_quick_default_plans_the_quick_grid(capsys, monkeypatch, tmp_path):
    specs = grid.plan(tmp_path / "direct", **grid.QUICK)
    variants = ("none", "batch_naive", "batch")
    assert len(specs) == 15
    assert {(s.agent, s.env, s.steps) for s in specs} == {("td3", "Pendulum-v1", 6000)}
    assert sorted((s.variant, s.seed) for s in specs) == sorted(
        (v, k) for v in variants for k in range(5))
    quick_yaml = Path(grid.QUICK["config_file"])
    assert quick_yaml == Path(bnrl.configs.__file__).resolve().with_name("quick.yaml")
    # Its settings reach the runs: 128-unit layers over the TD3 preset of Pendulum-v1.
    config = results.resolve_spec(specs[0])
    assert list(config.agent_config.hidden) == [128, 128] == list(config.agent_config.actor_hidden)
    assert config.eval_every == 1000 and config.agent_config.action_noise_std == 0.1

    # `run.py benchmark` with no arguments plans exactly that grid in bench_out/quick, and
    # `--seeds 6` the same cell and settings with one more seed.
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_run_grid(specs, out, workers, backend="local", address=None, on_result=None,
                      progress=None, seeds_per_process=1):
        seen.update(specs=specs, out=out, backend=backend)
        records = [{**results.base_record(s, "ok"), "eval_steps": [6000], "eval_returns": [0.0],
                    "final_return": 0.0} for s in specs]
        for record in records:
            results.write_result(record, out)
        return records

    monkeypatch.setattr(cli, "run_grid", fake_run_grid)
    rc, stdout, _ = _bench(capsys, ["benchmark"])
    assert rc == 0
    assert seen["out"] == Path("bench_out/quick") and seen["backend"] == "local"
    assert sorted((s.agent, s.env, s.variant, s.seed, s.steps, s.eval_every, s.config_file)
                  for s in seen["specs"]) == sorted(
        ("td3", "Pendulum-v1", v, k, 6000, None, str(quick_yaml)) for v in variants
        for k in range(5))
    assert "benchmark: 15 runs in bench_out/quick" in stdout
    recorded = json.loads((tmp_path / "bench_out/quick/grid.json").read_text())
    assert recorded["cells"] == [{"agent": "td3", "env": "Pendulum-v1", "steps": 6000}]
    assert recorded["config"] == quick_yaml.read_text()

    rc, stdout, err = _bench(capsys, ["benchmark", "--seeds", "6", "--out", "more"])
    assert rc == 0 and "benchmark: 18 runs in more" in stdout, err
    assert {s.config_file for s in seen["specs"]} == {str(quick_yaml)}
    # Another cell is the presets' own, none vs batch: the quick settings are TD3-on-Pendulum
    # settings, and batch_naive sets an actor's mode, which DQN has not.
    rc, _, err = _bench(capsys, ["benchmark", "--agent", "dqn", "--env", "CartPole-v1", "--steps",
                                 "6000", "--out", "dqn"])
    assert rc == 0, err
    assert {(s.agent, s.variant, s.config_file) for s in seen["specs"]} == {
        ("dqn", "none", None), ("dqn", "batch", None)}


# --------------------------------------------------------------------------- #
# results.json is rewritten as each run finishes (no training needed)
# --------------------------------------------------------------------------- #
def test_results_json_is_rewritten_after_each_run(monkeypatch, tmp_path):
    specs = grid.plan(tmp_path, ["sac"], ["Pendulum-v1"], ["none", "batch"], 2, 300)
    seen = []

    def fake_local(units, workers, publish, progress=None, label=None):
        # Started seed by seed: every variant's seed 0 first (a stopped grid stays balanced).
        assert all(len(unit) == 1 for unit in units)
        todo = [unit[0] for unit in units]
        assert [(s.variant, s.seed) for s in todo] == [
            ("none", 0), ("batch", 0), ("none", 1), ("batch", 1)]
        for spec in reversed(todo):  # completion order differs from grid order
            publish(results.base_record(spec, error="RuntimeError: boom"), spec)
            seen.append([(r["variant"], r["seed"]) for r in _runs(tmp_path)])

    monkeypatch.setattr(workers, "_run_local", fake_local)
    records = workers.run_grid(specs, tmp_path, workers=2)
    # Each rewrite holds the runs finished so far, in grid order.
    assert seen == [[("batch", 1)], [("none", 1), ("batch", 1)],
                    [("none", 1), ("batch", 0), ("batch", 1)],
                    [("none", 0), ("none", 1), ("batch", 0), ("batch", 1)]]
    assert [r["status"] for r in records] == ["failed"] * 4
