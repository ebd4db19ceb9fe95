"""Run an agent x env x variant x seed grid of ordinary training runs, in parallel, resumably.

Each run is a normal ``run.py train`` directory under ``OUT/runs/<agent>/<env>/<variant>/seed<k>``
(so ``tensorboard --logdir OUT`` shows all variants side by side and ``run.py evaluate`` works
on any of them). ``OUT/grid.json`` records the grid; re-running the same command skips finished
runs and resumes or redoes the others; ``OUT/results.json`` is rewritten as each run finishes.
Runs go to worker processes (one fresh process per run, TensorFlow limited to its share of the
cores) or, with ``backend="ray"``, to Ray tasks on an existing cluster.
"""

from __future__ import annotations

import json
import os
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from bnrl.training.errors import UserError

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


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def plan(out: Path, agents, envs, variants, seeds: int, steps: int, config_file=None,
         extend: bool = False, workers: int = 1, eval_every: int | None = None) -> list[RunSpec]:
    """Check or record ``OUT/grid.json`` and return every run of the grid."""
    config_text = Path(config_file).read_text() if config_file else None
    grid = _grid_record(agents, envs, variants, seeds, steps, config_text, eval_every)
    grid_file = out / "grid.json"
    if grid_file.exists():
        old = json.loads(grid_file.read_text())
        old.setdefault("eval_every", None)  # grid.json of a version that did not record it
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
    _atomic_json(grid_file, grid)
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
    """The run's summary when it completed the grid's step budget, else None."""
    path = Path(spec.run_dir) / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
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
        Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(spec.run_dir) / "error.txt").write_text(traceback.format_exc())
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
        _atomic_json(out / "results.json",
                     {"runs": [records[k] for k in order if k in records]})
        if on_result is not None:
            on_result(record, len(records), len(specs))

    if not todo:
        _atomic_json(out / "results.json", {"runs": [records[k] for k in order]})
    elif backend == "ray":
        _run_ray(todo, address, publish)
    else:
        _run_local(todo, workers, publish)
    return [records[k] for k in order]


def _run_local(todo: list[RunSpec], workers: int, publish) -> None:
    import multiprocessing

    # spawn: a fresh interpreter per run (no forked TensorFlow state); one run per process so
    # each run's memory is returned to the system when it ends.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             max_tasks_per_child=1) as pool:
        pending = {pool.submit(run_one, spec): spec for spec in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec = pending.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (killed, out of memory)
                    record = _base_record(spec, error=f"worker process died: {type(exc).__name__}")
                publish(record, spec)


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
            record = _base_record(spec, error=f"ray task failed: {type(exc).__name__}")
        publish(record, spec)
