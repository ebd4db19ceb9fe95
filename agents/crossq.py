"""CrossQ (Bhatt et al., ICLR 2024): SAC without target networks, made stable by BN.

CrossQ is SAC with settings, as Stable-Baselines3 makes DDPG out of TD3: naive BN hurts critics
because ``(s, a)`` and ``(s', pi(s'))`` have different statistics, so the critic runs *once*, in
training mode, on ``concat([s, s'])`` / ``concat([a, a'])``, split, gradient stopped on the next
half (``critic_batch=joint``), and bootstraps from that pass (``target=none``,
``bootstrap_mode=training``). Next actions come from the actor in inference mode; the actor loss
uses the critic in inference mode. Batch Renorm (rmax 3, dmax 5) in critic and actor behaves as
plain BN for the first ``renorm_warmup`` updates; Adam uses betas (0.5, 0.999); the actor is
updated every ``policy_delay`` = 3 critic updates.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnrl.agents.sac import SAC, SACConfig


@dataclass
class CrossQConfig(SACConfig):
    """SAC's settings with CrossQ's defaults (paper; critic width from sb3-contrib)."""

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
    critic_norm_position: str = "post_activation"
    """Dense -> ReLU -> Batch Renorm in the critic (paper's code)."""
    actor_norm: str = "batch_renorm"
    """Actor normalization (sb3-contrib/SBX switch BN on for actor and critic together)."""
    policy_delay: int = 3
    """Critic updates per actor update (paper)."""
    renorm_warmup: int = 100_000
    """Updates during which Batch Renorm's corrections are pinned to r=1, d=0 (plain BN)."""
    critic_batch: str = "joint"
    """One training-mode critic pass over ``concat([s, s'])`` (paper)."""
    target: str = "none"
    """No target network (paper)."""
    bootstrap_mode: str = "training"
    """Bootstrap from the joint training-mode pass (paper)."""
    actor_loss_mode: str = "inference"
    """Critic in inference mode inside the actor loss (paper's code)."""


class CrossQ(SAC):
    name = "crossq"
    config_class = CrossQConfig
