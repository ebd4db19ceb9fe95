"""Throughput of bnrl agents, optionally against Stable-Baselines3 on the same CPU.

    python benchmarks/throughput.py                       # bnrl only
    python benchmarks/throughput.py --compare-sb3         # + SB3 SAC/TD3, sb3-contrib CrossQ
    python benchmarks/throughput.py --rss-updates 100000  # the 100k-update memory check

Per agent and critic normalization it prints: pure gradient updates/s (buffer filled with random
transitions, then N updates), full training-loop env steps/s (act + env step + store + one
update per step), the median latency of one deterministic action, peak RSS, and RSS growth over
``--rss-updates`` updates. It writes the same as JSON (``--json``).

How settings are matched with SB3 (``--compare-sb3``): the same env (Pendulum-v1), [256, 256]
actor and critics (CrossQ: [256, 256] critic for both, "equal width"), batch 256, Adam with the
agents' default learning rates (SAC 3e-4 with both; TD3 1e-3; CrossQ 1e-3 and betas (0.5, 0.999)),
one gradient step per env step, the same thread count (``torch.set_num_threads`` = TensorFlow's
intra-op threads = ``--threads``), SB3 in a process of its own (torch crashes in a process where
TensorFlow ran), learning_starts 0 with the same pre-filled buffer size, and
each measurement alternates bnrl and SB3 ``--repeats`` times so that machine noise hits both.
SB3's "pure updates" are ``model.train(gradient_steps=N, batch_size=256)`` after ``learn`` filled
its buffer; its full loop is ``learn(total_timesteps)``; its latency is ``predict(obs,
deterministic=True)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ENV = "Pendulum-v1"
FILL = 5_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------- bnrl
def bnrl_agent(name: str, norm: str, threads: int):
    from bnrl.agents import make_agent
    from bnrl.envs import make_env

    env = make_env(ENV, 0, agent=name)
    config = {"critic_norm": norm, "hidden": [256, 256], "actor_hidden": [256, 256],
              "batch_size": 256, "learning_starts": 0, "intra_op_threads": threads,
              "inter_op_threads": threads}
    if name == "crossq":
        config["actor_norm"] = "none"  # sb3-contrib's CrossQ at equal width; BN in critic only
    agent = make_agent(name, env.observation_space, env.action_space, config, seed=0)
    rng = np.random.default_rng(0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    for _ in range(FILL):
        agent.buffer.add(rng.standard_normal(obs_dim), rng.uniform(-1, 1, act_dim),
                         rng.standard_normal(), rng.standard_normal(obs_dim), False)
    return agent, env


def bnrl_updates(name, norm, threads, n):
    agent, env = bnrl_agent(name, norm, threads)
    for _ in range(50):
        agent.train_step()
    start = time.perf_counter()
    for _ in range(n):
        agent.train_step()
    rate = n / (time.perf_counter() - start)
    obs = np.zeros(env.observation_space.shape, np.float32)
    for _ in range(100):
        agent.act(obs)
    times = []
    for _ in range(1000):
        t = time.perf_counter()
        agent.act(obs)
        times.append(time.perf_counter() - t)
    ops = len(agent.graph.get_operations())
    agent.close()
    return rate, statistics.median(times) * 1e6, ops


def bnrl_loop(name, norm, threads, steps):
    agent, env = bnrl_agent(name, norm, threads)
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        action = agent.act(obs, explore=True)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        agent.observe(obs, action, reward, next_obs, terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        agent.train_step()
    rate = steps / (time.perf_counter() - start)
    agent.close()
    return rate


def bnrl_rss(name, norm, threads, updates):
    agent, _ = bnrl_agent(name, norm, threads)
    for _ in range(500):
        agent.train_step()
    before = rss_mb()
    for _ in range(updates):
        agent.train_step()
    after = rss_mb()
    agent.close()
    return before, after


# -------------------------------------------------------------------------------------- SB3
def sb3_model(name, threads):
    # SB3 imports tensorboard, which loads TensorFlow when installed; torch then segfaults in
    # Adam's constructor on this stack. SB3 runs in its own process with TensorFlow blocked.
    sys.modules["tensorflow"] = None
    import torch
    from stable_baselines3 import SAC, TD3

    torch.set_num_threads(threads)
    kwargs = dict(batch_size=256, learning_starts=0, train_freq=1, gradient_steps=1, seed=0,
                  verbose=0, device="cpu")
    if name == "sac":
        return SAC("MlpPolicy", ENV, policy_kwargs=dict(net_arch=[256, 256]),
                   learning_rate=3e-4, **kwargs)
    if name == "td3":
        return TD3("MlpPolicy", ENV, policy_kwargs=dict(net_arch=[256, 256]),
                   learning_rate=1e-3, **kwargs)
    from sb3_contrib import CrossQ

    return CrossQ("MlpPolicy", ENV, policy_kwargs=dict(net_arch=dict(pi=[256, 256],
                                                                     qf=[256, 256])),
                  learning_rate=1e-3, **kwargs)


def sb3_updates(name, threads, n):
    model = sb3_model(name, threads)
    model.learning_starts = FILL
    model.learn(FILL + 1)
    model.train(gradient_steps=50, batch_size=256)
    start = time.perf_counter()
    model.train(gradient_steps=n, batch_size=256)
    rate = n / (time.perf_counter() - start)
    obs = np.zeros(model.observation_space.shape, np.float32)
    times = []
    for _ in range(1000):
        t = time.perf_counter()
        model.predict(obs, deterministic=True)
        times.append(time.perf_counter() - t)
    return rate, statistics.median(times) * 1e6


def sb3_loop(name, threads, steps):
    model = sb3_model(name, threads)
    model.learning_starts = 0
    start = time.perf_counter()
    model.learn(steps)
    return steps / (time.perf_counter() - start)


def in_own_process(fn, *args):
    """Run ``fn`` in a fresh spawned process: torch segfaults (in Adam's constructor) in a
    process where TensorFlow is loaded, and separate processes share no thread pools."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ----------------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="sac,td3,crossq", help="comma list")
    parser.add_argument("--norms", default="none,batch,batch_renorm", help="critic norms")
    parser.add_argument("--updates", type=int, default=1500, help="timed updates per repeat")
    parser.add_argument("--loop-steps", type=int, default=1000, help="timed loop env steps")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rss-updates", type=int, default=0,
                        help="also measure RSS growth over this many updates (SAC, batch)")
    parser.add_argument("--compare-sb3", action="store_true")
    parser.add_argument("--json", default="throughput.json", help="output file")
    args = parser.parse_args(argv)
    agents, norms = args.agents.split(","), args.norms.split(",")
    if args.compare_sb3:
        try:
            import sb3_contrib  # noqa: F401
            import stable_baselines3  # noqa: F401
        except ImportError:
            print("--compare-sb3 needs: pip install '.[sb3]'", file=sys.stderr)
            return 2
    from bnrl.training.quiet import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    rows, results = [], {"machine": platform.processor() or platform.machine(),
                         "cpus": os.cpu_count(), "threads": args.threads,
                         "python": platform.python_version(), "tensorflow": tf.__version__,
                         "results": {}}
    for name in agents:
        for norm in norms:
            up, lat, loop, ops = [], [], [], 0
            sb_up, sb_lat, sb_loop = [], [], []
            for _ in range(args.repeats):
                rate, latency, ops = bnrl_updates(name, norm, args.threads, args.updates)
                up.append(rate)
                lat.append(latency)
                loop.append(bnrl_loop(name, norm, args.threads, args.loop_steps))
                if args.compare_sb3 and norm == norms[0]:
                    rate, latency = in_own_process(sb3_updates, name, args.threads, args.updates)
                    sb_up.append(rate)
                    sb_lat.append(latency)
                    sb_loop.append(in_own_process(sb3_loop, name, args.threads, args.loop_steps))
            entry = {"updates_per_s": up, "loop_steps_per_s": loop, "act_latency_us": lat,
                     "graph_ops": ops}
            if sb_up:
                entry.update(sb3_updates_per_s=sb_up, sb3_loop_steps_per_s=sb_loop,
                             sb3_act_latency_us=sb_lat)
            results["results"][f"{name}/{norm}"] = entry
            rows.append((name, norm, entry))
            print(f"{name:7s} {norm:13s} updates/s {statistics.median(up):7.1f} "
                  f"[{min(up):.0f}-{max(up):.0f}]  loop steps/s {statistics.median(loop):7.1f}  "
                  f"act {statistics.median(lat):6.0f} us  ops {ops}", flush=True)
    _print_table(rows, norms)
    if args.rss_updates:
        before, after = bnrl_rss("sac", "batch", args.threads, args.rss_updates)
        results["rss"] = {"updates": args.rss_updates, "before_mb": before, "after_mb": after,
                          "growth_pct": 100 * (after - before) / before}
        print(f"RSS sac/batch over {args.rss_updates} updates: {before:.0f} -> {after:.0f} MB "
              f"({100 * (after - before) / before:+.1f}%)")
    results["peak_rss_mb"] = peak_rss_mb()
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB")
    from bnrl.training.files import atomic_write

    atomic_write(args.json, json.dumps(results, indent=1))
    return 0


def _print_table(rows, norms) -> None:
    med = statistics.median
    print("\n| agent | critic norm | updates/s | loop env steps/s | act latency (us) | "
          "vs SB3 updates | vs SB3 loop | cost vs no-BN |")
    print("|---|---|---|---|---|---|---|---|")
    base = {}
    for name, norm, e in rows:
        if norm == "none":
            base[name] = med(e["updates_per_s"])
        sb = {n: e2 for n2, nm, e2 in rows for n in [n2] if nm == norms[0] and n2 == name}
        ref = sb.get(name, {})
        ratio_up = (f"{med(e['updates_per_s']) / med(ref['sb3_updates_per_s']):.2f}x"
                    if "sb3_updates_per_s" in ref else "-")
        ratio_loop = (f"{med(e['loop_steps_per_s']) / med(ref['sb3_loop_steps_per_s']):.2f}x"
                      if "sb3_loop_steps_per_s" in ref else "-")
        cost = (f"{100 * (1 - med(e['updates_per_s']) / base[name]):+.0f}%"
                if name in base and norm != "none" else "-")
        print(f"| {name} | {norm} | {med(e['updates_per_s']):.0f} | "
              f"{med(e['loop_steps_per_s']):.0f} | {med(e['act_latency_us']):.0f} | {ratio_up} | "
              f"{ratio_loop} | {cost} |")


if __name__ == "__main__":
    sys.exit(main())
