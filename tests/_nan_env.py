"""User-style envs whose reward or observation turns NaN after a fixed number of steps
('tests._nan_env:...').

Every env instance counts its own steps across resets: the first ``NAN_AFTER`` steps are finite,
every later one is not. ``BnrlNanRewardEnv-v0`` returns reward NaN from then on: with replay
sampling, a NaN reward reaches the critic's loss within a few updates, so the loss check fires
reliably and early when the env-boundary check is off. ``BnrlNanObsEnv-v0`` returns NaN
observations (reward 0): 40% of a replay buffer held NaN rows while the losses stayed finite
before the env-boundary check (issue 25). The first non-finite value is the one of env step
``NAN_AFTER + 1``. ``BnrlNanRewardOneSeed-v0`` is the reward env for one seed only: an
instance whose ``reset`` was seeded with ``NAN_SEED`` turns NaN, every other stays finite (a
group's other seeds, and the eval env, seeded with the run's seed + 10000), as
tests/_failing_env.py does for a crash.
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


class NanObservationEnv(NanRewardEnv):
    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        if self.steps_taken > NAN_AFTER:
            obs = np.full(3, np.nan, np.float32)
        return obs, 0.0, terminated, truncated, info


class NanRewardForOneSeedEnv(NanRewardEnv):
    def __init__(self) -> None:
        super().__init__()
        self._nan = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:  # later resets (seed=None) keep the instance's verdict
            self._nan = seed == NAN_SEED
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward if self._nan else 0.0, terminated, truncated, info


OBS_ENV_ID = "BnrlNanObsEnv-v0"
ONE_SEED_ENV_ID = "BnrlNanRewardOneSeed-v0"
NAN_SEED = 1

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=NanRewardEnv, max_episode_steps=25)
if OBS_ENV_ID not in gym.registry:
    gym.register(id=OBS_ENV_ID, entry_point=NanObservationEnv, max_episode_steps=25)
if ONE_SEED_ENV_ID not in gym.registry:
    gym.register(id=ONE_SEED_ENV_ID, entry_point=NanRewardForOneSeedEnv, max_episode_steps=25)
