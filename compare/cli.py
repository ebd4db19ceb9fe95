"""The ``benchmark``, ``report`` and ``merge`` commands of ``run.py``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from bnrl.agents import AGENTS
from bnrl.common.errors import StorageError, UserError, error_line
from bnrl.common.extras import install_hint
from bnrl.common.files import lock_directory
from bnrl.compare import variants as vs
from bnrl.compare.collect import collect, merge, usable
from bnrl.compare.grid import QUICK, check_distinct, plan
from bnrl.compare.progress import GridProgress
from bnrl.compare.report import write_report
from bnrl.compare.results import (
    RunSpec,
    deciding_settings,
    resolve_spec,
    run_settings,
    settings_hash,
)
from bnrl.compare.suites import load_suites, suite
from bnrl.compare.workers import run_grid
from bnrl.peers import PEERS
from bnrl.training.runs import check_run

DEFAULT_STEPS = 20_000
"""Step budget of a grid given with --agent or --env but without --suite or --steps."""
DEFAULT_VARIANTS = ["none", "batch"]
"""Variants of a grid given with --agent, --env or --suite but without --variants (the quick
cell's are ``QUICK["variants"]``)."""
_ALLOW_HELP = ("report runs that are not comparable anyway (other step budgets, bnrl versions "
               "or settings than the variant's own), listing what differs at the report's top")


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma list, got '{text}'")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:  # the same runs twice, counted twice in every statistic
        raise argparse.ArgumentTypeError(f"'{', '.join(duplicates)}' given twice in '{text}'")
    return items


def add_benchmark_commands(sub, positive_int) -> None:
    """Add the benchmark, report and merge commands to ``run.py``'s subparsers."""
    bench = sub.add_parser(
        "benchmark", help="benchmark critic variants (BN or not, CrossQ...) over a grid of runs",
        description="Run agent x env x variant x seed, then write report.md (the aggregate "
        "answer first), aggregate.png, profiles.png, curves.png and bn_stats.png in --out; each "
        "finished run leaves a result file in OUT/results/. With no arguments: the quick "
        f"benchmark ({','.join(QUICK['agents'])} on {','.join(QUICK['envs'])}, "
        f"{' vs '.join(QUICK['variants'])}, {QUICK['seeds']} seeds, {QUICK['steps']} steps, "
        "configs/quick.yaml, about 4 minutes on 2 cores). Re-running the same command skips "
        "finished runs.")
    bench.add_argument("--suite", help=f"a suite of configs/suites.yaml "
                       f"({', '.join(load_suites())}): its "
                       "envs, their step budgets and the agents that fit them; --env picks some "
                       "of its envs, --agent some of its agents (default the first that fits "
                       "each env: sac, or dqn for discrete actions)")
    bench.add_argument("--agent", type=_csv, help=f"comma list of {','.join(AGENTS)}")
    bench.add_argument("--env", type=_csv, help="comma list of env ids")
    bench.add_argument("--variants", type=_csv,
                       help="comma list of variant names: built-in "
                       f"{','.join(_builtin_names())}, or defined by --variant or "
                       f"--variants-file (default: {','.join(DEFAULT_VARIANTS)}, the quick "
                       f"benchmark's {','.join(QUICK['variants'])} without --suite, --agent and "
                       "--env; none plus the defined ones when --variant or --variants-file is "
                       "given)")
    bench.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                       help="define a variant inline, e.g. copy:critic_norm=batch,target_bn=copy "
                       "or crossq256:agent=crossq,hidden=[256,256] (repeatable; agent= trains "
                       "another agent)")
    bench.add_argument("--variants-file", metavar="FILE",
                       help="YAML mapping of variant name to settings (like configs/variants.yaml)")
    bench.add_argument("--baseline", help="the variant every other is compared with "
                       "(default the first)")
    bench.add_argument("--sweep", metavar="KEY=V1,V2,...",
                       help="run every variant at each value of one setting, e.g. "
                       "learning_rate=1e-4,3e-4,1e-3; each value's variants are compared with "
                       "the baseline at that value, and the report adds a sensitivity section")
    bench.add_argument("--peer", choices=tuple(PEERS),
                       help="also run another library's implementation of each variant's agent "
                       "at the variant's settings, as variant PEER-VARIANT (sbx: SBX's SAC, TD3 "
                       "and CrossQ; needs the sbx extra); settings it cannot take are listed in "
                       "the report, variants it cannot run are left out with a warning")
    bench.add_argument("--seeds", type=positive_int,
                       help=f"seeds per variant (default {QUICK['seeds']})")
    bench.add_argument("--steps", type=positive_int,
                       help=f"env steps per run (default: the suite's; with --agent or --env "
                       f"{DEFAULT_STEPS}; else the quick benchmark's {QUICK['steps']})")
    bench.add_argument("--eval-every", type=positive_int, help="env steps between evaluations")
    bench.add_argument("--n-envs", type=positive_int,
                       help="sub-envs of each run's vector env (train --n-envs)")
    bench.add_argument("--out", default=None, help="output directory (default bench_out/quick "
                       "for the quick benchmark, bench_out/SUITE for a suite, else "
                       "bench_out/benchmark)")
    bench.add_argument("--workers", type=positive_int, default=None,
                       help="parallel runs (default: number of cores)")
    bench.add_argument("--config", help="YAML with `train:` and `agent:` sections for every run, "
                       "over the env presets (default: configs/quick.yaml without --suite, "
                       "--agent and --env)")
    bench.add_argument("--extend", action="store_true",
                       help="grow an existing benchmark in --out with new agents/envs/variants/"
                       "seeds or a new step budget")
    bench.add_argument("--seeds-per-process", type=positive_int, default=1, metavar="K",
                       help="train up to K seeds of one agent, env and variant together in one "
                       "process, one graph and one TensorFlow call per step (results do not "
                       "depend on K; default 1)")
    bench.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local worker processes, or tasks on a Ray cluster")
    bench.add_argument("--address", help="Ray cluster address (with --backend ray)")
    bench.add_argument("--quiet", action="store_true", help="no per-run lines")

    report = sub.add_parser(
        "report", help="regenerate report.md and plots of a benchmark",
        description="Rebuild the report of a benchmark directory from its result files "
        "(OUT/results/), e.g. after copying in result files of pieces run elsewhere. Runs must "
        "be comparable: within an agent x env cell one step budget and one bnrl version, within "
        "a variant one settings hash, and a variant's runs may differ from the baseline's only "
        "in the variants' own settings (and what they change: another agent's defaults, an auto "
        "setting). A run whose result is not a finite number counts as failed.")
    report.add_argument("dir", help="benchmark --out directory")
    report.add_argument("--allow-incomparable", action="store_true", help=_ALLOW_HELP)

    merge = sub.add_parser(
        "merge", help="merge pieces of a benchmark run elsewhere into one directory",
        description="Copy the result files of benchmark directories (pieces of one grid run on "
        "other machines, e.g. with different --env) into OUT, record the union of their grids "
        "and write the report. Pieces must agree on --config, --eval-every, the settings of "
        "same-named variants, step budgets and the bnrl version; a run present in two pieces "
        "with different results is refused, and so are runs that are not comparable (see "
        "report --help).")
    merge.add_argument("--out", required=True, help="directory of the merged benchmark")
    merge.add_argument("--allow-incomparable", action="store_true", help=_ALLOW_HELP)
    merge.add_argument("pieces", nargs="+", help="benchmark --out directories to merge")


def _builtin_names() -> list[str]:
    return list(vs.builtin_variants())


def _defined_variants(args) -> tuple[dict, list[str]]:
    """Every known variant by name, and the names the user defined (file, then inline)."""
    builtins = vs.builtin_variants()
    defined = dict(builtins)
    own: list[str] = []
    if args.variants_file:
        from_file = vs.read_variants_file(args.variants_file)
        if not from_file:
            raise UserError(f"--variants-file {args.variants_file} defines no variants: "
                            f"expected {vs.FILE_FORMAT}")
        for variant in from_file.values():
            vs.check_not_builtin(variant, builtins, f"--variants-file {args.variants_file}")
        defined.update(from_file)
        own += list(from_file)
    for text in args.variant:
        source = f"--variant '{text}'"
        variant = vs.parse_variant(text)
        if variant.name in own:
            raise UserError(f"variant '{variant.name}' is defined twice (--variant, "
                            "--variants-file): give each variant its own name")
        vs.check_not_builtin(variant, builtins, source)
        defined[variant.name] = variant
        own.append(variant.name)
    return defined, own


def _cells(args) -> tuple[dict, list[str], dict, str | None]:
    """``({env: [agents]}, envs, {env: steps}, note)`` of the grid the arguments describe;
    ``note`` names the suite's envs that no agent of --agent fits (left out), or is None."""
    for agent in args.agent or []:
        if agent not in AGENTS:
            raise UserError(f"unknown agent '{agent}': use a comma list of "
                            f"{', '.join(AGENTS)}")
    if not args.suite:
        envs = args.env or QUICK["envs"]
        steps = args.steps or (DEFAULT_STEPS if args.agent or args.env else QUICK["steps"])
        return ({e: args.agent or QUICK["agents"] for e in envs}, envs,
                {e: steps for e in envs}, None)
    chosen = suite(args.suite)
    if chosen.extra:
        _check_extra(chosen)
    envs = args.env or list(chosen.envs)
    outside = [e for e in envs if e not in chosen.envs]
    if outside:
        raise UserError(f"{', '.join(outside)} is not in suite {chosen.name}: use some of "
                        f"{', '.join(chosen.envs)}")
    agents = {e: chosen.agents_for(e, args.agent or chosen.envs[e]["agents"][:1]) for e in envs}
    fitting = {e: a for e, a in agents.items() if a}
    if not fitting:
        allowed = dict.fromkeys(a for e in envs for a in chosen.envs[e]["agents"])
        raise UserError(f"no agent of --agent {','.join(args.agent)} fits the envs of suite "
                        f"{chosen.name}: use one of {', '.join(allowed)}")
    # An env or agent the arguments name but the grid would not run is refused, not dropped.
    dropped = [e for e in envs if not agents[e]]
    if dropped and args.env:
        raise UserError(f"no agent of --agent {','.join(args.agent)} fits "
                        f"{', '.join(dropped)} in suite {chosen.name} (it takes "
                        f"{', '.join(chosen.envs[dropped[0]]['agents'])}): drop it from --env "
                        "or add one of its agents to --agent")
    unused = [a for a in args.agent or [] if not any(a in v for v in fitting.values())]
    if unused:
        raise UserError(f"--agent {', '.join(unused)} fits none of the envs chosen from suite "
                        f"{chosen.name} ({', '.join(envs)}): drop it or add an env it fits "
                        "to --env")
    note = (f"suite {chosen.name}: {', '.join(dropped)} left out, no agent of --agent "
            f"{','.join(args.agent)} fits {'them' if len(dropped) > 1 else 'it'}"
            if dropped else None)
    return (fitting, list(fitting), {e: args.steps or chosen.envs[e]["steps"] for e in fitting},
            note)


def _check_extra(chosen) -> None:
    if importlib.util.find_spec(chosen.extra) is None:
        raise UserError(f"suite {chosen.name} needs {chosen.extra}: "
                        f"{install_hint(chosen.extra)}")


def cmd_benchmark(args) -> int:
    if args.address and args.backend != "ray":
        raise UserError("--address is a Ray cluster's address: it needs --backend ray (the "
                        "local backend runs on this machine)")
    quick = all(not getattr(args, k) for k in (
        "suite", "agent", "env", "variants", "variant", "variants_file", "seeds", "steps",
        "sweep"))
    agents, envs, steps, left_out = _cells(args)
    # The quick cell (no --suite, --agent or --env) keeps the quick settings, budget and variants
    # whatever else is given, so that `benchmark --seeds 10` is the quick benchmark with more
    # seeds. Other cells get the presets and none vs batch (batch_naive is TD3's and SAC's: it
    # sets the actor loss's mode, which DQN and PQN have not).
    quick_cell = not (args.suite or args.agent or args.env)
    config = args.config or (QUICK["config_file"] if quick_cell else None)
    defined, own = _defined_variants(args)
    names = args.variants or (["none", *[n for n in own if n != "none"]] if own
                              else QUICK["variants"] if quick_cell else DEFAULT_VARIANTS)
    variants, baseline = vs.select(names, defined, args.baseline)
    if args.sweep:
        variants, baseline = vs.sweep_points(variants, baseline, *vs.parse_sweep(args.sweep))
    without_peer = []
    if args.peer:
        variants, without_peer = _with_peer(args.peer, agents, variants, steps, config,
                                            args.eval_every, args.n_envs)
    seeds = args.seeds or QUICK["seeds"]
    out = Path(args.out or ("bench_out/quick" if quick else
                            f"bench_out/{args.suite}" if args.suite else "bench_out/benchmark"))
    if config and not Path(config).is_file():
        raise UserError(f"config file not found: {config}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    _check_runs(agents, variants, config, steps, args.eval_every, args.n_envs)
    if left_out:  # said once every argument is known to be good
        print(f"bnrl: warning: {left_out}", file=sys.stderr)
    for note in without_peer:
        print(f"bnrl: warning: --peer {args.peer}: {note}", file=sys.stderr)
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
        return _benchmark(args, out, agents, envs, variants, baseline, seeds, steps, config,
                          workers)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            "benchmark interrupted; finished runs are kept and interrupted ones continue from "
            "their last checkpoint: run the same command again") from None
    except OSError as exc:
        raise StorageError(f"cannot write in {out}: {exc.strerror} ({exc.filename}); finished "
                           "runs are kept: run the same command again") from None
    finally:
        os.close(lock)


def _benchmark(args, out: Path, agents, envs, variants, baseline, seeds, steps, config,
               workers) -> int:
    """Plan, run and report the grid in ``out`` (locked by the caller)."""
    specs = plan(out, agents, envs, variants, seeds, steps, config, args.extend, workers,
                 args.eval_every, baseline, args.n_envs)
    started = time.time()
    progress = None if args.quiet else GridProgress(len(specs), workers)

    def on_result(record, done, total):
        if progress is None:
            return
        progress.clear()
        progress.finished(record.get("steps") or 0, record.get("wall_time_s"))
        what = (f"final {record['final_return']:.1f} in {record['wall_time_s']:.0f}s"
                if record["status"] == "ok" else f"FAILED: {record['error']}")
        print(f"[{done}/{total}] {record['agent']} {record['env']} {record['variant']} "
              f"seed {record['seed']}: {what} ({time.time() - started:.0f}s elapsed)", flush=True)

    if progress is not None:
        print(f"benchmark: {len(specs)} runs in {out} with {workers} workers", flush=True)
    runs = run_grid(specs, out, workers, args.backend, args.address, on_result, progress,
                    args.seeds_per_process)
    if progress is not None:
        progress.clear()
    report = report_directory(out)
    failed = sum(not usable(r) for r in runs)
    print(f"report: {report}" + (f" ({failed} failed runs; rerun to retry them)" if failed else ""))
    return 0 if not failed else 1


def _with_peer(name: str, agents: dict, variants: list, steps: dict, config_file, eval_every,
               n_envs) -> tuple[list, list[str]]:
    """The grid's variants, then ``NAME-VARIANT`` for each that peer library ``name`` can run at
    the variant's resolved settings in every cell (``peers``), and a note per variant it cannot.

    Raises:
      UserError: the library is not installed (naming its extra), a peer's name is taken, or
        it can run no variant of the grid (naming why, e.g. the agents it implements).
    """
    peer = PEERS[name]
    if importlib.util.find_spec(peer.MODULE) is None:
        raise UserError(f"--peer {name} needs {name}, which is not installed: "
                        f"{install_hint(peer.EXTRA)}")
    taken = {v.name for v in variants}
    peers, notes = [], []
    for variant in variants:
        reasons = []
        for env_id, env_agents in agents.items():
            for agent in env_agents:
                spec = RunSpec(agent, env_id, variant.name, 0, steps[env_id], config_file, "",
                               1, eval_every, dict(variant.settings), n_envs=n_envs)
                try:
                    settings = deciding_settings(resolve_spec(spec))
                except UserError:
                    continue  # a bad variant: _check_runs says so, in its words
                try:
                    peer.arguments(spec.run_agent, settings)
                except peer.Unmatched as exc:
                    reasons.append(f"{spec.run_agent}/{env_id}: {exc}")
        if reasons:
            notes.append(f"no {name} run of variant '{variant.name}' ({reasons[0]})")
            continue
        twin = f"{name}-{variant.name}"
        if twin in taken:
            raise UserError(f"--peer {name} names its runs of variant '{variant.name}' "
                            f"'{twin}', which is a variant of the grid: rename that variant")
        peers.append(vs.Variant(twin, {**variant.settings, "peer": name}))
    if not peers:
        raise UserError(f"--peer {name} can run no variant of this grid: "
                        + notes[0].removeprefix(f"no {name} run of "))
    return [*variants, *peers], notes


def _check_runs(agents: dict, variants, config_file, steps: dict, eval_every,
                n_envs=None) -> None:
    """Resolve every run's settings as its worker will, and make its env, so that a --config key
    an agent does not accept, a variant's bad setting, a bad env or a too big replay buffer
    fails now with one line instead of as one failed run per grid cell; and refuse variants
    whose settings resolve alike (a variant with no settings is the baseline's defaults)."""
    specs = []
    for env_id, env_agents in agents.items():
        for agent in env_agents:
            for variant in variants:
                spec = RunSpec(agent, env_id, variant.name, 0, steps[env_id], config_file, "",
                               1, eval_every, dict(variant.settings), n_envs=n_envs)
                try:
                    config = resolve_spec(spec)
                    check_run(config)
                except UserError as exc:
                    if not variant.settings:
                        raise
                    raise UserError(f"variant '{variant.name}' on {agent}/{env_id}: "
                                    f"{exc}") from None
                specs.append(dataclasses.replace(
                    spec, settings_hash=settings_hash(run_settings(config, spec.peer))))
    check_distinct(specs)


def report_directory(out, allow_incomparable: bool = False) -> Path:
    """Write the report of a benchmark directory from its result files; its path."""
    found = collect(Path(out), allow_incomparable)
    return write_report(found.runs, out, baseline=found.baseline, missing=found.missing,
                        variants=found.variants, cells=found.cells,
                        incomparable=found.incomparable)


def cmd_report(args) -> int:
    if not Path(args.dir).is_dir():
        raise UserError(f"{args.dir} is not a directory: give a benchmark --out directory")
    try:
        report = report_directory(args.dir, args.allow_incomparable)
    except OSError as exc:
        raise UserError(f"cannot write the report in {args.dir}: {exc.strerror}") from None
    print(f"report: {report}")
    return 0


def cmd_merge(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    created = _first_missing(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_directory(out)
    except BlockingIOError:
        raise UserError(f"a benchmark is running in {out}: wait for it to finish") from None
    except OSError as exc:
        _remove(created)
        raise UserError(f"cannot create --out {out}: {error_line(exc)}") from None
    try:
        copied = merge([Path(p) for p in args.pieces], out, args.allow_incomparable)
        report = report_directory(out, args.allow_incomparable)
    except UserError:
        _remove(created)  # a refused merge leaves no --out of its own behind
        raise
    except OSError as exc:
        raise UserError(f"cannot write in --out {out}: {error_line(exc)}") from None
    finally:
        os.close(lock)
    print(f"merged {copied} result files into {out}; report: {report}")
    return 0


def _first_missing(path: Path) -> Path | None:
    """The outermost directory that creating ``path`` would create, or None if it exists."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove(created: Path | None) -> None:
    """Remove a directory this command created (everything in it is this command's)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)


COMMANDS = {"benchmark": cmd_benchmark, "report": cmd_report, "merge": cmd_merge}
