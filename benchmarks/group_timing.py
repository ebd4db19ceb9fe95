"""A grid cell's seeds trained grouped against one process per seed: runs per hour and CPU
seconds per run (issue 29 item 4).

    python benchmarks/group_timing.py                         # every cell that can run
    python benchmarks/group_timing.py --cells pendulum-sac-none,pendulum-sac-batch --repeats 3
    python benchmarks/group_timing.py --seeds-per-process 3   # the cell as two groups, 3 + 2

Each cell is one agent, env and variant of ``run.py benchmark`` with ``--seeds`` seeds (5),
run as a subprocess twice per repeat, each time in a fresh temporary ``--out``: grouped
(``--seeds-per-process`` K, default all the seeds: one process, one graph, one ``sess.run`` per
step for all of them) and single (``--seeds-per-process 1``: one process per seed), both with
the same ``--workers`` (2). What is timed is what a user waits for and pays: the whole
benchmark command, start-up, TensorFlow imports, graph builds, training, the one evaluation
and checkpoint at the end and the report. Wall seconds come from the clock; CPU seconds are
those of the whole process tree, ``getrusage(RUSAGE_CHILDREN)`` after minus before: the
benchmark process waits for each of its workers, so their CPU time is in its children's, which
this process gets when it waits for the benchmark. Per repeat the order alternates (single
first in odd repeats, grouped first in even ones) so that machine noise and caches hit both.

The cells (``--cells``, default all whose env can be made here; a cell whose env package is
missing is skipped with one line saying which extra to install):

- ``minatar-dqn``: DQN on MinAtar/Breakout-v1, variant none, the MinAtar preset of
  ``configs/MinAtar.yaml`` (docs/benchmark-minatar/breakout-dqn), ``--minatar-steps`` 20k
  (its 5,000 learning_starts, then one update per step);
- ``pendulum-sac-none``, ``pendulum-sac-batch``: SAC on Pendulum-v1, variant none / batch, the
  Pendulum preset, ``--pendulum-steps`` 4k (learning_starts 1,000);
- ``mujoco-sac``: SAC on Hopper-v5, variant none (``pip install '.[mujoco]'``),
  ``--hopper-steps`` 5k with learning_starts 1,000 instead of the preset's 10,000, which would
  leave 5k steps without a single update.

Every run evaluates once, at its last step (``--eval-episodes``, 2), and checkpoints there:
the cells time training, which is what grouping changes, not evaluation. The step budgets are
a few minutes of training per cell and mode, so that a default run (4 cells, 2 repeats,
16 benchmark commands) takes about 30-40 minutes on a quiet 2-core machine: estimated from
benchmarks/README.md's loop rates (about 200 env steps/s for SAC, 900 for MinAtar DQN at 2
threads), not measured; the lead's quiet measurement replaces the estimate.

With K equal to the seeds a cell is one process; the grid then gives it every core's threads
(``cores // min(workers, processes)``), as it gives each single run ``cores // workers``.

It prints a markdown table (machine, cores, date and versions on top; per cell the medians
[min-max] over repeats of runs per hour and CPU seconds per run, and the speed-up, the median
of the per-repeat ratios grouped / single runs per hour) and, with ``--json FILE``, writes
every measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402
    _fmt,
    _spread,
    cpu_model,
    exit_unless_known,
    exit_unless_positive,
    ratio,
)

MODES = ("single", "grouped")


@dataclass(frozen=True)
class Cell:
    """One benchmark cell: agent, env and variant, its step budget's flag, the module its env
    needs and agent settings beyond the env's preset."""

    agent: str
    env: str
    variant: str
    steps_flag: str
    module: str | None = None
    extra: str | None = None
    settings: tuple = ()


CELLS = {
    "minatar-dqn": Cell("dqn", "MinAtar/Breakout-v1", "none", "minatar_steps", "minatar",
                        "minatar"),
    "pendulum-sac-none": Cell("sac", "Pendulum-v1", "none", "pendulum_steps"),
    "pendulum-sac-batch": Cell("sac", "Pendulum-v1", "batch", "pendulum_steps"),
    "mujoco-sac": Cell("sac", "Hopper-v5", "none", "hopper_steps", "mujoco", "mujoco",
                       (("learning_starts", 1000),)),
}
STEPS = {"minatar_steps": 20_000, "pendulum_steps": 4_000, "hopper_steps": 5_000}


# ----------------------------------------------------------------------------------- driver
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="comma list")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per cell")
    parser.add_argument("--seeds-per-process", type=int, default=None,
                        help="K of the grouped runs (default: --seeds, the cell in one process)")
    parser.add_argument("--workers", type=int, default=2, help="benchmark --workers, both modes")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats (median)")
    for flag, steps in STEPS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", type=int, default=steps,
                            help=f"env steps per run (default {steps})")
    parser.add_argument("--eval-episodes", type=int, default=2,
                        help="episodes of the one evaluation at the end of each run")
    parser.add_argument("--json", default=None, help="also write every measurement here")
    args = parser.parse_args(argv)
    args.cells = args.cells.split(",")
    exit_unless_known(parser, "cell", args.cells, CELLS)
    exit_unless_positive(parser, args, ("seeds", "workers", "repeats", "eval_episodes",
                                        *STEPS))
    if args.seeds_per_process is None:
        args.seeds_per_process = args.seeds
    if not 2 <= args.seeds_per_process <= args.seeds:
        parser.exit(2, f"--seeds-per-process must be between 2 and --seeds ({args.seeds}), got "
                    f"{args.seeds_per_process}\n")
    if args.json is not None:
        folder = Path(args.json).resolve().parent
        if Path(args.json).is_dir() or not folder.is_dir():
            parser.exit(2, f"--json {args.json}: not a file in an existing directory\n")
    return args


def runnable(names: list[str]) -> list[str]:
    """The cells of ``names`` whose env can be made here; one line on stderr for each other."""
    from bnrl.common.extras import install_hint

    out = []
    for name in names:
        cell = CELLS[name]
        if cell.module is not None and importlib.util.find_spec(cell.module) is None:
            print(f"group_timing: skipping {name}: {cell.env} needs {cell.module} "
                  f"({install_hint(cell.extra)})", file=sys.stderr)
        else:
            out.append(name)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import bnrl
    from bnrl.common.files import atomic_write

    names = runnable(args.cells)
    if not names:
        print("group_timing: no cell can run here", file=sys.stderr)
        return 2
    run_py = Path(bnrl.__file__).with_name("run.py")  # the bnrl imported here
    started = time.time()
    samples: dict[str, dict[str, list[dict]]] = {n: {m: [] for m in MODES} for n in names}
    for repeat in range(1, args.repeats + 1):
        for name in names:
            for mode in MODES if repeat % 2 else MODES[::-1]:
                k = 1 if mode == "single" else args.seeds_per_process
                sample = measure(run_py, CELLS[name], args, k)
                samples[name][mode].append(sample)
                print(f"group_timing: {name} {mode} (K={k}), repeat {repeat}/{args.repeats}: "
                      f"{sample['wall_s']:.0f} s, {sample['cpu_s']:.0f} CPU s", file=sys.stderr,
                      flush=True)
    results = {"machine": cpu_model(), "cpus": os.cpu_count(),
               "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "versions": versions(bnrl.__version__), "load_average": os.getloadavg(),
               "minutes": (time.time() - started) / 60,
               "settings": {k: getattr(args, k) for k in (
                   "seeds", "seeds_per_process", "workers", "repeats", "eval_episodes",
                   *STEPS)},
               "cells": {name: {"agent": CELLS[name].agent, "env": CELLS[name].env,
                                "variant": CELLS[name].variant,
                                "steps": getattr(args, CELLS[name].steps_flag),
                                **samples[name]} for name in names},
               "table": table_rows(samples)}
    print_table(results)
    if args.json is not None:
        atomic_write(args.json, json.dumps(results, indent=1))
    return 0


# ------------------------------------------------------------------------------ measuring
def measure(run_py: Path, cell: Cell, args, k: int) -> dict:
    """One ``run.py benchmark`` of ``cell``'s seeds, K at a time, in a fresh --out: its wall and
    CPU seconds (the whole process tree), per run too, and its runs' final returns."""
    steps = getattr(args, cell.steps_flag)
    with tempfile.TemporaryDirectory(prefix="group_timing-") as tmp:
        config = Path(tmp) / "config.yaml"
        # JSON is YAML: one evaluation and one checkpoint, at the last step.
        config.write_text(json.dumps({
            "train": {"eval_episodes": args.eval_episodes, "checkpoint_every": steps},
            "agent": dict(cell.settings)}))
        out, log = Path(tmp) / "out", Path(tmp) / "benchmark.log"
        command = [sys.executable, str(run_py), "benchmark", "--agent", cell.agent,
                   "--env", cell.env, "--variants", cell.variant, "--seeds", str(args.seeds),
                   "--steps", str(steps), "--eval-every", str(steps),
                   "--workers", str(args.workers), "--seeds-per-process", str(k),
                   "--config", str(config), "--out", str(out), "--quiet"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(log, "wb") as f:
            code = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=f,
                                  stderr=subprocess.STDOUT, check=False).returncode
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        records = _records(out)
        if code != 0 or len(records) != args.seeds or any(
                r["status"] != "ok" for r in records):
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise SystemExit(f"group_timing: the benchmark of {cell.agent} on {cell.env} "
                             f"({cell.variant}, K={k}) exited with code {code}; its runs: "
                             f"{[r['status'] for r in records]}; last lines: {tail}")
    return {"seeds_per_process": k, "wall_s": wall, "cpu_s": cpu,
            "runs_per_hour": args.seeds * 3600 / wall, "cpu_s_per_run": cpu / args.seeds,
            "final_returns": [r["final_return"] for r in records]}


def _records(out: Path) -> list[dict]:
    try:
        return json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError):
        return []


def versions(bnrl_version: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "bnrl": bnrl_version}
    for name in ("tensorflow", "tf-keras", "gymnasium", "numpy", "minatar", "mujoco"):
        with contextlib.suppress(PackageNotFoundError):  # an extra not installed
            out[name] = version(name)
    return out


# ----------------------------------------------------------------------------------- table
def table_rows(samples: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """Per cell: each mode's runs per hour and CPU seconds per run over the repeats, and the
    speed-up, the per-repeat ratios grouped / single of runs per hour (median, min, max)."""
    rows = []
    for name, modes in samples.items():
        row = {"cell": name}
        for mode in MODES:
            for key in ("runs_per_hour", "cpu_s_per_run"):
                row[f"{mode}_{key}"] = [s[key] for s in modes[mode]]
        row["speed_up"] = ratio(row["grouped_runs_per_hour"], row["single_runs_per_hour"])
        rows.append(row)
    return rows


def print_table(results: dict) -> None:
    v = results["versions"]
    print(f"\n{results['machine']}, {results['cpus']} cores, {results['date']}; "
          + ", ".join(f"{name} {v[name]}" for name in v)
          + f"; load average at the end {' '.join(f'{x:.1f}' for x in results['load_average'])}")
    s = results["settings"]
    print(f"{s['seeds']} seeds per cell, grouped K={s['seeds_per_process']} against 1, "
          f"--workers {s['workers']}, median [min-max] of {s['repeats']} alternating repeats\n")
    print("| cell | single runs/h | grouped runs/h | speed-up | single CPU s/run | "
          "grouped CPU s/run |")
    print("|---|---|---|---|---|---|")
    for row in results["table"]:
        print(f"| {row['cell']} | {_spread(row['single_runs_per_hour'])} | "
              f"{_spread(row['grouped_runs_per_hour'])} | {_fmt(row['speed_up'])} | "
              f"{_spread(row['single_cpu_s_per_run'])} | "
              f"{_spread(row['grouped_cpu_s_per_run'])} |")


if __name__ == "__main__":
    sys.exit(main())
