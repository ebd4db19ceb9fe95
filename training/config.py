"""Run configuration: defaults < env preset (``configs/``) < ``--config`` file < flags.

A run is described by ``RunConfig`` (what the training loop needs) and the agent's config
dataclass (what the agent needs). Both are saved resolved as ``config.yaml`` in the run
directory, which is what ``--resume`` compares against and ``evaluate`` reads back.

Every setting is read with one YAML loader (``load_yaml``): YAML 1.2 numbers (``3e-4`` is a
float, as in JSON), no aliases. The whole configuration is validated (types, ranges, cross-field
rules) and resolved once, by ``resolve`` (or ``from_dict`` for a saved one), before anything is
written: ``RunConfig.agent_config`` is then the agent's dataclass with every ``auto`` setting
turned into its value, and that is what the agent is built from, what ``config.yaml`` holds and
what ``--resume`` and the benchmark's settings hash compare.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bnrl import configs  # presets ship as package data
from bnrl.agents import ACTION_SPACES, AgentConfig, agent_class, config_from_dict
from bnrl.agents.config import coerce_setting
from bnrl.common.errors import UserError, one_line
from bnrl.envs import VECTOR_MODES

PRESET_DIR = Path(configs.__file__).resolve().parent

SEED_MAX = 2**32 - 1
"""Largest seed: the agents derive per-network seeds (seed * 1000 + k) that must fit in int64."""

MAX_ENVS = 1024
"""Most sub-envs of a vector env (far beyond what a CPU machine steps usefully)."""

MAX_CONFIG_BYTES = 1 << 20
"""Config files are a few lines; a bigger one is not a bnrl config."""

RESUMABLE = ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "check_finite",
             "vector_env", "agent_config.intra_op_threads", "agent_config.inter_op_threads",
             "agent_config.xla", "agent_config.xla_single_update")
"""Settings ``--resume`` may change: when to stop (``steps``, never below the checkpoint's
step), bookkeeping, the env-boundary check (it only decides whether a run with a non-finite
value stops; a run that finishes has the same numbers either way), sync or async sub-envs, the
thread pools and whether updates are XLA-compiled (speed only: a compiled update equals the
plain graph's to float tolerance, tests/test_multi_update.py). Every other setting must equal
the saved one, or the resumed run would silently be a different experiment. None of them is in
a benchmark run's settings hash."""

DEFAULT_AGENT, DEFAULT_ENV = "sac", "Pendulum-v1"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats and without aliases.

    PyYAML implements YAML 1.1, where a float needs a dot: ``3e-4`` (SAC's documented learning
    rate) would be the string "3e-4". YAML 1.2 and JSON read it as a number.
    Aliases are refused: nested ones expand exponentially (a 542-byte "billion laughs" file took
    gigabytes, issue 11), and settings never need them.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in settings",
                self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # YAML 1.2 forbids duplicate keys; PyYAML would keep the last value without a word, so
        # `gamma: 0.9` above `gamma: 0.99` in one file would silently be dropped.
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the safe loader refuses it itself
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {one_line(repr(key), 60)} (YAML 1.2 forbids "
                    "duplicate keys: keep one)", key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str, source: str):
    """Parse settings text (YAML 1.2 numbers, no aliases); a one-line UserError naming
    ``source`` when it is malformed."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise UserError(f"malformed YAML in {source}{where}: {problem}") from None


def read_yaml(path: str | Path, kind: str = "config file",
              holds: str = "a mapping (train:, agent:)") -> dict:
    """Load a YAML mapping; UserError on a missing, unreadable, huge, non-UTF-8 or malformed
    file, or one that holds no mapping.

    Args:
      path: the file.
      kind: what the file is, for the messages (``variants file``).
      holds: the format it must have, for the message when it holds something else.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{kind} not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {kind} {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"{kind} {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: "
                        "expected a YAML file of settings")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{kind} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                        f"at offset {exc.start})") from None
    data = load_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{kind} {path} must hold {holds}, not a {type(data).__name__}")
    return data


def parse_setting(text: str, source: str | None = None) -> tuple[str, object]:
    """``KEY=VALUE`` as ``(key, value)``, the value read as YAML 1.2 (``--set``, and each pair of
    a benchmark's ``--variant``): the one parser of a setting given as text.

    An empty value is null (YAML's reading of nothing), which the settings check
    (``coerce_setting``) then refuses unless null means the setting's default: nothing given is
    ever dropped here.

    Raises:
      UserError: no ``=``, no key, or a value that is not YAML, naming ``source`` (default: the
        text itself).
    """
    source = source or f"'{one_line(text, 100)}'"
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"expected KEY=VALUE, got {source}")
    return key.strip(), load_yaml(value, source)


@dataclass
class RunConfig:
    """What the training loop needs; every field can be set in YAML under ``train:``."""

    agent: str = DEFAULT_AGENT
    """Agent name: dqn, ddpg, td3, sac, crossq, pqn."""
    env: str = DEFAULT_ENV
    """Gymnasium id, or 'module:EnvId' for a user's registered env."""
    seed: int = 0
    """Seeds the env, the agent's graph, replay and exploration (0 to 2**32 - 1)."""
    steps: int = 20_000
    """Environment steps to train for."""
    eval_every: int = 2_000
    """Env steps between evaluations with the deterministic policy."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_epsilon: float = 0.0
    """Q-network agents (dqn, pqn): the probability of a uniformly random action at each
    evaluation step (0: greedy, as SB3's deterministic evaluation; Mnih et al. 2015 evaluate
    Atari with 0.05, Dopamine with 0.001, which ends the episodes of a greedy policy stuck where
    its action changes nothing)."""
    checkpoint_every: int = 10_000
    """Env steps between checkpoints (and one at the end)."""
    keep_checkpoints: int = 3
    """Most recent checkpoints kept."""
    log_every: int = 250
    """Gradient steps between scalar logs; BN diagnostics come from that step's own batch."""
    max_episode_steps: int | None = None
    """Override the env's registered time limit (null: the env's own)."""
    n_envs: int = 1
    """Sub-envs stepping together (gymnasium's vector API); each vector step is n_envs env
    steps. Unless the env's preset, a config file or --n-envs sets it, a run takes the agent's
    default (1; pqn 16). steps, eval_every and checkpoint_every count env steps: a run
    evaluates and checkpoints at the first vector step that reaches each multiple, and ends at
    the first that reaches steps (as SB3's total_timesteps). As in SB3, train_freq counts vector
    steps: a round of gradient_steps updates every train_freq vector steps (1 update per n_envs
    transitions at the defaults)."""
    vector_env: str = "sync"
    """With n_envs > 1: sync (sub-envs stepped in turn in this process) or async (one process
    each: pays off when an env step costs more than passing its observation, e.g. Atari)."""
    check_finite: bool = True
    """Check every observation, reward and action at the env boundary: a NaN or infinite one
    stops the run as failed, naming the step and the value (a few microseconds per step; false
    turns the check off). Losses and evaluation returns are always checked."""
    agent_config: AgentConfig | dict = field(default_factory=dict)
    """The agent's settings (see ``python run.py train --help``): a mapping of its config
    fields until ``validate`` turns it into the agent's resolved config dataclass."""

    def validate(self) -> None:
        """Check (and normalize: ``1e4`` steps is 10000) every field and resolve the agent's
        settings into its config dataclass; UserError, one line."""
        for f in dataclasses.fields(self):
            if f.name == "agent_config":
                continue
            try:
                setattr(self, f.name, coerce_setting(f.name, str(f.type), getattr(self, f.name)))
            except ValueError as exc:
                raise UserError(str(exc)) from None
        if self.steps < 1:
            raise UserError(f"--steps must be a positive integer, got {self.steps}")
        for name in ("eval_every", "eval_episodes", "checkpoint_every", "keep_checkpoints",
                     "log_every", "max_episode_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UserError(f"--seed must be in [0, {SEED_MAX}], got {self.seed}")
        if self.vector_env not in VECTOR_MODES:
            raise UserError(f"vector_env must be one of {', '.join(VECTOR_MODES)}, got "
                            f"{self.vector_env!r}")
        if not 1 <= self.n_envs <= MAX_ENVS:
            raise UserError(f"--n-envs must be in [1, {MAX_ENVS}], got {self.n_envs}")
        self.agent_config = self._resolved_agent_config()
        check_epsilon(self.agent, self.eval_epsilon, "eval_epsilon")
        try:
            self.agent_config.check_n_envs(self.n_envs)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _resolved_agent_config(self) -> AgentConfig:
        try:
            config_class = agent_class(self.agent).config_class
            if isinstance(self.agent_config, config_class):
                return self.agent_config.resolved()
            if not isinstance(self.agent_config, dict):
                raise UserError("agent settings must be a mapping of agent config keys")
            return config_from_dict(config_class, self.agent_config)
        except (ValueError, TypeError) as exc:
            raise UserError(str(exc)) from None

    def warnings(self) -> list[str]:
        """Legal but probably unintended combinations, as one-line messages."""
        agent = self.agent_config
        found = []
        if agent.learning_starts >= self.steps:
            found.append(f"learning_starts ({agent.learning_starts}) >= steps ({self.steps}): "
                         "the run acts randomly and never takes a gradient step")
        elif agent.batch_size > self.steps:
            found.append(f"batch_size ({agent.batch_size}) > steps ({self.steps}): the replay "
                         "buffer never holds a batch, so no gradient step is taken")
        elif agent.rounds(self.n_envs)["batch_size"] > self.steps:  # PQN's rollout
            found.append(f"a rollout of n_envs x rollout_len = "
                         f"{agent.rounds(self.n_envs)['batch_size']} transitions > steps "
                         f"({self.steps}): it never fills, so no gradient step is taken")
        return found

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key, value in data["agent_config"].items():
            if isinstance(value, tuple):
                data["agent_config"][key] = list(value)
        return data

    def flat_dict(self) -> dict:
        """``to_dict`` with the agent's settings as ``agent_config.<name>`` keys."""
        data = self.to_dict()
        flat = {k: v for k, v in data.items() if k != "agent_config"}
        flat.update({f"agent_config.{k}": v for k, v in data["agent_config"].items()})
        return flat


def check_epsilon(agent: str, epsilon: float, name: str) -> None:
    """An evaluation's epsilon (``name``: the setting or flag that gave it) is in [0, 1], and 0
    for an agent with continuous actions; UserError, one line."""
    if not 0 <= epsilon <= 1:
        raise UserError(f"{name} must be in [0, 1], got {epsilon}")
    if epsilon and ACTION_SPACES[agent] != "discrete":
        discrete = ", ".join(a for a, space in ACTION_SPACES.items() if space == "discrete")
        raise UserError(f"{name} applies to agents with discrete actions ({discrete}); "
                        f"{agent} evaluates its deterministic action: leave it at 0")


_RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"agent_config"}


def preset(env_id: str, agent: str) -> dict:
    """The preset of ``env_id`` for ``agent`` as ``{'train': .., 'agent': ..}``: the file
    ``configs/<env_id>.yaml``, or for an id with a namespace (``MinAtar/Breakout-v1``,
    ``ALE/Pong-v5``) the family's ``configs/<namespace>.yaml``. Its ``train:`` settings apply
    to every agent, then those of the agent's entry in ``agent_train:`` (PQN's budget and
    sub-envs differ from the replay agents')."""
    namespace, slash, _ = env_id.partition("/")
    name = namespace if slash else env_id.replace(":", "_")
    path = PRESET_DIR / f"{name}.yaml"
    if "/" in name or "\\" in name or not path.exists():
        return {"train": {}, "agent": {}}
    data = read_yaml(path)
    return {"train": {**(data.get("train") or {}),
                      **((data.get("agent_train") or {}).get(agent) or {})},
            "agent": dict((data.get("agents") or {}).get(agent) or {})}


def _read_user_file(path) -> tuple[dict, dict]:
    """The ``train:`` and ``agent:`` sections of a ``--config`` file."""
    data = read_yaml(path)
    unknown = sorted(str(key) for key in set(data) - {"train", "agent"})
    if unknown:
        raise UserError(f"unknown top-level key(s) {', '.join(unknown)} in {path}: "
                        "accepted are train (run settings) and agent (agent settings)")
    sections = []
    for section in ("train", "agent"):
        values = data.get(section) or {}
        if not isinstance(values, dict):
            raise UserError(f"'{section}' in {path} must be a mapping of settings")
        sections.append(dict(values))
    return sections[0], sections[1]


def resolve(agent: str | None = None, env: str | None = None, config_file=None,
            train_overrides: dict | None = None,
            agent_overrides: dict | None = None) -> RunConfig:
    """Merge defaults, the env preset, a user YAML file and flags into a validated RunConfig.

    Precedence, for every key: defaults < preset < ``config_file`` < arguments. Only given
    values override: a run flag left out (None) never does; a given agent setting always does.

    Args:
      agent: agent name, or None for the config file's ``train: {agent: ..}`` or sac.
      env: env id, or None for the config file's ``train: {env: ..}`` or Pendulum-v1.
      config_file: optional YAML with ``train:`` and ``agent:`` sections.
      train_overrides: RunConfig fields from flags (None: the flag was left out).
      agent_overrides: agent config fields from flags and ``--set``; each given key overrides,
        None (null) included.

    Raises:
      UserError: any unknown key, wrong type or out-of-range value, in one line.
    """
    file_train, file_agent = _read_user_file(config_file) if config_file else ({}, {})
    given_train = {**file_train, **_given(train_overrides), **_given(dict(agent=agent, env=env))}
    # Agent settings given (``--set``, a variant's settings) override whatever their value, null
    # included: a null overrides the config file's value, and one where null means nothing is
    # refused by the check, never dropped.
    given_agent = {**file_agent, **(agent_overrides or {})}
    try:  # the agent and env pick the preset, so they are checked first
        agent = coerce_setting("agent", "str", given_train.get("agent", DEFAULT_AGENT))
        env = coerce_setting("env", "str", given_train.get("env", DEFAULT_ENV))
        agent_class(agent)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    base = preset(env, agent)
    # An agent that trains on many sub-envs (PQN) has its own default.
    train = {"n_envs": agent_class(agent).default_n_envs, **base["train"], **given_train}
    unknown = sorted(str(key) for key in set(train) - _RUN_KEYS)
    if unknown:
        raise UserError(f"unknown train setting(s) {', '.join(unknown)}: accepted are "
                        f"{', '.join(sorted(_RUN_KEYS))}")
    config = RunConfig(agent_config={**base["agent"], **given_agent}, **train)
    config.validate()  # also rejects bad agent keys/values now, not after env creation
    return config


def _given(values: dict | None) -> dict:
    return {k: v for k, v in (values or {}).items() if v is not None}


def from_dict(data: dict, source: str = "saved config") -> RunConfig:
    """Rebuild and validate a RunConfig from a saved ``config.yaml``."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(str(key) for key in set(data) - known)
    missing = sorted({"agent", "env", "seed", "steps"} - set(data))
    if unknown or missing:
        problem = f"unknown keys {', '.join(unknown)}" if unknown else (
            f"missing {', '.join(missing)}")
        raise UserError(f"{source} is not a bnrl run config ({problem})")
    config = RunConfig(**data)
    config.validate()
    return config


def changed_settings(saved: RunConfig, config: RunConfig) -> list[str]:
    """The settings (``key (saved X, given Y)``) in which ``config`` differs from ``saved``,
    other than those in ``RESUMABLE``."""
    old, new = saved.flat_dict(), config.flat_dict()
    changed = []
    for key in dict.fromkeys([*old, *new]):
        if key not in RESUMABLE and old.get(key) != new.get(key):
            changed.append(f"{key.removeprefix('agent_config.')} (saved {old.get(key)!r}, "
                           f"given {new.get(key)!r})")
    return changed
