"""DQN (Mnih et al. 2015) with double Q-learning (van Hasselt et al. 2016) and a Huber loss.

One ``sess.run`` per gradient step. Variant ``train``: the Q step with its BN updates. Variant
``sync`` (every ``target_update_interval`` updates): the same step, then the target copy (BN
statistics by the ``target_bn`` policy). Defaults follow SB3; configs/CartPole-v1.yaml has the
RL Zoo settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnrl.agents.core import Agent, AgentConfig, adam, check_range
from bnrl.networks import q_network, tf, training_call, with_updates


@dataclass
class DQNConfig(AgentConfig):
    learning_rate: float = 1e-4
    """Adam learning rate (SB3)."""
    batch_size: int = 32
    """Transitions per gradient step (SB3)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the Q-network (SB3)."""
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

    def validate(self) -> None:
        super().validate()
        check_range(self, "learning_rate", 0, open_low=True)
        check_range(self, "target_update_interval", 1)
        check_range(self, "exploration_steps", 0)
        for name in ("exploration_initial_eps", "exploration_final_eps"):
            check_range(self, name, 0, 1)
        check_range(self, "max_grad_norm", 0, open_low=True)


class DQN(Agent):
    name = "dqn"
    config_class = DQNConfig
    discrete = True

    def _build_networks(self):
        c = self.config
        self.q, self.target_q = (
            q_network(self.obs_dim, self.n_actions, c.hidden, c.critic_norm_spec(), c.dueling,
                      name=n, seed=self._model_seed())
            for n in ("q_network", "target_q_network"))
        self.critic_models, self.actor_models = [self.q], []
        self.target_pairs = [(self.q, self.target_q)]

    def _build_train_ops(self):
        c = self.config
        q_next_target = self.target_q(self.next_obs_ph, training=False)
        if c.double_q:
            best = tf.argmax(self.q(self.next_obs_ph, training=False), axis=1)
            q_next = tf.gather(q_next_target, best, axis=1, batch_dims=1)
        else:
            q_next = tf.reduce_max(q_next_target, axis=1)
        # done is 1 only for true terminations: a time-limit truncation bootstraps.
        y = tf.stop_gradient(self.reward_ph + c.gamma * (1.0 - self.done_ph) * q_next)
        # The double-Q argmax reads the online BN moving statistics: the training call, whose
        # update ops write them, is built to run after the target.
        with tf.control_dependencies([y]):
            q_all, updates = training_call(self.q, self.obs_ph)
        q = tf.gather(q_all, self.action_ph, axis=1, batch_dims=1)
        loss = tf.reduce_mean(tf.compat.v1.losses.huber_loss(y, q, reduction="none"))
        opt = adam(c.learning_rate)
        grads, variables = zip(*opt.compute_gradients(loss, self.q.trainable_variables),
                               strict=True)
        grads, _ = tf.clip_by_global_norm(grads, c.max_grad_norm)
        self.critic_step = with_updates(
            opt.apply_gradients(zip(grads, variables, strict=True)), updates,
            name="q_step")
        with tf.control_dependencies([self.critic_step]):
            sync = self._targets(c.tau)
        scalars = {"losses/q_loss": loss, "losses/q_values": tf.reduce_mean(q)}
        self.train_ops = {"train": self.critic_step,
                          "sync": tf.group(self.critic_step, *sync, name="train_sync")}
        self.scalars = {"train": scalars, "sync": scalars}
        self.act_output = tf.argmax(self.q(self.obs_ph, training=False), axis=1)

    def _gap_inputs(self):
        return self.obs_ph

    def _variant(self, update_index: int) -> str:
        return "sync" if (update_index + 1) % self.config.target_update_interval == 0 else "train"

    @property
    def epsilon(self) -> float:
        c = self.config
        frac = min(1.0, self.env_steps / max(1, c.exploration_steps))
        return c.exploration_initial_eps + frac * (c.exploration_final_eps
                                                   - c.exploration_initial_eps)

    def _postprocess_action(self, action, explore: bool):
        if explore and self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n_actions))
        return int(action)

