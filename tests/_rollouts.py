"""Observations an env really produces, for tests that compare two ways of acting on them."""

from __future__ import annotations

import numpy as np


def random_observations(env, n: int = 100, seed: int = 7) -> np.ndarray:
    """The first ``n`` observations of ``env`` under random actions (episodes restart), stacked
    in the env's own dtype."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    rows = []
    while len(rows) < n:
        rows.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return np.asarray(rows)
