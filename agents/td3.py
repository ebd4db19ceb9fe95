"""TD3 (Fujimoto et al. 2018) and DDPG (Lillicrap et al. 2016) as TD3 with three settings.

DDPG = TD3 with one critic, no target policy smoothing and no actor delay (as SB3 does it).
``DDPGConfig.paper()`` is the paper's setup: BN on the state input and on the critic layers before
the action, which joins at the second hidden layer, and in the actor; L2 1e-2 on Q; OU noise.

One ``sess.run`` per gradient step, read top to bottom in ``TD3.build_update``: TD target (target
actor's smoothed next action, bootstrap critic) -> critic step with the BN updates of its
training-mode pass -> every ``policy_delay``-th update: actor step (reading the new critic) ->
polyak target update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bnrl.agents.algorithm import Algorithm, Networks
from bnrl.agents.config import ActorCriticConfig, check_range
from bnrl.agents.policy import DeterministicHead
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
)
from bnrl.networks import critic, deterministic_actor, tf, training_call


@dataclass
class TD3Config(ActorCriticConfig):
    """TD3's settings (DDPG's too, with three changed).

    BN defaults (``bn_defaults``, what the ``auto`` BN settings become with
    ``critic_norm=batch``): ``critic_batch=joint`` and ``bootstrap_mode=training``, i.e. one
    training-mode critic pass over ``(s, a)`` and ``(s', a')`` and the target critic evaluated in
    training mode on that joint batch; target networks and the inference-mode actor loss are
    kept. Measured with ``python run.py train --env Pendulum-v1 --critic-norm batch --steps 10000``
    (presets of configs/), final return for seeds 0 / 1 / 2: TD3 -158 / -119 / -130 and DDPG
    -160 / -119 / -128 with these defaults, against TD3 -938 / -991 / -518 and DDPG -1423 / -123 /
    -131 with plain BN (separate pass, inference-mode target). The bootstrap's mode is what
    matters: on TD3 seed 1 a separate pass with a training-mode target reaches -124, a joint pass
    with an inference-mode target -478 (docs/bn-critics.md).
    """

    bn_defaults: ClassVar[dict[str, str]] = {"critic_batch": "joint", "bootstrap_mode": "training"}

    learning_rate: float = 1e-3
    """Adam learning rate of actor and critics (SB3)."""
    actor_learning_rate: float | None = None
    """Actor learning rate when it differs (DDPG paper: 1e-4)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor."""
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

    def _validate(self) -> None:
        super()._validate()
        for name in ("learning_rate", "actor_learning_rate"):
            check_range(self, name, 0, open_low=True)
        for name in ("n_critics", "policy_delay"):
            check_range(self, name, 1)
        for name in ("target_policy_noise", "target_noise_clip", "action_noise_std", "ou_theta",
                     "critic_l2"):
            check_range(self, name, 0)
        check_range(self, "action_at", 0, len(self.hidden))
        if self.network == "simba" and (self.action_at != 0 or not self.norm_after_action):
            raise ValueError("network=simba takes the action with the state at the critic's input "
                             "and normalizes every block: action_at must be 0 and "
                             "norm_after_action true")
        if self.action_noise not in ("gaussian", "ou", "none"):
            raise ValueError(f"unknown action_noise '{self.action_noise}': use gaussian, ou, none")


@dataclass
class DDPGConfig(TD3Config):
    """TD3's settings with one critic, no target policy smoothing and no actor delay (SB3's
    DDPG); the BN defaults are TD3's (see ``TD3Config``)."""

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
            batch_size=64, action_noise="ou", action_noise_std=0.2,
            # The paper's BN: one pass on (s, a); target, actor-loss critic and next actions in
            # inference mode.
            critic_batch="separate", target="polyak", bootstrap_mode="inference",
            actor_loss_mode="inference", next_action_mode="inference")
        settings.update(overrides)
        return cls(**settings)


class TD3(Algorithm):
    name = "td3"
    config_class = TD3Config
    head_class = DeterministicHead

    def _build_networks(self) -> Networks:
        c = self.config
        polyak = c.target == "polyak"
        act_dim = self.head.action_dim

        def critic_net(name):
            return critic(self.obs_dim, act_dim, c.hidden, self.critic_norm(), c.action_at,
                          c.n_critics, c.norm_after_action, name=name, seed=self.network_seed(),
                          arch=self.critic_arch())

        def actor_net(name):
            return deterministic_actor(self.obs_dim, act_dim, c.actor_hidden,
                                       self.norm(c.actor_norm, c.actor_input_norm), name=name,
                                       seed=self.network_seed(), arch=self.actor_arch())

        self.critic = critic_net("critic")
        self.target_critic = critic_net("target_critic") if polyak else None
        self.actor = actor_net("actor")
        self.target_actor = actor_net("target_actor") if polyak else None
        self.critic_optimizer = adam(c.learning_rate, c.adam_beta1)
        self.actor_optimizer = adam(c.actor_learning_rate or c.learning_rate, c.adam_beta1)
        self.target_pairs = ([(self.critic, self.target_critic), (self.actor, self.target_actor)]
                             if polyak else [])
        return Networks(critics=[self.critic], actors=[self.actor], policy=self.actor,
                        target_pairs=self.target_pairs)

    def _build_schedule(self) -> Schedule:
        return Schedule.actor_critic(self.config.policy_delay, bool(self.target_pairs))

    def noise(self, rows, step) -> dict:
        if self.config.target_policy_noise <= 0:
            return {}
        return {"target_policy": self.step_noise(rows, step, self.head.action_dim, 1)}

    def build_update(self, b, noise, steps) -> Update:
        c = self.config
        # TD target: the target actor's next action (the online actor's without targets) in the
        # next-action mode, with target policy smoothing (TD3), valued by the bootstrap critic;
        # clipped double Q.
        actor = self.actor if self.target_actor is None else self.target_actor
        next_action = call_in_mode(actor, b.next_obs, c.next_action_mode)
        if "target_policy" in noise:
            smoothing = tf.clip_by_value(c.target_policy_noise * noise["target_policy"],
                                         -c.target_noise_clip, c.target_noise_clip)
            next_action = tf.clip_by_value(next_action + smoothing, -1.0, 1.0)
        values = critic_pass(self.critic, [b.obs, b.action], [b.next_obs, next_action],
                             self.target_critic, c)
        y = td_target(b.reward, b.done, c.gamma, tf.reduce_min(values.q_next, axis=1))

        # Critic step, with the BN updates of its one training-mode pass.
        q = values.q
        critic_loss = tf.reduce_sum(tf.reduce_mean(tf.square(q - y[:, None]), axis=0))
        if c.critic_l2 > 0:
            kernels = [v for v in self.critic.trainable_variables if "kernel" in v.name]
            critic_loss += c.critic_l2 * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
        update = critic_update(self.critic_optimizer, critic_loss, q, self.critic, values)

        if ACTOR in steps:
            # Delayed actor step on the first critic head, reading the new critic; the critic's
            # training-mode call here collects no updates.
            with tf.control_dependencies([update.critic_step]):
                action, actor_updates = training_call(self.actor, b.obs)
                q_pi = call_in_mode(self.critic, [b.obs, action], c.actor_loss_mode)[:, 0]
            actor_loss = -tf.reduce_mean(q_pi)
            update.actor_step = gradient_step(self.actor_optimizer, actor_loss,
                                              self.actor.trainable_variables, actor_updates,
                                              name="actor_step")
            update.actor_scalars = {"losses/actor_loss": actor_loss}

        if TARGET in steps:
            # Polyak target critic and actor, reading the online networks after the steps.
            update.target_step = target_update(self.target_pairs, c.tau, c.target_bn,
                                               update.optimizer_steps())
        return update


class DDPG(TD3):
    name = "ddpg"
    config_class = DDPGConfig
