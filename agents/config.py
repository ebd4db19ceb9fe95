"""Agent settings: one typed config per agent, validated and resolved once.

Each agent's dataclass (``DQNConfig``, ``SACConfig``, ...) extends ``AgentConfig``. Settings left
at ``auto`` (the BN settings of issues 12 and 27) and the ``bn_modes`` preset (issue 27) are
turned into their values once, by ``resolved()``, which also validates every field: what an agent
is built from, what ``config.yaml`` holds and what ``--resume`` and the benchmark's settings hash
compare is the resolved config, so nothing downstream guesses an ``auto``. The one setting left
null there is ``xla_single_update``, a speed setting: whether a network has convolutions depends
on the observation's shape, so the update runner decides it from the networks it is given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from bnrl.common.errors import one_line
from bnrl.networks import NETWORKS, SIMBA_NORMS, Norm

TARGET_BN_POLICIES = ("copy", "polyak", "frozen")
MAX_THREADS = 1024
"""Upper bound of the TensorFlow thread-pool settings (far above any machine's cores)."""
# The BN settings of issue 12 (and issue 27's next_action_mode) and their values; "auto" picks the
# agent's ``bn_defaults`` when the critic has plain BN and the pre-remedy behaviour
# (``CLASSIC_BN``) otherwise.
BN_SETTINGS = {"critic_batch": ("separate", "joint"), "target": ("polyak", "none"),
               "bootstrap_mode": ("inference", "training"),
               "actor_loss_mode": ("inference", "training"),
               "next_action_mode": ("inference", "training")}
CLASSIC_BN = {"critic_batch": "separate", "target": "polyak", "bootstrap_mode": "inference",
              "actor_loss_mode": "inference", "next_action_mode": "inference"}
# The named sets of BN modes (``bn_modes``, issue 27): preset -> the mode switch values it sets,
# one per use of the networks that has a switch (the critic's TD estimate is always its one
# training-mode pass, acting always inference mode). An agent takes the switches it has (DQN:
# bootstrap_mode only). docs/bn-critics.md compares them with the study they follow.
BN_MODES = {
    # Each switch keeps its own value (``auto``: the agent's BN defaults with critic_norm=batch).
    "auto": {},
    # Mode-Aware BN (Wang et al. 2025, arXiv 2509.23750; its code's update_mode TTETT): the
    # bootstrap critic in training mode, the critic inside the actor loss in inference mode, the
    # actor in training mode when it samples the next actions of the TD target.
    "ma_bn": {"bootstrap_mode": "training", "actor_loss_mode": "inference",
              "next_action_mode": "training"},
    # Every switchable use in inference mode (DDPG paper, SB3): the modes of plain BN.
    "naive": {"bootstrap_mode": "inference", "actor_loss_mode": "inference",
              "next_action_mode": "inference"},
}


@dataclass
class AgentConfig:
    """Settings shared by every agent; each agent's config adds its own."""

    gamma: float = 0.99
    """Discount factor."""
    batch_size: int = 256
    """Transitions per gradient step."""
    buffer_size: int = 1_000_000
    """Replay capacity (transitions)."""
    learning_starts: int = 100
    """Env steps of uniformly random actions before the first update."""
    train_freq: int = 1
    """Env steps between rounds of updates."""
    gradient_steps: int = 1
    """Updates per round."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the critic / Q-network (``network=mlp``)."""
    network: str = "mlp"
    """Body of the critic / Q-network: ``mlp`` (``hidden``, ``critic_norm`` after each layer)
    or ``simba`` (Lee et al. 2024, "SimBa: Simplicity Bias for Scaling Up Parameters in Deep
    RL", arXiv 2410.09754): running observation normalization, an embedding Dense, residual
    pre-norm blocks (Norm -> Dense(4 x width) -> ReLU -> Dense(width) -> + skip), a last norm
    before the head; ``critic_norm`` is the norm of the blocks and must be ``layer`` (the
    paper's), ``batch`` or ``batch_renorm`` (docs/simba.md). ``hidden`` is then unused."""
    simba_width: int = 512
    """Width of the critic's / Q-network's SimBa blocks (paper, SAC + SimBa critic: 512)."""
    simba_blocks: int = 2
    """Residual blocks of the critic's / Q-network's SimBa body (paper's critic: 2)."""
    critic_norm: str = "none"
    """Normalization of the critic / Q-network: none, batch, batch_renorm, layer."""
    critic_input_norm: bool = False
    """Also normalize the critic's state input (DDPG paper, CrossQ)."""
    bn_momentum: float = 0.99
    """Keras-convention BN momentum (PyTorch's 0.01 is Keras' 0.99)."""
    bn_epsilon: float = 1e-3
    """BN epsilon (Keras default)."""
    target_bn: str = "copy"
    """Target networks' BN moving statistics: ``copy`` every update (SB3 #996, TF-Agents'
    ``tau_non_trainable=1``), ``polyak`` like the weights, or ``frozen`` at initialization."""
    tau: float = 0.005
    """Polyak coefficient of the target weights."""
    critic_norm_position: str = "pre_activation"
    """Where the critic's hidden normalization goes: ``pre_activation`` (Dense -> Norm -> ReLU,
    Ioffe & Szegedy 2015, DDPG) or ``post_activation`` (Dense -> ReLU -> Norm, CrossQ)."""
    critic_batch: str = "auto"
    """Rows of the critic's one training-mode pass. ``separate``: the batch ``(s, a)`` alone.
    ``joint``: ``concat([s, s'])`` / ``concat([a, a'])``, split, gradient stopped on the next
    half, so one set of batch statistics covers both and the moving statistics are updated once
    per step from all ``2B`` rows (CrossQ, Bhatt et al. ICLR 2024). ``auto``: the agent's
    ``bn_defaults`` when ``critic_norm`` is ``batch``, ``separate`` otherwise."""
    target: str = "auto"
    """``polyak``: target networks (critic, and actor for TD3/DDPG) polyak-averaged with ``tau``,
    their BN statistics by ``target_bn``. ``none``: no target networks; the TD target bootstraps
    from the online critic (from the joint pass with ``critic_batch=joint``) and TD3/DDPG take next
    actions from the online actor (CrossQ). ``auto``: the agent's ``bn_defaults`` when
    ``critic_norm`` is ``batch``, ``polyak`` otherwise."""
    bootstrap_mode: str = "auto"
    """BN mode of the networks that compute the TD target (target critic, or the online critic
    without one; DQN's double-Q argmax too). ``inference``: moving statistics (DDPG paper, SB3).
    ``training``: the batch statistics of the rows they see (``s'``, or the joint batch with
    ``critic_batch=joint``, so that bootstrap and trained Q are normalized alike), with no
    statistics update. ``auto``: the agent's ``bn_defaults`` when ``critic_norm`` is ``batch``,
    ``inference`` otherwise."""
    bn_modes: str = "auto"
    """A named set of BN modes, one per use of the networks, resolved once into the mode
    switches (``bootstrap_mode``, ``actor_loss_mode``, ``next_action_mode``; those the agent
    has). ``auto``: each switch keeps its own setting. ``ma_bn``: Mode-Aware BN (Wang et al.
    2025, arXiv 2509.23750): bootstrap in training mode, the actor loss's critic in inference
    mode, next actions sampled by the actor in training mode. ``naive``: all three in inference
    mode (DDPG paper, SB3). A switch set to another value than the preset's (explicitly, or by
    the agent's defaults: CrossQ's ``bootstrap_mode=training``) is refused."""
    renorm_warmup: int = 0
    """Updates during which Batch Renorm (critic and actor) is pinned to plain BN (r = 1,
    d = 0) before its corrections are allowed (CrossQ: 100k)."""
    renorm_rmax: float = 3.0
    """Batch Renorm's clip of r to [1 / rmax, rmax] (Ioffe 2017; CrossQ: 3)."""
    renorm_dmax: float = 5.0
    """Batch Renorm's clip of d to [-dmax, dmax] (Ioffe 2017; CrossQ: 5)."""
    adam_beta1: float = 0.9
    """Adam beta1 of every optimizer (Kingma & Ba: 0.9; CrossQ: 0.5)."""
    intra_op_threads: int = 0
    """TensorFlow threads inside one op (0: TensorFlow's choice)."""
    inter_op_threads: int = 2
    """Ops run side by side (2 measured 45% faster than 1 for SAC on 2 cores)."""
    xla: bool = True
    """Compile the multi-update path with XLA (``tf.function(jit_compile=True)``): with
    ``gradient_steps > 1`` a round of K gradient steps is one ``sess.run`` of one ``tf.while_loop``
    (benchmarks/README.md has the speed-up; the compile, once per agent, takes seconds). Results
    equal plain updates to float tolerance, not bit for bit (XLA sums in another order): false
    runs the same loop without XLA, bit-identical to K single updates, for debugging. A speed
    setting: a run may be resumed with the other value."""
    xla_single_update: bool | None = None
    """Also compile each single update (``gradient_steps = 1``, and the logged update of a
    round) with XLA. ``null`` (default): exactly when ``xla`` is on and a network has BN layers
    (BN or Batch Renorm) and no convolutions, decided when the networks are built. Measured on
    dense networks: 1.5-1.7x more updates/s for SAC, TD3 and CrossQ with a BN critic, and
    0.8-0.98x without BN, where every call's copies of the variables it writes outweigh what XLA
    fuses; on convolutional Q-networks with BN, 0.7-0.9x (XLA's CPU convolutions;
    benchmarks/README.md). ``true`` needs ``xla``. Like ``xla``, it changes speed and float
    rounding only (the compiled update equals the plain graph's to float tolerance), so a run may
    be resumed with another value."""

    # The BN settings each agent picks for a critic with plain BN (the "auto" values; issue 12).
    bn_defaults: ClassVar[dict[str, str]] = {}

    def resolved(self):
        """A validated copy with every ``auto`` setting turned into its value.

        The ``bn_modes`` preset sets the mode switches it names (``BN_MODES``); the BN settings
        still at ``auto`` take the agent's ``bn_defaults`` when ``critic_norm`` is ``batch`` and
        the pre-remedy behaviour (``CLASSIC_BN``) otherwise. A resolved config resolves to
        itself.

        Raises:
          ValueError: an impossible setting, in one line: a wrong type, a null where null means
            nothing, a non-finite number (``coerce_setting``), a value out of range, or a
            mode switch set to another value than the ``bn_modes`` preset's.
        """
        # Every field is checked against its annotation here, once, whichever way the config was
        # made (a dict from YAML and flags, or a dataclass built in Python): nothing is built from
        # an unchecked value.
        values = {f.name: coerce_setting(f.name, str(f.type), getattr(self, f.name))
                  for f in dataclasses.fields(self)}
        checked = dataclasses.replace(self, **values)
        switches = {name: getattr(checked, name) for name in BN_SETTINGS
                    if hasattr(checked, name)}
        for name, value in switches.items():
            if value != "auto" and value not in BN_SETTINGS[name]:
                raise ValueError(f"unknown {name} '{value}': use auto, "
                                 f"{', '.join(BN_SETTINGS[name])}")
        switches.update(preset_modes(checked.bn_modes, switches))
        for name, value in switches.items():
            if value == "auto":
                value = (checked.bn_defaults.get(name, CLASSIC_BN[name])
                         if checked.critic_norm == "batch" else CLASSIC_BN[name])
            values[name] = value
        config = dataclasses.replace(checked, **values)
        config._validate()
        config._resolved = True  # not a field: a copy made with dataclasses.replace resolves anew
        return config

    @property
    def is_resolved(self) -> bool:
        """Whether this config came out of ``resolved()`` (validated, no ``auto`` left)."""
        return getattr(self, "_resolved", False)

    def norm_kinds(self) -> list[str]:
        """The normalization kind of every network the agent builds."""
        return [self.critic_norm]

    def check_n_envs(self, n_envs: int) -> None:
        """ValueError (one line) when the agent cannot train on ``n_envs`` sub-envs: its
        replay buffer holds fewer transitions than one vector step brings."""
        if n_envs > self.buffer_size:
            raise ValueError(f"buffer_size ({self.buffer_size}) must be at least n_envs "
                             f"({n_envs})")

    def rounds(self, n_envs: int) -> dict[str, int]:
        """When rounds of updates fall due with ``n_envs`` sub-envs (``training.Cadence``):
        ``learning_starts`` env steps first, then ``gradient_steps`` updates every
        ``train_freq`` vector steps once the data store holds ``batch_size`` transitions."""
        return {"learning_starts": self.learning_starts, "train_freq": self.train_freq,
                "gradient_steps": self.gradient_steps, "batch_size": self.batch_size}

    def _validate(self) -> None:
        """Raise ValueError with a one-line message on an impossible (resolved) setting."""
        for name in ("batch_size", "buffer_size", "train_freq", "gradient_steps"):
            check_range(self, name, 1)
        check_range(self, "learning_starts", 0)
        check_range(self, "gamma", 0, 1)
        check_range(self, "tau", 0, 1, open_low=True)
        check_range(self, "bn_momentum", 0, 1, open_high=True)
        check_range(self, "bn_epsilon", 0, open_low=True)
        # TensorFlow aborts the whole process (in C++) on a negative pool size.
        for name in ("intra_op_threads", "inter_op_threads"):
            check_range(self, name, 0, MAX_THREADS)
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= buffer_size "
                             f"({self.buffer_size}): batches are sampled from the replay buffer")
        if self.target_bn not in TARGET_BN_POLICIES:
            raise ValueError(
                f"unknown target_bn '{self.target_bn}': use one of {', '.join(TARGET_BN_POLICIES)}"
            )
        for kind in self.norm_kinds():
            Norm(kind)
        self.critic_norm_spec()
        check_network(self, "network", "critic_norm", "simba_width", "simba_blocks")
        if self.network == "simba" and self.critic_norm_position != "pre_activation":
            raise ValueError("network=simba puts its norm before each residual block (pre-norm): "
                             "critic_norm_position must be pre_activation, not "
                             f"{self.critic_norm_position}")
        if (self.critic_batch, self.target, self.bootstrap_mode) == ("joint", "none",
                                                                    "inference"):
            raise ValueError("critic_batch=joint with target=none bootstraps from its own "
                             "training-mode pass: use bootstrap_mode=training or target=polyak")
        if self.target == "none" and self.target_bn != "copy":
            raise ValueError(f"target_bn={self.target_bn} needs target networks but target=none: "
                             "leave target_bn at copy or use target=polyak")
        check_range(self, "renorm_warmup", 0)
        check_range(self, "renorm_rmax", 1)
        check_range(self, "renorm_dmax", 0)
        check_range(self, "adam_beta1", 0, 1, open_high=True)
        if self.xla_single_update and not self.xla:
            raise ValueError("xla_single_update=true needs xla=true (xla=false turns XLA off "
                             "everywhere)")

    def critic_norm_spec(self, **overrides) -> Norm:
        return Norm(self.critic_norm, self.bn_momentum, self.bn_epsilon,
                    input_norm=self.critic_input_norm, position=self.critic_norm_position,
                    **overrides)


@dataclass
class ActorCriticConfig(AgentConfig):
    """Settings shared by the agents with an actor (DDPG, TD3, SAC, CrossQ)."""

    actor_loss_mode: str = "auto"
    """BN mode of the critic inside the actor loss. ``inference``: moving statistics (DDPG
    paper, CrossQ, SB3). ``training``: the batch statistics of ``(s, pi(s))``, with no statistics
    update, i.e. the actor climbs the Q the critic is trained as. ``auto``: the agent's
    ``bn_defaults`` when ``critic_norm`` is ``batch``, ``inference`` otherwise."""
    next_action_mode: str = "auto"
    """BN mode of the actor that samples the next actions of the TD target (the target actor of
    TD3/DDPG, the online actor otherwise). ``inference``: moving statistics (DDPG paper, SB3,
    CrossQ). ``training``: the batch statistics of ``s'``, with no statistics update (Mode-Aware
    BN, ``bn_modes=ma_bn``). ``auto``: ``inference``."""
    actor_norm: str = "none"
    """Normalization of the actor: none, batch, batch_renorm, layer."""
    actor_network: str = "mlp"
    """Body of the actor: ``mlp`` (``actor_hidden``) or ``simba`` (as ``network``; its blocks
    normalized by ``actor_norm``: ``layer``, the paper's, ``batch`` or ``batch_renorm``). The
    running observation normalization is shared with a SimBa critic."""
    actor_simba_width: int = 128
    """Width of the actor's SimBa blocks (paper, SAC + SimBa actor: 128)."""
    actor_simba_blocks: int = 1
    """Residual blocks of the actor's SimBa body (paper's actor: 1)."""

    def norm_kinds(self) -> list[str]:
        return [self.critic_norm, self.actor_norm]

    def _validate(self) -> None:
        super()._validate()
        check_network(self, "actor_network", "actor_norm", "actor_simba_width",
                      "actor_simba_blocks")


def check_network(config, network: str, norm: str, width: str, blocks: str) -> None:
    """ValueError (one line) unless ``config.<network>`` is one of ``NETWORKS`` and, for
    ``simba``, its norm one of ``SIMBA_NORMS`` and its width and blocks at least 1."""
    value = getattr(config, network)
    if value not in NETWORKS:
        raise ValueError(f"unknown {network} '{value}': use one of {', '.join(NETWORKS)}")
    check_range(config, width, 1)
    check_range(config, blocks, 1)
    if value == "simba" and getattr(config, norm) not in SIMBA_NORMS:
        raise ValueError(f"{network}=simba normalizes inside its residual blocks: {norm} must be "
                         f"{', '.join(SIMBA_NORMS)} (layer is the paper's), not "
                         f"{getattr(config, norm)}")


def preset_modes(preset: str, switches: dict[str, str]) -> dict[str, str]:
    """The mode switch values the ``bn_modes`` preset ``preset`` sets, among ``switches`` (the
    config's mode switches and their values, ``auto`` where unset).

    Raises:
      ValueError (one line): an unknown preset, or a switch of ``switches`` set to another value
        than the preset's.
    """
    if preset not in BN_MODES:
        raise ValueError(f"unknown bn_modes '{preset}': use {', '.join(BN_MODES)}")
    chosen = {name: value for name, value in BN_MODES[preset].items() if name in switches}
    for name, value in chosen.items():
        if switches[name] not in ("auto", value):
            raise ValueError(f"bn_modes={preset} sets {name}={value}, but {name}="
                             f"{switches[name]} is set too (explicitly or by the agent's "
                             f"defaults): drop {name} or bn_modes")
    return chosen


def check_range(config, name: str, low=None, high=None, *, open_low: bool = False,
                open_high: bool = False) -> None:
    """ValueError unless ``config.<name>`` lies between ``low`` and ``high`` (None: no bound).

    ``open_low``/``open_high`` exclude the bound itself. NaN is never in range. A None value (an
    optional setting left unset) passes.
    """
    value = getattr(config, name)
    if value is None:
        return
    above = low is None or (value > low if open_low else value >= low)
    below = high is None or (value < high if open_high else value <= high)
    if above and below:
        return
    if high is None:
        accepted = f"{'>' if open_low else '>='} {low}"
    elif low is None:
        accepted = f"{'<' if open_high else '<='} {high}"
    else:
        accepted = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    raise ValueError(f"{name} must be {accepted}, got {one_line(repr(value), 60)}")


# Whole floats up to 2**53 are exact: YAML 1.2 reads 1e6 as a float, and it means a count.
_EXACT_FLOAT_INT = 2**53
# The graph computes in float32: a larger number becomes inf there (bn_epsilon=1e39 is inf).
FLOAT32_MAX = 3.4028234663852886e38


def coerce_setting(name: str, annotation: str, value):
    """``value`` checked against a config field's annotation (YAML/flags give loose types).

    The one check of every setting's value, agent and run settings alike:

    * a whole float is accepted for an integer field (``1e6``, as YAML 1.2 reads it); a fraction
      is not (``steps: 30.7`` would silently never reach a checkpoint step);
    * a float must be finite and within float32's range, the precision the graph computes in:
      ``learning_rate=.inf`` or ``bn_epsilon=1e39`` would train on inf or NaN from the first step;
    * null (YAML's ``null``, ``~`` or an empty value, as in ``--set gamma=``) is accepted only by
      the fields whose annotation allows None, where it means "the default" (their docstrings
      say which); elsewhere it is refused, never silently replaced by the default.
    """
    optional = annotation.endswith("| None")
    kind = annotation.replace("| None", "").strip()
    expected = {"bool": "true or false", "int": "an integer",
                "float": "a finite number", "str": "a string"}.get(
                    kind, "a list of positive integers such as [256, 256]")
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} cannot be empty or null: it takes {expected} (leave it out "
                         "for its default)")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and number:
        return value
    if kind == "int" and isinstance(value, float) and value.is_integer() and (
            abs(value) <= _EXACT_FLOAT_INT):
        return int(value)
    if kind == "float" and number and (isinstance(value, float) or abs(value) <= 2**1023):
        if math.isfinite(value) and abs(value) <= FLOAT32_MAX:
            return float(value)
        raise ValueError(f"{name} must be a finite number (within float32's range, "
                         f"+-3.4e38){' or null' if optional else ''}, got {value}")
    if kind == "str" and isinstance(value, str):
        return value
    if kind.startswith("tuple") and isinstance(value, list | tuple) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return tuple(value)
    raise ValueError(f"config key {name} must be {expected}{' or null' if optional else ''}, "
                     f"got {one_line(repr(value), 60)}")


def nullable_settings(cls) -> list[str]:
    """The fields of a config dataclass whose null means "the default" (annotation ``| None``),
    which ``--help`` must name."""
    return [f.name for f in dataclasses.fields(cls) if str(f.type).endswith("| None")]


def _agent_keys_first(cls, fields) -> list[str]:
    """Field names, the agent's own (most derived class) first, each class's sorted: a long
    list shortened to one line keeps its head, where the agent's settings then are."""
    order: list[str] = []
    for klass in cls.__mro__:
        order += sorted(n for n in vars(klass).get("__annotations__", {})
                        if n in fields and n not in order)
    return order


def config_from_dict(cls, values: dict | None):
    """The resolved dataclass ``cls`` built from a dict, rejecting unknown keys, wrong types and
    impossible values with a one-line ValueError."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {one_line(', '.join(unknown), 200)} for {cls.__name__}: "
            f"accepted are {', '.join(_agent_keys_first(cls, fields))}"
        )
    return cls(**values).resolved()  # resolved() checks every value (coerce_setting)
