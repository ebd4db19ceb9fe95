"""A user-style environment module for the 'module:EnvId' tests; importing it registers it.

It deliberately differs from the built-in envs in the ways make_env must handle:
float64 observations and an asymmetric action range [0, 10].
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "BnrlToyEnv-v0"


class ToyEnv(gym.Env[np.ndarray, np.ndarray]):
    """The observation is the last action the env received, so tests can read it back."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-100.0, 100.0, shape=(2,), dtype=np.float64)
        self.action_space = spaces.Box(0.0, 10.0, shape=(1,), dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return self.np_random.uniform(-1.0, 1.0, size=2), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = float(np.asarray(action).reshape(-1)[0])
        return np.array([a, 0.0]), 0.0, False, False, {}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=ToyEnv, max_episode_steps=7)
