"""Soft Actor-Critic (Haarnoja et al. 2018) with twin critics and automatic entropy tuning.

One ``sess.run`` per gradient step: critic step (with the critic's BN updates) -> actor step
(critic in inference mode, reading the new critic as SB3/CleanRL do) -> temperature step ->
polyak target update. Defaults follow SB3 / RL Zoo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from bnrl.agents.core import Agent, AgentConfig, adam, after, check_range, minimize
from bnrl.networks import (
    Norm,
    critic,
    gaussian_actor,
    squashed_gaussian,
    tf,
    training_call,
    with_updates,
)


@dataclass
class SACConfig(AgentConfig):
    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and temperature (SB3)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor."""
    actor_norm: str = "none"
    """Normalization of the actor: none, batch, batch_renorm, layer."""
    n_critics: int = 2
    """Number of Q-heads; the target takes their minimum (clipped double Q)."""
    init_alpha: float = 1.0
    """Initial entropy temperature (SB3 'auto_1.0')."""
    autotune_alpha: bool = True
    """Learn the temperature towards ``target_entropy``."""
    target_entropy: float | None = None
    """Entropy target; None means -action_dim (Haarnoja et al. 2018b)."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "learning_rate", 0, open_low=True)
        check_range(self, "n_critics", 1)
        check_range(self, "init_alpha", 0, open_low=True)
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(f"target_entropy must be a finite number or null, got "
                             f"{self.target_entropy}")
        Norm(self.actor_norm)


class SAC(Agent):
    """SAC on the shared core; CrossQ subclasses it."""

    name = "sac"
    config_class = SACConfig

    def _build_networks(self):
        c = self.config
        self.critic = critic(self.obs_dim, self.act_dim, c.hidden, self._critic_norm(),
                             n_critics=c.n_critics, name="critic", seed=self._model_seed())
        self.actor = gaussian_actor(self.obs_dim, self.act_dim, c.actor_hidden,
                                    self._norm(c.actor_norm), name="actor",
                                    seed=self._model_seed())
        self.critic_models, self.actor_models = [self.critic], [self.actor]
        self.target_pairs = []
        if self._uses_target():
            self.target_critic = critic(self.obs_dim, self.act_dim, c.hidden, self._critic_norm(),
                                        n_critics=c.n_critics, name="target_critic",
                                        seed=self._model_seed())
            self.target_pairs = [(self.critic, self.target_critic)]
        self.log_alpha = tf.Variable(math.log(c.init_alpha), dtype=tf.float32, name="log_alpha")
        self.target_entropy = (c.target_entropy if c.target_entropy is not None
                               else -float(self.act_dim))

    def _critic_norm(self):
        return self.config.critic_norm_spec()

    def _uses_target(self) -> bool:
        return True

    def _optimizer(self):
        return adam(self.config.learning_rate)

    def _sample(self, dist, salt: int):
        noise = tf.random.stateless_normal(tf.shape(dist[:, : self.act_dim]),
                                           seed=self._step_seed(salt))
        return squashed_gaussian(dist, noise)

    def _critic_values(self, alpha):
        """Q(s, a) of the training-mode call, its BN updates, and the TD target."""
        next_action, next_logp, _ = self._sample(self.actor(self.next_obs_ph, training=False), 1)
        q_next = self.target_critic([self.next_obs_ph, next_action], training=False)
        q, updates = training_call(self.critic, [self.obs_ph, self.action_ph])
        return q, updates, self._td_target(q_next, next_logp, alpha)

    def _td_target(self, q_next, next_logp, alpha):
        c = self.config
        v_next = tf.reduce_min(q_next, axis=1) - alpha * next_logp
        # done is 1 only for true terminations: a time-limit truncation bootstraps.
        return tf.stop_gradient(self.reward_ph + c.gamma * (1.0 - self.done_ph) * v_next)

    def _build_train_ops(self):
        c = self.config
        alpha = tf.exp(self.log_alpha)
        q, critic_updates, y = self._critic_values(alpha)
        critic_loss = 0.5 * tf.reduce_sum(tf.reduce_mean(tf.square(q - y[:, None]), axis=0))
        self.critic_step = with_updates(
            minimize(self._optimizer(), critic_loss, self.critic.trainable_variables),
            critic_updates, name="critic_step")

        # Model calls inside this block read their variables after the critic step.
        with tf.control_dependencies([self.critic_step]):
            dist, actor_updates = training_call(self.actor, self.obs_ph)
            action, logp, _ = self._sample(dist, 2)
            q_pi = tf.reduce_min(self.critic([self.obs_ph, action], training=False), axis=1)
            alpha_now = tf.exp(self.log_alpha)
        actor_loss = tf.reduce_mean(tf.stop_gradient(alpha_now) * logp - q_pi)
        actor_step = with_updates(
            minimize(self._optimizer(), actor_loss, self.actor.trainable_variables),
            actor_updates, name="actor_step")
        steps = [self.critic_step, actor_step]
        alpha_loss = -tf.reduce_mean(self.log_alpha * tf.stop_gradient(logp + self.target_entropy))
        if c.autotune_alpha:
            opt = self._optimizer()
            grads = after(actor_step, tf.gradients(alpha_loss, [self.log_alpha]))
            steps.append(opt.apply_gradients(zip(grads, [self.log_alpha], strict=True)))
        with tf.control_dependencies(steps):
            targets = self._targets(c.tau)

        full = {
            "losses/critic_loss": critic_loss,
            "losses/actor_loss": actor_loss,
            "losses/alpha_loss": alpha_loss,
            "losses/alpha": alpha,
            "losses/q_values": tf.reduce_mean(q),
            "losses/entropy": -tf.reduce_mean(logp),
        }
        self.train_ops = {"full": tf.group(*steps, *targets, name="train_full")}
        self.scalars = {"full": full}
        self._add_critic_only_variant(critic_loss, q)
        self.act_output = self.actor(self.obs_ph, training=False)

    def _add_critic_only_variant(self, critic_loss, q):
        """Delayed-actor agents (CrossQ) add a 'critic' variant; SAC updates all every step."""

    def _postprocess_action(self, dist, explore: bool):
        mean, log_std = dist[: self.act_dim], dist[self.act_dim:]
        if not explore:
            return np.tanh(mean)
        return np.tanh(mean + np.exp(log_std) * self.rng.standard_normal(self.act_dim)).astype(
            np.float32)
