"""A user-style env whose reward turns NaN after a fixed number of steps ('tests._nan_env:...').

Every env instance counts its own steps across resets: the first ``NAN_AFTER`` steps have reward
0, every later step has reward NaN. With replay sampling, a NaN reward reaches the critic's loss
within a few updates, so the training loop's non-finite check fires reliably and early.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "BnrlNanRewardEnv-v0"
NAN_AFTER = 150


class NanRewardEnv(gym.Env[np.ndarray, np.ndarray]):
    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.steps_taken = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1.0, 1.0, size=3).astype(np.float32), {}

    def step(self, action):
        self.steps_taken += 1
        reward = 0.0 if self.steps_taken <= NAN_AFTER else float("nan")
        obs = self.np_random.uniform(-1.0, 1.0, size=3).astype(np.float32)
        return obs, reward, False, False, {}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=NanRewardEnv, max_episode_steps=25)
