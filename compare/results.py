"""One grid run and its result file: what it must have been made with, and whether it is done.

Each finished run leaves a small, portable result file,
``OUT/results/<agent>/<env>/<variant>/seed<k>.json`` (a run record, ``compare.records``): its
evaluation curve, a thinned BN diagnostics series, the bnrl version and a hash of every resolved
setting that decides its result (all of the agent and train config except the seed and what
``--resume`` may change). A run counts as done when its result file exists with its spec's
hash, version and step budget; a result file made with other settings or another bnrl version
is refused, never mixed in. Result files of pieces of a grid run elsewhere can be copied into
``OUT/results`` (or merged with ``run.py merge``) and reported together.

Result files written before the run config held the agent's resolved config keep the agent's
``auto`` settings (and ``xla_single_update: null``) unresolved in their settings, so their
stored hash is not the one the same run has now: they count as made with the settings they
resolve to (``resolved_settings``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import bnrl
from bnrl.agents import agent_class
from bnrl.common.errors import UserError
from bnrl.common.files import atomic_write
from bnrl.compare.records import record_problem, result_problem
from bnrl.compare.stats import area_under_curve
from bnrl.compare.variants import RUN_KEYS
from bnrl.training.config import RESUMABLE, RunConfig, from_dict, preset, resolve

BN_POINTS = 50
"""Points of each BN diagnostics series kept in a result file (the file stays a few KB)."""


@dataclass(frozen=True)
class RunSpec:
    agent: str
    """The grid's agent (the column); a variant may train another (``run_agent``)."""
    env: str
    variant: str
    seed: int
    steps: int
    config_file: str | None
    run_dir: str
    threads: int
    eval_every: int | None = None
    settings: dict = field(default_factory=dict)
    """The variant's settings; ``agent`` among them replaces the grid's agent."""
    out: str | None = None
    """The benchmark directory (where ``results/`` lives)."""
    settings_hash: str | None = None
    """``settings_hash`` of the resolved config this run must have."""
    n_envs: int | None = None
    """Sub-envs of each run's vector env (None: the preset's or ``--config``'s, else 1)."""

    @property
    def key(self) -> str:
        return run_key(self.agent, self.env, self.variant, self.seed)

    @property
    def peer(self) -> str | None:
        """The peer library that trains this run (``peers``), None for bnrl."""
        return self.settings.get("peer")

    @property
    def run_agent(self) -> str:
        return self.settings.get("agent", self.agent)

    @property
    def result_file(self) -> Path:
        return result_path(self.out, self.agent, self.env, self.variant, self.seed)


def run_key(agent: str, env: str, variant: str, seed: int) -> str:
    return f"{agent}/{env}/{variant}/seed{seed}"


def result_path(out, agent: str, env: str, variant: str, seed: int) -> Path:
    """Where a run's result file lives in a benchmark directory."""
    return Path(out) / "results" / agent / env.replace(":", "_") / variant / f"seed{seed}.json"


def resolve_spec(spec: RunSpec):
    """The RunConfig a grid run trains with: presets < ``--config`` < the variant's settings."""
    settings = {k: v for k, v in spec.settings.items() if k not in RUN_KEYS}
    return resolve(spec.run_agent, spec.env, spec.config_file,
                   {"steps": spec.steps, "seed": spec.seed, "eval_every": spec.eval_every,
                    "n_envs": spec.n_envs},
                   settings)


# -------------------------------------------------------------------------------- settings
def deciding_settings(config) -> dict:
    """Every resolved setting that decides a run's result, flat (``agent_config.x``): all but
    the seed (recorded apart) and what ``--resume`` may change (the step budget, recorded apart,
    bookkeeping and thread counts)."""
    return {k: v for k, v in sorted(config.flat_dict().items())
            if k not in RESUMABLE and k != "seed"}


def run_settings(config, peer: str | None = None) -> dict:
    """The deciding settings of a run: its resolved config's, and the peer library that trains
    it at those settings (``peers``), if any, so that a peer's runs never share a settings hash
    with bnrl's."""
    settings = deciding_settings(config)
    return {**settings, "peer": peer} if peer else settings


def spec_settings(spec: RunSpec) -> dict:
    """``run_settings`` of what ``spec`` trains."""
    return run_settings(resolve_spec(spec), spec.peer)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def resolved_settings(settings) -> dict | None:
    """A result file's ``settings`` as this bnrl resolves them (``deciding_settings`` of the run
    config they describe: every ``auto`` and ``null`` turned into its value), or None when they
    do not describe a run config (an unknown key, a bad value)."""
    if not isinstance(settings, dict):
        return None
    peer = settings.get("peer")
    settings = {k: v for k, v in settings.items() if k != "peer"}
    prefix = "agent_config."
    train = {k: v for k, v in settings.items() if not k.startswith(prefix)}
    agent = {k.removeprefix(prefix): v for k, v in settings.items() if k.startswith(prefix)}
    try:  # the seed and step budget are not among them, nor in what they resolve to
        config = from_dict({**train, "seed": 0, "steps": 1, "agent_config": agent})
    except (UserError, TypeError, ValueError):
        return None
    resolved = deciding_settings(config)
    return {**resolved, "peer": peer} if peer is not None else resolved


_AGENT_KEY = "agent_config."
_UNSET = object()
"""A setting a run's settings do not hold (or whose unset value cannot be known)."""


def unexplained_differences(base: dict, other: dict, base_variant: dict,
                            other_variant: dict) -> list[str]:
    """The settings in which two result records differ that their variants do not explain, as
    ``key other's value (base's value)`` texts; [] when either holds no settings (bnrl <= 0.2).

    A difference is the variants' own when either variant sets that key (``base_variant``,
    ``other_variant``: their settings), or when each run holds the value the key takes unset
    (its agent's preset or default, an ``auto`` resolved from the run's other settings): a
    variant that trains another agent, or turns BN on, changes those too. Any other difference
    (a learning rate from another --config, another eval_every) a report would credit to the
    variant.
    """
    raw = [r.get("settings") for r in (base, other)]
    if not all(isinstance(s, dict) for s in raw):
        return []
    settings = [resolved_settings(s) or s for s in raw]
    named = {k if k in RUN_KEYS else _AGENT_KEY + k for k in (*base_variant, *other_variant)}
    agents_differ = settings[0].get("agent") != settings[1].get("agent")
    found = []
    for key in dict.fromkeys([*settings[0], *settings[1]]):
        values = [s.get(key, _UNSET) for s in settings]
        if values[0] == values[1] or key in named:
            continue
        if _UNSET in values and agents_differ:
            continue  # a setting of only one of the two agents
        if all(v is not _UNSET and _unset_value(s, key) == v
               for s, v in zip(settings, values, strict=True)):
            continue
        shown = ["not set" if v is _UNSET else repr(v) for v in values]
        found.append(f"{key} {shown[1]} ({shown[0]})")
    return found


def _unset_value(settings: dict, key: str):
    """The value ``key`` resolves to in a run of ``settings`` (flat, resolved) when nobody sets
    it: the env preset's for the run's agent, else the config class default, resolved with the
    run's other settings (so an ``auto`` takes the value these settings give it)."""
    agent, env = settings.get("agent"), settings.get("env")
    try:
        given = preset(env, agent)
        if key.startswith(_AGENT_KEY):
            name, section = key.removeprefix(_AGENT_KEY), given["agent"]
            owner = agent_class(agent).config_class
        else:
            name, section, owner = key, given["train"], RunConfig
        if name in section:
            value = section[name]
        elif name == "n_envs":  # resolve's default for the agent (training.config.resolve)
            value = agent_class(agent).default_n_envs
        else:
            fields = {f.name: f for f in dataclasses.fields(owner)}
            default = fields[name]
            value = (default.default if default.default is not dataclasses.MISSING
                     else default.default_factory())
    except (UserError, ValueError, TypeError, KeyError):
        return _UNSET
    resolved = resolved_settings({**settings, key: value})
    return _UNSET if resolved is None else resolved.get(key, _UNSET)


def record_settings_hash(record: dict) -> str | None:
    """The settings hash of a result record's run as this bnrl resolves its settings; its stored
    hash when they do not resolve."""
    resolved = resolved_settings(record.get("settings"))
    return record.get("settings_hash") if resolved is None else settings_hash(resolved)


def settings_difference(saved, spec: RunSpec) -> str:
    """The settings in which a result file differs from what ``spec`` resolves to (its own
    settings resolved, so that an ``auto`` kept in an older file is not listed)."""
    wanted = spec_settings(spec)
    saved = resolved_settings(saved) or (saved if isinstance(saved, dict) else {})
    changed = [f"{k} {saved.get(k)!r} in the file, {wanted.get(k)!r} now"
               for k in dict.fromkeys([*saved, *wanted]) if saved.get(k) != wanted.get(k)]
    if not changed:
        return "the settings hash differs"
    return "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")


# ---------------------------------------------------------------------------- result files
def read_result(path: Path) -> dict | None:
    """A result file's record, or None when there is none or it is unreadable (the run is then
    trained again, which rewrites it)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def finished(spec: RunSpec) -> dict | None:
    """The record of a finished run of ``spec``, or None when it must (still) be trained.

    Raises:
      UserError: its result file was made by another bnrl version, with other settings or a
        larger step budget: mixing it in would be silent, rerunning would discard it.
    """
    record = read_result(spec.result_file)
    if record is None or record.get("status") != "ok":
        return None
    fix = f"move {spec.result_file} away to train that run again, or choose another --out"
    problem = record_problem(record) or (None if isinstance(record.get("run_dir"), str)
                                         else "no run_dir")
    if problem:
        raise UserError(f"{spec.result_file} is not a bnrl result file ({problem}): {fix}")
    if record.get("bnrl_version") != bnrl.__version__:
        raise UserError(f"{spec.key} was made by bnrl {record.get('bnrl_version')}, this is "
                        f"bnrl {bnrl.__version__}: {fix}")
    if (spec.settings_hash not in (None, record.get("settings_hash"))
            and record_settings_hash(record) != spec.settings_hash):
        raise UserError(f"{spec.key} was made with other settings "
                        f"({settings_difference(record.get('settings'), spec)}): {fix}")
    steps = record.get("steps")  # None or an int (record_problem)
    if steps is None or steps < spec.steps:
        return None  # a shorter budget (--extend): the run continues from its checkpoint
    if steps > spec.steps:
        raise UserError(f"{spec.key} was trained for {steps} steps, this grid has "
                        f"{spec.steps}: {fix}")
    if result_problem(record) is not None:
        return None  # a failed run (no finite result): tried again, like any failed run
    return {**record, "run_dir": str(Path(spec.out) / record["run_dir"])}


def write_result(record: dict, out: Path) -> None:
    """Write a finished run's result file (``run_dir`` relative to ``out``, so the file can be
    copied into another benchmark directory)."""
    path = result_path(out, record["agent"], record["env"], record["variant"], record["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    portable = {**record, "run_dir": os.path.relpath(record["run_dir"], out)}
    atomic_write(path, json.dumps(portable, indent=1))


# ------------------------------------------------------------------------------- records
def base_record(spec: RunSpec, status: str = "failed", error: str | None = None) -> dict:
    """The fields of ``spec``'s run record that name the run."""
    return {"agent": spec.agent, "env": spec.env, "variant": spec.variant, "seed": spec.seed,
            "run_dir": spec.run_dir, "status": status, "error": error}


def record_from_summary(summary: dict) -> dict:
    """The run record's fields from a finished run's ``summary.json``."""
    keys = ("eval_steps", "eval_returns", "final_return", "wall_time_s", "updates_per_second",
            "resumes")
    record = {k: summary.get(k) for k in keys}
    record["auc"] = area_under_curve(summary["eval_steps"], summary["eval_returns"])
    record["bn_stats"] = thin_series(summary.get("bn_stats") or {}, BN_POINTS)
    return record


def thin_series(series: dict, points: int) -> dict:
    """Every series of ``{"steps": [...], name: [...]}`` at ``points`` evenly spaced indices
    (the last one always kept), so that a 1M-step run's BN history stays a few KB."""
    n = len(series.get("steps") or [])
    if n <= points:
        return series
    keep = np.unique(np.linspace(0, n - 1, points).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in series.items()}
