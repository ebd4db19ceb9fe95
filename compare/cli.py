"""The ``benchmark`` and ``report`` commands of ``run.py``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bnrl.compare.grid import QUICK


def _csv(text: str) -> list[str]:
    import argparse

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma list, got '{text}'")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:  # the same runs twice, counted twice in every statistic
        raise argparse.ArgumentTypeError(f"'{', '.join(duplicates)}' given twice in '{text}'")
    return items


def add_benchmark_commands(sub, positive_int, agents, norms) -> None:
    bench = sub.add_parser(
        "benchmark", help="benchmark BN vs no-BN critics over a grid of runs",
        description="Run agent x env x variant x seed, then write results.json, report.md, "
        "curves.png and bn_stats.png in --out. With no arguments: the quick benchmark "
        f"({','.join(QUICK['agents'])} on {','.join(QUICK['envs'])}, "
        f"{' vs '.join(QUICK['variants'])}, {QUICK['seeds']} seeds, {QUICK['steps']} steps, "
        "about 5 minutes on 2 cores). Re-running the same command skips finished runs.")
    bench.add_argument("--agent", type=_csv, help=f"comma list of {','.join(agents)}")
    bench.add_argument("--env", type=_csv, help="comma list of env ids")
    bench.add_argument("--variants", type=_csv,
                       help=f"comma list of critic norms among {','.join(norms)} "
                       "(default none,batch)")
    bench.add_argument("--seeds", type=positive_int, help="seeds per variant (default 3)")
    bench.add_argument("--steps", type=positive_int, help="env steps per run")
    bench.add_argument("--eval-every", type=positive_int, help="env steps between evaluations")
    bench.add_argument("--out", default=None, help="output directory (default bench_out/quick "
                       "for the quick benchmark, else bench_out/benchmark)")
    bench.add_argument("--workers", type=positive_int, default=None,
                       help="parallel runs (default: number of cores)")
    bench.add_argument("--config", help="YAML with `train:` and `agent:` sections for every run")
    bench.add_argument("--extend", action="store_true",
                       help="grow an existing benchmark in --out with new agents/envs/variants/"
                       "seeds or a new step budget")
    bench.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local worker processes, or tasks on a Ray cluster")
    bench.add_argument("--address", help="Ray cluster address (with --backend ray)")
    bench.add_argument("--quiet", action="store_true", help="no per-run lines")

    report = sub.add_parser("report", help="regenerate report.md and plots of a benchmark")
    report.add_argument("dir", help="benchmark --out directory")


def cmd_benchmark(args) -> int:
    from bnrl.envs import AGENT_ACTION_SPACES
    from bnrl.training.errors import StorageError, UserError
    from bnrl.training.files import lock_directory

    quick = all(getattr(args, k) is None for k in ("agent", "env", "variants", "seeds", "steps"))
    agents = args.agent or QUICK["agents"]
    envs = args.env or QUICK["envs"]
    variants = args.variants or QUICK["variants"]
    seeds = args.seeds or QUICK["seeds"]
    steps = args.steps or (QUICK["steps"] if quick else 20_000)
    out = Path(args.out or ("bench_out/quick" if quick else "bench_out/benchmark"))
    for agent in agents:
        if agent not in AGENT_ACTION_SPACES:
            raise UserError(f"unknown agent '{agent}': use a comma list of "
                            f"{', '.join(AGENT_ACTION_SPACES)}")
    for variant in variants:
        if variant not in ("none", "batch", "batch_renorm", "layer"):
            raise UserError(f"unknown variant '{variant}': use a comma list of none, batch, "
                            "batch_renorm, layer")
    if args.config and not Path(args.config).is_file():
        raise UserError(f"config file not found: {args.config}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    _check_runs(agents, envs, variants, args.config, steps, args.eval_every)
    workers = args.workers or os.cpu_count() or 1
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_directory(out)
    except BlockingIOError:
        raise UserError(f"another benchmark is running in {out}: wait for it to finish or "
                        "choose another --out") from None
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}") from None
    try:
        return _benchmark(args, out, agents, envs, variants, seeds, steps, workers)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            "benchmark interrupted; finished runs are kept and interrupted ones continue from "
            "their last checkpoint: run the same command again") from None
    except OSError as exc:
        raise StorageError(f"cannot write in {out}: {exc.strerror} ({exc.filename}); finished "
                           "runs are kept: run the same command again") from None
    finally:
        os.close(lock)


def _benchmark(args, out: Path, agents, envs, variants, seeds, steps, workers) -> int:
    """Plan, run and report the grid in ``out`` (locked by the caller)."""
    from bnrl.compare.grid import plan, run_grid
    from bnrl.compare.report import GYM_THRESHOLDS, write_report

    specs = plan(out, agents, envs, variants, seeds, steps, args.config, args.extend, workers,
                 args.eval_every)
    started = time.time()

    def on_result(record, done, total):
        if args.quiet:
            return
        what = (f"final {record['final_return']:.1f}" if record["status"] == "ok"
                else f"FAILED: {record['error']}")
        print(f"[{done}/{total}] {record['agent']} {record['env']} {record['variant']} "
              f"seed {record['seed']}: {what} ({time.time() - started:.0f}s)", flush=True)

    if not args.quiet:
        print(f"benchmark: {len(specs)} runs in {out} with {workers} workers", flush=True)
    runs = run_grid(specs, out, workers, args.backend, args.address, on_result)
    report = write_report(runs, out, GYM_THRESHOLDS)
    failed = sum(r["status"] != "ok" for r in runs)
    print(f"report: {report}" + (f" ({failed} failed runs; rerun to retry them)" if failed else ""))
    return 0 if not failed else 1


def _check_runs(agents, envs, variants, config_file, steps, eval_every) -> None:
    """Resolve every run's settings as its worker will, and make its env, so that a --config key
    an agent does not accept, a bad env or a too big replay buffer fails now with one line
    instead of as one failed run per grid cell."""
    from bnrl.training import resolve
    from bnrl.training.loop import check_run

    for agent in agents:
        for env_id in envs:
            for variant in variants:
                check_run(resolve(agent, env_id, config_file,
                                  {"steps": steps, "eval_every": eval_every},
                                  {"critic_norm": variant}))


def cmd_report(args) -> int:
    import json

    from bnrl.compare.report import GYM_THRESHOLDS, check_runs, write_report
    from bnrl.training.errors import UserError

    results = Path(args.dir) / "results.json"
    if not results.is_file():
        raise UserError(f"{args.dir} has no results.json: run `run.py benchmark --out {args.dir}`")
    try:
        runs = json.loads(results.read_text(encoding="utf-8"))["runs"]
    except OSError as exc:
        raise UserError(f"cannot read {results}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{results} is not a bnrl results file") from None
    check_runs(runs, str(results))
    try:
        report = write_report(runs, args.dir, GYM_THRESHOLDS)
    except OSError as exc:
        raise UserError(f"cannot write the report in {args.dir}: {exc.strerror}") from None
    print(f"report: {report}", file=sys.stdout)
    return 0


COMMANDS = {"benchmark": cmd_benchmark, "report": cmd_report}
