"""Run an agent x env x variant x seed grid of ordinary training runs, in parallel, resumably.

A grid is a list of cells (agent, env, step budget), a list of named variants (sets of agent
settings, ``compare.variants``) with a baseline, and a number of seeds. Each run is a normal
``run.py train`` directory under ``OUT/runs/<agent>/<env>/<variant>/seed<k>`` (so
``tensorboard --logdir OUT`` shows all variants side by side and ``run.py evaluate`` works on any
of them). ``OUT/grid.json`` records the grid.

Each finished run also leaves a small, portable result file,
``OUT/results/<agent>/<env>/<variant>/seed<k>.json``: its evaluation curve, a thinned BN
diagnostics series, the bnrl version and a hash of every resolved setting that decides its
result (all of the agent and train config except the seed and what ``--resume`` may change).
A run counts as done when its result file exists with this grid's hash, version and step
budget; a result file made with other settings or another bnrl version is refused, never mixed
in. Result files of pieces of a grid run elsewhere can be copied into ``OUT/results`` (or merged
with ``run.py merge``) and reported together. ``OUT/results.json`` (every record, failed ones
included) is rewritten as each run finishes.

Runs go to worker processes (one fresh Python process per run, TensorFlow limited to its share
of the cores) or, with ``backend="ray"``, to Ray tasks on an existing cluster.

Local runs are isolated: a run whose process dies for any reason (SIGKILL, a segfault, the OOM
killer) is recorded as failed with the cause and the last lines of its log
(``runs/<agent>/<env>/<variant>/seed<k>.log``), and every other run still runs. Workers die with
the benchmark process (``PR_SET_PDEATHSIG``), so killing it leaves no orphan training on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bnrl.training.errors import UserError, one_line
from bnrl.training.files import atomic_write

QUICK = dict(agents=["sac"], envs=["Pendulum-v1"], variants=["none", "batch"], seeds=3,
             steps=6000)
"""The embedded quick benchmark: about 5 minutes on 2 cores."""

BN_POINTS = 50
"""Points of each BN diagnostics series kept in a result file (the file stays a few KB)."""


@dataclass(frozen=True)
class RunSpec:
    agent: str
    """The grid's agent (the column); a variant may train another (``run_agent``)."""
    env: str
    variant: str
    seed: int
    steps: int
    config_file: str | None
    run_dir: str
    threads: int
    eval_every: int | None = None
    settings: dict = field(default_factory=dict)
    """The variant's settings; ``agent`` among them replaces the grid's agent."""
    out: str | None = None
    """The benchmark directory (where ``results/`` lives)."""
    settings_hash: str | None = None
    """``settings_hash`` of the resolved config this run must have."""

    @property
    def key(self) -> str:
        return run_key(self.agent, self.env, self.variant, self.seed)

    @property
    def run_agent(self) -> str:
        return self.settings.get("agent", self.agent)

    @property
    def result_file(self) -> Path:
        return result_path(self.out, self.agent, self.env, self.variant, self.seed)


def run_key(agent: str, env: str, variant: str, seed: int) -> str:
    return f"{agent}/{env}/{variant}/seed{seed}"


def result_path(out, agent: str, env: str, variant: str, seed: int) -> Path:
    """Where a run's result file lives in a benchmark directory."""
    return Path(out) / "results" / agent / env.replace(":", "_") / variant / f"seed{seed}.json"


def resolve_spec(spec: RunSpec):
    """The RunConfig a grid run trains with: presets < ``--config`` < the variant's settings."""
    from bnrl.training import resolve

    settings = {k: v for k, v in spec.settings.items() if k != "agent"}
    return resolve(spec.run_agent, spec.env, spec.config_file,
                   {"steps": spec.steps, "seed": spec.seed, "eval_every": spec.eval_every},
                   settings)


def deciding_settings(config) -> dict:
    """Every resolved setting that decides a run's result, flat (``agent_config.x``): all but
    the seed (recorded apart) and what ``--resume`` may change (the step budget, recorded apart,
    bookkeeping and thread counts)."""
    from bnrl.training.config import RESUMABLE

    return {k: v for k, v in sorted(config.flat_dict().items())
            if k not in RESUMABLE and k != "seed"}


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------- grid.json
def grid_record(cells, variants, baseline: str, seeds: int, config_text: str | None,
                eval_every: int | None = None) -> dict:
    """What ``OUT/grid.json`` holds.

    Args:
      cells: ``(agent, env, steps)`` triples.
      variants: ``compare.variants.Variant`` objects, in order.
    """
    return {"cells": [{"agent": a, "env": e, "steps": int(s)} for a, e, s in cells],
            "variants": [{"name": v.name, "settings": dict(v.settings)} for v in variants],
            "baseline": baseline, "seeds": int(seeds), "config": config_text,
            "eval_every": eval_every}


def merge_grids(old: dict, new: dict, where: str, steps_may_change: bool) -> dict:
    """The union of two grids whose runs are comparable; one-line UserError otherwise.

    ``--extend`` (``steps_may_change``) may give a cell a new step budget (its runs continue to
    it); merging pieces may not (their runs would differ in length).
    """
    for key, what in (("config", "--config"), ("eval_every", "--eval-every")):
        if old[key] != new[key]:
            raise UserError(f"{where} cannot change {what} of the benchmark: its runs would not "
                            "be comparable; pass the same settings or choose another --out")
    merged = dict(new)
    variants = {v["name"]: v for v in old["variants"]}
    for v in new["variants"]:
        if v["name"] in variants and variants[v["name"]]["settings"] != v["settings"]:
            raise UserError(f"{where} cannot change the settings of variant '{v['name']}' "
                            f"({_settings_text(variants[v['name']]['settings'])} before, "
                            f"{_settings_text(v['settings'])} now): give the new settings "
                            "another name")
        variants.setdefault(v["name"], v)
    merged["variants"] = list(variants.values())
    cells = {(c["agent"], c["env"]): c for c in old["cells"]}
    for c in new["cells"]:
        before = cells.get((c["agent"], c["env"]))
        if before is not None and before["steps"] != c["steps"] and not steps_may_change:
            raise UserError(f"{where}: {c['agent']} on {c['env']} has {before['steps']} steps "
                            f"in one piece and {c['steps']} in another: pieces of one grid "
                            "need the same step budgets")
        cells[(c["agent"], c["env"])] = c
    merged["cells"] = list(cells.values())
    merged["seeds"] = max(old["seeds"], new["seeds"])
    merged["baseline"] = new["baseline"] if steps_may_change else old["baseline"]
    return merged


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "no settings"


def read_grid(path: Path) -> dict:
    """The recorded grid of a benchmark directory; UserError when it is not one."""
    try:
        grid = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise UserError(f"{path} is unreadable ({reason}): move it away or choose another "
                        "--out") from None
    if isinstance(grid, dict) and "cells" not in grid and "agents" in grid:
        grid = _from_old_grid(grid)
    bad = sorted(key for key, ok in _GRID_CHECKS.items()
                 if not isinstance(grid, dict) or not _safe(ok, grid.get(key)))
    if bad:
        raise UserError(f"{path} is not a bnrl benchmark record (bad or missing "
                        f"{', '.join(bad)}): move it away or choose another --out")
    return grid


def _safe(check, value) -> bool:
    try:
        return bool(check(value))
    except (TypeError, KeyError, AttributeError):
        return False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What grid.json holds: a check per key.
_GRID_CHECKS = {
    "cells": lambda v: isinstance(v, list) and all(
        isinstance(c["agent"], str) and isinstance(c["env"], str) and _is_int(c["steps"])
        for c in v),
    "variants": lambda v: isinstance(v, list) and v and all(
        isinstance(x["name"], str) and isinstance(x["settings"], dict) for x in v),
    "baseline": lambda v: isinstance(v, str),
    "seeds": _is_int,
    "config": lambda v: v is None or isinstance(v, str),
    "eval_every": lambda v: v is None or _is_int(v),
}


def _from_old_grid(old: dict) -> dict:
    """A grid.json of bnrl <= 0.2 (agents x envs, one step budget, variants = critic norms)."""
    try:
        variants = [{"name": v, "settings": {"critic_norm": v}} for v in old["variants"]]
        names = [v["name"] for v in variants]
        return {"cells": [{"agent": a, "env": e, "steps": old["steps"]}
                          for a in old["agents"] for e in old["envs"]],
                "variants": variants, "baseline": "none" if "none" in names else names[0],
                "seeds": old["seeds"], "config": old.get("config"),
                "eval_every": old.get("eval_every")}
    except (KeyError, TypeError):
        return old  # reported as not a benchmark record by the checks


def describe_grid(grid: dict) -> str:
    cells = ", ".join(f"{c['agent']} on {c['env']} ({c['steps']} steps)" for c in grid["cells"])
    return (f"{cells}; variants {','.join(v['name'] for v in grid['variants'])}; "
            f"{grid['seeds']} seeds"
            + (f", --eval-every {grid['eval_every']}" if grid.get("eval_every") else ""))


def plan(out: Path, agents, envs, variants, seeds: int, steps, config_file=None,
         extend: bool = False, workers: int = 1, eval_every: int | None = None,
         baseline: str | None = None) -> list[RunSpec]:
    """Check or record ``OUT/grid.json`` and return every run of the grid.

    Args:
      agents: a list of agents run on every env, or ``{env: [agents]}``.
      envs: env ids.
      variants: ``Variant`` objects, or names of built-in variants.
      steps: the step budget, or ``{env: steps}``.
      baseline: the variant every other is compared with (default the first).
    """
    from bnrl.compare.variants import builtin_variants

    builtins = None
    chosen = []
    for v in variants:
        if isinstance(v, str):
            builtins = builtins or builtin_variants()
            v = builtins[v]
        chosen.append(v)
    cells = [(a, e, steps[e] if isinstance(steps, dict) else steps)
             for e in envs for a in (agents[e] if isinstance(agents, dict) else agents)]
    config_text = Path(config_file).read_text(encoding="utf-8") if config_file else None
    grid = grid_record(cells, chosen, baseline or chosen[0].name, seeds, config_text, eval_every)
    grid_file = out / "grid.json"
    if grid_file.exists():
        old = read_grid(grid_file)
        if old != grid:
            if not extend:
                raise UserError(
                    f"{out} holds a different benchmark ({describe_grid(old)}); rerun the same "
                    "command to finish it, pass --extend to grow it, or choose another --out")
            grid = merge_grids(old, grid, "--extend", steps_may_change=True)
    specs = specs_of(grid, out, config_file, workers)
    for spec in specs:  # refuse a result file that does not match before anything changes
        finished(spec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(grid_file, json.dumps(grid, indent=1))
    return specs


def specs_of(grid: dict, out: Path, config_file=None, workers: int = 1) -> list[RunSpec]:
    """Every run of a recorded grid, each with the settings hash it must have."""
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    specs = []
    for cell in grid["cells"]:
        for variant in grid["variants"]:
            first = RunSpec(cell["agent"], cell["env"], variant["name"], 0, cell["steps"],
                            config_file, "", threads, grid["eval_every"],
                            dict(variant["settings"]), str(out))
            digest = settings_hash(deciding_settings(resolve_spec(first)))
            for seed in range(grid["seeds"]):
                run_dir = (out / "runs" / cell["agent"] / cell["env"].replace(":", "_")
                           / variant["name"] / f"seed{seed}")
                specs.append(dataclasses.replace(first, seed=seed, run_dir=str(run_dir),
                                                 settings_hash=digest))
    return specs


# ---------------------------------------------------------------------------- result files
def read_result(path: Path) -> dict | None:
    """A result file's record, or None when there is none or it is unreadable (the run is then
    trained again, which rewrites it)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def finished(spec: RunSpec) -> dict | None:
    """The record of a finished run of ``spec``, or None when it must (still) be trained.

    Raises:
      UserError: its result file was made by another bnrl version, with other settings or a
        larger step budget: mixing it in would be silent, rerunning would discard it.
    """
    import bnrl
    from bnrl.compare.report import record_problem

    record = read_result(spec.result_file)
    if record is None or record.get("status") != "ok":
        return None
    fix = f"move {spec.result_file} away to train that run again, or choose another --out"
    problem = record_problem(record) or (None if isinstance(record.get("run_dir"), str)
                                         else "no run_dir")
    if problem:
        raise UserError(f"{spec.result_file} is not a bnrl result file ({problem}): {fix}")
    if record.get("bnrl_version") != bnrl.__version__:
        raise UserError(f"{spec.key} was made by bnrl {record.get('bnrl_version')}, this is "
                        f"bnrl {bnrl.__version__}: {fix}")
    if spec.settings_hash is not None and record.get("settings_hash") != spec.settings_hash:
        raise UserError(f"{spec.key} was made with other settings "
                        f"({settings_difference(record.get('settings'), spec)}): {fix}")
    steps = record.get("steps")
    if not _is_int(steps) or steps < spec.steps:
        return None  # a shorter budget (--extend): the run continues from its checkpoint
    if steps > spec.steps:
        raise UserError(f"{spec.key} was trained for {steps} steps, this grid has "
                        f"{spec.steps}: {fix}")
    return {**record, "run_dir": str(Path(spec.out) / record["run_dir"])}


def settings_difference(saved, spec: RunSpec) -> str:
    """The settings in which a result file differs from what ``spec`` resolves to."""
    wanted = deciding_settings(resolve_spec(spec))
    saved = saved if isinstance(saved, dict) else {}
    changed = [f"{k} {saved.get(k)!r} in the file, {wanted.get(k)!r} now"
               for k in dict.fromkeys([*saved, *wanted]) if saved.get(k) != wanted.get(k)]
    if not changed:
        return "the settings hash differs"
    return "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")


def write_result(record: dict, out: Path) -> None:
    """Write a finished run's result file (``run_dir`` relative to ``out``, so the file can be
    copied into another benchmark directory)."""
    path = result_path(out, record["agent"], record["env"], record["variant"], record["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    portable = {**record, "run_dir": os.path.relpath(record["run_dir"], out)}
    atomic_write(path, json.dumps(portable, indent=1))


def _base_record(spec: RunSpec, status: str = "failed", error: str | None = None) -> dict:
    return {"agent": spec.agent, "env": spec.env, "variant": spec.variant, "seed": spec.seed,
            "run_dir": spec.run_dir, "status": status, "error": error}


def run_one(spec: RunSpec) -> dict:
    """Train one grid run (in a worker process) and return its result record; never raises."""
    record = _base_record(spec)
    try:
        from bnrl.training.quiet import quiet_tensorflow

        quiet_tensorflow()
        import bnrl
        from bnrl.training import train

        config = resolve_spec(spec)
        settings = deciding_settings(config)
        resume = (Path(spec.run_dir) / "config.yaml").exists()
        stale = Path(spec.run_dir) / "error.txt"
        if not resume and stale.exists():
            # An earlier attempt failed before the run started (e.g. making its env): its
            # error.txt alone would make train() refuse the existing directory.
            stale.unlink()
        summary = train(config, spec.run_dir, resume=resume, progress="none",
                        threads=spec.threads)
        record.update(_record_from_summary(summary), status="ok", run_agent=config.agent,
                      steps=config.steps, bnrl_version=bnrl.__version__,
                      settings_hash=settings_hash(settings), settings=settings,
                      variant_settings=dict(spec.settings))
        error_file = Path(spec.run_dir) / "error.txt"
        if error_file.exists():
            error_file.unlink()
    except BaseException as exc:  # noqa: BLE001 - a failing run must not stop the grid
        lines = str(exc).strip().splitlines()
        record["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        try:
            Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(spec.run_dir) / "error.txt", traceback.format_exc())
        except OSError:
            pass  # the record carries the error; the traceback is only lost with a full disk
    return record


def _record_from_summary(summary: dict) -> dict:
    keys = ("eval_steps", "eval_returns", "final_return", "wall_time_s", "updates_per_second",
            "resumes")
    record = {k: summary.get(k) for k in keys}
    from bnrl.compare.stats import area_under_curve

    record["auc"] = area_under_curve(summary["eval_steps"], summary["eval_returns"])
    record["bn_stats"] = thin_series(summary.get("bn_stats") or {}, BN_POINTS)
    return record


def thin_series(series: dict, points: int) -> dict:
    """Every series of ``{"steps": [...], name: [...]}`` at ``points`` evenly spaced indices
    (the last one always kept), so that a 1M-step run's BN history stays a few KB."""
    n = len(series.get("steps") or [])
    if n <= points:
        return series
    import numpy as np

    keep = np.unique(np.linspace(0, n - 1, points).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in series.items()}


def run_grid(specs: list[RunSpec], out: Path, workers: int, backend: str = "local",
             address: str | None = None, on_result=None) -> list[dict]:
    """Run every unfinished spec; write its result file and ``results.json`` after each; return
    all records. Refuses (UserError) before running anything if a result file does not match."""
    records: dict[str, dict] = {}
    todo = []
    for spec in specs:
        record = finished(spec)
        if record is None:
            todo.append(spec)
        else:
            records[spec.key] = record
    order = [s.key for s in specs]
    # Seed by seed within each cell (every variant's seed 0, then seed 1...), so that a grid
    # stopped part way, or run in sittings, leaves every variant with as many seeds as possible.
    cells: dict[tuple[str, str], int] = {}
    for spec in specs:
        cells.setdefault((spec.agent, spec.env), len(cells))
    todo.sort(key=lambda spec: (cells[spec.agent, spec.env], spec.seed))

    def write_results() -> None:
        atomic_write(out / "results.json", json.dumps(
            {"runs": [records[k] for k in order if k in records]}, indent=1))

    def publish(record: dict, spec: RunSpec) -> None:
        records[spec.key] = record
        if record["status"] == "ok":
            write_result(record, out)
        write_results()
        if on_result is not None:
            on_result(record, len(records), len(specs))

    if not todo:
        write_results()
    elif backend == "ray":
        _run_ray(todo, address, publish)
    else:
        _run_local(todo, workers, publish)
    return [records[k] for k in order]


def _run_local(todo: list[RunSpec], workers: int, publish) -> None:
    """Run each spec in a fresh Python process of its own, ``workers`` at a time.

    One process per run, not a process pool: a pool breaks when one worker dies (SIGKILL, a
    segfault, the OOM killer) and fails every run queued behind it (issue 11). Each run's
    memory also goes back to the system when it ends. Stopping (Ctrl-C) stops the workers.
    """
    queue, running = list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                spec = queue.pop(0)
                running[_start_worker(spec)] = spec
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                spec = running.pop(proc)
                publish(_worker_record(spec, proc.returncode), spec)
    finally:
        _stop(list(running))


# The worker imports the same bnrl as this process, installed or a checkout: run.py, run under
# the name "__mp_main__", makes its own directory the bnrl package (and does nothing else).
_WORKER = ("import json, runpy, sys; payload = json.loads(sys.argv[2]); "
           "sys.path[:] = payload['path']; runpy.run_path(sys.argv[1], run_name='__mp_main__'); "
           "from bnrl.compare.grid import worker_main; worker_main(payload)")


def _log_file(spec: RunSpec) -> Path:
    """A run's worker log, next to (not in) its run directory, which train() wants empty."""
    return Path(spec.run_dir).with_name(Path(spec.run_dir).name + ".log")


def _handoff_file(spec: RunSpec) -> Path:
    """Where a local worker leaves its record for the benchmark process."""
    return Path(spec.run_dir).with_name(Path(spec.run_dir).name + ".result.json")


def _start_worker(spec: RunSpec) -> subprocess.Popen:
    import bnrl

    log = _log_file(spec)
    log.parent.mkdir(parents=True, exist_ok=True)
    _handoff_file(spec).unlink(missing_ok=True)
    payload = {"spec": dataclasses.asdict(spec), "result": str(_handoff_file(spec)),
               "parent": os.getpid(), "path": sys.path}
    run_py = Path(bnrl.__file__).with_name("run.py")
    with open(log, "wb") as out:  # a log stream, not a result: no atomic write
        return subprocess.Popen([sys.executable, "-c", _WORKER, str(run_py), json.dumps(payload)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def worker_main(payload: dict) -> None:
    """A local worker process: train one run and leave its record for the benchmark."""
    _die_with_parent(payload["parent"])
    record = run_one(RunSpec(**payload["spec"]))
    atomic_write(payload["result"], json.dumps(record))


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when the benchmark process dies, however it dies, so
    that no orphan keeps training into a run directory (Linux ``PR_SET_PDEATHSIG``)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the benchmark died before the line above took effect
        os._exit(1)


def _worker_record(spec: RunSpec, returncode: int) -> dict:
    """The record a worker left, or a failed record saying how its process ended."""
    result = _handoff_file(spec)
    if returncode == 0:
        try:
            record = json.loads(result.read_text(encoding="utf-8"))
            result.unlink()
            return record
        except (OSError, ValueError):
            pass
    if returncode < 0:
        try:
            cause = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            cause = f"killed by signal {-returncode}"
        if returncode == -signal.SIGKILL:
            cause += " (out of memory, or killed)"
    else:
        cause = f"exited with code {returncode} without a result"
    tail = _log_tail(_log_file(spec))
    return _base_record(spec, error=f"worker process {cause}"
                        + (f"; last log lines: {tail}" if tail else "")
                        + f" (log: {_log_file(spec)})")


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(one_line(line, 150) for line in last)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminate running workers (their runs resume from their last checkpoint next time)."""
    for proc in procs:
        proc.terminate()
    deadline = time.time() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_ray(todo: list[RunSpec], address: str | None, publish) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'bnrl[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - cannot reach the cluster
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot connect to Ray at {address or 'a new local cluster'}: "
                            f"{first}") from None
    remote = ray.remote(run_one)
    refs = {remote.options(num_cpus=spec.threads).remote(spec): spec for spec in todo}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        spec = refs.pop(done[0])
        try:
            record = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - the task's worker died
            record = _base_record(spec, error=f"ray task failed: {type(exc).__name__}: "
                                  f"{one_line(exc, 300)}")
        publish(record, spec)
