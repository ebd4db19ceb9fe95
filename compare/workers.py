"""Run a grid's unfinished runs, in parallel, and publish each record as it finishes.

Runs go to worker processes (one fresh Python process per run, TensorFlow limited to its share
of the cores) or, with ``backend="ray"``, to Ray tasks on an existing cluster. Each finished run
writes its result file (``compare.results``); ``OUT/results.json`` (every record, failed ones
included) is rewritten as each run finishes.

Local runs are isolated: a run whose process dies for any reason (SIGKILL, a segfault, the OOM
killer) is recorded as failed with the cause and the last lines of its log
(``runs/<agent>/<env>/<variant>/seed<k>.log``), and every other run still runs. Workers die with
the benchmark process (``PR_SET_PDEATHSIG``), so killing it leaves no orphan training on. A
peer library's run (``benchmark --peer``) is trained by its worker in one more process, which
never loads TensorFlow and dies with that worker. Local workers share their XLA compiles
through ``OUT/xla-cache`` (``common.xla_cache``): a cell's later seeds load the executable
its first one compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import bnrl
from bnrl.common.errors import RunFailed, UserError, one_line
from bnrl.common.extras import install_hint
from bnrl.common.files import atomic_write
from bnrl.common.processes import die_with_parent
from bnrl.common.quiet import quiet_tensorflow
from bnrl.common.xla_cache import with_xla_cache
from bnrl.compare.grid import threads_per_process
from bnrl.compare.progress import TTY_EVERY, Running
from bnrl.compare.records import result_problem
from bnrl.compare.results import (
    RunSpec,
    base_record,
    deciding_settings,
    finished,
    record_from_summary,
    resolve_spec,
    run_settings,
    settings_hash,
    write_result,
)
from bnrl.peers import PEERS
from bnrl.training import checkpoint, train, train_group

XLA_CACHE = "xla-cache"
"""The directory in ``OUT`` where local workers share their XLA executables (safe to delete)."""


def run_grid(specs: list[RunSpec], out: Path, workers: int, backend: str = "local",
             address: str | None = None, on_result=None, progress=None,
             seeds_per_process: int = 1) -> list[dict]:
    """Run every unfinished spec; write its result file and ``results.json`` after each; return
    all records. Refuses (UserError) before running anything if a result file does not match.
    ``progress`` (a ``progress.GridProgress``) is kept up to date with the workers or Ray tasks.
    ``seeds_per_process``: unfinished seeds of one cell and variant train together, this many
    in one process (``run_unit``); the records do not depend on it."""
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
    if progress is not None:
        progress.done = len(records)

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

    several_cells = len(cells) > 1

    def label(spec: RunSpec) -> str:
        return (f"{spec.agent} {spec.env} " if several_cells else "") + \
            f"{spec.variant} s{spec.seed}"

    if not todo:
        write_results()
    elif backend == "ray":
        _run_ray(_units(todo, seeds_per_process), address, publish, progress, label)
    else:
        _run_local(_share_cores(_units(todo, seeds_per_process), workers), workers, publish,
                   progress, label)
    return [records[k] for k in order]


def _share_cores(units: list[list[RunSpec]], workers: int) -> list[list[RunSpec]]:
    """``units`` with the machine's cores split among the processes that will run at once: a
    grid of fewer units than ``workers`` (a 5-seed cell grouped in one process, one run left to
    resume) would otherwise train on ``cores // workers`` threads and leave cores idle."""
    threads = threads_per_process(min(workers, len(units)))
    return [[dataclasses.replace(spec, threads=max(spec.threads, threads)) for spec in unit]
            for unit in units]


def _units(todo: list[RunSpec], k: int) -> list[list[RunSpec]]:
    """``todo`` (in its order) as the runs each process trains: up to ``k`` seeds of one cell
    and variant together, each unit where its first run stood. A peer library's run is a unit
    of its own (its library trains one seed a process)."""
    units: list[list[RunSpec]] = []
    filling: dict[tuple, list[RunSpec]] = {}
    for spec in todo:
        unit = filling.get((spec.agent, spec.env, spec.variant))
        if unit is None or len(unit) == k or spec.peer:
            unit = filling[spec.agent, spec.env, spec.variant] = []
            units.append(unit)
        unit.append(spec)
    return units


def _running(spec: RunSpec, label, started: float) -> Running:
    """A run just started, as the grid line shows it; a resumed one from its checkpoint's step."""
    latest = checkpoint.latest(spec.run_dir)
    return Running(label(spec), spec.steps, started,
                   initial=checkpoint.step_of(latest) if latest is not None else 0)


def run_one(spec: RunSpec, progress: str = "none") -> dict:
    """Train one grid run (in a worker process) and return its result record; never raises.
    ``progress``: ``train``'s (a local worker logs plain lines, which the grid's line reads)."""
    return run_unit([spec], progress)[0]


def run_unit(specs: list[RunSpec], progress: str = "none") -> list[dict]:
    """Train grid runs of one cell and variant in this process and return their result
    records; never raises. One run trains alone (``train``, or its peer library's worker);
    several, the seeds of ``--seeds-per-process``, train together (``training.train_group``:
    one graph, one ``sess.run`` per step), each writing what it would alone, and one's failure
    is its own."""
    records = [base_record(spec) for spec in specs]
    ready = {}  # index -> (config, settings, resume)
    for i, spec in enumerate(specs):
        try:
            quiet_tensorflow()  # a Ray task's process imported TensorFlow unquieted
            config = resolve_spec(spec)
            resume = (Path(spec.run_dir) / "config.yaml").exists()
            stale = Path(spec.run_dir) / "error.txt"
            if not resume and stale.exists():
                # An earlier attempt failed before the run started (e.g. making its env): its
                # error.txt alone would make train() refuse the existing directory.
                stale.unlink()
            ready[i] = (config, run_settings(config, spec.peer), resume)
        except BaseException as exc:  # noqa: BLE001 - a failing run must not stop the grid
            _failed(records[i], spec, exc)
    outcomes = {}
    try:
        if len(specs) == 1 and ready and specs[0].peer:
            summary, peer_fields = _train_peer(specs[0], ready[0][0])
            records[0].update(peer_fields)
            outcomes[0] = summary
        elif len(specs) == 1 and ready:
            config, _, resume = ready[0]
            outcomes[0] = train(config, specs[0].run_dir, resume=resume, progress=progress,
                                threads=specs[0].threads)
        elif ready:
            order = list(ready)
            outcomes.update(zip(order, train_group(
                [ready[i][0] for i in order], [specs[i].run_dir for i in order],
                resume=[ready[i][2] for i in order], progress=progress,
                threads=specs[order[0]].threads), strict=True))
    except BaseException as exc:  # noqa: BLE001 - a failing run must not stop the grid
        outcomes = dict.fromkeys(ready, exc)
    for i, outcome in outcomes.items():
        if isinstance(outcome, BaseException):
            _failed(records[i], specs[i], outcome)
        else:
            _finished(records[i], specs[i], *ready[i][:2], outcome)
    return records


def _finished(record: dict, spec: RunSpec, config, settings: dict, summary: dict) -> None:
    record.update(record_from_summary(summary), status="ok", run_agent=config.agent,
                  steps=config.steps, bnrl_version=bnrl.__version__,
                  settings_hash=settings_hash(settings), settings=settings,
                  variant_settings=dict(spec.settings))
    problem = result_problem(record)
    if problem is not None:  # no result file: a rerun tries it again
        record.update(status="failed", error=f"the run ended without a finite result "
                      f"({problem})")
    error_file = Path(spec.run_dir) / "error.txt"
    if error_file.exists():
        error_file.unlink()


def _failed(record: dict, spec: RunSpec, exc: BaseException) -> None:
    lines = str(exc).strip().splitlines()
    record["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    try:
        Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(spec.run_dir) / "error.txt", "".join(traceback.format_exception(exc)))
    except OSError:
        pass  # the record carries the error; the traceback is only lost with a full disk


# A peer library's worker: this bnrl, imported without run.py, which loads TensorFlow (SBX imports
# SB3 and so torch, whose Adam crashes in a process where TensorFlow ran; peers.sbx).
_PEER_WORKER = ("import importlib, importlib.util, json, sys; job = json.loads(sys.argv[1]); "
                "sys.path[:] = job['path']; spec = importlib.util.spec_from_file_location("
                "'bnrl', job['init'], submodule_search_locations=[job['root']]); "
                "bnrl = importlib.util.module_from_spec(spec); sys.modules['bnrl'] = bnrl; "
                "spec.loader.exec_module(bnrl); "
                "importlib.import_module('bnrl.peers.' + job['peer']).worker_main(job)")


def _train_peer(spec: RunSpec, config) -> tuple[dict, dict]:
    """Train ``spec``'s run with its peer library (``peers``) in a process of its own, which
    dies with this one; its summary, and the record's peer fields."""
    peer = PEERS[spec.peer]
    kwargs, differences = peer.arguments(config.agent, deciding_settings(config))
    result = Path(spec.run_dir).with_name(Path(spec.run_dir).name + ".peer.json")
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    package = Path(bnrl.__file__).resolve()
    job = {"peer": spec.peer, "agent": config.agent, "kwargs": kwargs, "env": config.env,
           "seed": config.seed, "steps": config.steps, "eval_every": config.eval_every,
           "eval_episodes": config.eval_episodes, "max_episode_steps": config.max_episode_steps,
           "check_finite": config.check_finite, "checkpoint_every": config.checkpoint_every,
           "threads": spec.threads,
           "run_dir": spec.run_dir, "label": f"{config.agent}/{config.env}/s{config.seed}",
           "result": str(result), "parent": os.getpid(), "path": sys.path,
           "init": str(package), "root": str(package.parent)}
    proc = subprocess.run([sys.executable, "-c", _PEER_WORKER, json.dumps(job)],
                          stdin=subprocess.DEVNULL, check=False)
    try:
        out = json.loads(result.read_text(encoding="utf-8"))
        result.unlink()
    except (OSError, ValueError):
        out = {}
    if "summary" not in out:
        raise RunFailed(out.get("error") or f"the {spec.peer} worker process exited with code "
                        f"{proc.returncode} without a result")
    return out["summary"], {"peer_settings": kwargs, "peer_differences": differences,
                            "peer_versions": peer.versions()}


def _run_local(units: list[list[RunSpec]], workers: int, publish, progress, label) -> None:
    """Run each unit (one run, or seeds trained together) in a fresh Python process of its
    own, ``workers`` at a time.

    One process per unit, not a process pool: a pool breaks when one worker dies (SIGKILL, a
    segfault, the OOM killer) and fails every run queued behind it (issue 11). Each unit's
    memory also goes back to the system when it ends. Stopping (Ctrl-C) stops the workers.
    """
    queue, running, status = list(units), {}, {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                unit = queue.pop(0)
                proc = _start_worker(unit)
                running[proc] = unit
                status[proc] = [_running(spec, label, time.time()) for spec in unit]
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                unit = running.pop(proc)
                status.pop(proc)
                for spec in unit:
                    publish(_worker_record(spec, proc.returncode, _log_file(unit[0])), spec)
            if progress is not None and progress.due() and (queue or running):
                for proc, unit in running.items():
                    for line in status[proc]:
                        line.read_log(_log_tail_text(_log_file(unit[0])))
                progress.show([line for lines in status.values() for line in lines],
                              sum(s.steps for unit in queue for s in unit),
                              sum(len(unit) for unit in queue))
    finally:
        _stop(list(running))


# The worker imports the same bnrl as this process, installed or a checkout: run.py, run under
# the name "__mp_main__", makes its own directory the bnrl package and quiets TensorFlow before
# importing it (its main() does not run).
_WORKER = ("import json, runpy, sys; payload = json.loads(sys.argv[2]); "
           "sys.path[:] = payload['path']; runpy.run_path(sys.argv[1], run_name='__mp_main__'); "
           "from bnrl.compare.workers import worker_main; worker_main(payload)")


def _log_file(spec: RunSpec) -> Path:
    """A run's worker log, next to (not in) its run directory, which train() wants empty."""
    return Path(spec.run_dir).with_name(Path(spec.run_dir).name + ".log")


def _handoff_file(spec: RunSpec) -> Path:
    """Where a local worker leaves its record for the benchmark process."""
    return Path(spec.run_dir).with_name(Path(spec.run_dir).name + ".result.json")


def _start_worker(unit: list[RunSpec]) -> subprocess.Popen:
    """A worker process for ``unit``, logging to its first run's log."""
    log = _log_file(unit[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    for spec in unit:
        _handoff_file(spec).unlink(missing_ok=True)
    payload = {"specs": [dataclasses.asdict(spec) for spec in unit],
               "results": [str(_handoff_file(spec)) for spec in unit],
               "parent": os.getpid(), "path": sys.path}
    run_py = Path(bnrl.__file__).with_name("run.py")
    env = os.environ if unit[0].out is None else with_xla_cache(
        os.environ, Path(unit[0].out) / XLA_CACHE)
    with open(log, "wb") as out:  # a log stream, not a result: no atomic write
        return subprocess.Popen([sys.executable, "-c", _WORKER, str(run_py), json.dumps(payload)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env)


def worker_main(payload: dict) -> None:
    """A local worker process: train its runs and leave each record for the benchmark."""
    die_with_parent(payload["parent"])
    records = run_unit([RunSpec(**spec) for spec in payload["specs"]], progress="plain")
    for record, result in zip(records, payload["results"], strict=True):
        atomic_write(result, json.dumps(record))


def _worker_record(spec: RunSpec, returncode: int, log: Path) -> dict:
    """The record a worker left, or a failed record saying how its process ended (with the
    last lines of its ``log``)."""
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
    tail = _log_tail(log)
    return base_record(spec, error=f"worker process {cause}"
                       + (f"; last log lines: {tail}" if tail else "")
                       + f" (log: {log})")


def _log_tail_text(log: Path, size: int = 4096) -> str:
    """The last ``size`` bytes of a worker's log ("" when it cannot be read)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _log_tail(log: Path, lines: int = 3) -> str:
    text = _log_tail_text(log)
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


def _ray_task(unit: list[RunSpec]) -> list[dict]:
    """A Ray task: one unit, its plain progress lines in its first run's log beside that run's
    directory (on the shared file system the Ray backend needs), where the grid's line reads
    them."""
    log = _log_file(unit[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as out, contextlib.redirect_stdout(out):
        return run_unit(unit, progress="plain")


def _run_ray(units: list[list[RunSpec]], address: str | None, publish, progress,
             label) -> None:
    try:
        import ray  # optional: the ray extra
    except ImportError:
        raise UserError(f"--backend ray needs Ray: {install_hint('ray')}") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - cannot reach the cluster
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot connect to Ray at {address or 'a new local cluster'}: "
                            f"{first}") from None
    remote = ray.remote(_ray_task)
    for unit in units:  # a log left by an earlier sitting is not this one's progress
        _log_file(unit[0]).unlink(missing_ok=True)
    refs = {remote.options(num_cpus=unit[0].threads).remote(unit): unit for unit in units}
    status: dict = {}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1, timeout=TTY_EVERY)
        if not done:
            if progress is not None and progress.due():
                _show_ray_progress(refs, status, progress, label)
            continue
        unit = refs.pop(done[0])
        status.pop(done[0], None)
        try:
            records = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - the task's worker died
            records = [base_record(spec, error=f"ray task failed: {type(exc).__name__}: "
                                   f"{one_line(exc, 300)}") for spec in unit]
        for record, spec in zip(records, unit, strict=True):
            publish(record, spec)


def _show_ray_progress(refs: dict, status: dict, progress, label) -> None:
    """The grid line of a Ray grid: Ray says which tasks ended, not which started, so a run
    counts as running once its task has opened its log, queued until then."""
    for ref, unit in refs.items():
        log = _log_file(unit[0])
        if ref not in status and log.exists():
            status[ref] = [_running(spec, label, time.time()) for spec in unit]
        for line in status.get(ref, []):
            line.read_log(_log_tail_text(log))
    queued = [spec for ref, unit in refs.items() if ref not in status for spec in unit]
    progress.show([line for lines in status.values() for line in lines],
                  sum(s.steps for s in queued), len(queued))
