"""DQN (Mnih et al. 2015) with double Q-learning (van Hasselt et al. 2016), n-step returns and a
Huber loss.

One ``sess.run`` per gradient step, read top to bottom in ``DQN.build_update``: TD target (double Q:
the online network picks the next action, the target network values it; n-step: the replay's
discounted reward sum and gamma^m) -> Q step with the BN updates of its training-mode pass ->
every ``target_update_interval``-th update: target copy (BN statistics by the ``target_bn``
policy). Defaults follow SB3; configs/CartPole-v1.yaml has the RL Zoo settings, configs/MinAtar.yaml
and configs/ALE.yaml those of the image families. Observations of any shape: the Q-network's
encoder is picked from it (``networks.pick_encoder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bnrl.agents.algorithm import Algorithm, Networks
from bnrl.agents.config import AgentConfig, check_range
from bnrl.agents.policy import GreedyHead
from bnrl.agents.update import (
    TARGET,
    Schedule,
    Update,
    adam,
    critic_pass,
    critic_update,
    target_update,
    td_target,
)
from bnrl.networks import ENCODERS, q_network, tf

LOSSES = ("huber", "mse")


@dataclass
class DQNConfig(AgentConfig):
    """DQN's settings.

    BN defaults (``bn_defaults``, what the ``auto`` BN settings become with
    ``critic_norm=batch``): ``critic_batch=joint`` and ``bootstrap_mode=training``: one
    training-mode pass over ``concat([s, s'])``, the target network (and the double-Q argmax, from
    that pass) in training mode on the same joint batch. Measured with ``python run.py train
    --agent dqn --env CartPole-v1 --critic-norm batch --steps 40000`` (bnrl's preset in configs/:
    the RL Zoo's with learning rate 5e-4 and batch 128), final return for seeds 0 / 1 / 2:
    500 / 500 / 500 with these defaults, 72 / 353 / 476 with plain BN (``critic_batch=separate``,
    ``bootstrap_mode=inference``), 226 / 135 / 200 without BN. With the RL Zoo's own settings
    (2.3e-3, batch 64) every Q-network oscillates and none holds 400 on all three seeds
    (docs/bn-critics.md). Without a target network DQN diverges, hence ``double_q`` needs
    ``target=polyak``.
    """

    bn_defaults: ClassVar[dict[str, str]] = {"critic_batch": "joint", "bootstrap_mode": "training"}

    learning_rate: float = 1e-4
    """Adam learning rate (SB3)."""
    batch_size: int = 32
    """Transitions per gradient step (SB3)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the Q-network's ``mlp`` encoder (SB3); the conv encoders have their own
    dense layer (``encoder``)."""
    train_freq: int = 4
    """Env steps between updates (SB3)."""
    tau: float = 1.0
    """1.0: hard target copy at each sync (SB3); < 1 polyak-averages at each sync."""
    target_update_interval: int = 2500
    """Gradient steps between target syncs (SB3's 10k env steps at train_freq 4)."""
    exploration_steps: int = 10_000
    """Env steps over which epsilon decays linearly."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start."""
    exploration_final_eps: float = 0.05
    """Epsilon after the decay (SB3)."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip (SB3)."""
    double_q: bool = True
    """Pick next actions with the online network, value them with the target (double DQN)."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016)."""
    encoder: str = "auto"
    """The Q-network's encoder: ``mlp`` (``hidden``; an image is flattened first), ``nature``
    (Mnih et al. 2015's three convolutions and 512 units), ``minatar`` (Young & Tian 2019's one
    16-filter 3x3 convolution and 128 units), or ``auto``: mlp for vectors, nature for images of
    at least 36x36 pixels, minatar for smaller ones. ``critic_norm`` goes after every conv and
    dense layer."""
    loss: str = "huber"
    """TD loss: ``huber`` (delta 1: SB3's smooth L1, Mnih et al. 2015's error clipping) or
    ``mse`` (CleanRL's dqn.py and dqn_atari.py)."""
    n_steps: int = 1
    """Steps of each TD target's return (SB3 2.7's ``n_steps``): rewards summed with gamma^k over
    up to n steps, stopping at the end of the episode, then the bootstrap discounted by gamma^m
    for the m steps taken (Sutton & Barto 2018, 7.1; Rainbow uses 3). 1: one-step DQN."""

    def _validate(self) -> None:
        super()._validate()
        check_range(self, "learning_rate", 0, open_low=True)
        check_range(self, "target_update_interval", 1)
        check_range(self, "exploration_steps", 0)
        for name in ("exploration_initial_eps", "exploration_final_eps"):
            check_range(self, name, 0, 1)
        check_range(self, "max_grad_norm", 0, open_low=True)
        check_range(self, "n_steps", 1)
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder '{self.encoder}': use one of {', '.join(ENCODERS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss '{self.loss}': use one of {', '.join(LOSSES)}")
        if self.double_q and self.target == "none":
            raise ValueError("double_q values the next action with a target network but "
                             "target=none: set double_q=false or target=polyak")


class DQN(Algorithm):
    name = "dqn"
    config_class = DQNConfig
    head_class = GreedyHead
    image_observations = True

    def _build_networks(self) -> Networks:
        c = self.config
        polyak = c.target == "polyak"

        def q_net(name):
            return q_network(self.observation, self.head.n, c.hidden, self.critic_norm(),
                             c.dueling, name=name, seed=self.network_seed(), encoder=c.encoder,
                             arch=self.critic_arch())

        self.q = q_net("q_network")
        self.target_q = q_net("target_q_network") if polyak else None
        self.optimizer = adam(c.learning_rate, c.adam_beta1)
        return Networks(critics=[self.q], policy=self.q,
                        target_pairs=[(self.q, self.target_q)] if polyak else [])

    def _build_schedule(self) -> Schedule:
        interval = self.config.target_update_interval
        return Schedule(target_every=interval if self.target_q is not None else None)

    def build_update(self, b, noise, steps) -> Update:
        c = self.config
        # TD target. Double Q: the online network picks the next action (in the bootstrap mode),
        # the target network values it.
        values = critic_pass(self.q, b.obs, b.next_obs, self.target_q, c, online_next=c.double_q)
        if c.double_q:
            best = tf.argmax(values.q_next_online, axis=1)
            q_next = tf.gather(values.q_next, best, axis=1, batch_dims=1)
        else:
            q_next = tf.reduce_max(values.q_next, axis=1)
        # n-step returns bootstrap with the batch's gamma^m per row (replay.sample).
        y = td_target(b.reward, b.done, c.gamma if b.discount is None else b.discount, q_next)

        # Q step (gradient norm clipped, SB3), with the BN updates of its training-mode pass.
        q = tf.gather(values.q, b.action, axis=1, batch_dims=1)
        if c.loss == "huber":
            loss = tf.reduce_mean(tf.compat.v1.losses.huber_loss(y, q, reduction="none"))
        else:
            loss = tf.reduce_mean(tf.square(y - q))
        update = critic_update(self.optimizer, loss, q, self.q, values, loss_name="losses/q_loss",
                               clip_norm=c.max_grad_norm, name="q_step")
        update.td_target = y

        if TARGET in steps:
            # Target sync (hard copy at tau = 1), reading the Q-network after the step.
            update.target_step = target_update([(self.q, self.target_q)], c.tau, c.target_bn,
                                               update.optimizer_steps())
        return update
