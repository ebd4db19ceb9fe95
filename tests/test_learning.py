"""Real learning: DQN solves CartPole-v1, SAC swings Pendulum-v1 up, in the default suite.

A tiny training loop (make_env, act / observe / train_step, greedy evaluation on a separate env)
so that these tests depend only on the agents and envs, not on the training package.

Reproducibility: the agent seed fixes the initial weights, replay sampling and exploration, and
the env seeds fix the episodes, so a run is bit-for-bit repeatable (checked by rerunning).
"""

from __future__ import annotations

import time

import numpy as np

from bnrl.agents import ACTION_SPACES, make_agent
from bnrl.envs import make_env
from bnrl.training.cadence import Cadence


def evaluate(agent, env, episodes: int = 10) -> float:
    """Mean undiscounted return of the greedy policy (explore=False) over ``episodes``."""
    returns = []
    for _ in range(episodes):
        obs, _ = env.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, explore=False))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def train(algo: str, env_id: str, config: dict, seed: int, steps: int, eval_from: int,
          eval_every: int, stop_at: float | None = None):
    """Train for up to ``steps`` env steps; evaluate every ``eval_every`` steps from
    ``eval_from`` on. Returns (untrained return, [(step, mean return)], agent)."""
    env = make_env(env_id, seed=seed, agent=algo, agents=ACTION_SPACES)
    eval_env = make_env(env_id, seed=seed + 1000)
    agent = make_agent(algo, env.observation_space, env.action_space, config, seed)
    cadence = Cadence.of(agent.config, log_every=1)
    untrained = evaluate(agent, eval_env)
    history = []
    obs, _ = env.reset()
    for step in range(1, steps + 1):
        action = agent.act(obs, explore=True)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        # A time-limit truncation is stored as not terminated: it bootstraps.
        agent.observe(obs, action, reward, next_obs, terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        for _ in range(cadence.updates_due(step, len(agent.buffer))):
            agent.train_step()
        if step >= eval_from and step % eval_every == 0:
            history.append((step, evaluate(agent, eval_env)))
            if stop_at is not None and history[-1][1] >= stop_at:
                break
    env.close()
    eval_env.close()
    return untrained, history, agent


# RL Zoo's CartPole-v1 DQN (SB3 rl-baselines3-zoo hyperparams/dqn.yml). SB3 counts
# target_update_interval=10 in *env* steps and syncs during collection, so the target is frozen
# for each round of 128 gradient steps: 128 gradient steps here. (Syncing every 10 gradient steps
# instead was measured to never learn: greedy return 9.2-9.7 at every evaluation to 30k steps.)
DQN_CARTPOLE = dict(
    learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
    hidden=(256, 256), train_freq=256, gradient_steps=128, target_update_interval=128,
    exploration_steps=8000, exploration_final_eps=0.04)


def test_dqn_reaches_195_on_cartpole():
    """Trains until a 10-episode greedy evaluation (every 2500 steps from 10k) reaches 195, the
    CartPole-v0 "solved" bar, or 50k steps (RL Zoo's budget for 500) are used up.

    Early stopping because DQN on CartPole oscillates (also in SB3): runs reach 500 and later
    fall back (one measured run: 500 at 35k, 303 at 37.5k, 19 at 40k, 500 at 42.5k), so a final
    evaluation after a fixed budget would be a coin toss. Measured with exactly this loop and
    schedule on this 2-core CPU while it was shared with other jobs (load 4-5): first evaluation
    >= 195 at seed 0: 35k steps (500; 72 s), seed 1: 22.5k (217; 46 s), seed 2: 10k (500; 17 s),
    seed 3: 20k (500; 36 s), seed 4: 37.5k (227; 66 s). Seed 1 is the median: the 50k cap
    leaves 2.2x margin for it (1.3x for the slowest of the five). Untrained greedy: 9-107.
    lr 1e-3 instead of 2.3e-3 was no better (seeds 0-2: 27.5k, 22.5k, 30k).
    """
    start = time.time()
    untrained, history, agent = train("dqn", "CartPole-v1", DQN_CARTPOLE, seed=1, steps=50_000,
                                      eval_from=10_000, eval_every=2500, stop_at=195.0)
    print(f"dqn untrained {untrained:.1f}, history {history}, {time.time() - start:.0f} s")
    assert history and history[-1][1] >= 195.0, (untrained, history)
    assert untrained < 195.0  # the bar measures learning, not luck at initialization
    assert agent.updates_done > 0
    agent.close()


# RL Zoo's Pendulum-v1 SAC uses lr 1e-3 and [256, 256] for 20k steps; [64, 64] with batch 128
# learns as fast per step here at a fraction of the cost per update.
SAC_PENDULUM = dict(learning_rate=1e-3, batch_size=128, hidden=(64, 64), actor_hidden=(64, 64),
                    learning_starts=500)


def test_sac_reaches_minus_400_on_pendulum():
    """After 7000 env steps (= 6500 updates), the greedy policy's 10-episode mean return is
    >= -400 (a random policy gets about -1200 to -1500; -400 means it swings up most times).

    Measured with exactly this loop on this 2-core CPU (shared, load 4-5): return at 7000 steps
    for seeds 0-4: -218, -148, -157, -152, -183 (untrained -1218 to -1751), 22-27 s per run.
    Curves (evaluating every 1000 steps from 3k, seeds 0 / 1 / 2): -1281 / -493 / -842 at 3k,
    -111 / -670 / -151 at 4k, -133 / -155 / -399 at 5k, -160 / -146 / -176 at 6k, -150 / -166 /
    -142 at 7k, -153 / -531 / -169 at 8k: every seed is past -400 for good from 6k on except
    for one dip (seed 1 at 8k), so 7000 leaves margin on both sides.
    """
    start = time.time()
    untrained, history, agent = train("sac", "Pendulum-v1", SAC_PENDULUM, seed=0, steps=7000,
                                      eval_from=7000, eval_every=7000)
    print(f"sac untrained {untrained:.1f}, history {history}, {time.time() - start:.0f} s")
    assert untrained < -700.0  # far below the bar before training
    assert history[-1] == (7000, history[-1][1])
    assert history[-1][1] >= -400.0, (untrained, history)
    agent.close()
