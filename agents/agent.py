"""``Agent``: one algorithm with its graph, session, replay buffer and policy head.

An agent is made of three parts, each in its own module: the ``Algorithm`` (networks, the whole
update, the schedule: ``dqn.py``, ``td3.py``, ``sac.py``), the ``UpdateRunner`` (train ops per
phase, XLA, the multi-update loop, the wiring check, diagnostics, the update counter:
``runner.py``) and the ``PolicyHead`` of its action space (``policy.py``). ``Agent`` puts them in
one ``tf.Graph``, finalizes it (nothing adds ops during training) and owns what a run carries
between updates: the session, the replay buffer, the random generator and the env-step count.
Public API (Dopamine's): ``act``, ``observe``, ``train_step``, ``save``, ``restore``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from bnrl.agents.algorithm import Algorithm
from bnrl.agents.runner import UpdateRunner
from bnrl.agents.update import Batch, target_update_ops
from bnrl.common.errors import NonFiniteValue, first_nonfinite
from bnrl.common.files import atomic_write
from bnrl.networks import new_graph_session, session_callable, tf
from bnrl.networks.inference import NumpyForward, Unsupported


class Agent:
    """An algorithm ready to act, store transitions and train, one ``sess.run`` per update.

    Args:
      algorithm: the algorithm class (``DQN``, ``TD3``, ``DDPG``, ``SAC``, ``CrossQ``).
      observation_space: a ``gymnasium.spaces.Box``: a vector (float32 in the graph), or for
        an algorithm with ``image_observations`` (DQN) any shape, stored and fed as uint8 when
        the space is uint8 or bool (``networks.Observation``).
      action_space: ``Box`` in [-1, 1] or ``Discrete``, as the algorithm's head needs.
      config: the algorithm's config dataclass (resolved here unless it already is), or None
        for its defaults.
      seed: seeds the graph, the networks, replay sampling and exploration.
      frames: the env's frame stack (``envs.frame_stack``): k > 1 when the observation's last
        axis holds its last k frames, which the replay then stores once each.
      n_envs: sub-envs of the vector env it trains on (``act_batch``, ``observe_batch``): the
        replay keeps their transitions as ``n_envs`` streams (each observation still stored
        once) in ``buffer_size`` rounded down to a multiple of ``n_envs`` (as SB3 does).
      graph: build into this graph, shared with other agents, without a session: an
        ``agents.group.AgentGroup`` sets the variables and calls ``bind``. None: the agent's own
        graph and session.
    """

    def __init__(self, algorithm: type[Algorithm], observation_space, action_space,
                 config=None, seed: int = 0, frames: int = 1, n_envs: int = 1, *,
                 graph: tf.Graph | None = None):
        self.name, self.algorithm_class = algorithm.name, algorithm
        config = config if config is not None else algorithm.config_class()
        self.config = config if config.is_resolved else config.resolved()
        self.seed = int(seed)
        self.observation = algorithm.observation(observation_space, self.config, frames)
        self.obs_dim = self.observation.dim
        self.rng = np.random.default_rng(self.seed)
        if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive int, got {n_envs!r}")
        self.n_envs = n_envs
        self.head = algorithm.head_class(action_space, self.config, self.rng, n_envs)
        # The data store (replay buffer, or PQN's rollout): checked before anything is built,
        # handed the acting network's outputs (inference mode) once the session exists.
        self.buffer = algorithm.data_store(self.config, self.observation, self.head, n_envs,
                                           self.seed, self._values)
        self.env_steps = 0
        self.graph = graph if graph is not None else tf.Graph()
        with self.graph.as_default():
            first_variable = len(tf.compat.v1.global_variables())
            if graph is None:
                tf.compat.v1.set_random_seed(self.seed)
            batch = self._build_placeholders()
            # Counts gradient steps; saved with the weights. It also seeds the in-graph noise of
            # each step (stateless RNG), so a restored agent draws exactly what the original
            # would have. In a shared graph (agents.group) each agent has its own.
            num_updates = (tf.compat.v1.train.get_or_create_global_step() if graph is None
                           else tf.Variable(0, dtype=tf.int64, trainable=False,
                                            name="global_step"))
            self.algorithm = algorithm(self.config, self.observation, self.head, num_updates,
                                       self.seed)
            self.networks, self.schedule = self.algorithm.networks, self.algorithm.schedule
            self.runner = UpdateRunner(self.algorithm, batch, self.name)
            self.act_output = self.networks.policy(self.obs_ph, training=False)
            self._build_obs_stats()
            self.variables = tf.compat.v1.global_variables()[first_variable:]
            """This agent's variables in the order they were made (the same for the same
            settings in any graph: how ``agents.group`` matches a shared graph's to its own)."""
            if graph is not None:  # the group starts the session (AgentGroup.start)
                return
            init, target_init = self._build_init()
            self.saver = tf.compat.v1.train.Saver(max_to_keep=None, save_relative_paths=True)
        self.sess = new_graph_session(self.graph, self.config.intra_op_threads,
                                      self.config.inter_op_threads)
        self.sess.run(init)
        if target_init is not None:
            self.sess.run(target_init)
        self.bind(self.sess, self.saver)
        self.graph.finalize()

    # ----------------------------------------------------------------------------- graph building
    def _build_placeholders(self) -> Batch:
        f32, obs_dtype = tf.float32, tf.as_dtype(self.observation.dtype)
        obs_shape = [None, *self.observation.shape]
        self.obs_ph = tf.compat.v1.placeholder(obs_dtype, obs_shape, "obs")
        shapes = {"action": (tf.as_dtype(self.head.action_dtype),
                             [None, *self.head.action_shape]),
                  "next_obs": (obs_dtype, obs_shape)}
        keys = self.algorithm_class.batch_keys
        if self.n_steps > 1:  # the n-step bootstrap's gamma^m per row (replay.sample)
            keys = (*keys, "discount")
        batch = Batch(**{key: self.obs_ph if key == "obs" else tf.compat.v1.placeholder(
            *shapes.get(key, (f32, [None])), key) for key in keys})
        self.batch_phs = batch.tensors()
        return batch

    def _build_obs_stats(self) -> None:
        """SimBa's running observation statistics (``networks.RunningObsNorm``), when a network
        has them: ``obs_stats_update`` merges the observations fed into them, and
        ``act_explore_output`` is the policy's output after that update, in the same
        ``sess.run``. Exploring acts (training) run it, the random warm-up included, as the
        authors feed every observation the agent acts on (SBX: ``VecNormalize``, updated at
        every env step); evaluation acts, ``act_output`` and exports never do."""
        obs_norm = self.algorithm.obs_norm
        self.obs_stats_update = self.act_explore_output = None
        if obs_norm is None or not obs_norm.built:
            return
        self.obs_stats_update = obs_norm.update(self.obs_ph)
        # Built inside the block, so that the policy reads the statistics after the update
        # (the authors and VecNormalize update, then normalize).
        with tf.control_dependencies([self.obs_stats_update]):
            self.act_explore_output = self.networks.policy(self.obs_ph, training=False)

    def _build_init(self):
        """The variables' initializer, and the hard copy of online into target networks."""
        init = tf.compat.v1.global_variables_initializer()
        pairs = self.networks.target_pairs
        if not pairs:
            return init, None
        return init, tf.group(*[op for online, target in pairs
                                for op in target_update_ops(online, target, 1.0, "copy")])

    def bind(self, sess: tf.compat.v1.Session, saver: tf.compat.v1.train.Saver) -> None:
        """Make the callables of acting and updating in ``sess``, whose variables are set."""
        self.sess, self.saver = sess, saver
        self.runner.bind(sess)
        self._act_fn = self._build_act_fn()
        self._numpy_act = self._build_numpy_act()
        self._weights_changed()

    def _build_act_fn(self):
        # Acting runs its few ops on the caller's thread instead of handing them to the
        # inter-op pool (RunOptions.inter_op_thread_pool = -1): benchmarks/README.md has the
        # latency before and after. Only for acting: the update gains from the pool's parallelism.
        options = tf.compat.v1.RunOptions(inter_op_thread_pool=-1)
        act = session_callable(self.sess, self.act_output, [self.obs_ph], options)
        self._explore_fn = self._observe_fn = None
        if self.obs_stats_update is not None:
            self._explore_fn = session_callable(self.sess, self.act_explore_output,
                                                [self.obs_ph], options)
            self._observe_fn = session_callable(self.sess, self.obs_stats_update,
                                                [self.obs_ph], options)
        self._acts = {self.act_output.name: act}
        if self.obs_stats_update is not None:
            self._acts[self.act_explore_output.name] = self._explore_fn
            self._acts[self.obs_stats_update.name] = self._observe_fn
        return act

    def act_fetch(self, explore: bool):
        """What acting on a batch runs in the graph (fed ``obs_ph``): the policy's output, with
        SimBa's statistics update before it when exploring (the update alone during the random
        warm-up), or None for a warm-up without statistics. ``act_batch`` and an
        ``AgentGroup``'s one acting ``sess.run`` fetch it, then call ``actions``."""
        if not explore:
            return self.act_output
        warmup = self._warming_up()
        if self.obs_stats_update is None:
            return None if warmup else self.act_output
        self._weights_changed()  # the statistics the numpy path copied move
        return self.obs_stats_update if warmup else self.act_explore_output

    def actions(self, out, explore: bool) -> np.ndarray:
        """The actions of the ``n_envs`` sub-envs from what ``act_fetch`` fetched: random ones
        during the warm-up; row ``i`` explores as ``act`` would in sub-env ``i`` (its own OU
        noise)."""
        if explore and self._warming_up():
            return np.stack([self.head.random() for _ in range(self.n_envs)])
        return np.stack([self.head.act(row, explore, self.env_steps, env)
                         for env, row in enumerate(out)])

    def _warming_up(self) -> bool:
        return self.env_steps < self.config.learning_starts

    def _explore_output(self, x: np.ndarray, warmup: bool):
        """The policy's output for exploring on ``x`` (None during the random warm-up); with
        running observation statistics, their update from ``x`` runs in the same call."""
        fetch = self.act_fetch(explore=True)
        out = None if fetch is None else self._acts[fetch.name](x)
        return None if warmup else out

    def _values(self, obs: np.ndarray) -> np.ndarray:
        """The acting network's outputs (Q-values for DQN and PQN) for a batch of observations,
        in inference mode: one ``sess.run``, no variable changes."""
        return self._act_fn(obs)

    def _build_numpy_act(self):
        """The deterministic action in numpy (``networks.inference``): ``(forward, fetch of its
        weights)``, or None when the policy network has a layer it does not run."""
        try:
            forward = NumpyForward(self.networks.policy, self.head.numpy_output)
        except Unsupported:
            return None
        return forward, self.sess.make_callable(forward.variables)

    # ------------------------------------------------------------------------------ public API
    @property
    def updates_done(self) -> int:
        """Gradient steps taken so far (the graph's counter, as the last update fetched it)."""
        return self.runner.updates_done

    def act(self, obs: np.ndarray, explore: bool = False):
        """Action for one observation, in inference mode (BN uses moving statistics).

        Args:
          obs: one observation.
          explore: add the agent's exploration (noise, epsilon, sampling), and merge ``obs``
            into SimBa's running observation statistics when a network has them; False for
            evaluation.

        Raises:
          NonFiniteValue: the observation holds NaN or inf. Acted on, it gave an action on the
            graph path and NaN on the numpy one (TensorFlow's ReLU maps NaN to 0, numpy's keeps
            it): refusing it is the one answer both paths give.
        """
        x = self._checked(obs, 1, "act()")
        if explore:
            out = self._explore_output(x, self.env_steps < self.config.learning_starts)
            if out is None:
                return self.head.random()
            return self.head.act(out[0], explore, self.env_steps)
        if not explore and self._numpy_act is not None:
            # Evaluation acts many times between weight changes: from the second deterministic
            # action after a change, the weights are copied out once and the action is computed
            # in numpy (11-13 us against ~100 us for a sess.run; benchmarks/README.md). The
            # training loop, which changes the weights between actions, keeps the one sess.run.
            forward, fetch = self._numpy_act
            if self._numpy_acts_since_change == 1:
                forward.load(fetch())
            self._numpy_acts_since_change += 1
            if self._numpy_acts_since_change > 1:
                return self.head.finish(forward(x)[0])
        return self.head.act(self._act_fn(x)[0], explore, self.env_steps)

    def act_batch(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        """Actions for the ``n_envs`` observations of a vector env (leading axis), one
        ``sess.run`` for all; row ``i`` explores as ``act`` would in sub-env ``i`` (its own
        OU noise). With one sub-env the draws are exactly ``act``'s."""
        x = self.checked_batch(obs)
        fetch = self.act_fetch(explore)
        return self.actions(None if fetch is None else self._acts[fetch.name](x), explore)

    def checked_batch(self, obs) -> np.ndarray:
        """``obs`` of the ``n_envs`` sub-envs as the policy's input, refused when it holds NaN
        or inf (``NonFiniteValue``)."""
        return self._checked(obs, self.n_envs, "act_batch()")

    def _checked(self, obs, rows: int, caller: str) -> np.ndarray:
        """``obs`` as the policy's input batch of ``rows`` observations, refused when it holds
        NaN or inf."""
        x = np.asarray(obs, self.observation.dtype).reshape(rows, *self.observation.shape)
        # uint8 observations are finite by their type.
        bad = first_nonfinite(x) if self.observation.dtype == "float32" else None
        if bad is not None:
            raise NonFiniteValue(f"the observation given to {caller} is not finite ({bad})")
        return x

    def _weights_changed(self) -> None:
        """The numpy acting path's copy of the weights is stale from now on."""
        self._numpy_acts_since_change = 0

    def observe(self, obs, action, reward, next_obs, terminated: bool,
                truncated: bool = False) -> None:
        """Store one transition; ``terminated`` only for a true end, never a time limit. When
        the episode ends (``terminated`` or ``truncated``) the exploration noise restarts."""
        self.buffer.add(obs, action, reward, next_obs, terminated, truncated)
        self.env_steps += 1
        if terminated or truncated:
            self.head.episode_end()

    def observe_batch(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        """Store the ``n_envs`` transitions of one vector-env step (leading axis: sub-env);
        ``next_obs`` of a sub-env whose episode ended is its final observation, not the next
        episode's first (gymnasium's ``final_obs``)."""
        self.buffer.add_batch(obs, action, reward, next_obs, terminated, truncated)
        self.env_steps += self.n_envs
        for env in np.flatnonzero(np.logical_or(terminated, truncated)).tolist():
            self.head.episode_end(env)

    def train_step(self, log: bool = False) -> dict[str, float]:
        """One gradient step on a batch sampled from the replay buffer."""
        return self.update(self.sample(), log=log)

    def train_steps(self, k: int) -> list[dict[str, float]]:
        """``k`` gradient steps on batches sampled from the replay buffer (as ``k`` calls of
        ``train_step`` would sample them), in one ``sess.run`` (``update_many``)."""
        return self.update_many([self.sample() for _ in range(k)])

    @property
    def n_steps(self) -> int:
        """Steps of each TD target's return (the config's ``n_steps``; 1 for agents without)."""
        return int(getattr(self.config, "n_steps", 1))

    def sample(self) -> dict:
        """A batch from the replay buffer, as ``update`` takes it (n-step with ``n_steps``)."""
        return self.buffer.sample(self.config.batch_size, self.n_steps, self.config.gamma)

    def update(self, batch: dict, log: bool = False) -> dict[str, float]:
        """One gradient step on ``batch``: a single ``sess.run`` of the whole update.

        Args:
          batch: arrays ``obs, action, reward, next_obs, done`` (and ``discount`` with
            ``n_steps > 1``, as ``sample`` returns it).
          log: also return the BN diagnostics and the train/eval gap, read from this very step.

        Returns:
          Scalars of this step (losses, Q means, ...), by name.
        """
        self._weights_changed()
        return self.runner.update(batch, log=log)

    def update_many(self, batches: Sequence[dict]) -> list[dict[str, float]]:
        """One gradient step per batch in one ``sess.run`` (``UpdateRunner.update_many``)."""
        self._weights_changed()
        return self.runner.update_many(batches)

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
        self.runner.sync()
        self._weights_changed()
        self.rng.bit_generator.state = state["rng"]
        replay = os.path.join(directory, "replay.npz")
        if os.path.exists(replay):
            self.buffer.load(replay)

    def close(self) -> None:
        self.sess.close()
