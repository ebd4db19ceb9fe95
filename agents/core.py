"""The Session-based agent core every bnrl agent is built on.

An agent owns a ``tf.Graph`` and a ``tf.compat.v1.Session``. The graph is built once, in small
``_build_*`` steps (Dopamine style): the agent's networks, its ``Schedule``, and one train op per
variant of that schedule (the set of pieces an update runs: critic step, delayed actor step,
target update). Each variant is ``_build_variant(batch, noise, pieces)``, a function of its input
tensors that builds everything the variant runs from the named pieces of ``agents.update``; random
noise is drawn outside it. The train ops are checked with ``networks.check_wiring`` so that no BN
layer is left stale or updated twice, and the graph is then finalized: nothing adds ops during
training. One gradient step is one ``sess.run`` (through a ``make_callable``) of one variant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bnrl.agents.replay import ReplayBuffer
from bnrl.agents.update import (
    TARGET,
    Batch,
    Schedule,
    Update,
    after,
    target_update,
    target_update_ops,
)
from bnrl.networks import (
    Norm,
    batch_statistics_call,
    bn_diagnostics,
    bn_layers,
    check_wiring,
    new_graph_session,
    tf,
)
from bnrl.networks.inference import NumpyForward, Unsupported
from bnrl.training.errors import one_line
from bnrl.training.files import atomic_write

TARGET_BN_POLICIES = ("copy", "polyak", "frozen")
MAX_THREADS = 1024
"""Upper bound of the TensorFlow thread-pool settings (far above any machine's cores)."""
# The BN settings of issue 12 and their values; "auto" picks the agent's ``bn_defaults`` when the
# critic has plain BN and the pre-remedy behaviour (``PLAIN``) otherwise.
BN_SETTINGS = {"critic_batch": ("separate", "joint"), "target": ("polyak", "none"),
               "bootstrap_mode": ("inference", "training"),
               "actor_loss_mode": ("inference", "training")}
PLAIN = {"critic_batch": "separate", "target": "polyak", "bootstrap_mode": "inference",
         "actor_loss_mode": "inference"}


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
    """Hidden widths of the critic / Q-network."""
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
    runs the same loop without XLA, bit-identical to K single updates, for debugging."""
    xla_single_update: bool | None = None
    """Also compile each single update (``gradient_steps = 1``, and the logged update of a
    round) with XLA. ``null`` (default): exactly when ``xla`` is on and a network has BN layers
    (BN or Batch Renorm): measured 1.5-1.7x more updates/s for SAC, TD3 and CrossQ with a BN
    critic, and 0.8-0.98x without BN, where every call's copies of the variables it writes
    outweigh what XLA fuses (benchmarks/README.md). ``true`` needs ``xla``."""

    def validate(self) -> None:
        """Raise ValueError with a one-line message on an impossible setting."""
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
        self.critic_norm_spec()
        self._check_bn_settings()
        if self.xla_single_update and not self.xla:
            raise ValueError("xla_single_update=true needs xla=true (xla=false turns XLA off "
                             "everywhere)")

    # The BN settings each agent picks for a critic with plain BN (the "auto" values; issue 12).
    bn_defaults: ClassVar[dict[str, str]] = {}

    def setting(self, name: str) -> str:
        """The value of BN setting ``name`` with ``auto`` resolved (see ``bn_defaults``)."""
        value = getattr(self, name)
        if value != "auto":
            return value
        return (self.bn_defaults.get(name, PLAIN[name]) if self.critic_norm == "batch"
                else PLAIN[name])

    def _check_bn_settings(self) -> None:
        for name, choices in BN_SETTINGS.items():
            value = getattr(self, name, "auto")
            if value != "auto" and value not in choices:
                raise ValueError(f"unknown {name} '{value}': use auto, {', '.join(choices)}")
        if (self.setting("critic_batch"), self.setting("target"),
                self.setting("bootstrap_mode")) == ("joint", "none", "inference"):
            raise ValueError("critic_batch=joint with target=none bootstraps from its own "
                             "training-mode pass: use bootstrap_mode=training or target=polyak")
        if self.setting("target") == "none" and self.target_bn != "copy":
            raise ValueError(f"target_bn={self.target_bn} needs target networks but target=none: "
                             "leave target_bn at copy or use target=polyak")
        check_range(self, "renorm_warmup", 0)
        check_range(self, "renorm_rmax", 1)
        check_range(self, "renorm_dmax", 0)
        check_range(self, "adam_beta1", 0, 1, open_high=True)

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


def coerce_setting(name: str, annotation: str, value):
    """``value`` checked against a config field's annotation (YAML/flags give loose types).

    A whole float is accepted for an integer field (``1e6``, as YAML 1.2 reads it); a fraction is
    not (``steps: 30.7`` would silently never reach a checkpoint step).
    """
    optional = annotation.endswith("| None")
    kind = annotation.replace("| None", "").strip()
    if value is None and optional:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and number:
        return value
    if kind == "int" and isinstance(value, float) and value.is_integer() and (
            abs(value) <= _EXACT_FLOAT_INT):
        return int(value)
    if kind == "float" and number and (isinstance(value, float) or abs(value) <= 2**1023):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind.startswith("tuple") and isinstance(value, list | tuple) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return tuple(value)
    expected = {"bool": "true or false", "int": "an integer", "float": "a number",
                "str": "a string"}.get(kind, "a list of positive integers such as [256, 256]")
    raise ValueError(f"config key {name} must be {expected}{' or null' if optional else ''}, "
                     f"got {one_line(repr(value), 60)}")


def _agent_keys_first(cls, fields) -> list[str]:
    """Field names, the agent's own (most derived class) first, each class's sorted: a long
    list shortened to one line keeps its head, where the agent's settings then are."""
    order: list[str] = []
    for klass in cls.__mro__:
        order += sorted(n for n in vars(klass).get("__annotations__", {})
                        if n in fields and n not in order)
    return order


def config_from_dict(cls, values: dict | None):
    """Build the dataclass ``cls`` from a dict, rejecting unknown keys and wrong types with a
    one-line error."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {one_line(', '.join(unknown), 200)} for {cls.__name__}: "
            f"accepted are {', '.join(_agent_keys_first(cls, fields))}"
        )
    for name, value in values.items():
        values[name] = coerce_setting(name, str(fields[name].type), value)
    config = cls(**values)
    config.validate()
    return config


class Agent:
    """Base class: graph, session, replay, acting, one-``sess.run`` updates, save/restore.

    Subclasses implement three build steps: ``_build_networks`` (the Keras models),
    ``_build_update(batch)`` (the update as an ``agents.update.Update`` of named pieces, its
    ``Schedule`` included) and ``_build_act`` (the acting output), and ``_postprocess_action``
    when acting needs more than the network's output. Public API: ``act``, ``observe``,
    ``train_step``, ``update``, ``save``, ``restore``, and ``schedule``.

    Args:
      observation_space: a 1-D ``gymnasium.spaces.Box``.
      action_space: ``Box`` in [-1, 1] (continuous agents) or ``Discrete`` (DQN).
      config: the agent's config dataclass.
      seed: seeds the graph, the replay sampling and exploration noise.
    """

    name = "agent"
    config_class = AgentConfig
    discrete = False

    def __init__(self, observation_space, action_space, config=None, seed: int = 0):
        self.config = config if config is not None else self.config_class()
        self.config.validate()
        self.seed = int(seed)
        self.obs_dim = int(np.prod(observation_space.shape))
        if self.discrete:
            self.n_actions = int(action_space.n)
            action_shape, action_dtype = (), np.int64
        else:
            self.act_dim = int(np.prod(action_space.shape))
            action_shape, action_dtype = (self.act_dim,), np.float32
        self.rng = np.random.default_rng(self.seed)
        self.buffer = ReplayBuffer(self.config.buffer_size, (self.obs_dim,), action_shape,
                                   action_dtype, seed=self.seed + 1)
        self.env_steps = 0
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.set_random_seed(self.seed)
            batch = self._build_placeholders()
            self._build_networks()
            self.schedule = self._build_schedule()
            self._build_train_ops(batch, self._build_noise(tf.shape(batch.obs)[0],
                                                            self.num_updates))
            self._build_counter()
            self._build_diagnostics()
            if self.config.gradient_steps > 1:
                self._build_multi_update()
            self._build_wiring_check()
            self.act_output = self._build_act()
            self._build_io()
        self.sess = new_graph_session(self.graph, self.config.intra_op_threads,
                                      self.config.inter_op_threads)
        self.sess.run(self._init_op)
        if self._target_init is not None:
            self.sess.run(self._target_init)
        self._build_callables()
        self._updates = 0
        self.graph.finalize()

    # ----------------------------------------------------------------------------- graph building
    def _build_placeholders(self) -> Batch:
        f32 = tf.float32
        self.obs_ph = tf.compat.v1.placeholder(f32, [None, self.obs_dim], "obs")
        if self.discrete:
            self.action_ph = tf.compat.v1.placeholder(tf.int64, [None], "action")
        else:
            self.action_ph = tf.compat.v1.placeholder(f32, [None, self.act_dim], "action")
        self.reward_ph = tf.compat.v1.placeholder(f32, [None], "reward")
        self.next_obs_ph = tf.compat.v1.placeholder(f32, [None, self.obs_dim], "next_obs")
        self.done_ph = tf.compat.v1.placeholder(f32, [None], "done")
        self.batch_phs = (self.obs_ph, self.action_ph, self.reward_ph, self.next_obs_ph,
                          self.done_ph)
        # Counts gradient steps; saved with the weights. It also seeds the in-graph noise of each
        # step (stateless RNG), so a restored agent draws exactly what the original would have.
        self.num_updates = tf.compat.v1.train.get_or_create_global_step()
        self._models_built = 0
        return Batch(*self.batch_phs)

    def _model_seed(self) -> int:
        """A distinct initializer seed per network: tf-keras initializers ignore the graph seed
        (they draw from Python's global ``random``), so the agent seeds them explicitly."""
        self._models_built += 1
        return self.seed * 1000 + self._models_built

    def _step_noise(self, rows: tf.Tensor, step: tf.Tensor, width: int, salt: int) -> tf.Tensor:
        """Standard normal noise ``[rows, width]`` of update ``step`` (stateless, seeded by the
        update counter, so a restored agent draws what the original would have, and K updates in
        one run draw what K single updates would have)."""
        seed = tf.stack([tf.cast(step, tf.int32) * 7 + salt, self.seed])
        return tf.random.stateless_normal(tf.stack([rows, width]), seed=seed)

    def _build_networks(self):
        """Create the Keras models and their optimizers: set ``self.critic_models`` (BN
        diagnostics prefix ``Q``), ``self.actor_models`` (prefix ``pi``) and
        ``self.target_pairs`` [(online, target)]."""
        raise NotImplementedError

    def _build_schedule(self) -> Schedule:
        """Which pieces run at update ``i``."""
        raise NotImplementedError

    def _build_noise(self, rows: tf.Tensor, step: tf.Tensor) -> dict:
        """The random noise of update ``step`` on a batch of ``rows``, by name (``_step_noise``).

        Drawn outside the update function and passed in: under XLA the stateless RNG returns
        other samples than TensorFlow's CPU kernel for the same seed, so the compiled update
        would otherwise draw other noise than the plain one.
        """
        return {}

    def _build_update(self, batch: Batch, noise: dict, pieces: tuple[str, ...]) -> Update:
        """The critic step, and the actor step when ``pieces`` has one, on ``batch``."""
        raise NotImplementedError

    def _build_act(self) -> tf.Tensor:
        """The acting output on ``self.obs_ph`` (inference mode): action, Q-values or dist."""
        raise NotImplementedError

    def _build_variant(self, batch: Batch, noise: dict, pieces: tuple[str, ...]):
        """Everything one variant runs, as a function of its input tensors: the agent's steps,
        then the target update (reading the online networks after the steps).

        Returns:
          ``(train_op, scalars, update)``.
        """
        update = self._build_update(batch, noise, pieces)
        ops = update.steps()
        if TARGET in pieces:
            ops += target_update(self.target_pairs, self.config.tau, self.config.target_bn,
                                 update.steps())
        return tf.group(*ops, name="step_" + "_".join(pieces)), update.scalars(), update

    def _build_train_ops(self, batch: Batch, noise: dict):
        """One train op per variant of the schedule (``self.train_ops``), with its scalars
        (``self.scalars``) and pieces (``self.updates_built``); each variant compiled with XLA
        when ``xla_single_update`` asks for it (by default: with BN layers)."""
        self.train_ops, self.scalars, self.updates_built = {}, {}, {}
        self.noise_names = list(noise)
        c = self.config
        compiled = c.xla and (c.xla_single_update if c.xla_single_update is not None else any(
            bn_layers(m) for m in self.critic_models + self.actor_models))
        build = self._build_compiled_variant if compiled else self._build_variant
        for variant, pieces in self.schedule.variants().items():
            (self.train_ops[variant], self.scalars[variant],
             self.updates_built[variant]) = build(batch, noise, pieces)

    def _build_compiled_variant(self, batch: Batch, noise: dict, pieces: tuple[str, ...]):
        """``_build_variant`` as one XLA-compiled function called on ``batch`` and ``noise``:
        the call op is the train op, its outputs the scalars and the critic's training-mode
        inputs (for the train/eval gap, read after the call).

        Inside a function every stateful op runs (automatic control dependencies), so the
        variant's BN updates run whether or not they are grouped into its steps; ``check_wiring``
        looks inside the function for updates made twice.
        """

        def variant(tensors, noise):
            op, _, update = self._build_variant(Batch(*tensors), noise, pieces)
            return after(op, (update.critic_scalars, update.actor_scalars, update.critic_inputs))

        fn = tf.function(variant, jit_compile=True, autograph=False)
        critic_scalars, actor_scalars, inputs = fn(batch.tensors(), noise)
        call = tf.nest.flatten(critic_scalars)[0].op
        update = Update(critic_step=call, critic_scalars=critic_scalars, critic_inputs=inputs,
                        actor_step=call if actor_scalars else None, actor_scalars=actor_scalars)
        return call, update.scalars(), update

    def _build_multi_update(self):
        """K gradient steps in one ``sess.run`` (``update_many``), for ``gradient_steps > 1``.

        The K batches are fed stacked ``[K, batch, ...]`` (sampled in Python from the replay
        buffer, as K single updates would sample them). One function (XLA-compiled with ``xla``)
        runs a ``tf.while_loop`` whose body is the very variant functions of the single path,
        picking update ``i``'s variant in the graph from the schedule's period; the noise of the
        K steps is drawn outside, from the same per-step seeds. Each step's scalars come out as
        one row of ``[K, len(multi_names)]`` (zero where that step's variant has no such scalar).
        Values captured from outside (Batch Renorm's warm-up clipping) are read once per call:
        ``update_many`` splits a round at the warm-up boundary.
        """
        stacked = Batch(*[tf.compat.v1.placeholder(p.dtype, [None] + p.shape.as_list(),
                                                   "many_" + p.op.name) for p in self.batch_phs])
        k, rows = tf.shape(stacked.obs)[0], tf.shape(stacked.obs)[1]
        first = tf.cast(self.num_updates, tf.int32)
        noise = {}
        if self.noise_names:
            noise = tf.map_fn(lambda j: self._build_noise(rows, first + j), tf.range(k),
                              fn_output_signature={name: tf.float32 for name in self.noise_names})
        variants = self.schedule.variants()
        self.multi_names = list(dict.fromkeys(n for s in self.scalars.values() for n in s))
        period = self.schedule.period()
        index = {variant: i for i, variant in enumerate(variants)}
        table = [index[self.schedule.variant(i)] for i in range(period)]

        def step(batch: Batch, noise: dict, pieces: tuple[str, ...]):
            op, scalars, _ = self._build_variant(batch, noise, pieces)
            return after(op, tf.stack([tf.cast(scalars[name], tf.float32) if name in scalars
                                       else tf.constant(0.0) for name in self.multi_names]))

        def loop(tensors, noise, first):
            n = tf.shape(tensors[0])[0]

            def body(j, values):
                batch = Batch(*[t[j] for t in tensors])
                step_noise = {name: t[j] for name, t in noise.items()}
                branches = [functools.partial(step, batch, step_noise, pieces)
                            for pieces in variants.values()]
                if len(branches) == 1:
                    row = branches[0]()
                else:
                    row = tf.switch_case(tf.gather(table, (first + j) % period), branches)
                return j + 1, values.write(j, row)

            _, values = tf.while_loop(lambda j, _: j < n, body,
                                      (tf.constant(0), tf.TensorArray(tf.float32, size=n)),
                                      maximum_iterations=n)
            return values.stack()

        fn = tf.function(loop, jit_compile=self.config.xla, autograph=False)
        values = fn(stacked.tensors(), noise, first)
        with tf.control_dependencies([values.op]):
            count = self.num_updates.assign_add(tf.cast(k, self.num_updates.dtype),
                                                read_value=False)
        self.multi_op = tf.group(values.op, count, name="train_many")
        self.multi_values = values
        self.multi_phs = stacked.tensors()

    def _build_counter(self):
        """Count the update at the very end of every variant, after all of its ops: every read
        of the counter inside a step (noise seeds, Batch Renorm warm-up) then sees the pre-step
        value, in whatever order the ops run."""
        for variant, op in self.train_ops.items():
            with tf.control_dependencies([op]):
                count = self.num_updates.assign_add(1, read_value=False)
            self.train_ops[variant] = tf.group(op, count,
                                               name="train_" + variant.replace("+", "_"))

    def _build_wiring_check(self):
        ops = dict(self.train_ops)
        if self.config.gradient_steps > 1:
            ops["multi-update loop"] = self.multi_op
        miswired = []
        for variant, op in ops.items():
            problems = check_wiring(op, self.critic_models + self.actor_models)
            if problems:
                miswired.append(f"{self.name} train op '{variant}' is miswired: "
                                + "; ".join(problems))
        if miswired:
            raise RuntimeError(" | ".join(miswired))

    def _build_diagnostics(self):
        """BN diagnostics per variant, read after that variant's step, with the gap between Q
        with batch statistics and with moving statistics on the rows the critic's training-mode
        pass saw (the joint batch with ``critic_batch=joint``), read after its critic step."""
        self.diagnostics = {}
        for variant, op in self.train_ops.items():
            diag = dict(bn_diagnostics(self.critic_models, "Q", after=op))
            diag.update(bn_diagnostics(self.actor_models, "pi", after=op))
            if "bn_Q_moving_mean" in diag:
                update = self.updates_built[variant]
                # Built inside the block so that every variable read of both calls (weights and
                # moving statistics) follows the critic step and its BN updates.
                with tf.control_dependencies([update.critic_step]):
                    q_batch = batch_statistics_call(self.critic_models[0], update.critic_inputs)
                    q_moving = self.critic_models[0](update.critic_inputs, training=False)
                diag["bn_Q_train_eval_gap"] = tf.reduce_mean(tf.abs(q_batch - q_moving))
            self.diagnostics[variant] = diag

    def _build_io(self):
        init = [tf.compat.v1.global_variables_initializer()]
        self._init_op = tf.group(*init)
        self._target_init = None
        if self.target_pairs:
            self._target_init = tf.group(*[
                op for online, target in self.target_pairs
                for op in target_update_ops(online, target, 1.0, "copy")])
        self.saver = tf.compat.v1.train.Saver(max_to_keep=None, save_relative_paths=True)

    def _build_callables(self):
        self._train_fns = {}
        for variant, op in self.train_ops.items():
            names = list(self.scalars[variant])
            fetches = [op] + [self.scalars[variant][n] for n in names]
            log_names = names + list(self.diagnostics[variant])
            log_fetches = fetches + list(self.diagnostics[variant].values())
            self._train_fns[variant] = (
                (names, self.sess.make_callable(fetches, list(self.batch_phs))),
                (log_names, self.sess.make_callable(log_fetches, list(self.batch_phs))),
            )
        self._many_fn = None
        if self.config.gradient_steps > 1:
            self._many_fn = self.sess.make_callable([self.multi_op, self.multi_values],
                                                    list(self.multi_phs))
        # Acting runs its few ops on the caller's thread instead of handing them to the
        # inter-op pool (RunOptions.inter_op_thread_pool = -1): benchmarks/README.md has the
        # latency before and after. Only for acting: the update gains from the pool's parallelism.
        act = self.sess.make_callable(self.act_output, [self.obs_ph], accept_options=True)
        self._act_fn = functools.partial(
            act, options=tf.compat.v1.RunOptions(inter_op_thread_pool=-1))
        self._num_updates_fn = self.sess.make_callable(self.num_updates)
        self._numpy_act = self._build_numpy_act()
        self._restores, self._numpy_key, self._numpy_seen = 0, None, None

    def _build_numpy_act(self):
        """The deterministic action in numpy (``networks.inference``): ``(forward, fetch of its
        weights, finish)``, or None when the acting network has a layer it does not run."""
        model, output, finish = self._numpy_policy()
        try:
            forward = NumpyForward(model, output)
        except Unsupported:
            return None
        return forward, self.sess.make_callable(forward.variables), finish

    def _numpy_policy(self):
        """``(model, output layer name or None, finish)``: ``finish`` maps that output's row for
        one observation to the deterministic action, as ``act(obs, explore=False)`` returns it."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- BN settings
    def _renorm_clipping(self) -> dict:
        """Batch Renorm's r/d clipping; during ``renorm_warmup`` updates r in [1, 1], d in
        [0, 0], which is plain BN (Keras accepts tensors as bounds)."""
        c = self.config
        clipping = {"rmax": c.renorm_rmax, "rmin": 1.0 / c.renorm_rmax, "dmax": c.renorm_dmax}
        if c.renorm_warmup == 0:
            return clipping
        warm = tf.cast(self.num_updates, tf.int64) < c.renorm_warmup
        return {k: tf.where(warm, 0.0 if k == "dmax" else 1.0, v) for k, v in clipping.items()}

    def _critic_norm(self) -> Norm:
        """The critic's / Q-network's normalization, as the config sets it."""
        return self.config.critic_norm_spec(renorm_clipping=self._renorm_clipping())

    def _actor_norm(self, kind: str, input_norm: bool = False) -> Norm:
        """An actor's normalization (same momentum, epsilon and Batch Renorm clipping)."""
        c = self.config
        return Norm(kind, c.bn_momentum, c.bn_epsilon, input_norm=input_norm,
                    renorm_clipping=self._renorm_clipping())

    # ------------------------------------------------------------------------------ public API
    @property
    def updates_done(self) -> int:
        """Gradient steps taken so far (mirrors the graph counter without a ``sess.run``)."""
        return self._updates

    def act(self, obs: np.ndarray, explore: bool = False):
        """Action for one observation, in inference mode (BN uses moving statistics).

        Args:
          obs: one observation.
          explore: add the agent's exploration (noise, epsilon, sampling); False for evaluation.
        """
        if explore and self.env_steps < self.config.learning_starts:
            return self._random_action()
        x = np.asarray(obs, np.float32).reshape(1, self.obs_dim)
        if not explore and self._numpy_act is not None:
            # Evaluation acts many times between weight changes: from the second deterministic
            # action after a change, the weights are copied out once and the action is computed
            # in numpy (11-13 us against ~100 us for a sess.run; benchmarks/README.md). The training
            # loop, which changes the weights between actions, keeps the one sess.run.
            forward, fetch, finish = self._numpy_act
            key = (self._updates, self._restores)
            if self._numpy_key != key and self._numpy_seen == key:
                forward.load(fetch())
                self._numpy_key = key
            if self._numpy_key == key:
                return finish(forward(x)[0])
            self._numpy_seen = key
        out = self._act_fn(x)
        return self._postprocess_action(out[0], explore)

    def _random_action(self):
        if self.discrete:
            return int(self.rng.integers(self.n_actions))
        return self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)

    def _postprocess_action(self, out, explore: bool):
        return out

    def observe(self, obs, action, reward, next_obs, terminated) -> None:
        """Store one transition; ``terminated`` only for a true end, never a time limit."""
        self.buffer.add(obs, action, reward, next_obs, terminated)
        self.env_steps += 1

    def on_episode_end(self) -> None:
        """Called by the training loop when an episode ends (resets OU noise, for one)."""

    def ready_to_train(self) -> bool:
        c = self.config
        return (self.env_steps >= c.learning_starts and len(self.buffer) >= c.batch_size
                and self.env_steps % c.train_freq == 0)

    def train_step(self, log: bool = False) -> dict[str, float]:
        """One gradient step on a batch sampled from the replay buffer."""
        return self.update(self.buffer.sample(self.config.batch_size), log=log)

    def update(self, batch: dict, log: bool = False) -> dict[str, float]:
        """One gradient step on ``batch``: a single ``sess.run`` of the whole update.

        Args:
          batch: arrays ``obs, action, reward, next_obs, done``.
          log: also return the BN diagnostics and the train/eval gap, read from this very step.

        Returns:
          Scalars of this step (losses, Q means, ...), by name.
        """
        variant = self.schedule.variant(self._updates)
        names, fn = self._train_fns[variant][1 if log else 0]
        values = fn(batch["obs"], batch["action"], batch["reward"], batch["next_obs"],
                    batch["done"])
        self._updates += 1
        return {n: float(np.mean(v)) for n, v in zip(names, values[1:], strict=True)}

    def train_steps(self, k: int) -> list[dict[str, float]]:
        """``k`` gradient steps on batches sampled from the replay buffer (as ``k`` calls of
        ``train_step`` would sample them), in one ``sess.run`` (``update_many``)."""
        return self.update_many([self.buffer.sample(self.config.batch_size) for _ in range(k)])

    def update_many(self, batches: Sequence[dict]) -> list[dict[str, float]]:
        """One gradient step per batch, all in one ``sess.run`` of the multi-update loop; the
        same updates as ``update`` on each batch in turn (bit for bit with ``xla=false``).

        Returns:
          Per step, the scalars of the variant that step ran, by name.

        Raises:
          RuntimeError: the agent was built with ``gradient_steps = 1`` (no loop in its graph).
        """
        if self._many_fn is None:
            raise RuntimeError(f"{self.name}: update_many needs an agent built with "
                               "gradient_steps > 1 (the multi-update loop is built only then)")
        out = []
        for block in self._warmup_blocks(list(batches)):
            _, values = self._many_fn(*[np.stack([b[key] for b in block]) for key in Batch.KEYS])
            for row in values:
                names = self.scalars[self.schedule.variant(self._updates)]
                out.append({n: float(row[self.multi_names.index(n)]) for n in names})
                self._updates += 1
        return out

    def _warmup_blocks(self, batches: list) -> list[list]:
        """``batches`` split where update ``renorm_warmup`` starts: the loop reads Batch
        Renorm's warm-up clipping once per call."""
        cut = self.config.renorm_warmup - self._updates
        if 0 < cut < len(batches):
            return [batches[:cut], batches[cut:]]
        return [batches] if batches else []

    # ------------------------------------------------------------------------------ save/restore
    def save(self, directory: str, with_buffer: bool = True) -> None:
        """Write weights, optimizer state, BN statistics, counters, RNG and (optionally) replay.

        The caller makes the directory appear atomically (``training.checkpoint`` writes to a
        temporary directory and renames it).
        """
        os.makedirs(directory, exist_ok=True)
        # The v1 Saver picks eager or graph mode from the calling context.
        with self.graph.as_default():
            self.saver.save(self.sess, os.path.join(directory, "model"), write_meta_graph=False,
                            write_state=False)
        state = {"agent": self.name, "env_steps": self.env_steps,
                 "rng": self.rng.bit_generator.state,
                 "config": dataclasses.asdict(self.config)}
        atomic_write(os.path.join(directory, "agent.json"), json.dumps(state))
        if with_buffer:
            self.buffer.save(os.path.join(directory, "replay.npz"))

    def restore(self, directory: str) -> None:
        """Load what ``save`` wrote; the agent then continues the same run."""
        with open(os.path.join(directory, "agent.json")) as f:
            state = json.load(f)
        if state.get("agent") != self.name:
            raise ValueError(f"checkpoint is for agent '{state.get('agent')}', not '{self.name}'")
        with self.graph.as_default():
            self.saver.restore(self.sess, os.path.join(directory, "model"))
        self.env_steps = int(state["env_steps"])
        self._updates = int(self._num_updates_fn())
        self._restores += 1
        self.rng.bit_generator.state = state["rng"]
        replay = os.path.join(directory, "replay.npz")
        if os.path.exists(replay):
            self.buffer.load(replay)

    def close(self) -> None:
        self.sess.close()
