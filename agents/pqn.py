"""PQN (Gallici et al., "Simplifying Deep Temporal Difference Learning", ICLR 2025,
arXiv:2407.04811): Q-learning over many vectorized envs, with Q(lambda) targets, a normalized
Q-network, no replay buffer and no target network.

Read top to bottom, as purejaxql's ``pqn_gymnax.py`` / ``pqn_minatar.py`` / ``pqn_atari.py`` and
CleanRL's ``pqn.py`` run it:

1. Rollout. ``n_envs`` sub-envs act epsilon-greedily on the Q-network in inference mode (BN on
   its moving statistics) for ``rollout_len`` vector steps; the ``RolloutStore`` keeps the
   ``n_envs x rollout_len`` transitions (no replay: each rollout is used, then dropped).
2. Targets. One ``sess.run`` of the Q-network, in inference mode, on every transition's
   ``next_obs`` gives ``max_a Q(s', a)``; ``q_lambda_returns`` turns them into Q(lambda) returns,
   backwards over the rollout (purejaxql's ``_get_target``, CleanRL's ``pqn.py``).
3. Updates. ``n_epochs`` passes over the rollout, each shuffled into minibatches of
   ``batch_size`` transitions; one ``sess.run`` per minibatch (``PQN.build_update``): the loss
   ``0.5 * (Q(s, a) - G)^2`` on one training-mode pass of the Q-network, whose BN update ops
   (exactly that call's) run with the RAdam step, gradient norm clipped.

The agent, its update runner and the training loop are the ones every bnrl agent has: PQN's
data store (``Algorithm.data_store``) is the rollout, its batches bring their targets
(``batch_keys``), and its rounds fall due when the rollout is full (``PQNConfig.rounds``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bnrl.agents.algorithm import Algorithm, Networks
from bnrl.agents.config import BN_MODES, AgentConfig, check_range
from bnrl.agents.policy import GreedyHead
from bnrl.agents.update import OPTIMIZERS, Schedule, Update, gradient_step, make_optimizer
from bnrl.common.files import atomic_open
from bnrl.networks import ENCODERS, q_network, tf, training_call


def q_lambda_returns(reward, terminated, truncated, next_value, gamma: float,
                     lam: float) -> np.ndarray:
    """Q(lambda) returns of a rollout, computed backwards as PQN computes them (Gallici et al.
    2025; purejaxql's ``_get_target``): lambda-returns that bootstrap with ``max_a Q`` and never
    cut the trace at exploratory actions (Peng and Williams' form, not Watkins').

    For step ``t`` of sub-env ``i`` (arrays ``[T, n_envs]``)::

        G_t = r_t + gamma * (1 - terminated_t) * ((1 - lam) * V_t + lam * G_{t+1})
        V_t = max_a Q(s'_t, a)

    where ``G_{t+1}`` is replaced by ``V_t`` (a one-step target) at the rollout's last step and
    wherever the episode ended at ``t``: after a time-limit truncation the next row belongs to
    the next episode, so the return bootstraps from the true final observation ``s'_t``
    (gymnasium's ``final_obs``) only; after a termination nothing is bootstrapped. purejaxql's
    recursion ``G = r + gamma (1 - d) V + gamma lam (G_{t+1} - V)`` is the same for ``d = 0``;
    its envs do not truncate (gymnax ends CartPole at 500 steps as a termination), CleanRL's
    treat a truncation as a termination.

    Args:
      reward: ``[T, N]`` rewards (already scaled).
      terminated: ``[T, N]`` true ends of the MDP.
      truncated: ``[T, N]`` time-limit ends (bootstrapped).
      next_value: ``[T, N]`` ``max_a Q(s'_t, a)`` of each transition's own next observation.
      gamma: discount.
      lam: lambda; 0 gives one-step Q-learning targets, 1 Monte Carlo returns bootstrapped at
        the end of the rollout.

    Returns:
      ``[T, N]`` float32 returns.
    """
    reward = np.asarray(reward, np.float64)
    alive = 1.0 - np.asarray(terminated, np.float64)
    ended = np.logical_or(terminated, truncated)
    value = np.asarray(next_value, np.float64)
    returns = np.empty_like(reward)
    following = value[-1]  # the last step bootstraps from V alone
    for t in range(len(reward) - 1, -1, -1):
        blend = np.where(ended[t], value[t], (1.0 - lam) * value[t] + lam * following)
        returns[t] = reward[t] + gamma * alive[t] * blend
        following = returns[t]
    return returns.astype(np.float32)


class RolloutStore:
    """PQN's data store: one rollout of ``n_envs x rollout_len`` transitions, then its rounds.

    ``add_batch`` writes one vector step (the row of each sub-env) until the rollout is full.
    The first ``sample`` after that computes the Q(lambda) targets of every transition (one
    call of ``values`` on all next observations) and deals out ``epochs`` shuffled passes of
    minibatches; after the last one the store is empty again, ready for the next rollout.

    Args:
      n_envs: sub-envs (columns).
      rollout_len: vector steps per rollout (rows).
      observation: the agent's ``networks.Observation`` (shape, stored dtype).
      action_shape, action_dtype: as the policy head stores actions.
      epochs: passes over the rollout per round.
      lam: Q(lambda)'s lambda.
      reward_scale: rewards are multiplied by it in the targets.
      values: Q-values in inference mode for a batch of observations (``Agent._values``).
      seed: seeds the shuffling.
    """

    def __init__(self, n_envs: int, rollout_len: int, observation, action_shape, action_dtype,
                 epochs: int, lam: float, reward_scale: float, values, seed: int):
        self.n_envs, self.rollout_len, self.epochs = n_envs, rollout_len, epochs
        self.lam, self.reward_scale, self._values = lam, reward_scale, values
        shape, dtype = (rollout_len, n_envs), observation.dtype
        self._arrays = {
            "obs": np.zeros((*shape, *observation.shape), dtype),
            "next_obs": np.zeros((*shape, *observation.shape), dtype),
            "action": np.zeros((*shape, *action_shape), action_dtype),
            "reward": np.zeros(shape, np.float32),
            "terminated": np.zeros(shape, np.bool_),
            "truncated": np.zeros(shape, np.bool_),
        }
        self._steps = 0  # vector steps stored
        self._round: list[dict] = []  # minibatches of the round in progress, next first
        self._rng = np.random.default_rng(seed)

    @staticmethod
    def transition_bytes(observation, action_shape, action_dtype) -> int:
        """Bytes per stored transition: its observation and next observation, the action,
        float32 reward, the two end flags."""
        obs = observation.dim * np.dtype(observation.dtype).itemsize
        return 2 * obs + int(np.prod(action_shape)) * np.dtype(action_dtype).itemsize + 4 + 2

    @property
    def capacity(self) -> int:
        """Transitions of a full rollout."""
        return self.n_envs * self.rollout_len

    def __len__(self) -> int:
        """Transitions stored in the rollout so far."""
        return self._steps * self.n_envs

    def add_batch(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        """Store one vector step (leading axis: sub-env); ``next_obs`` of an ended episode is
        its final observation."""
        if self._steps == self.rollout_len:
            raise RuntimeError(f"the rollout holds its {self.rollout_len} vector steps: its "
                               "round of updates must run (sample) before more are added")
        row = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs,
               "terminated": terminated, "truncated": truncated}
        for key, value in row.items():
            self._arrays[key][self._steps] = np.asarray(value).reshape(
                self._arrays[key].shape[1:])
        self._steps += 1

    def add(self, obs, action, reward, next_obs, terminated, truncated=False) -> None:
        """Store one transition of a single env (``n_envs`` = 1)."""
        self.add_batch(*[np.asarray(v)[None] for v in
                         (obs, action, reward, next_obs, terminated, truncated)])

    def targets(self, gamma: float) -> np.ndarray:
        """The Q(lambda) returns ``[rollout_len, n_envs]`` of the full rollout: one call of
        ``values`` (inference mode) on every next observation."""
        a = self._arrays
        flat = a["next_obs"].reshape(self.capacity, *a["next_obs"].shape[2:])
        next_value = np.max(self._values(flat), axis=1).reshape(self.rollout_len, self.n_envs)
        return q_lambda_returns(a["reward"] * self.reward_scale, a["terminated"],
                                a["truncated"], next_value, gamma, self.lam)

    def sample(self, batch_size: int, n_steps: int = 1, gamma: float = 0.99) -> dict:
        """The next minibatch of the round (``obs``, ``action``, ``target``); the first call
        after the rollout filled computes the targets and shuffles the ``epochs`` passes
        (purejaxql: a fresh permutation per epoch, cut into ``rows / batch_size`` minibatches).

        Raises:
          RuntimeError: the rollout is not full yet.
          ValueError: ``n_steps`` is not 1 (Q(lambda) returns are PQN's multi-step targets).
        """
        if n_steps != 1:
            raise ValueError("the rollout store has Q(lambda) targets, not n-step returns")
        if not self._round:
            self._start_round(batch_size, gamma)
        batch = self._round.pop(0)
        if not self._round:
            self._steps = 0  # the round is over: the next rollout starts empty
        return batch

    def _start_round(self, batch_size: int, gamma: float) -> None:
        if self._steps < self.rollout_len:
            raise RuntimeError(f"the rollout holds {len(self)} of its {self.capacity} "
                               "transitions: PQN updates once it is full")
        flat = {"obs": self._arrays["obs"].reshape(self.capacity, *self._arrays["obs"].shape[2:]),
                "action": self._arrays["action"].reshape(self.capacity,
                                                         *self._arrays["action"].shape[2:]),
                "target": self.targets(gamma).reshape(-1)}
        for _ in range(self.epochs):
            order = self._rng.permutation(self.capacity)
            for rows in order.reshape(-1, batch_size):
                self._round.append({key: value[rows] for key, value in flat.items()})

    def save(self, path) -> None:
        """Write the rollout so far and the shuffling state (one ``.npz``, atomically); only
        between rounds, which is where the training loop saves."""
        if self._round:
            raise RuntimeError("a round of updates is in progress: save after its last update")
        arrays = {key: value[: self._steps] for key, value in self._arrays.items()}
        with atomic_open(os.fspath(path), "wb") as f:
            np.savez(f, steps=self._steps,
                     rng_state=np.asarray(json.dumps(self._rng.bit_generator.state)), **arrays)

    def load(self, path) -> None:
        """Read what ``save`` wrote; a file of another rollout size is refused (ValueError)."""
        with np.load(os.fspath(path), allow_pickle=False) as data:
            steps = int(data["steps"])
            for key, value in self._arrays.items():
                if steps > self.rollout_len or data[key].shape != (steps, *value.shape[1:]):
                    raise ValueError(f"{path} holds a rollout of another shape ({key} "
                                     f"{data[key].shape}, expected up to {value.shape})")
            for key, value in self._arrays.items():
                value[:steps] = data[key]
            self._rng.bit_generator.state = json.loads(str(data["rng_state"]))
        self._steps, self._round = steps, []


@dataclass
class PQNConfig(AgentConfig):
    """PQN's settings. Defaults: purejaxql's ``pqn_cartpole.yaml`` (its classic-control
    config); ``configs/MinAtar.yaml`` and ``configs/ALE.yaml`` have ``pqn_minatar.yaml``'s and
    ``pqn_atari.yaml``'s. purejaxql's ``NUM_MINIBATCHES`` is ``n_envs * rollout_len /
    batch_size`` here, so that fewer sub-envs (a CPU runs 8-32, not 128) keep its minibatch
    size and its updates per env step (``n_epochs / batch_size``).

    Settings of replay agents do not apply (``buffer_size``, ``train_freq``,
    ``gradient_steps``, ``tau``, ``target_bn``, ``learning_starts``) and are refused when
    changed; the BN settings are fixed by the algorithm: one training-mode pass on the
    minibatch (``critic_batch=separate``), no target network (``target=none``), targets in
    inference mode (``bootstrap_mode=inference``: purejaxql computes them with ``train=False``).
    """

    learning_rate: float = 1e-4
    """Initial learning rate (purejaxql CartPole ``LR``)."""
    lr_decay_steps: int = 500_000
    """Env steps over which the learning rate decays linearly to 0 and stays there (purejaxql's
    ``LR_LINEAR_DECAY`` over ``TOTAL_TIMESTEPS_DECAY``; CleanRL's ``anneal_lr`` over the run);
    0: constant. Counted in updates: ``lr_decay_steps * n_epochs / batch_size``."""
    optimizer: str = "radam"
    """``radam`` (purejaxql's ``optax.radam``, CleanRL's ``torch.optim.RAdam``) or ``adam``."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip (purejaxql ``MAX_GRAD_NORM``)."""
    batch_size: int = 128
    """Transitions per minibatch update: purejaxql's ``NUM_ENVS * NUM_STEPS / NUM_MINIBATCHES``
    (32 * 64 / 16 on CartPole, 128 * 32 / 32 on MinAtar and Atari). ``n_envs * rollout_len``
    must be a multiple of it."""
    rollout_len: int = 64
    """Vector steps per rollout (purejaxql CartPole ``NUM_STEPS``)."""
    n_epochs: int = 4
    """Passes over each rollout, each in shuffled minibatches (purejaxql ``NUM_EPOCHS``)."""
    q_lambda: float = 0.95
    """Lambda of the Q(lambda) returns (purejaxql CartPole ``LAMBDA``; 0.65 on MinAtar and
    Atari)."""
    reward_scale: float = 0.1
    """Rewards are multiplied by it in the targets (purejaxql CartPole ``REW_SCALE``; 1
    elsewhere)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the ``mlp`` encoder (purejaxql: 2 layers of ``HIDDEN_SIZE`` 256)."""
    critic_norm: str = "layer"
    """Normalization of the Q-network: ``layer`` (the paper's default, ``NORM_TYPE:
    layer_norm``), ``batch`` (``batch_norm``), ``batch_renorm`` or ``none``; after every dense
    and conv layer, before the ReLU (purejaxql)."""
    bn_epsilon: float = 1e-5
    """Epsilon of BN and LayerNorm (flax's BatchNorm default, which purejaxql uses; Keras:
    1e-3)."""
    encoder: str = "auto"
    """The Q-network's encoder, as DQN's: ``mlp``, ``minatar`` (purejaxql's MinAtar CNN: one
    16-filter 3x3 convolution, 128 units), ``nature`` (its Atari CNN), ``auto`` by shape."""
    exploration_steps: int = 100_000
    """Env steps over which epsilon decays linearly (purejaxql: ``EPS_DECAY`` 0.2 of
    ``TOTAL_TIMESTEPS_DECAY`` 5e5)."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start (purejaxql ``EPS_START``)."""
    exploration_final_eps: float = 0.2
    """Epsilon after the decay (purejaxql CartPole ``EPS_FINISH``)."""
    learning_starts: int = 0
    """PQN acts epsilon-greedily from the first step (epsilon starts at 1): must stay 0."""
    target: str = "none"
    """PQN has no target network: must stay ``none``."""

    # Replay settings that have no meaning without a replay buffer, at AgentConfig's defaults.
    _REPLAY_ONLY: ClassVar[tuple[str, ...]] = ("buffer_size", "train_freq", "gradient_steps",
                                               "tau", "target_bn")
    # What the algorithm does, as the BN settings name it.
    _FIXED: ClassVar[dict[str, object]] = {
        "learning_starts": 0, "target": "none", "critic_batch": "separate",
        "bootstrap_mode": "inference"}

    def _validate(self) -> None:
        super()._validate()
        base = AgentConfig()
        for name in self._REPLAY_ONLY:
            if getattr(self, name) != getattr(base, name):
                raise ValueError(f"pqn has no replay buffer: {name} does not apply (its data is "
                                 "one rollout of n_envs x rollout_len transitions); leave it out")
        preset = BN_MODES.get(self.bn_modes, {})
        if preset.get("bootstrap_mode", "inference") != "inference":
            raise ValueError(f"pqn computes its Q(lambda) targets in inference mode "
                             f"(bootstrap_mode=inference): bn_modes={self.bn_modes} does not "
                             "apply; leave it out")
        for name, value in self._FIXED.items():
            if getattr(self, name) != value:
                raise ValueError(f"pqn runs with {name}={value} (no replay warm-up, no target "
                                 f"network, Q(lambda) targets in inference mode), got "
                                 f"{name}={getattr(self, name)}")
        check_range(self, "learning_rate", 0, open_low=True)
        check_range(self, "lr_decay_steps", 0)
        check_range(self, "max_grad_norm", 0, open_low=True)
        for name in ("rollout_len", "n_epochs"):
            check_range(self, name, 1)
        check_range(self, "q_lambda", 0, 1)
        check_range(self, "reward_scale", 0, open_low=True)
        check_range(self, "exploration_steps", 0)
        for name in ("exploration_initial_eps", "exploration_final_eps"):
            check_range(self, name, 0, 1)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}': use one of "
                             f"{', '.join(OPTIMIZERS)}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder '{self.encoder}': use one of {', '.join(ENCODERS)}")

    def check_n_envs(self, n_envs: int) -> None:
        """ValueError unless ``n_envs * rollout_len`` is a multiple of ``batch_size``."""
        rows = n_envs * self.rollout_len
        if rows % self.batch_size:
            raise ValueError(f"n_envs x rollout_len ({n_envs} x {self.rollout_len} = {rows}) "
                             f"must be a multiple of batch_size ({self.batch_size}): each "
                             "epoch splits the rollout into whole minibatches")

    def rounds(self, n_envs: int) -> dict[str, int]:
        """A round when the rollout is full (checked at every vector step): ``n_epochs`` passes
        of ``n_envs * rollout_len / batch_size`` minibatch updates."""
        rows = n_envs * self.rollout_len
        return {"learning_starts": 0, "train_freq": 1,
                "gradient_steps": self.n_epochs * (rows // self.batch_size), "batch_size": rows}


class PQN(Algorithm):
    name = "pqn"
    config_class = PQNConfig
    head_class = GreedyHead
    image_observations = True
    batch_keys = ("obs", "action", "target")
    default_n_envs = 16
    """purejaxql runs 32 CartPole and 128 MinAtar sub-envs on a GPU; 16 in-process sub-envs
    keep a 2-core CPU busy with updates rather than env steps (docs/pqn.md has the
    measurements), and the presets in configs/ set each family's."""

    # ----------------------------------------------------------------------- the data store
    @classmethod
    def data_store(cls, config, observation, head, n_envs, seed, values) -> RolloutStore:
        """The rollout (``RolloutStore``) instead of a replay buffer.

        Raises:
          ValueError: ``n_envs * rollout_len`` is not a multiple of ``batch_size``.
        """
        config.check_n_envs(n_envs)
        return RolloutStore(n_envs, config.rollout_len, observation, head.action_shape,
                            head.action_dtype, config.n_epochs, config.q_lambda,
                            config.reward_scale, values, seed + 1)

    @classmethod
    def store_memory(cls, config, observation, action_space, n_envs):
        discrete = action_space.shape == ()
        per = RolloutStore.transition_bytes(observation, tuple(action_space.shape),
                                            np.int64 if discrete else np.float32)
        return (n_envs * config.rollout_len * per,
                f"a rollout of n_envs x rollout_len = {n_envs} x {config.rollout_len}",
                "rollout", "lower n_envs or rollout_len")

    # ----------------------------------------------------------------------------- networks
    def _build_networks(self) -> Networks:
        c = self.config
        self.q = q_network(self.observation, self.head.n, c.hidden, self.critic_norm(),
                           name="q_network", seed=self.network_seed(), encoder=c.encoder,
                           arch=self.critic_arch())
        self.optimizer = make_optimizer(c.optimizer, self.learning_rate, c.adam_beta1)
        return Networks(critics=[self.q], policy=self.q)

    def learning_rate(self) -> tf.Tensor:
        """The learning rate of the current update: linear from ``learning_rate`` to 0 over
        ``lr_decay_steps`` env steps' worth of updates (optax's ``linear_schedule`` over
        purejaxql's gradient steps), read from the update counter in the update's own graph."""
        c = self.config
        if c.lr_decay_steps == 0:
            return tf.constant(c.learning_rate)
        updates = c.lr_decay_steps * c.n_epochs / c.batch_size
        done = tf.cast(self.num_updates, tf.float32) / updates
        return c.learning_rate * tf.maximum(0.0, 1.0 - done)

    def _build_schedule(self) -> Schedule:
        return Schedule()  # the Q step at every update: no actor, no target network

    # ------------------------------------------------------------------------------ update
    def build_update(self, b, noise, steps) -> Update:
        c = self.config
        # One training-mode pass on the minibatch: BN normalizes with its batch statistics,
        # and the update ops of exactly this call move the moving statistics once per update.
        q_all, bn_updates = training_call(self.q, b.obs)
        q = tf.gather(q_all, b.action, axis=1, batch_dims=1)
        # purejaxql's loss: 0.5 * mean((Q(s, a) - G^lambda)^2); the targets come with the batch.
        loss = 0.5 * tf.reduce_mean(tf.square(q - b.target))
        step = gradient_step(self.optimizer, loss, self.q.trainable_variables, bn_updates,
                             clip_norm=c.max_grad_norm, name="q_step")
        return Update(critic_step=step,
                      critic_scalars={"losses/q_loss": loss, "losses/q_values": tf.reduce_mean(q),
                                      "charts/learning_rate": self.learning_rate()},
                      critic_inputs=b.obs, td_target=b.target)
