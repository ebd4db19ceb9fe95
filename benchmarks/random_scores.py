"""Mean return of uniformly random actions per environment: the 0 of normalized scores.

    python benchmarks/random_scores.py                     # the envs of every suite
    python benchmarks/random_scores.py --env Hopper-v5 --episodes 100

The figures in ``configs/suites.yaml`` (``random:``) were measured with this script: 100
episodes, ``env.action_space.sample()`` seeded with the episode index, the env's own time limit.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np


def random_return(env_id: str, episodes: int) -> tuple[float, float]:
    env = gym.make(env_id)
    returns = []
    for episode in range(episodes):
        env.reset(seed=episode)
        env.action_space.seed(episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns) / np.sqrt(episodes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", action="append", help="env id (repeatable; default: suites)")
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    if args.env:
        envs = args.env
    else:
        from bnrl.compare.suites import load_suites

        envs = list(dict.fromkeys(e for s in load_suites().values() for e in s.envs))
    for env_id in envs:
        mean, sem = random_return(env_id, args.episodes)
        print(f"{env_id:28s} {mean:10.1f} +- {sem:.1f} (standard error, {args.episodes} episodes)")


if __name__ == "__main__":
    main()
