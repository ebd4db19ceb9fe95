"""Run configuration: defaults < env preset (``configs/``) < ``--config`` file < flags.

A run is described by ``RunConfig`` (what the training loop needs) and the agent's config
dataclass (what the agent needs). Both are saved resolved as ``config.yaml`` in the run
directory, which is what ``--resume`` and ``evaluate`` read back.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from bnrl import configs  # presets ship as package data
from bnrl.agents import agent_class, config_from_dict
from bnrl.training.errors import UserError

PRESET_DIR = Path(configs.__file__).resolve().parent


@dataclass
class RunConfig:
    """What the training loop needs; every field can be set in YAML under ``train:``."""

    agent: str = "sac"
    """Agent name: dqn, ddpg, td3, sac, crossq."""
    env: str = "Pendulum-v1"
    """Gymnasium id, or 'module:EnvId' for a user's registered env."""
    seed: int = 0
    """Seeds the env, the agent's graph, replay and exploration."""
    steps: int = 20_000
    """Environment steps to train for."""
    eval_every: int = 2_000
    """Env steps between evaluations with the deterministic policy."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    checkpoint_every: int = 10_000
    """Env steps between checkpoints (and one at the end)."""
    keep_checkpoints: int = 3
    """Most recent checkpoints kept."""
    log_every: int = 250
    """Gradient steps between scalar logs; BN diagnostics come from that step's own batch."""
    max_episode_steps: int | None = None
    """Override the env's registered time limit."""
    agent_config: dict = field(default_factory=dict)
    """Fields of the agent's config dataclass (see ``python run.py train --help``)."""

    def validate(self) -> None:
        if self.steps < 1:
            raise UserError(f"--steps must be a positive integer, got {self.steps}")
        for name in ("eval_every", "eval_episodes", "checkpoint_every", "keep_checkpoints",
                     "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")

    def agent_config_object(self):
        """The agent's config dataclass built from ``agent_config`` (UserError on bad keys)."""
        try:
            return config_from_dict(agent_class(self.agent).config_class, self.agent_config)
        except (ValueError, TypeError) as exc:
            raise UserError(str(exc)) from None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["agent_config"] = dataclasses.asdict(self.agent_config_object())
        for key, value in data["agent_config"].items():
            if isinstance(value, tuple):
                data["agent_config"][key] = list(value)
        return data


_RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"agent_config", "agent", "env"}


def read_yaml(path: str | os.PathLike) -> dict:
    """Load a YAML mapping; UserError on a missing, unreadable or malformed file."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"malformed YAML in {path}{where}: expected a mapping of "
                        "settings") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping (train:, agent:), "
                        f"not a {type(data).__name__}")
    return data


def preset(env_id: str, agent: str) -> dict:
    """The ``configs/<env_id>.yaml`` preset for ``agent`` as ``{'train': .., 'agent': ..}``."""
    path = PRESET_DIR / f"{env_id.replace(':', '_')}.yaml"
    if not path.exists():
        return {"train": {}, "agent": {}}
    data = read_yaml(path)
    return {"train": dict(data.get("train") or {}),
            "agent": dict((data.get("agents") or {}).get(agent) or {})}


def _merge_user_file(path, train: dict, agent_cfg: dict) -> None:
    data = read_yaml(path)
    unknown = sorted(set(data) - {"train", "agent"})
    if unknown:
        raise UserError(f"unknown top-level key(s) {', '.join(unknown)} in {path}: "
                        "accepted are train (run settings) and agent (agent settings)")
    for section, target in (("train", train), ("agent", agent_cfg)):
        values = data.get(section) or {}
        if not isinstance(values, dict):
            raise UserError(f"'{section}' in {path} must be a mapping of settings")
        target.update(values)


def resolve(agent: str, env: str, config_file=None, train_overrides: dict | None = None,
            agent_overrides: dict | None = None) -> RunConfig:
    """Merge defaults, the env preset, a user YAML file and flags into a validated RunConfig.

    Args:
      agent: agent name.
      env: env id.
      config_file: optional YAML with ``train:`` and ``agent:`` sections.
      train_overrides: RunConfig fields from flags (None values are ignored).
      agent_overrides: agent config fields from flags (None values are ignored).
    """
    try:
        agent_class(agent)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    base = preset(env, agent)
    train, agent_cfg = base["train"], base["agent"]
    if config_file is not None:
        _merge_user_file(config_file, train, agent_cfg)
    train.update({k: v for k, v in (train_overrides or {}).items() if v is not None})
    agent_cfg.update({k: v for k, v in (agent_overrides or {}).items() if v is not None})
    unknown = sorted(set(train) - _RUN_KEYS)
    if unknown:
        raise UserError(f"unknown train setting(s) {', '.join(unknown)}: accepted are "
                        f"{', '.join(sorted(_RUN_KEYS))}")
    try:
        config = RunConfig(agent=agent, env=env, agent_config=agent_cfg, **train)
    except TypeError as exc:
        raise UserError(f"bad train settings: {exc}") from None
    config.validate()
    config.agent_config_object()  # reject bad agent keys/values now, not after env creation
    return config


def from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig from a saved ``config.yaml``."""
    try:
        config = RunConfig(**data)
    except TypeError as exc:
        raise UserError(f"saved config is not a bnrl run config: {exc}") from None
    config.validate()
    return config
