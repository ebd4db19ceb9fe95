"""What every agent's algorithm is made of: its networks, its update, its schedule.

An ``Algorithm`` subclass (``dqn.py``, ``td3.py``, ``sac.py``) holds one agent's whole learning
rule, readable top to bottom: ``_build_networks`` returns the Keras models it trains
(``Networks``), ``_build_schedule`` which steps run at update ``i`` (``update.Schedule``), and
``build_update(batch, noise, steps)`` the whole update of one phase of that schedule as an
``update.Update``: TD target, critic step, delayed actor step, temperature, target update. It is
a function of the tensors it is given (the batch and the noise drawn outside it), so that the
``UpdateRunner`` can build it once per phase, inside an XLA-compiled function or inside the
multi-update loop. Acting, replay, the session and saving belong to ``Agent``; the policy head
(``policy.py``) turns the acting network's output into actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from bnrl.agents.config import AgentConfig
from bnrl.agents.policy import PolicyHead
from bnrl.agents.replay import ReplayBuffer
from bnrl.agents.update import Batch, Schedule, Update
from bnrl.common.seeding import derive_seed
from bnrl.networks import Norm, Observation, RunningObsNorm, Simba, keras, pick_encoder, tf

NETWORK_SEED_STRIDE = 1000
"""Network ``k`` of an agent seeded ``s`` initializes from seed ``s * 1000 + k`` (tf-keras
initializers ignore the graph seed, so every network is seeded explicitly)."""


@dataclass
class Networks:
    """The Keras models an algorithm trains, as the runner and the diagnostics need them.

    Attributes:
      critics: critics / Q-networks (BN diagnostics prefix ``Q``).
      actors: actors (prefix ``pi``).
      policy: the network whose output the policy head acts on.
      target_pairs: ``(online, target)`` pairs; empty without target networks.
    """

    critics: list[keras.Model]
    policy: keras.Model
    actors: list[keras.Model] = field(default_factory=list)
    target_pairs: list[tuple[keras.Model, keras.Model]] = field(default_factory=list)

    @property
    def trained(self) -> list[keras.Model]:
        """Every network an update trains (what the wiring check covers)."""
        return self.critics + self.actors

    @property
    def convolutional(self) -> bool:
        """Whether a trained network has convolution layers (an image encoder)."""
        return any(isinstance(layer, keras.layers.Conv2D)
                   for model in self.trained for layer in model.submodules)


class Algorithm:
    """Base of DQN, TD3 (DDPG) and SAC (CrossQ): the networks, the update and the schedule.

    Args:
      config: the agent's resolved config.
      observation: what one observation is (shape, stored dtype: ``networks.Observation``);
        ``obs_dim`` is its size.
      head: the policy head, which knows the action space (``head.action_dim``, ``head.n``).
      num_updates: the graph's update counter (seeds the noise of each update; Batch Renorm's
        warm-up reads it).
      seed: the agent's seed.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AgentConfig]]
    head_class: ClassVar[type[PolicyHead]]
    image_observations: ClassVar[bool] = False
    """Whether its networks take observations of any shape and uint8 ones (DQN's and PQN's
    encoders, picked by their ``encoder`` setting); otherwise observations are float32
    vectors."""
    batch_keys: ClassVar[tuple[str, ...]] = ("obs", "action", "reward", "next_obs", "done")
    """The fields of the batch its update takes (``update.Batch``; ``discount`` is added with
    n-step returns): transitions, or observations, actions and the TD targets computed before
    the update (``target``: PQN)."""
    default_n_envs: ClassVar[int] = 1
    """Sub-envs a run gives it when neither the preset nor the user says (``--n-envs``)."""

    def __init__(self, config, observation: Observation, head: PolicyHead,
                 num_updates: tf.Variable, seed: int):
        self.config, self.observation, self.head = config, observation, head
        self.obs_dim = observation.dim
        self.num_updates, self.seed = num_updates, seed
        self._networks_made = 0
        self.obs_norm: RunningObsNorm | None = None
        """SimBa's running observation normalization, shared by every SimBa network of the
        agent (made by the first one, for float32 observations); None without."""
        self.networks = self._build_networks()
        self.schedule = self._build_schedule()

    @classmethod
    def observation(cls, space, config, frames: int = 1) -> Observation:
        """What the networks of ``config`` take from ``space``: any shape with
        ``image_observations``; otherwise a vector, float32 whatever the space's dtype.
        ``frames``: the env's frame stack (``envs.frame_stack``), 1 for none.

        Raises:
          ValueError: (one line) the networks cannot take these observations.
        """
        if cls.image_observations:
            observation = Observation.from_space(space, frames)
            pick_encoder(observation, config.encoder)  # the encoder setting fits the shape
            return observation
        if len(space.shape) != 1:
            raise ValueError(f"agent '{cls.name}' takes vector observations only, not shape "
                             f"{tuple(space.shape)}: use dqn or pqn for image observations")
        return Observation((int(space.shape[0]),))

    # ------------------------------------------------------------------------ the data store
    @classmethod
    def data_store(cls, config, observation: Observation, head: PolicyHead, n_envs: int,
                   seed: int, values):
        """The agent's data store: what ``Agent.observe`` adds transitions to and
        ``Agent.sample`` draws each update's batch from (``add``, ``add_batch``, ``len``,
        ``sample(batch_size, n_steps, gamma)``, ``save``, ``load``).

        The default is a replay buffer of ``buffer_size`` transitions (rounded down to a
        multiple of ``n_envs``, as SB3 does), sampled uniformly; ``values`` (the network's
        outputs in inference mode for a batch of observations) is for stores that compute
        targets when they hand out batches (PQN's rollout).

        Raises:
          ValueError: the config cannot train on ``n_envs`` sub-envs (``check_n_envs``).
        """
        config.check_n_envs(n_envs)
        return ReplayBuffer(config.buffer_size // n_envs * n_envs, observation.shape,
                            head.action_shape, head.action_dtype, seed=seed + 1,
                            obs_dtype=observation.dtype, frames=observation.frames,
                            streams=n_envs)

    @classmethod
    def store_memory(cls, config, observation: Observation, action_space,
                     n_envs: int) -> tuple[int, str, str, str]:
        """``(bytes, what, kind, remedy)``: the bytes the data store allocates, the settings
        that size it, what it is and how to shrink it, for the message that refuses a store
        larger than the machine's memory (``training.runs.check_run``)."""
        discrete = action_space.shape == ()
        per_transition = ReplayBuffer.transition_bytes(
            observation.shape, observation.dtype, tuple(action_space.shape),
            np.int64 if discrete else np.float32, observation.frames)
        return (config.buffer_size * per_transition, f"buffer_size {config.buffer_size}", "replay",
                "lower buffer_size")

    # ------------------------------------------------------------------ what a subclass builds
    def _build_networks(self) -> Networks:
        """Create the Keras models and their optimizers."""
        raise NotImplementedError

    def _build_schedule(self) -> Schedule:
        """Which steps run at update ``i``."""
        raise NotImplementedError

    def noise(self, rows: tf.Tensor, step: tf.Tensor) -> dict[str, tf.Tensor]:
        """The random noise of update ``step`` on a batch of ``rows``, by name (``step_noise``).

        Drawn outside ``build_update`` and passed in: under XLA the stateless RNG returns other
        samples than TensorFlow's CPU kernel for the same seed, so the compiled update would
        otherwise draw other noise than the plain one.
        """
        return {}

    def build_update(self, batch: Batch, noise: dict, steps: tuple[str, ...]) -> Update:
        """Everything one update of phase ``steps`` runs, on ``batch`` and ``noise``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- shared helpers
    def network_seed(self) -> int:
        """A distinct initializer seed for each network, in the order they are made."""
        self._networks_made += 1
        return derive_seed(self.seed, self._networks_made, NETWORK_SEED_STRIDE)

    def step_noise(self, rows: tf.Tensor, step: tf.Tensor, width: int, salt: int) -> tf.Tensor:
        """Standard normal noise ``[rows, width]`` of update ``step`` (stateless, seeded by the
        update counter, so a restored agent draws what the original would have, and K updates in
        one run draw what K single updates would have)."""
        seed = tf.stack([tf.cast(step, tf.int32) * 7 + salt, self.seed])
        return tf.random.stateless_normal(tf.stack([rows, width]), seed=seed)

    def norm(self, kind: str, input_norm: bool = False,
             position: str = "pre_activation") -> Norm:
        """A network's normalization: ``kind`` with the config's momentum, epsilon and Batch
        Renorm clipping (pinned to plain BN for the first ``renorm_warmup`` updates)."""
        c = self.config
        return Norm(kind, c.bn_momentum, c.bn_epsilon, input_norm=input_norm, position=position,
                    renorm_clipping=self._renorm_clipping())

    def critic_arch(self) -> Simba | None:
        """The critic's / Q-network's SimBa body (``network=simba``), or None for ``mlp``."""
        c = self.config
        return self._simba(c.network, c.simba_width, c.simba_blocks)

    def actor_arch(self) -> Simba | None:
        """The actor's SimBa body (``actor_network=simba``), or None for ``mlp``."""
        c = self.config
        return self._simba(c.actor_network, c.actor_simba_width, c.actor_simba_blocks)

    def _simba(self, network: str, width: int, blocks: int) -> Simba | None:
        if network != "simba":
            return None
        if self.obs_norm is None and self.observation.dtype == "float32":
            self.obs_norm = RunningObsNorm(name="obs_rsnorm")
        return Simba(width, blocks, self.obs_norm)

    def critic_norm(self) -> Norm:
        """The critic's / Q-network's normalization, as the config sets it."""
        c = self.config
        return self.norm(c.critic_norm, c.critic_input_norm, c.critic_norm_position)

    def _renorm_clipping(self) -> dict:
        """Batch Renorm's r/d clipping; during ``renorm_warmup`` updates r in [1, 1], d in
        [0, 0], which is plain BN (Keras accepts tensors as bounds)."""
        c = self.config
        clipping = {"rmax": c.renorm_rmax, "rmin": 1.0 / c.renorm_rmax, "dmax": c.renorm_dmax}
        if c.renorm_warmup == 0:
            return clipping
        warm = tf.cast(self.num_updates, tf.int64) < c.renorm_warmup
        return {k: tf.where(warm, 0.0 if k == "dmax" else 1.0, v) for k, v in clipping.items()}
