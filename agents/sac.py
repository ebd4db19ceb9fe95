"""Soft Actor-Critic (Haarnoja et al. 2018) with twin critics and automatic entropy tuning.

One ``sess.run`` per gradient step, read top to bottom in ``SAC.build_update``: TD target (next
actions sampled from the actor in ``next_action_mode``, inference by default) -> critic step with
the BN updates of its training-mode pass -> every ``policy_delay``-th update: actor step (reading
the new critic) -> temperature step -> polyak target update. Defaults follow SB3 / RL Zoo. CrossQ
is this agent with other settings (``agents/crossq.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from bnrl.agents.algorithm import Algorithm, Networks
from bnrl.agents.config import ActorCriticConfig, check_range
from bnrl.agents.policy import SquashedGaussianHead
from bnrl.agents.update import (
    ACTOR,
    TARGET,
    Schedule,
    Update,
    adam,
    call_in_mode,
    critic_pass,
    critic_update,
    gradient_step,
    target_update,
    td_target,
    temperature_step,
)
from bnrl.networks import critic, gaussian_actor, squashed_gaussian, tf, training_call


@dataclass
class SACConfig(ActorCriticConfig):
    """SAC's settings (CrossQ's too, with other defaults).

    BN defaults (``bn_defaults``, what the ``auto`` BN settings become with
    ``critic_norm=batch``): ``critic_batch=joint`` and ``bootstrap_mode=training``, as for TD3
    (one training-mode critic pass over ``(s, a)`` and ``(s', a')``, target critic in training
    mode on that joint batch, target network and inference-mode actor loss kept). SAC learned
    with plain BN too, but less steadily: ``python run.py train --env Pendulum-v1 --critic-norm
    batch --steps 10000`` (presets of configs/), final return for seeds 0 / 1 / 2: -148 / -120 /
    -130 with these defaults (mean of the evaluations from 4k steps on: -137 / -161 / -140),
    -151 / -122 / -131 with plain BN (-220 / -235 / -303: it fell back to -450 to -590 at 6k on
    every seed). docs/bn-critics.md has the measurements.
    """

    bn_defaults: ClassVar[dict[str, str]] = {"critic_batch": "joint", "bootstrap_mode": "training"}

    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and temperature (SB3)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor."""
    n_critics: int = 2
    """Number of Q-heads; the target takes their minimum (clipped double Q)."""
    init_alpha: float = 1.0
    """Initial entropy temperature (SB3 'auto_1.0')."""
    autotune_alpha: bool = True
    """Learn the temperature towards ``target_entropy``."""
    target_entropy: float | None = None
    """Entropy target; None means -action_dim (Haarnoja et al. 2018b)."""
    policy_delay: int = 1
    """Critic updates per actor, temperature and target update (TD3's delayed policy updates,
    Fujimoto et al. 2018; CrossQ: 3)."""

    def _validate(self) -> None:
        super()._validate()
        check_range(self, "learning_rate", 0, open_low=True)
        check_range(self, "n_critics", 1)
        check_range(self, "init_alpha", 0, open_low=True)
        check_range(self, "policy_delay", 1)
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(f"target_entropy must be a finite number or null, got "
                             f"{self.target_entropy}")


class SAC(Algorithm):
    """SAC; CrossQ is SAC with CrossQConfig's defaults."""

    name = "sac"
    config_class = SACConfig
    head_class = SquashedGaussianHead

    def _build_networks(self) -> Networks:
        c = self.config
        act_dim = self.head.action_dim
        self.critic = critic(self.obs_dim, act_dim, c.hidden, self.critic_norm(),
                             n_critics=c.n_critics, name="critic", seed=self.network_seed(),
                             arch=self.critic_arch())
        self.actor = gaussian_actor(self.obs_dim, act_dim, c.actor_hidden,
                                    self.norm(c.actor_norm), name="actor",
                                    seed=self.network_seed(), arch=self.actor_arch())
        self.target_critic = None
        if c.target == "polyak":
            self.target_critic = critic(self.obs_dim, act_dim, c.hidden, self.critic_norm(),
                                        n_critics=c.n_critics, name="target_critic",
                                        seed=self.network_seed(), arch=self.critic_arch())
        self.log_alpha = tf.Variable(math.log(c.init_alpha), dtype=tf.float32, name="log_alpha")
        self.target_entropy = (c.target_entropy if c.target_entropy is not None
                               else -float(act_dim))
        self.critic_optimizer, self.actor_optimizer, self.alpha_optimizer = (
            adam(c.learning_rate, c.adam_beta1) for _ in range(3))
        return Networks(critics=[self.critic], actors=[self.actor], policy=self.actor,
                        target_pairs=[(self.critic, self.target_critic)]
                        if self.target_critic is not None else [])

    def _build_schedule(self) -> Schedule:
        return Schedule.actor_critic(self.config.policy_delay, self.target_critic is not None)

    def noise(self, rows, step) -> dict:
        act_dim = self.head.action_dim
        return {"next_action": self.step_noise(rows, step, act_dim, 1),
                "action": self.step_noise(rows, step, act_dim, 2)}

    def build_update(self, b, noise, steps) -> Update:
        c = self.config
        alpha = tf.exp(self.log_alpha)
        # TD target: soft value of the bootstrap critic at actions the actor samples in the
        # next-action mode (inference: moving statistics; training: the batch statistics of s',
        # no statistics update).
        next_action, next_logp, _ = squashed_gaussian(
            call_in_mode(self.actor, b.next_obs, c.next_action_mode), noise["next_action"])
        values = critic_pass(self.critic, [b.obs, b.action], [b.next_obs, next_action],
                             self.target_critic, c)
        y = td_target(b.reward, b.done, c.gamma,
                      tf.reduce_min(values.q_next, axis=1) - alpha * next_logp)

        # Critic step, with the BN updates of its one training-mode pass.
        q = values.q
        critic_loss = 0.5 * tf.reduce_sum(tf.reduce_mean(tf.square(q - y[:, None]), axis=0))
        update = critic_update(self.critic_optimizer, critic_loss, q, self.critic, values)

        if ACTOR in steps:
            # Delayed actor step. Model calls inside this block read their variables after the
            # critic step; the critic's training-mode call here collects no updates.
            with tf.control_dependencies([update.critic_step]):
                dist, actor_updates = training_call(self.actor, b.obs)
                action, logp, _ = squashed_gaussian(dist, noise["action"])
                q_pi = tf.reduce_min(call_in_mode(self.critic, [b.obs, action],
                                                  c.actor_loss_mode), axis=1)
                alpha_now = tf.exp(self.log_alpha)
            actor_loss = tf.reduce_mean(tf.stop_gradient(alpha_now) * logp - q_pi)
            actor_step = gradient_step(self.actor_optimizer, actor_loss,
                                       self.actor.trainable_variables, actor_updates,
                                       name="actor_step")

            # Temperature step, after the actor has used the temperature.
            alpha_loss = -tf.reduce_mean(
                self.log_alpha * tf.stop_gradient(logp + self.target_entropy))
            if c.autotune_alpha:
                alpha_step = temperature_step(self.alpha_optimizer, alpha_loss, self.log_alpha,
                                              actor_step)
                actor_step = tf.group(actor_step, alpha_step, name="actor_alpha_step")
            update.actor_step = actor_step
            update.actor_scalars = {"losses/actor_loss": actor_loss,
                                    "losses/alpha_loss": alpha_loss, "losses/alpha": alpha,
                                    "losses/entropy": -tf.reduce_mean(logp)}

        if TARGET in steps:
            # Polyak target critic, reading the online critic after this update's steps.
            update.target_step = target_update([(self.critic, self.target_critic)], c.tau,
                                               c.target_bn, update.optimizer_steps())
        return update
