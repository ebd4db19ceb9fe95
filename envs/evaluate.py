"""The deterministic policy's return over episodes (optionally epsilon-greedy, for Q-network
agents): the one evaluation every bnrl run, export and benchmark peer (``peers``) is measured
by. TensorFlow-free, so that a peer library's worker, which must not load TensorFlow, evaluates
exactly as bnrl does."""

from __future__ import annotations

import numpy as np
from gymnasium.wrappers import RecordEpisodeStatistics

from bnrl.common.errors import NonFiniteValue

EVAL_SEED_OFFSET = 10_000
"""A run's eval env is made, and first reset, with the run's seed + this (``training.loop``,
and a peer library's run, ``peers``): evaluations see other episodes than training."""


def evaluate(agent, env, episodes: int, epsilon: float = 0.0,
             action_seed: int | tuple[int, ...] = 0) -> tuple[float, float]:
    """Mean and std of the return of the deterministic policy (epsilon-greedy with ``epsilon``)
    over ``episodes`` episodes.

    Args:
      agent: acts with ``explore=False`` (BN in inference mode); an ``ExportedPolicy`` too.
      env: an env used only for evaluation (not closed here).
      episodes: number of episodes.
      epsilon: at each step, the probability of a uniformly random action instead of the
        agent's (a ``Discrete`` action space only). Atari evaluations use 0.05 (Mnih et al.
        2015) or 0.001 (Dopamine): a greedy policy stuck in a state where its action changes
        nothing (Breakout without FIRE after a lost life) would otherwise play to the time limit.
      action_seed: seeds the random actions' generator (one uniform per step, and the action
        when it is below ``epsilon``), so that an evaluation is a function of the weights.
    """
    rng = np.random.default_rng(action_seed)
    # Returns are counted by gymnasium's own wrapper; it closes nothing and owns no resources.
    stats = RecordEpisodeStatistics(env, buffer_length=episodes)
    for _ in range(episodes):
        obs, _ = stats.reset()
        done = False
        while not done:
            if epsilon and rng.random() < epsilon:
                action = int(rng.integers(env.action_space.n))
            else:
                action = agent.act(obs, explore=False)
            obs, _, terminated, truncated, _ = stats.step(action)
            done = terminated or truncated
    returns = np.array(stats.return_queue, dtype=np.float64)
    bad = returns[~np.isfinite(returns)]
    if bad.size:  # never a result: with the env-boundary check off, NaN rewards end up here
        raise NonFiniteValue(f"an evaluation episode returned {bad[0]}")
    return float(np.mean(returns)), float(np.std(returns))
