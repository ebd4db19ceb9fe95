"""TD3 (Fujimoto et al. 2018) and DDPG (Lillicrap et al. 2016) as TD3 with three settings.

DDPG = TD3 with one critic, no target policy smoothing and no actor delay (as SB3 does it).
``DDPGConfig.paper()`` is the paper's setup: BN on the state input and on the critic layers before
the action, which joins at the second hidden layer, and in the actor; L2 1e-2 on Q; OU noise.

One ``sess.run`` per gradient step. Variant ``critic``: critic step with its BN updates. Variant
``full`` (every ``policy_delay``-th step): critic step -> actor step (critic in inference mode,
reading the new critic) -> polyak target update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from bnrl.agents.core import Agent, AgentConfig, adam, check_range, minimize
from bnrl.networks import Norm, critic, deterministic_actor, tf, training_call, with_updates


@dataclass
class TD3Config(AgentConfig):
    learning_rate: float = 1e-3
    """Adam learning rate of actor and critics (SB3)."""
    actor_learning_rate: float | None = None
    """Actor learning rate when it differs (DDPG paper: 1e-4)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor."""
    actor_norm: str = "none"
    """Normalization of the actor: none, batch, batch_renorm, layer."""
    actor_input_norm: bool = False
    """Also normalize the actor's state input (DDPG paper)."""
    n_critics: int = 2
    """Q-heads; the target takes their minimum (clipped double Q)."""
    policy_delay: int = 2
    """Critic updates per actor and target update."""
    target_policy_noise: float = 0.2
    """Std of the Gaussian noise on target actions (target policy smoothing)."""
    target_noise_clip: float = 0.5
    """Clip of that noise."""
    action_noise: str = "gaussian"
    """Exploration noise: gaussian, ou (Ornstein-Uhlenbeck, DDPG paper) or none."""
    action_noise_std: float = 0.1
    """Std (sigma) of the exploration noise, in the [-1, 1] action scale."""
    ou_theta: float = 0.15
    """Mean reversion of the OU noise (DDPG paper)."""
    action_at: int = 0
    """Critic hidden layer where the action joins (0: input; 1: second layer, DDPG paper)."""
    norm_after_action: bool = True
    """False normalizes only the critic layers before the action joins (DDPG paper)."""
    critic_l2: float = 0.0
    """L2 weight decay on the critic's kernels (DDPG paper: 1e-2)."""

    def validate(self) -> None:
        super().validate()
        for name in ("learning_rate", "actor_learning_rate"):
            check_range(self, name, 0, open_low=True)
        for name in ("n_critics", "policy_delay"):
            check_range(self, name, 1)
        for name in ("target_policy_noise", "target_noise_clip", "action_noise_std", "ou_theta",
                     "critic_l2"):
            check_range(self, name, 0)
        check_range(self, "action_at", 0, len(self.hidden))
        if self.action_noise not in ("gaussian", "ou", "none"):
            raise ValueError(f"unknown action_noise '{self.action_noise}': use gaussian, ou, none")
        Norm(self.actor_norm)


@dataclass
class DDPGConfig(TD3Config):
    n_critics: int = 1
    policy_delay: int = 1
    target_policy_noise: float = 0.0

    @classmethod
    def paper(cls, **overrides) -> DDPGConfig:
        """Lillicrap et al. 2016: BN in the actor and in the critic before the action input."""
        settings = dict(
            critic_norm="batch", critic_input_norm=True, actor_norm="batch", actor_input_norm=True,
            hidden=(400, 300), actor_hidden=(400, 300), action_at=1, norm_after_action=False,
            learning_rate=1e-3, actor_learning_rate=1e-4, critic_l2=1e-2, tau=0.001,
            batch_size=64, action_noise="ou", action_noise_std=0.2)
        settings.update(overrides)
        return cls(**settings)


class TD3(Agent):
    name = "td3"
    config_class = TD3Config

    def _build_networks(self):
        c = self.config
        self.critic, self.target_critic = (
            critic(self.obs_dim, self.act_dim, c.hidden, c.critic_norm_spec(), c.action_at,
                   c.n_critics, c.norm_after_action, name=n, seed=self._model_seed())
            for n in ("critic", "target_critic"))
        actor_norm = self._norm(c.actor_norm, input_norm=c.actor_input_norm)
        self.actor, self.target_actor = (
            deterministic_actor(self.obs_dim, self.act_dim, c.actor_hidden, actor_norm, name=n,
                                seed=self._model_seed())
            for n in ("actor", "target_actor"))
        self.critic_models, self.actor_models = [self.critic], [self.actor]
        self.target_pairs = [(self.critic, self.target_critic), (self.actor, self.target_actor)]
        self._ou_state = np.zeros(self.act_dim, np.float32)

    def _build_train_ops(self):
        c = self.config
        next_action = self.target_actor(self.next_obs_ph, training=False)
        if c.target_policy_noise > 0:
            noise = tf.random.stateless_normal(tf.shape(next_action), seed=self._step_seed(1))
            noise = tf.clip_by_value(c.target_policy_noise * noise, -c.target_noise_clip,
                                     c.target_noise_clip)
            next_action = tf.clip_by_value(next_action + noise, -1.0, 1.0)
        q_next = tf.reduce_min(self.target_critic([self.next_obs_ph, next_action],
                                                  training=False), axis=1)
        # done is 1 only for true terminations: a time-limit truncation bootstraps.
        y = tf.stop_gradient(self.reward_ph + c.gamma * (1.0 - self.done_ph) * q_next)
        q, critic_updates = training_call(self.critic, [self.obs_ph, self.action_ph])
        critic_loss = tf.reduce_sum(tf.reduce_mean(tf.square(q - y[:, None]), axis=0))
        if c.critic_l2 > 0:
            kernels = [v for v in self.critic.trainable_variables if "kernel" in v.name]
            critic_loss += c.critic_l2 * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
        self.critic_step = with_updates(
            minimize(adam(c.learning_rate), critic_loss, self.critic.trainable_variables),
            critic_updates, name="critic_step")

        with tf.control_dependencies([self.critic_step]):
            action, actor_updates = training_call(self.actor, self.obs_ph)
            q_pi = self.critic([self.obs_ph, action], training=False)[:, 0]
        actor_loss = -tf.reduce_mean(q_pi)
        actor_step = with_updates(
            minimize(adam(c.actor_learning_rate or c.learning_rate), actor_loss,
                     self.actor.trainable_variables), actor_updates, name="actor_step")
        with tf.control_dependencies([self.critic_step, actor_step]):
            targets = self._targets(c.tau)

        critic_scalars = {"losses/critic_loss": critic_loss, "losses/q_values": tf.reduce_mean(q)}
        self.train_ops = {"critic": self.critic_step,
                          "full": tf.group(self.critic_step, actor_step, *targets, name="train")}
        self.scalars = {"critic": critic_scalars,
                        "full": {**critic_scalars, "losses/actor_loss": actor_loss}}
        self.act_output = self.actor(self.obs_ph, training=False)

    def _variant(self, update_index: int) -> str:
        # As SB3: the actor and targets move on every policy_delay-th update.
        return "full" if (update_index + 1) % self.config.policy_delay == 0 else "critic"

    def _postprocess_action(self, action, explore: bool):
        c = self.config
        if not explore or c.action_noise == "none":
            return action
        if c.action_noise == "ou":
            # dx = theta * (0 - x) dt + sigma * sqrt(dt) dW with dt = 1e-2 (SB3's OU defaults).
            dt = 1e-2
            self._ou_state += (-c.ou_theta * self._ou_state * dt
                               + c.action_noise_std * np.sqrt(dt)
                               * self.rng.standard_normal(self.act_dim))
            noise = self._ou_state
        else:
            noise = c.action_noise_std * self.rng.standard_normal(self.act_dim)
        return np.clip(action + noise, -1.0, 1.0).astype(np.float32)

    def on_episode_end(self) -> None:
        self._ou_state[:] = 0.0


class DDPG(TD3):
    name = "ddpg"
    config_class = DDPGConfig
