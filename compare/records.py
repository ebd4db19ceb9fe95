"""The run record: what one grid run's result file holds, and what a report reads.

Each run record (one per agent x env x variant x seed) is a dict::

    {"agent", "env", "variant", "seed", "status": "ok" | "failed", "error",
     "run_dir", "eval_steps", "eval_returns", "final_return", "auc",
     "wall_time_s", "updates_per_second", "resumes",
     "bn_stats": {"steps", "bn_Q_moving_mean", "bn_Q_moving_variance",
                  "bn_Q_train_eval_gap",    # {} without a BN critic
                  "bn_Q_greedy_agreement"}, # DQN and PQN, from bnrl 0.3 on
     # written by bnrl >= 0.2 (compare.results): what made the run
     "run_agent", "steps", "bnrl_version", "settings_hash", "settings", "variant_settings",
     # a peer library's run (``benchmark --peer``): its arguments, what it does differently
     # from bnrl at those settings, and its packages' versions
     "peer_settings", "peer_differences", "peer_versions"}

``agent`` is the grid's agent; a variant may train another (``run_agent``, e.g. CrossQ as a
variant of SAC). ``settings`` are the run's deciding settings, flat (``agent_config.x`` keys),
and ``settings_hash`` their hash (``compare.results``); a peer's run holds ``peer`` among them.
A record marked ``ok`` whose result is not a finite number (``result_problem``) counts as a
failed run everywhere.
"""

from __future__ import annotations

import math
from typing import Any

from bnrl.common.errors import UserError

_NUMBER = (int, float)
REQUIRED_FIELDS = {"agent": str, "env": str, "variant": str, "seed": int, "status": str}
"""Fields every run record has, and their types."""
OPTIONAL_FIELDS = {"error": str, "run_dir": str, "final_return": _NUMBER, "auc": _NUMBER,
                   "wall_time_s": _NUMBER, "updates_per_second": _NUMBER, "eval_steps": list,
                   "eval_returns": list, "bn_stats": dict, "run_agent": str, "steps": int,
                   "bnrl_version": str, "settings_hash": str, "settings": dict,
                   "variant_settings": dict, "resumes": int, "peer_settings": dict,
                   "peer_differences": list, "peer_versions": dict}
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
    """What makes ``run`` not a run record (module docstring), naming the key, or None."""
    if not isinstance(run, dict):
        return f"a {type(run).__name__}, not a mapping"
    for key, kind in REQUIRED_FIELDS.items():
        if not isinstance(run.get(key), kind) or isinstance(run.get(key), bool):
            return f"bad or missing {key}"
    for key, kind in OPTIONAL_FIELDS.items():
        value = run.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"bad {key}"
    # Every series is read as a flat float array by the report: anything else (nested lists,
    # numbers as strings, a scalar) would crash it, or every later report of a merged directory.
    for key in ("eval_steps", "eval_returns"):
        if run.get(key) is not None and not _numbers(run[key]):
            return f"{key} is not a list of numbers"
    bn_stats = run.get("bn_stats") or {}
    for key, values in bn_stats.items():
        # A BN statistic may be one value per unit at each step (rows of equal length).
        if not (_numbers(values) or (key != "steps" and _rows(values))):
            return f"bn_stats.{key} is not a list of numbers"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and all(_is_number(v) for v in values)


def _rows(values: Any) -> bool:
    return (isinstance(values, list) and all(_numbers(v) for v in values)
            and len({len(v) for v in values}) <= 1)


def result_problem(run: dict) -> str | None:
    """Why a run record marked ``ok`` holds no usable result, or None.

    A non-finite final return or evaluation return (or none at all) would be dropped from every
    statistic while the run still counted as a success; such a run is a failed run.
    """
    returns = run.get("eval_returns") or []
    final = run.get("final_return")
    if final is None and not returns:
        return "no evaluation return"
    if final is not None and not math.isfinite(final):
        return f"final return is {final}"
    steps = run.get("eval_steps") or []
    for index, value in enumerate(returns):
        if not math.isfinite(value):
            where = f"step {steps[index]}" if index < len(steps) else f"evaluation {index + 1}"
            return f"evaluation return at {where} is {value}"
    return None


def default_baseline(names: list[str], baseline: str | None) -> str:
    """The variant a report compares the others with: ``baseline`` when it is one of ``names``,
    else ``none`` when present, else the first."""
    if baseline is not None and baseline in names:
        return baseline
    return "none" if "none" in names else names[0]
