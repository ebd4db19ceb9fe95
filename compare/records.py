"""The run record: what one grid run's result file holds, and what a report reads.

Each run record (one per agent x env x variant x seed) is a dict::

    {"agent", "env", "variant", "seed", "status": "ok" | "failed", "error",
     "run_dir", "eval_steps", "eval_returns", "final_return", "auc",
     "wall_time_s", "updates_per_second", "resumes",
     "bn_stats": {"steps", "bn_Q_moving_mean", "bn_Q_moving_variance",
                  "bn_Q_train_eval_gap"},   # {} without a BN critic
     # written by bnrl >= 0.2 (compare.results): what made the run
     "run_agent", "steps", "bnrl_version", "settings_hash", "settings", "variant_settings"}

``agent`` is the grid's agent; a variant may train another (``run_agent``, e.g. CrossQ as a
variant of SAC). ``settings`` are the run's deciding settings, flat (``agent_config.x`` keys),
and ``settings_hash`` their hash (``compare.results``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnrl.common.errors import UserError

_NUMBER = (int, float)
REQUIRED_FIELDS = {"agent": str, "env": str, "variant": str, "seed": int, "status": str}
"""Fields every run record has, and their types."""
OPTIONAL_FIELDS = {"error": str, "run_dir": str, "final_return": _NUMBER, "auc": _NUMBER,
                   "wall_time_s": _NUMBER, "updates_per_second": _NUMBER, "eval_steps": list,
                   "eval_returns": list, "bn_stats": dict, "run_agent": str, "steps": int,
                   "bnrl_version": str, "settings_hash": str, "settings": dict,
                   "variant_settings": dict, "resumes": int}
"""Fields a run record may have: each is None (or absent) or of its type."""


def check_runs(runs: Any, source: str) -> None:
    """One-line UserError, naming ``source`` and the first bad record, unless ``runs`` is a
    non-empty list of run records (schema in the module docstring)."""
    if not isinstance(runs, list):
        raise UserError(f"{source}: 'runs' must be a list of run records, not a "
                        f"{type(runs).__name__}")
    if not runs:
        raise UserError(f"{source} lists no runs: nothing to report")
    for index, run in enumerate(runs):
        problem = record_problem(run)
        if problem:
            raise UserError(f"{source}: run {index} is not a bnrl run record ({problem})")


def record_problem(run: Any) -> str | None:
    """What makes ``run`` not a run record (module docstring), or None."""
    if not isinstance(run, dict):
        return f"a {type(run).__name__}, not a mapping"
    for key, kind in REQUIRED_FIELDS.items():
        if not isinstance(run.get(key), kind) or isinstance(run.get(key), bool):
            return f"bad or missing {key}"
    for key, kind in OPTIONAL_FIELDS.items():
        value = run.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"bad {key}"
    series = [("eval_steps", run.get("eval_steps")), ("eval_returns", run.get("eval_returns"))]
    series += [(f"bn_stats.{k}", v) for k, v in (run.get("bn_stats") or {}).items()]
    for key, values in series:
        try:
            np.asarray(values if values is not None else [], dtype=float)
        except (TypeError, ValueError):
            return f"non-numeric {key}"
    return None
