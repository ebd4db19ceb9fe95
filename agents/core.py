"""The Session-based agent core every bnrl agent is built on.

An agent owns a ``tf.Graph`` and a ``tf.compat.v1.Session``. The graph is built once, in small
``_build_*`` steps (Dopamine style), checked with ``networks.check_wiring`` so that no BN layer is
left stale or updated twice, and then finalized: nothing adds ops during training. One gradient
step is one ``sess.run`` (through a ``make_callable``) that applies every optimizer step, every
BN moving-average update of every training-mode call and the target updates.

Order inside that one run is explicit, because resource-variable reads and writes in one run are
otherwise unordered (and results would depend on thread scheduling):
critic step (with its BN updates) -> actor step, whose critic reads see the new critic (as in
SB3 and CleanRL) -> target update. ``after(deps, x)`` threads that order through ``tf.identity``
rather than building optimizer ops inside ``control_dependencies`` blocks, which made Grappler find
a cycle and skip passes (docs/keras-batchnorm.md, section 9).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from bnrl.agents.replay import ReplayBuffer
from bnrl.networks import Norm, bn_diagnostics, check_wiring, keras, new_graph_session, tf
from bnrl.training.errors import one_line
from bnrl.training.files import atomic_write

TARGET_BN_POLICIES = ("copy", "polyak", "frozen")
MAX_THREADS = 1024
"""Upper bound of the TensorFlow thread-pool settings (far above any machine's cores)."""


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
    intra_op_threads: int = 0
    """TensorFlow threads inside one op (0: TensorFlow's choice)."""
    inter_op_threads: int = 2
    """Ops run side by side (2 measured 45% faster than 1 for SAC on 2 cores)."""

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

    def critic_norm_spec(self, **overrides) -> Norm:
        return Norm(self.critic_norm, self.bn_momentum, self.bn_epsilon,
                    input_norm=self.critic_input_norm, **overrides)


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


def config_from_dict(cls, values: dict | None):
    """Build the dataclass ``cls`` from a dict, rejecting unknown keys and wrong types with a
    one-line error."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {one_line(', '.join(unknown), 200)} for {cls.__name__}: "
            f"accepted are {', '.join(sorted(fields))}"
        )
    for name, value in values.items():
        values[name] = coerce_setting(name, str(fields[name].type), value)
    config = cls(**values)
    config.validate()
    return config


def after(deps, tensor):
    """``tensor`` (any nesting) made to wait for ``deps`` through ``tf.identity``."""
    deps = [d for d in tf.nest.flatten(deps) if d is not None]
    with tf.control_dependencies(deps):
        return tf.nest.map_structure(tf.identity, tensor)


def target_update_ops(online: keras.Model, target: keras.Model, tau, bn_policy: str):
    """Polyak the target's weights towards ``online``; its BN statistics follow ``bn_policy``.

    All of the model's variables are covered, not only ``trainable_variables``: otherwise the
    target's moving statistics stay at 0/1 for ever (SB3 GH #996).

    Args:
      online: the online network.
      target: its copy, same builder and sizes.
      tau: polyak coefficient for trainable weights (1.0 = hard copy).
      bn_policy: ``copy`` (tau 1 for non-trainable variables), ``polyak``, or ``frozen``.

    Returns:
      A list of assign ops.
    """
    ops = []
    trainable = {v.ref() for v in online.trainable_weights}
    for src, dst in zip(online.weights, target.weights, strict=True):
        if src.shape != dst.shape:
            raise ValueError(f"target variable {dst.name} does not match {src.name}")
        if src.ref() in trainable:
            rate = tau
        elif bn_policy == "copy":
            rate = 1.0
        elif bn_policy == "polyak":
            rate = tau
        else:
            continue
        value = src if rate == 1.0 else (1.0 - rate) * dst + rate * src
        ops.append(dst.assign(value, read_value=False))
    return ops


class Agent:
    """Base class: graph, session, replay, acting, one-``sess.run`` updates, save/restore.

    Subclasses implement ``_build_networks`` and ``_build_train_ops``, and ``_act_numpy`` when
    acting needs more than one forward pass. Public API: ``act``, ``observe``, ``train_step``,
    ``update``, ``save``, ``restore``.

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
            self._build_placeholders()
            self._build_networks()
            self._build_train_ops()
            self._build_counter()
            self._build_wiring_check()
            self._build_diagnostics()
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
    def _build_placeholders(self):
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

    def _model_seed(self) -> int:
        """A distinct initializer seed per network: tf-keras initializers ignore the graph seed
        (they draw from Python's global ``random``), so the agent seeds them explicitly."""
        self._models_built += 1
        return self.seed * 1000 + self._models_built

    def _step_seed(self, salt: int):
        return tf.stack([tf.cast(self.num_updates, tf.int32) * 7 + salt, self.seed])

    def _build_networks(self):
        """Create the Keras models: set ``self.critic_models`` (BN diag prefix ``Q``) and
        ``self.actor_models`` (prefix ``pi``), and ``self.target_pairs`` [(online, target)]."""
        raise NotImplementedError

    def _build_train_ops(self):
        """Set ``self.train_ops`` {variant: op}, ``self.scalars`` {name: tensor},
        ``self.critic_step``
        and ``self.act_output`` (deterministic action / Q-values for the acting path)."""
        raise NotImplementedError

    def _build_counter(self):
        """Count the update at the very end of every variant, after all of its ops: every read
        of the counter inside a step (noise seeds, Batch Renorm warm-up) then sees the pre-step
        value, in whatever order the ops run."""
        for variant, op in self.train_ops.items():
            with tf.control_dependencies([op]):
                count = self.num_updates.assign_add(1, read_value=False)
            self.train_ops[variant] = tf.group(op, count, name=f"train_{variant}")

    def _build_wiring_check(self):
        for variant, op in self.train_ops.items():
            problems = check_wiring(op, self.critic_models + self.actor_models)
            if problems:
                raise RuntimeError(f"{self.name} train op '{variant}' is miswired: "
                                   + "; ".join(problems))

    def _build_diagnostics(self):
        """BN diagnostics per train-op variant, read after that variant's step, and the gap
        between Q with batch statistics and with moving statistics on the trained batch."""
        self.diagnostics = {}
        for variant, op in self.train_ops.items():
            diag = dict(bn_diagnostics(self.critic_models, "Q", after=op))
            diag.update(bn_diagnostics(self.actor_models, "pi", after=op))
            self.diagnostics[variant] = diag
        self.train_eval_gap = None
        if any("bn_Q_moving_mean" in d for d in self.diagnostics.values()):
            # Built inside the block so that every variable read of both calls (weights and
            # moving statistics) follows the critic step and its BN updates.
            with tf.control_dependencies([self.critic_step]):
                inputs = self._gap_inputs()
                q_batch = self.critic_models[0](inputs, training=True)
                q_moving = self.critic_models[0](inputs, training=False)
            self.train_eval_gap = tf.reduce_mean(tf.abs(q_batch - q_moving))

    def _gap_inputs(self):
        return [self.obs_ph, self.action_ph]

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
            if self.train_eval_gap is not None:
                log_names.append("bn_Q_train_eval_gap")
                log_fetches.append(self.train_eval_gap)
            self._train_fns[variant] = (
                (names, self.sess.make_callable(fetches, list(self.batch_phs))),
                (log_names, self.sess.make_callable(log_fetches, list(self.batch_phs))),
            )
        self._act_fn = self.sess.make_callable(self.act_output, [self.obs_ph])
        self._num_updates_fn = self.sess.make_callable(self.num_updates)

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
        out = self._act_fn(np.asarray(obs, np.float32).reshape(1, self.obs_dim))
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
        variant = self._variant(self._updates)
        names, fn = self._train_fns[variant][1 if log else 0]
        values = fn(batch["obs"], batch["action"], batch["reward"], batch["next_obs"],
                    batch["done"])
        self._updates += 1
        return {n: float(np.mean(v)) for n, v in zip(names, values[1:], strict=True)}

    def _variant(self, update_index: int) -> str:
        return "full"

    def next_update_is_complete(self) -> bool:
        """Whether the next update runs every loss (TD3/CrossQ delay their actor), so that a
        logging step reports all scalars."""
        variant = self._variant(self._updates)
        return len(self.scalars[variant]) == max(len(s) for s in self.scalars.values())

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
        self.rng.bit_generator.state = state["rng"]
        replay = os.path.join(directory, "replay.npz")
        if os.path.exists(replay):
            self.buffer.load(replay)

    def close(self) -> None:
        self.sess.close()

    # ------------------------------------------------------------------------------- helpers
    def _norm(self, kind: str, **overrides) -> Norm:
        return Norm(kind, self.config.bn_momentum, self.config.bn_epsilon, **overrides)

    def _targets(self, tau) -> list:
        return [op for online, target in self.target_pairs
                for op in target_update_ops(online, target, tau, self.config.target_bn)]


def adam(lr: float, beta1: float = 0.9, beta2: float = 0.999):
    """A fresh Adam optimizer (never a default argument: each network needs its own slots)."""
    return tf.compat.v1.train.AdamOptimizer(lr, beta1=beta1, beta2=beta2)


def minimize(optimizer, loss, variables: Sequence):
    """``apply_gradients`` of ``loss`` w.r.t. ``variables`` (skipping those with no gradient)."""
    grads = optimizer.compute_gradients(loss, var_list=list(variables))
    grads = [(g, v) for g, v in grads if g is not None]
    return optimizer.apply_gradients(grads)

