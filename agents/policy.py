"""Policy heads: how the acting network's output becomes an action, per kind of action space.

The agent runs its policy network in inference mode (BN on moving statistics) on one
observation and hands the output row to its head, which picks the action: greedy or
epsilon-greedy over Q-values (DQN), a deterministic action with Gaussian or Ornstein-Uhlenbeck
noise (TD3, DDPG), or a tanh-squashed Gaussian sample (SAC, CrossQ). A head also draws the random
actions taken before ``learning_starts``, names what the numpy acting path computes, and writes
the exported policy's outputs and signature (``training/export.py``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bnrl.networks import tf


class PolicyHead:
    """Base of the heads. ``kind`` names the head in an export's metadata.

    Args:
      action_space: the env's ``Discrete`` or ``Box`` (in [-1, 1]) action space.
      config: the agent's resolved config (exploration settings).
      rng: the agent's numpy generator (exploration draws from it).
      n_envs: sub-envs acting together (a vector env); exploration that carries state between
        steps keeps one per sub-env.
    """

    kind: ClassVar[str]
    action_space: ClassVar[str]
    """The action space it acts in: ``discrete`` (``Discrete``) or ``box`` (``Box``)."""
    numpy_output: ClassVar[str | None] = None
    """The output layer the numpy acting path computes (None: the network's output)."""

    def __init__(self, action_space, config, rng: np.random.Generator, n_envs: int = 1):
        self.config, self.rng, self.n_envs = config, rng, n_envs

    action_shape: tuple[int, ...]
    action_dtype: type

    def random(self):
        """A uniformly random action (before ``learning_starts``)."""
        raise NotImplementedError

    def act(self, out: np.ndarray, explore: bool, env_steps: int, env: int = 0):
        """The action from the policy network's output row ``out``; with ``explore``, the
        exploration of the agent (``env_steps`` taken so far) in sub-env ``env``."""
        raise NotImplementedError

    def finish(self, out: np.ndarray):
        """The deterministic action from the numpy path's output row (``numpy_output``)."""
        return self.act(out, explore=False, env_steps=0)

    def episode_end(self, env: int = 0) -> None:
        """An episode of sub-env ``env`` ended: reset what its exploration carries between
        steps."""

    def serving(self, raw: tf.Tensor, env_bounds) -> dict[str, tf.Tensor]:
        """The exported policy's outputs from the network's output ``raw`` (a batch)."""
        raise NotImplementedError

    def signature(self, env_bounds) -> tuple[dict, dict]:
        """``(action, outputs)`` of an export's metadata: the action space and what each
        output of the serving signature is."""
        raise NotImplementedError


class GreedyHead(PolicyHead):
    """Discrete actions: argmax of the Q-values; epsilon-greedy when exploring (DQN)."""

    kind = "greedy"
    action_space = "discrete"

    def __init__(self, action_space, config, rng, n_envs=1):
        super().__init__(action_space, config, rng, n_envs)
        self.n = int(action_space.n)
        self.action_shape, self.action_dtype = (), np.int64

    def epsilon(self, env_steps: int) -> float:
        """Epsilon after ``env_steps``: linear from the initial to the final value over
        ``exploration_steps``, then constant (SB3)."""
        c = self.config
        frac = min(1.0, env_steps / max(1, c.exploration_steps))
        return c.exploration_initial_eps + frac * (c.exploration_final_eps
                                                   - c.exploration_initial_eps)

    def random(self):
        return int(self.rng.integers(self.n))

    def act(self, out, explore, env_steps, env=0):
        if explore and self.rng.random() < self.epsilon(env_steps):
            return self.random()
        return int(np.argmax(out))

    def serving(self, raw, env_bounds):
        return {"action": tf.argmax(raw, axis=1), "q_values": tf.identity(raw)}

    def signature(self, env_bounds):
        action = {"kind": "discrete", "n": self.n}
        outputs = {"action": "int64 [batch]: the greedy action index",
                   "q_values": f"float32 [batch, {self.n}]: Q-value of each action"}
        return action, outputs


class BoxHead(PolicyHead):
    """Continuous actions in [-1, 1] (bnrl's env wrapper rescales them to the env's bounds)."""

    action_space = "box"

    def __init__(self, action_space, config, rng, n_envs=1):
        super().__init__(action_space, config, rng, n_envs)
        self.action_dim = int(np.prod(action_space.shape))
        self.action_shape, self.action_dtype = (self.action_dim,), np.float32

    def random(self):
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)

    def _deterministic(self, raw: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def serving(self, raw, env_bounds):
        action = self._deterministic(raw)
        outputs = {"action": tf.identity(action)}
        if env_bounds is not None:
            low, high = (tf.constant(np.asarray(b, np.float32)) for b in env_bounds)
            outputs["env_action"] = low + (tf.clip_by_value(action, -1.0, 1.0) + 1.0) * 0.5 * (
                high - low)
        return outputs

    def signature(self, env_bounds):
        d = self.action_dim
        low, high = env_bounds
        action = {"kind": "box", "shape": [d], "low": [-1.0] * d, "high": [1.0] * d,
                  "env_low": np.asarray(low).tolist(), "env_high": np.asarray(high).tolist()}
        outputs = {"action": f"float32 [batch, {d}]: the deterministic action in [-1, 1], what "
                             "bnrl's env wrapper (bnrl.envs.make_env) expects",
                   "env_action": f"float32 [batch, {d}]: the same action rescaled to the env's "
                                 "bounds, low + (action + 1) / 2 * (high - low), for a plain "
                                 "gymnasium env"}
        return action, outputs


class DeterministicHead(BoxHead):
    """The actor's action; exploring adds Gaussian or Ornstein-Uhlenbeck noise (TD3, DDPG)."""

    kind = "deterministic"

    def __init__(self, action_space, config, rng, n_envs=1):
        super().__init__(action_space, config, rng, n_envs)
        # One Ornstein-Uhlenbeck process per sub-env (SB3's VectorizedActionNoise).
        self._ou_state = np.zeros((n_envs, self.action_dim), np.float32)

    def act(self, out, explore, env_steps, env=0):
        c = self.config
        if not explore or c.action_noise == "none":
            return out
        if c.action_noise == "ou":
            # dx = theta * (0 - x) dt + sigma * sqrt(dt) dW with dt = 1e-2 (SB3's OU defaults).
            dt = 1e-2
            state = self._ou_state[env]
            state += (-c.ou_theta * state * dt + c.action_noise_std * np.sqrt(dt)
                      * self.rng.standard_normal(self.action_dim))
            noise = state
        else:
            noise = c.action_noise_std * self.rng.standard_normal(self.action_dim)
        return np.clip(out + noise, -1.0, 1.0).astype(np.float32)

    def episode_end(self, env=0):
        # OU noise restarts at 0 with every episode (SB3's ``action_noise.reset()``).
        self._ou_state[env] = 0.0

    def _deterministic(self, raw):
        return raw


class SquashedGaussianHead(BoxHead):
    """tanh of a Gaussian sample; deterministic: tanh of its mean (SAC, CrossQ). The network
    outputs ``[mean, log_std]``."""

    kind = "squashed_gaussian"
    numpy_output = "pi_mean"

    def act(self, out, explore, env_steps, env=0):
        mean, log_std = out[: self.action_dim], out[self.action_dim:]
        if not explore:
            return np.tanh(mean)
        return np.tanh(mean + np.exp(log_std) * self.rng.standard_normal(self.action_dim)).astype(
            np.float32)

    def finish(self, out):
        return np.tanh(out)

    def _deterministic(self, raw):
        return tf.tanh(raw[:, : self.action_dim])
