"""The grid of a benchmark: agent x env cells, named variants and seeds, and every run it plans.

A grid is a list of cells (agent, env, step budget), a list of named variants (sets of agent
settings, ``compare.variants``) with a baseline, and a number of seeds. Each run is a normal
``run.py train`` directory under ``OUT/runs/<agent>/<env>/<variant>/seed<k>`` (so
``tensorboard --logdir OUT`` shows all variants side by side and ``run.py evaluate`` works on any
of them), and leaves a result file (``compare.results``). ``OUT/grid.json`` records the grid:
rerunning the same command finishes it, ``--extend`` grows it, and pieces of one grid run
elsewhere merge into it (``merge_grids``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from bnrl import configs
from bnrl.common.errors import UserError
from bnrl.common.files import atomic_write
from bnrl.compare.results import RunSpec, finished, settings_hash, spec_settings
from bnrl.compare.variants import builtin_variants

QUICK = dict(agents=["td3"], envs=["Pendulum-v1"], variants=["none", "batch_naive", "batch"],
             seeds=5, steps=6000,
             config_file=str(Path(configs.__file__).resolve().parent / "quick.yaml"))
"""The embedded quick benchmark: BN trained the naive way vs BN done right vs none, on an agent
where the naive way fails (TD3, docs/bn-critics.md), with the seeds a Holm-adjusted verdict
needs (5 vs 5: the smallest exact p is 0.008, times the 4 tests of the answer). 4 minutes on a
quiet 2-core AMD EPYC (docs/benchmark-quick/README.md)."""


def grid_record(cells, variants, baseline: str, seeds: int, config_text: str | None,
                eval_every: int | None = None, n_envs: int | None = None) -> dict:
    """What ``OUT/grid.json`` holds.

    Args:
      cells: ``(agent, env, steps)`` triples.
      variants: ``compare.variants.Variant`` objects, in order.
    """
    return {"cells": [{"agent": a, "env": e, "steps": int(s)} for a, e, s in cells],
            "variants": [{"name": v.name, "settings": dict(v.settings)} for v in variants],
            "baseline": baseline, "seeds": int(seeds), "config": config_text,
            "eval_every": eval_every, "n_envs": n_envs}


def merge_grids(old: dict, new: dict, where: str, steps_may_change: bool) -> dict:
    """The union of two grids whose runs are comparable; one-line UserError otherwise.

    ``--extend`` (``steps_may_change``) may give a cell a new step budget (its runs continue to
    it); merging pieces may not (their runs would differ in length).
    """
    for key, what in (("config", "--config"), ("eval_every", "--eval-every"),
                      ("n_envs", "--n-envs")):
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
    if isinstance(grid, dict):
        grid.setdefault("n_envs", None)  # recorded since bnrl 0.4
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
    "n_envs": lambda v: v is None or _is_int(v),
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
            + (f", --eval-every {grid['eval_every']}" if grid.get("eval_every") else "")
            + (f", --n-envs {grid['n_envs']}" if grid.get("n_envs") else ""))


def plan(out: Path, agents, envs, variants, seeds: int, steps, config_file=None,
         extend: bool = False, workers: int = 1, eval_every: int | None = None,
         baseline: str | None = None, n_envs: int | None = None) -> list[RunSpec]:
    """Check or record ``OUT/grid.json`` and return every run of the grid.

    Args:
      agents: a list of agents run on every env, or ``{env: [agents]}``.
      envs: env ids.
      variants: ``Variant`` objects, or names of built-in variants.
      steps: the step budget, or ``{env: steps}``.
      baseline: the variant every other is compared with (default the first).
    """
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
    grid = grid_record(cells, chosen, baseline or chosen[0].name, seeds, config_text, eval_every,
                       n_envs)
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
    check_distinct(specs)  # --extend may bring a variant equal to one the grid has
    for spec in specs:  # refuse a result file that does not match before anything changes
        finished(spec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(grid_file, json.dumps(grid, indent=1))
    return specs


def check_distinct(specs: list[RunSpec]) -> None:
    """One-line UserError when two variants of one cell resolve to the same settings (their
    ``settings_hash``): their runs would be the same experiment, and a report would compare a
    variant with itself. A variant with no settings is the defaults, often the baseline's."""
    seen: dict[tuple, str] = {}
    for spec in specs:
        first = seen.setdefault((spec.agent, spec.env, spec.settings_hash), spec.variant)
        if first != spec.variant:
            raise UserError(f"variants '{first}' and '{spec.variant}' resolve to the same "
                            f"settings on {spec.agent}/{spec.env}: their runs would be the "
                            "same; drop one of them or give it settings that differ")


def threads_per_process(processes: int) -> int:
    """TensorFlow threads for each of ``processes`` running at once: the cores, shared."""
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def specs_of(grid: dict, out: Path, config_file=None, workers: int = 1) -> list[RunSpec]:
    """Every run of a recorded grid, each with the settings hash it must have."""
    threads = threads_per_process(workers)
    specs = []
    for cell in grid["cells"]:
        for variant in grid["variants"]:
            first = RunSpec(cell["agent"], cell["env"], variant["name"], 0, cell["steps"],
                            config_file, "", threads, grid["eval_every"],
                            dict(variant["settings"]), str(out), n_envs=grid["n_envs"])
            digest = settings_hash(spec_settings(first))
            for seed in range(grid["seeds"]):
                run_dir = (out / "runs" / cell["agent"] / cell["env"].replace(":", "_")
                           / variant["name"] / f"seed{seed}")
                specs.append(dataclasses.replace(first, seed=seed, run_dir=str(run_dir),
                                                 settings_hash=digest))
    return specs
