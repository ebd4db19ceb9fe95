"""User-style environments for the env-checker tests; importing this module registers them.

``BnrlDtypeEnv-v0`` works but its ``step`` returns float64 observations from a float32 space,
which gymnasium's ``check_env`` warns about. ``BnrlUnseededEnv-v0`` ignores the seed of ``reset``
(it draws from numpy's global RNG), which fails ``check_env``: equal seeds must give equal
observations. bnrl trains on both (it casts observations to float32) and says so once.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DTYPE_ENV = "BnrlDtypeEnv-v0"
UNSEEDED_ENV = "BnrlUnseededEnv-v0"


class DtypeEnv(gym.Env[np.ndarray, np.ndarray]):
    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1.0, 1.0, size=3).astype(np.float32), {}

    def step(self, action):
        return self.np_random.uniform(-1.0, 1.0, size=3), 1.0, False, False, {}  # float64


class UnseededEnv(DtypeEnv):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.random.uniform(-1.0, 1.0, size=3).astype(np.float32), {}


for _id, _cls in ((DTYPE_ENV, DtypeEnv), (UNSEEDED_ENV, UnseededEnv)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls, max_episode_steps=20)
