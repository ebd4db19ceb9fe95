"""The deterministic policy's return over episodes: the one evaluation every bnrl run, export
and benchmark peer (``peers``) is measured by. TensorFlow-free, so that a peer library's worker,
which must not load TensorFlow, evaluates exactly as bnrl does."""

from __future__ import annotations

import numpy as np
from gymnasium.wrappers import RecordEpisodeStatistics

from bnrl.common.errors import NonFiniteValue

EVAL_SEED_OFFSET = 10_000
"""A run's eval env is made, and first reset, with the run's seed + this (``training.loop``,
and a peer library's run, ``peers``): evaluations see other episodes than training."""


def evaluate(agent, env, episodes: int) -> tuple[float, float]:
    """Mean and std of the return of the deterministic policy over ``episodes`` episodes.

    Args:
      agent: acts with ``explore=False`` (BN in inference mode); an ``ExportedPolicy`` too.
      env: an env used only for evaluation (not closed here).
      episodes: number of episodes.
    """
    # Returns are counted by gymnasium's own wrapper; it closes nothing and owns no resources.
    stats = RecordEpisodeStatistics(env, buffer_length=episodes)
    for _ in range(episodes):
        obs, _ = stats.reset()
        done = False
        while not done:
            obs, _, terminated, truncated, _ = stats.step(agent.act(obs, explore=False))
            done = terminated or truncated
    returns = np.array(stats.return_queue, dtype=np.float64)
    bad = returns[~np.isfinite(returns)]
    if bad.size:  # never a result: with the env-boundary check off, NaN rewards end up here
        raise NonFiniteValue(f"an evaluation episode returned {bad[0]}")
    return float(np.mean(returns)), float(np.std(returns))
