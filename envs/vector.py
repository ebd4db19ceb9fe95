"""Vectorized training envs: ``n_envs`` sub-envs stepping together (gymnasium's vector API).

A run with ``n_envs > 1`` trains on ``gymnasium.vector.SyncVectorEnv`` (sub-envs stepped in turn
in this process) or ``AsyncVectorEnv`` (one process each, ``vector_env: async``), as SB3's
``DummyVecEnv`` / ``SubprocVecEnv`` and CleanRL do. Sub-envs reset in the same step their episode
ends (``AutoresetMode.SAME_STEP``, SB3's behaviour): the step returns the next episode's first
observation, and the ended episode's last one is ``info["final_obs"]``, which is what the replay
stores as that transition's ``next_obs`` (terminated and truncated per sub-env, so a time limit
still bootstraps). Each sub-env has its own ``RecordEpisodeStatistics`` (episode returns and
lengths per sub-env) behind bnrl's ``EnvBoundary``, exactly the wrappers of a single training env.

Async workers start from a ``forkserver`` process, not by forking the trainer: a fork of a process
whose TensorFlow runtime has started its thread pools can deadlock in the child.
"""

from __future__ import annotations

import functools

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import RecordEpisodeStatistics

from bnrl.envs.make import EnvBoundary, make_env

VECTOR_MODES = ("sync", "async")
"""``vector_env`` settings: sub-envs stepped in this process, or one process each."""


def training_env(env_id: str, agent: str, action_space: str, max_episode_steps: int | None,
                 check_finite: bool, seed: int) -> gym.Env:
    """One training sub-env as a run makes it: ``make_env(..., training=True)`` behind the env
    boundary, its episodes counted by ``RecordEpisodeStatistics``. Plain arguments only, so an
    async worker can make it from a pickled ``functools.partial`` without TensorFlow."""
    env = make_env(env_id, seed, agent=agent, agents={agent: action_space},
                   max_episode_steps=max_episode_steps, training=True)
    return RecordEpisodeStatistics(EnvBoundary(env, env_id, check_finite=check_finite))


def vector_env(make_one, seeds: list[int], mode: str = "sync") -> gym.vector.VectorEnv:
    """A vector env of ``make_one(seed)`` for each of ``seeds`` (``make_one`` picklable for
    ``async``), resetting each sub-env in the step its episode ends."""
    if mode not in VECTOR_MODES:
        raise ValueError(f"vector_env must be one of {', '.join(VECTOR_MODES)}, got {mode!r}")
    thunks = [functools.partial(make_one, seed) for seed in seeds]
    if mode == "async":
        return AsyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP,
                              context="forkserver")
    return SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
