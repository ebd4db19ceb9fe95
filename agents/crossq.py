"""CrossQ (Bhatt et al., ICLR 2024): SAC without target networks, made stable by BN.

Naive BN hurts critics because (s, a) and (s', pi(s')) have different statistics. CrossQ runs the
critic *once*, in training mode, on ``concat([s, s'])`` / ``concat([a, a'])``, splits the output
and stops the gradient through the next half, so one set of batch statistics (and one BN update
per step) covers both. Next actions come from the actor in inference mode; the actor loss uses the
critic in inference mode. Batch Renorm (rmax 3, rmin 1/3, dmax 5) behaves as plain BN for the
first ``renorm_warmup`` updates, Adam uses betas (0.5, 0.999), and the actor is updated every
``policy_delay`` = 3 critic updates.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnrl.agents.core import adam, check_range
from bnrl.agents.sac import SAC, SACConfig
from bnrl.networks import CROSSQ_RENORM_CLIPPING, tf, training_call


@dataclass
class CrossQConfig(SACConfig):
    learning_rate: float = 1e-3
    """Adam learning rate (paper)."""
    adam_beta1: float = 0.5
    """Adam beta1 (paper: 0.5 with beta2 0.999)."""
    hidden: tuple[int, ...] = (1024, 1024)
    """Critic widths (sb3-contrib default; the paper uses 2048)."""
    critic_norm: str = "batch_renorm"
    """Critic normalization (paper: Batch Renorm)."""
    critic_input_norm: bool = True
    """Normalize the critic's joint state input too (paper)."""
    actor_norm: str = "batch_renorm"
    """Actor normalization (sb3-contrib/SBX switch BN on for actor and critic together)."""
    policy_delay: int = 3
    """Critic updates per actor update (paper)."""
    renorm_warmup: int = 100_000
    """Updates during which Batch Renorm's corrections are pinned to r=1, d=0 (plain BN)."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "policy_delay", 1)
        check_range(self, "adam_beta1", 0, 1, open_high=True)
        check_range(self, "renorm_warmup", 0)


class CrossQ(SAC):
    name = "crossq"
    config_class = CrossQConfig

    def _uses_target(self) -> bool:
        return False

    def _optimizer(self):
        return adam(self.config.learning_rate, beta1=self.config.adam_beta1)

    def _norm(self, kind: str, **overrides):
        return super()._norm(kind, renorm_clipping=self._renorm_clipping(), **overrides)

    def _critic_norm(self):
        return self.config.critic_norm_spec(position="post_activation",
                                            renorm_clipping=self._renorm_clipping())

    def _renorm_clipping(self):
        # Keras accepts tensors as clipping bounds: r in [1, 1] and d in [0, 0] is plain BN.
        warm = tf.cast(self.num_updates, tf.int64) < self.config.renorm_warmup
        return {k: tf.where(warm, 0.0 if k == "dmax" else 1.0, v)
                for k, v in CROSSQ_RENORM_CLIPPING.items()}

    def _critic_values(self, alpha):
        next_action, next_logp, _ = self._sample(self.actor(self.next_obs_ph, training=False), 1)
        joint = [tf.concat([self.obs_ph, self.next_obs_ph], 0),
                 tf.concat([self.action_ph, next_action], 0)]
        q_joint, updates = training_call(self.critic, joint)
        q, q_next = tf.split(q_joint, 2, axis=0)
        return q, updates, self._td_target(tf.stop_gradient(q_next), next_logp, alpha)

    def _gap_inputs(self):
        return [tf.concat([self.obs_ph, self.next_obs_ph], 0),
                tf.concat([self.action_ph, self.action_ph], 0)]

    def _add_critic_only_variant(self, critic_loss, q):
        scalars = {"losses/critic_loss": critic_loss, "losses/q_values": tf.reduce_mean(q)}
        self.train_ops["critic"] = self.critic_step
        self.scalars["critic"] = scalars

    def _variant(self, update_index: int) -> str:
        return "full" if (update_index + 1) % self.config.policy_delay == 0 else "critic"
