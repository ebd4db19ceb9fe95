"""Run an agent x env x variant x seed grid of ordinary training runs, in parallel, resumably.

Each run is a normal ``run.py train`` directory under ``OUT/runs/<agent>/<env>/<variant>/seed<k>``
(so ``tensorboard --logdir OUT`` shows all variants side by side and ``run.py evaluate`` works
on any of them). ``OUT/grid.json`` records the grid; re-running the same command skips finished
runs and resumes or redoes the others; ``OUT/results.json`` is rewritten as each run finishes.
Runs go to worker processes (one fresh Python process per run, TensorFlow limited to its share
of the cores) or, with ``backend="ray"``, to Ray tasks on an existing cluster.

Local runs are isolated: a run whose process dies for any reason (SIGKILL, a segfault, the OOM
killer) is recorded as failed with the cause and the last lines of its log
(``runs/<agent>/<env>/<variant>/seed<k>.log``), and every other run still runs. Workers die with
the benchmark process (``PR_SET_PDEATHSIG``), so killing it leaves no orphan training on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bnrl.training.errors import UserError, one_line
from bnrl.training.files import atomic_write

QUICK = dict(agents=["sac"], envs=["Pendulum-v1"], variants=["none", "batch"], seeds=3,
             steps=6000)
"""The embedded quick benchmark: about 5 minutes on 2 cores."""


@dataclass(frozen=True)
class RunSpec:
    agent: str
    env: str
    variant: str
    seed: int
    steps: int
    config_file: str | None
    run_dir: str
    threads: int
    eval_every: int | None = None

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.env}/{self.variant}/seed{self.seed}"


def _grid_record(agents, envs, variants, seeds, steps, config_text, eval_every=None) -> dict:
    return {"agents": list(agents), "envs": list(envs), "variants": list(variants),
            "seeds": int(seeds), "steps": int(steps), "config": config_text,
            "eval_every": eval_every}


def _merge_grid(old: dict, new: dict) -> dict:
    merged = dict(new)
    for key in ("agents", "envs", "variants"):
        merged[key] = old[key] + [v for v in new[key] if v not in old[key]]
    merged["seeds"] = max(old["seeds"], new["seeds"])
    return merged


# What grid.json holds, by type (eval_every was added later: None when absent).
_GRID_FIELDS = {"agents": list, "envs": list, "variants": list, "seeds": int, "steps": int,
                "config": (str, type(None)), "eval_every": (int, type(None))}


def _read_grid(path: Path) -> dict:
    """The recorded grid of a benchmark directory; UserError when it is not one."""
    try:
        grid = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise UserError(f"{path} is unreadable ({reason}): move it away or choose another "
                        "--out") from None
    if isinstance(grid, dict):
        grid.setdefault("eval_every", None)  # grid.json of a version that did not record it
    bad = sorted(key for key, kind in _GRID_FIELDS.items()
                 if not isinstance(grid, dict) or not isinstance(grid.get(key), kind)
                 or (kind is list and not all(isinstance(v, str) for v in grid[key])))
    if bad:
        raise UserError(f"{path} is not a bnrl benchmark record (bad or missing "
                        f"{', '.join(bad)}): move it away or choose another --out")
    return grid


def plan(out: Path, agents, envs, variants, seeds: int, steps: int, config_file=None,
         extend: bool = False, workers: int = 1, eval_every: int | None = None) -> list[RunSpec]:
    """Check or record ``OUT/grid.json`` and return every run of the grid."""
    config_text = Path(config_file).read_text(encoding="utf-8") if config_file else None
    grid = _grid_record(agents, envs, variants, seeds, steps, config_text, eval_every)
    grid_file = out / "grid.json"
    if grid_file.exists():
        old = _read_grid(grid_file)
        if old != grid:
            if not extend:
                raise UserError(
                    f"{out} holds a different benchmark ({_describe(old)}); rerun the same "
                    "command to finish it, pass --extend to grow it, or choose another --out")
            settings = (("config", "--config"), ("eval_every", "--eval-every"))
            changed = [flag for key, flag in settings if old[key] != grid[key]]
            if changed:
                raise UserError(
                    f"--extend cannot change {' or '.join(changed)} of the benchmark in {out}: "
                    "its runs would not be comparable; pass the same settings or choose "
                    "another --out")
            grid = _merge_grid(old, grid)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(grid_file, json.dumps(grid, indent=1))
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    return [RunSpec(a, e, v, s, grid["steps"], config_file,
                    str(out / "runs" / a / e.replace(":", "_") / v / f"seed{s}"), threads,
                    eval_every)
            for a in grid["agents"] for e in grid["envs"] for v in grid["variants"]
            for s in range(grid["seeds"])]


def _describe(grid: dict) -> str:
    return (f"agents {','.join(grid['agents'])}, envs {','.join(grid['envs'])}, variants "
            f"{','.join(grid['variants'])}, {grid['seeds']} seeds, {grid['steps']} steps"
            + (f", --eval-every {grid['eval_every']}" if grid.get("eval_every") else ""))


def finished(spec: RunSpec) -> dict | None:
    """The run's summary when it completed the grid's step budget, else None (an unreadable
    summary counts as unfinished: the run resumes from its last checkpoint and rewrites it)."""
    try:
        summary = json.loads((Path(spec.run_dir) / "summary.json").read_text(encoding="utf-8"))
        _record_from_summary(summary)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return summary if summary.get("steps") == spec.steps else None


def _base_record(spec: RunSpec, status: str = "failed", error: str | None = None) -> dict:
    return {"agent": spec.agent, "env": spec.env, "variant": spec.variant, "seed": spec.seed,
            "run_dir": spec.run_dir, "status": status, "error": error}


def run_one(spec: RunSpec) -> dict:
    """Train one grid run (in a worker process) and return its result record; never raises."""
    record = _base_record(spec)
    try:
        from bnrl.training.quiet import quiet_tensorflow

        quiet_tensorflow()
        from bnrl.training import resolve, train

        config = resolve(spec.agent, spec.env, spec.config_file,
                         {"steps": spec.steps, "seed": spec.seed, "eval_every": spec.eval_every},
                         {"critic_norm": spec.variant})
        resume = (Path(spec.run_dir) / "config.yaml").exists()
        stale = Path(spec.run_dir) / "error.txt"
        if not resume and stale.exists():
            # An earlier attempt failed before the run started (e.g. making its env): its
            # error.txt alone would make train() refuse the existing directory.
            stale.unlink()
        summary = train(config, spec.run_dir, resume=resume, progress="none",
                        threads=spec.threads)
        record.update(_record_from_summary(summary), status="ok")
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
            "bn_stats")
    record = {k: summary.get(k) for k in keys}
    from bnrl.compare.stats import area_under_curve

    record["auc"] = area_under_curve(summary["eval_steps"], summary["eval_returns"])
    return record


def run_grid(specs: list[RunSpec], out: Path, workers: int, backend: str = "local",
             address: str | None = None, on_result=None) -> list[dict]:
    """Run every unfinished spec; write ``results.json`` after each; return all records."""
    records: dict[str, dict] = {}
    todo = []
    for spec in specs:
        summary = finished(spec)
        if summary is None:
            todo.append(spec)
        else:
            records[spec.key] = {**_base_record(spec, "ok"), **_record_from_summary(summary)}
    order = [s.key for s in specs]

    def publish(record: dict, spec: RunSpec) -> None:
        records[spec.key] = record
        atomic_write(out / "results.json", json.dumps(
            {"runs": [records[k] for k in order if k in records]}, indent=1))
        if on_result is not None:
            on_result(record, len(records), len(specs))

    if not todo:
        atomic_write(out / "results.json", json.dumps(
            {"runs": [records[k] for k in order]}, indent=1))
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


def _result_file(spec: RunSpec) -> Path:
    return Path(spec.run_dir).with_name(Path(spec.run_dir).name + ".result.json")


def _start_worker(spec: RunSpec) -> subprocess.Popen:
    import bnrl

    log = _log_file(spec)
    log.parent.mkdir(parents=True, exist_ok=True)
    _result_file(spec).unlink(missing_ok=True)
    payload = {"spec": dataclasses.asdict(spec), "result": str(_result_file(spec)),
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
    result = _result_file(spec)
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
