"""Benchmark suites and per-environment normalization scores, read from ``configs/suites.yaml``.

A suite is data, not code: a list of environments, each with the agents that fit its action
space and a step budget. Every environment a report aggregates over needs a ``random`` and a
``reference`` return (with the source of the reference) to normalize its scores, and may have a
``threshold`` for "steps to threshold".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from bnrl import configs
from bnrl.common.errors import UserError

SUITES_FILE = Path(configs.__file__).resolve().parent / "suites.yaml"


@dataclass(frozen=True)
class EnvScores:
    """What normalizes one environment's returns."""

    random: float
    reference: float
    reference_source: str
    threshold: float | None = None

    def normalize(self, value: float) -> float:
        return (value - self.random) / (self.reference - self.random)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    envs: dict[str, dict]
    """Env id -> ``{"steps": int, "agents": [names]}``."""
    extra: str | None = None
    """The pip extra its environments need (``mujoco``)."""

    def agents_for(self, env_id: str, requested) -> list[str]:
        """The requested agents that fit ``env_id`` (all of its agents when none requested)."""
        allowed = self.envs[env_id]["agents"]
        return [a for a in (requested or allowed) if a in allowed]


def _load() -> dict:
    with open(SUITES_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def env_scores() -> dict[str, EnvScores]:
    """Normalization scores of every environment listed in ``configs/suites.yaml``."""
    return {env_id: EnvScores(float(v["random"]), float(v["reference"]),
                              str(v["reference_source"]),
                              None if v.get("threshold") is None else float(v["threshold"]))
            for env_id, v in _load()["envs"].items()}


def load_suites() -> dict[str, Suite]:
    """Every suite of ``configs/suites.yaml`` by name."""
    return {name: Suite(name, s.get("description", ""),
                        {e: {"steps": int(v["steps"]), "agents": list(v["agents"])}
                         for e, v in s["envs"].items()}, s.get("extra"))
            for name, s in _load()["suites"].items()}


def suite(name: str) -> Suite:
    """The suite ``name``; a one-line UserError naming the known suites otherwise."""
    suites = load_suites()
    if name not in suites:
        raise UserError(f"unknown suite '{name}': use one of {', '.join(suites)}")
    return suites[name]
