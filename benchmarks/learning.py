"""Longer learning checks: every agent with and without a BN critic, printed as one table.

    python benchmarks/learning.py                 # the full table (about 40 minutes on 2 cores)
    python benchmarks/learning.py --seeds 1 --steps-scale 0.25   # a quick look
    python benchmarks/learning.py --reuse bench_out/pendulum       # reuse identical runs

Grid: DDPG, TD3, SAC, CrossQ on Pendulum-v1 for 20k steps and DQN on CartPole-v1 for 50k steps
(the RL Zoo budgets), critic normalization none vs batch, 2 seeds, env presets from configs/.
Runs go through the benchmark grid runner (``compare.workers``), so an interrupted run resumes and a
rerun only prints. The table shows the mean final eval return (10 episodes, deterministic policy)
per seed; RL Zoo's single trained agents reach about -150 on Pendulum and 500 on CartPole.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

from bnrl.compare.grid import plan
from bnrl.compare.results import finished
from bnrl.compare.workers import run_grid
from bnrl.training import resolve

GRIDS = [  # (agents, env, steps)
    (["dqn"], "CartPole-v1", 50_000),
    (["ddpg", "td3", "sac", "crossq"], "Pendulum-v1", 20_000),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_out/learning", help="output directory")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every step budget (quick looks)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reuse", action="append", default=[], metavar="DIR",
                        help="benchmark --out directory whose finished runs with the very same "
                        "resolved config are copied instead of trained again (repeatable)")
    args = parser.parse_args(argv)
    rows = []
    for agents, env, steps in GRIDS:
        steps = max(1000, int(steps * args.steps_scale))
        out = Path(args.out) / env
        specs = plan(out, agents, [env], ["none", "batch"], args.seeds, steps,
                     workers=args.workers, eval_every=steps // 10)
        for spec in specs:
            _reuse(spec, args.reuse)
        for record in run_grid(specs, out, args.workers, on_result=_progress):
            rows.append((record, steps))
    _print_table(rows, args.seeds)
    return 0


def _reuse(spec, dirs) -> None:
    """Copy a finished run of ``spec`` from a benchmark directory when its resolved config is
    identical (same agent, env, seed, steps, evaluation and agent settings)."""
    if finished(spec) is not None or Path(spec.run_dir).exists():
        return
    wanted = resolve(spec.agent, spec.env, None, {"steps": spec.steps, "seed": spec.seed,
                                                  "eval_every": spec.eval_every},
                     {"critic_norm": spec.variant}).to_dict()
    for root in dirs:
        candidate = (Path(root) / "runs" / spec.agent / spec.env.replace(":", "_")
                     / spec.variant / f"seed{spec.seed}")
        config = candidate / "config.yaml"
        if (candidate / "summary.json").exists() and config.exists() and \
                yaml.safe_load(config.read_text()) == wanted:
            shutil.copytree(candidate, spec.run_dir)
            print(f"  reused {candidate}", flush=True)
            return


def _progress(record, done, total) -> None:
    what = (f"{record['final_return']:.1f}" if record["status"] == "ok"
            else f"FAILED {record['error']}")
    print(f"  [{done}/{total}] {record['agent']} {record['env']} {record['variant']} "
          f"seed {record['seed']}: {what}", flush=True)


def _print_table(rows, seeds: int) -> None:
    table: dict[tuple, list] = {}
    for record, steps in rows:
        key = (record["agent"], record["env"], steps, record["variant"])
        table.setdefault(key, []).append(record)
    print("\n| agent | env | steps | critic | mean final return | per seed | updates/s |")
    print("|---|---|---|---|---|---|---|")
    for (agent, env, steps, variant), records in table.items():
        ok = [r for r in records if r["status"] == "ok"]
        finals = [r["final_return"] for r in ok]
        mean = f"{np.mean(finals):.1f}" if finals else "-"
        per_seed = ", ".join(f"{f:.0f}" for f in finals) + (
            f" ({len(records) - len(ok)} failed)" if len(ok) < len(records) else "")
        ups = f"{np.mean([r['updates_per_second'] for r in ok]):.0f}" if ok else "-"
        print(f"| {agent} | {env} | {steps} | {variant} | {mean} | {per_seed} | {ups} |")


if __name__ == "__main__":
    sys.exit(main())
