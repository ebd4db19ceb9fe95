"""Throughput of bnrl agents, optionally against Stable-Baselines3 and SBX on the same CPU.

    python benchmarks/throughput.py                       # bnrl only
    python benchmarks/throughput.py --compare-sb3         # + SB3 SAC/TD3, sb3-contrib CrossQ
    python benchmarks/throughput.py --compare-sbx         # + SBX (SB3 in JAX) SAC/TD3/CrossQ
    python benchmarks/throughput.py --rss-updates 100000  # the 100k-update memory check

Per configuration it measures: gradient updates/s with one update per call (buffer filled with
random transitions, then N calls), for bnrl and SBX also with many updates per call (bnrl:
``gradient_steps=K``, K updates in one ``sess.run`` of one XLA-compiled ``tf.while_loop``; SBX:
``train(gradient_steps=K)``, one jitted ``fori_loop`` over K updates), the same per CPU-second of
the measuring process (work done, which load from other processes inflates far less than wall
time), full training-loop env steps/s (act + env step + store + one update per step), the median
latency of one deterministic action, bnrl's graph op count and the compile time of the
many-updates path (bnrl's XLA loop; SBX's jitted update). It prints three tables: the
measurements, bnrl's ratios against its matched peers (the targets of issue 13 item 2), and what
a BN / Batch Renorm critic costs bnrl against no normalization; and writes all samples as JSON.

How settings are matched: the same env (Pendulum-v1), [256, 256] actor and critics (CrossQ:
[256, 256] critic too, "equal width"), two critics, batch 256, Adam at the agents' learning rates
(SAC 3e-4; TD3 1e-3; CrossQ 1e-3 with betas (0.5, 0.999)), one gradient step per env step,
learning_starts 0 with the same pre-filled buffer size (5000), and the same thread count
(``--threads``: TensorFlow's intra- and inter-op pools, ``torch.set_num_threads``; JAX uses the
whole CPU, limited to one thread with ``XLA_FLAGS`` when ``--threads 1``). CrossQ is compared like
with like: sb3-contrib's and SBX's default CrossQ put Batch Renorm in the actor too, so they are
matched with bnrl's ``actor_norm=batch_renorm``; bnrl with a Batch Renorm critic only is matched
with SBX's ``batch_norm_actor=False`` (sb3-contrib has one switch for both, so no such row). The
remaining architecture differences are small: SBX/sb3-contrib normalize the joint (state, action)
critic input and put the actor's norm after the activation, bnrl normalizes the state input and
puts the actor's norm before it. SAC and TD3 peers have no BN: they are matched with bnrl's
no-BN rows, and the BN rows' cost is the third table. SBX's arguments are the bnrl row's
resolved settings as ``bnrl.peers.sbx.arguments`` translates them for ``benchmark --peer sbx``
(so its TD3 explores with bnrl's Gaussian noise too), with learning_starts 0.

Every peer runs in a process of its own (torch crashes in a process where TensorFlow ran, and
separate processes share no thread pools), timed the same way after a warm-up that compiles
SBX's jitted functions for every ``policy_delay`` phase. Each of ``--repeats`` rounds measures
all configurations of one agent, in alternating order, so that machine noise hits all of them;
ratios are medians of the per-round ratios, [min-max] over rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ENV = "Pendulum-v1"
FILL = 5_000
WIDTH = [256, 256]
BATCH = 256
# Adam learning rates of the bnrl agents' defaults, given to every peer.
LEARNING_RATE = {"sac": 3e-4, "td3": 1e-3, "crossq": 1e-3}
AGENT_NAMES = tuple(LEARNING_RATE)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency_us(act, obs, calls: int = 1000) -> float:
    """Median wall time of one ``act(obs)`` after 100 warm-up calls (SBX compiles on the first)."""
    for _ in range(100):
        act(obs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        act(obs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


# ------------------------------------------------------------------------------ configurations
@dataclass(frozen=True)
class Row:
    """One bnrl configuration of the table."""

    agent: str
    critic_norm: str
    actor_norm: str = "none"

    @property
    def key(self) -> str:
        return f"bnrl/{self.agent}/{self.critic_norm}/{self.actor_norm}"


@dataclass(frozen=True)
class Peer:
    """One configuration of a peer library, run in its own process."""

    library: str  # "sb3" (SB3 and sb3-contrib) or "sbx"
    agent: str
    critic_norm: str = "none"
    actor_norm: str = "none"

    @property
    def key(self) -> str:
        return f"{self.library}/{self.agent}/{self.critic_norm}/{self.actor_norm}"


def bnrl_rows(agents, norms) -> list[Row]:
    """bnrl's rows: each agent with each critic norm and no actor norm, and CrossQ also as the
    peers' default (Batch Renorm in critic and actor)."""
    rows = [Row(agent, norm) for agent in agents for norm in norms]
    if "crossq" in agents and "batch_renorm" in norms:
        rows.append(Row("crossq", "batch_renorm", "batch_renorm"))
    return rows


def matched_peers(row: Row, libraries) -> list[Peer]:
    """The peer configurations that compute what ``row`` computes."""
    peers = []
    for library in libraries:
        if row.agent in ("sac", "td3"):
            if row.critic_norm == row.actor_norm == "none":
                peers.append(Peer(library, row.agent))
        elif row.critic_norm == "batch_renorm" and row.actor_norm == "batch_renorm":
            peers.append(Peer(library, "crossq", "batch_renorm", "batch_renorm"))
        elif row.critic_norm == "batch_renorm" and library == "sbx":
            peers.append(Peer(library, "crossq", "batch_renorm", "none"))
    return peers


# ------------------------------------------------------------------------------------- bnrl
def bnrl_agent(row: Row, threads: int, gradient_steps: int = 1):
    # bnrl (TensorFlow) is imported here, not at the top: the peers' processes import this
    # file too, and torch crashes in a process where TensorFlow ran.
    from bnrl.agents import ACTION_SPACES, make_agent
    from bnrl.envs import make_env

    env = make_env(ENV, 0, agent=row.agent, agents=ACTION_SPACES)
    agent = make_agent(row.agent, env.observation_space, env.action_space,
                       bnrl_config(row, threads, gradient_steps), seed=0)
    rng = np.random.default_rng(0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    # One stream whose next_obs is the following obs, as an env's is: the buffer stores each
    # observation once, and a stream that never chains would measure its side store instead.
    states = rng.standard_normal((FILL + 1, obs_dim))
    for k in range(FILL):
        agent.buffer.add(states[k], rng.uniform(-1, 1, act_dim), rng.standard_normal(),
                         states[k + 1], False)
    return agent, env


def timed(fn, n: int) -> tuple[float, float]:
    """(calls per wall second, calls per CPU second of this process) of ``n`` calls of ``fn``.

    CPU time is the work done (all threads of the process), which load from other processes on
    a shared machine inflates far less than wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def bnrl_measure(row: Row, threads: int, updates: int, loop_steps: int, many: int) -> dict:
    agent, env = bnrl_agent(row, threads)
    for _ in range(50):
        agent.train_step()
    rate, cpu_rate = timed(agent.train_step, updates)
    latency = latency_us(agent.act, np.zeros(env.observation_space.shape, np.float32))
    ops = len(agent.graph.get_operations())
    agent.close()
    return {"updates_per_s": rate, "updates_per_cpu_s": cpu_rate, "act_latency_us": latency,
            "graph_ops": ops, **bnrl_many(row, threads, updates, many),
            "loop_steps_per_s": bnrl_loop(row, threads, loop_steps)}


def bnrl_many(row: Row, threads: int, updates: int, many: int) -> dict:
    """The multi-update path: ``many`` gradient steps per ``sess.run`` (``gradient_steps`` =
    ``many``, XLA as the agents' default); its first call pays the compile."""
    agent, _ = bnrl_agent(row, threads, gradient_steps=many)
    start = time.perf_counter()
    agent.train_steps(many)
    compile_s = time.perf_counter() - start
    calls = max(1, updates // many)
    rate, cpu_rate = timed(lambda: agent.train_steps(many), calls)
    agent.close()
    return {"many_per_s": rate * many, "many_per_cpu_s": cpu_rate * many, "compile_s": compile_s}


def bnrl_loop(row: Row, threads: int, steps: int) -> float:
    agent, env = bnrl_agent(row, threads)
    obs, _ = env.reset(seed=0)

    def run(n):
        nonlocal obs
        for _ in range(n):
            action = agent.act(obs, explore=True)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            agent.observe(obs, action, reward, next_obs, terminated, truncated)
            obs = env.reset()[0] if terminated or truncated else next_obs
            agent.train_step()

    run(min(100, steps))  # compiles the XLA update before the clock starts, as the peers' do
    start = time.perf_counter()
    run(steps)
    rate = steps / (time.perf_counter() - start)
    agent.close()
    return rate


def bnrl_rss(threads: int, updates: int) -> tuple[float, float]:
    agent, _ = bnrl_agent(Row("sac", "batch"), threads)
    for _ in range(500):
        agent.train_step()
    before = rss_mb()
    for _ in range(updates):
        agent.train_step()
    after = rss_mb()
    agent.close()
    return before, after


# ----------------------------------------------------------------------------- SB3 and SBX
def bnrl_config(row: Row, threads: int, gradient_steps: int = 1) -> dict:
    """The settings of a bnrl row, over the agent's defaults (not an env preset's)."""
    return {"critic_norm": row.critic_norm, "actor_norm": row.actor_norm, "hidden": WIDTH,
            "actor_hidden": WIDTH, "batch_size": BATCH, "learning_starts": 0,
            "intra_op_threads": threads, "inter_op_threads": threads,
            "gradient_steps": gradient_steps}


def sbx_arguments(peer: Peer) -> dict:
    """SBX's arguments for ``peer``: those of the bnrl row it matches, translated as the
    benchmark's ``--peer sbx`` translates a run's (``bnrl.peers.sbx.arguments``). Computed here,
    in the process that may load TensorFlow, and handed to the peer's own process."""
    from bnrl.agents import agent_class, config_from_dict
    from bnrl.peers import sbx as sbx_peer

    row = Row(peer.agent, peer.critic_norm, peer.actor_norm)
    config = config_from_dict(agent_class(peer.agent).config_class,
                              bnrl_config(row, 1)).resolved()
    settings = {f"agent_config.{field.name}": getattr(config, field.name)
                for field in dataclasses.fields(config)}
    return sbx_peer.arguments(peer.agent, settings)[0]


def peer_model(peer: Peer, threads: int, sbx_kwargs: dict | None = None):
    """A fresh SB3 / sb3-contrib / SBX model of ``peer`` at the matched settings (SBX:
    ``sbx_kwargs``, from ``sbx_arguments``)."""
    # SB3 imports tensorboard, which loads TensorFlow when installed; torch then segfaults in
    # Adam's constructor on this stack. Peers run in their own process with TensorFlow blocked.
    sys.modules["tensorflow"] = None
    if peer.library == "sbx":
        from bnrl.peers import sbx as sbx_peer

        sbx_peer.jax_threads(threads)
        return sbx_peer.model(peer.agent, {**sbx_kwargs, "learning_starts": 0}, ENV, seed=0)
    import sb3_contrib
    import stable_baselines3
    import torch

    torch.set_num_threads(threads)
    classes = {"sac": stable_baselines3.SAC, "td3": stable_baselines3.TD3,
               "crossq": sb3_contrib.CrossQ}
    # SB3 defaults to two critics and Adam; sb3-contrib's CrossQ to Adam betas (0.5, 0.999).
    return classes[peer.agent](
        "MlpPolicy", ENV, policy_kwargs={"net_arch": dict(pi=WIDTH, qf=WIDTH)},
        batch_size=BATCH, learning_starts=0, train_freq=1, gradient_steps=1, seed=0, verbose=0,
        learning_rate=LEARNING_RATE[peer.agent], device="cpu")


def peer_measure(peer: Peer, threads: int, updates: int, loop_steps: int, many: int,
                 sbx_kwargs: dict | None = None) -> dict:
    """All measurements of one peer configuration (run in a process of its own)."""
    model = peer_model(peer, threads, sbx_kwargs)
    # learn() only collects (SB3 trains once num_timesteps > learning_starts): the first
    # train() below is then the one that compiles SBX's update.
    model.learning_starts = FILL
    model.learn(FILL)
    delay = getattr(model, "policy_delay", 1)
    out = {}
    if peer.library == "sbx":
        # SBX jits train() per gradient_steps and per policy-delay phase: compile all first.
        start = time.perf_counter()
        model.train(gradient_steps=1, batch_size=BATCH)
        out["compile_s"] = time.perf_counter() - start
        for _ in range(50):
            model.train(gradient_steps=1, batch_size=BATCH)
        out["updates_per_s"], out["updates_per_cpu_s"] = timed(
            lambda: model.train(gradient_steps=1, batch_size=BATCH), updates)
        for _ in range(delay):
            model.train(gradient_steps=many, batch_size=BATCH)
        calls = max(1, updates // many)
        rate, cpu_rate = timed(lambda: model.train(gradient_steps=many, batch_size=BATCH), calls)
        out["many_per_s"], out["many_per_cpu_s"] = rate * many, cpu_rate * many
    else:
        # SB3's train(gradient_steps=N) is a Python loop of N single updates.
        model.train(gradient_steps=50, batch_size=BATCH)
        rate, cpu_rate = timed(lambda: model.train(gradient_steps=updates, batch_size=BATCH), 1)
        out["updates_per_s"], out["updates_per_cpu_s"] = rate * updates, cpu_rate * updates
    obs = np.zeros(model.observation_space.shape, np.float32)
    out["act_latency_us"] = latency_us(lambda o: model.predict(o, deterministic=True), obs)
    out["loop_steps_per_s"] = peer_loop(peer, threads, loop_steps, sbx_kwargs)
    return out


def peer_loop(peer: Peer, threads: int, steps: int, sbx_kwargs: dict | None = None) -> float:
    model = peer_model(peer, threads, sbx_kwargs)
    model.learn(100)  # compiles SBX's jitted train and acting functions before the clock starts
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def in_own_process(fn, *args):
    """Run ``fn`` in a fresh spawned process: torch segfaults (in Adam's constructor) in a
    process where TensorFlow is loaded, and separate processes share no thread pools."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ----------------------------------------------------------------------------------- driver
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(AGENT_NAMES), help="comma list")
    parser.add_argument("--norms", default="none,batch,batch_renorm", help="critic norms")
    parser.add_argument("--updates", type=int, default=1500, help="timed updates per repeat")
    parser.add_argument("--many", type=int, default=100,
                        help="updates per call of the many-updates paths (bnrl and SBX)")
    parser.add_argument("--loop-steps", type=int, default=1000, help="timed loop env steps")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rss-updates", type=int, default=0,
                        help="also measure RSS growth over this many updates (SAC, batch)")
    parser.add_argument("--compare-sb3", action="store_true")
    parser.add_argument("--compare-sbx", action="store_true")
    parser.add_argument("--json", default="throughput.json", help="output file")
    args = parser.parse_args(argv)
    args.agents, args.norms = args.agents.split(","), args.norms.split(",")
    from bnrl.common.quiet import quiet_tensorflow

    quiet_tensorflow()  # after parsing, so that --help stays instant
    from bnrl.networks import NORM_KINDS

    exit_unless_known(parser, "agent", args.agents, AGENT_NAMES)
    exit_unless_known(parser, "norm", args.norms, NORM_KINDS)
    exit_unless_positive(parser, args, ("updates", "many", "loop_steps", "repeats", "threads"))
    exit_without_peers(parser, args, {"sb3": ("stable_baselines3", "sb3_contrib"),
                                      "sbx": ("sbx",)})
    return args


def exit_unless_known(parser, what: str, names, accepted) -> None:
    """Exit 2 with one line when one of ``names`` (of a comma-list flag) is not ``accepted``."""
    for name in names:
        if name not in accepted:
            parser.exit(2, f"unknown {what} '{name}': use {', '.join(accepted)}\n")


def exit_unless_positive(parser, args, flags) -> None:
    """Exit 2 with one line when one of the integer ``flags`` is below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            parser.exit(2, f"--{flag.replace('_', '-')} must be >= 1\n")


def exit_without_peers(parser, args, needs: dict) -> None:
    """Exit 2 with the install command when ``--compare-LIB`` is given without LIB's modules
    (``needs``: library -> modules)."""
    for library, modules in needs.items():
        if getattr(args, f"compare_{library}") and not all(
                importlib.util.find_spec(m) for m in modules):
            parser.exit(2, f"--compare-{library} needs: pip install '.[{library}]'\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    from bnrl.common.files import atomic_write

    libraries = [lib for lib in ("sb3", "sbx") if getattr(args, f"compare_{lib}")]
    rows = bnrl_rows(args.agents, args.norms)
    samples: dict[str, dict[str, list]] = {}
    started = time.time()
    for name in args.agents:
        agent_rows = [row for row in rows if row.agent == name]
        peers = list(dict.fromkeys(p for row in agent_rows for p in matched_peers(row, libraries)))
        jobs = agent_rows + peers
        for repeat in range(args.repeats):
            for job in jobs if repeat % 2 == 0 else jobs[::-1]:
                if isinstance(job, Row):
                    result = bnrl_measure(job, args.threads, args.updates, args.loop_steps,
                                          args.many)
                else:
                    result = in_own_process(peer_measure, job, args.threads, args.updates,
                                            args.loop_steps, args.many,
                                            sbx_arguments(job) if job.library == "sbx" else None)
                for key, value in result.items():
                    samples.setdefault(job.key, {}).setdefault(key, []).append(value)
        for job in jobs:
            print(_measurement_line(job.key, samples[job.key]), flush=True)
    results = {"machine": cpu_model(), "cpus": os.cpu_count(),
               "threads": args.threads, "python": platform.python_version(),
               "tensorflow": tf.__version__, "versions": _peer_versions(libraries),
               "load_average": os.getloadavg(), "minutes": (time.time() - started) / 60,
               "settings": {k: getattr(args, k) for k in ("updates", "many", "loop_steps",
                                                          "repeats")},
               "samples": samples,
               "ratios": ratio_rows(rows, libraries, samples),
               "bn_cost": bn_cost_rows(rows, samples)}
    print_tables(rows, libraries, samples, results)
    if args.rss_updates:
        before, after = bnrl_rss(args.threads, args.rss_updates)
        results["rss"] = {"updates": args.rss_updates, "before_mb": before, "after_mb": after,
                          "growth_pct": 100 * (after - before) / before}
        print(f"RSS sac/batch over {args.rss_updates} updates: {before:.0f} -> {after:.0f} MB "
              f"({100 * (after - before) / before:+.1f}%)")
    results["peak_rss_mb"] = peak_rss_mb()
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB; load average at the end "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(only ratios from one run carry over)")
    atomic_write(args.json, json.dumps(results, indent=1))
    return 0


def _peer_versions(libraries) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = {"sb3": ["stable-baselines3", "sb3-contrib", "torch"],
             "sbx": ["sbx-rl", "jax", "flax", "optax"]}
    out = {}
    for library in libraries:
        for name in names[library]:
            try:
                out[name] = version(name)
            except PackageNotFoundError:
                out[name] = None
    return out


# ----------------------------------------------------------------------------------- tables
def _spread(values) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def _measurement_line(key: str, s: dict) -> str:
    parts = [f"{key:38s} updates/s {_spread(s['updates_per_s'])}"]
    if "many_per_s" in s:
        parts.append(f"many/call {_spread(s['many_per_s'])}")
    parts.append(f"loop {_spread(s['loop_steps_per_s'])}")
    parts.append(f"act {statistics.median(s['act_latency_us']):.0f} us")
    if "graph_ops" in s:
        parts.append(f"ops {s['graph_ops'][-1]}")
    if "compile_s" in s:
        parts.append(f"compile {statistics.median(s['compile_s']):.1f} s")
    return "  ".join(parts)


def ratio(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """Median, min and max of the per-round ratios a[i] / b[i] (rounds alternate, so the
    ratio of one round compares measurements taken close together)."""
    if not a or not b:
        return None
    per_round = [x / y for x, y in zip(a, b, strict=True)]
    return statistics.median(per_round), min(per_round), max(per_round)


def ratio_rows(rows, libraries, samples) -> list[dict]:
    """bnrl against each matched peer: per call, many per call, loop, action latency."""
    out = []
    for row in rows:
        mine = samples[row.key]
        for peer in matched_peers(row, libraries):
            theirs = samples[peer.key]
            out.append({
                "bnrl": row.key, "peer": peer.key,
                "per_call": ratio(mine["updates_per_s"], theirs["updates_per_s"]),
                # SB3 has no many-updates path; None prints as "-".
                "many": ratio(mine.get("many_per_s", []), theirs.get("many_per_s", [])),
                "per_call_cpu": ratio(mine["updates_per_cpu_s"], theirs["updates_per_cpu_s"]),
                "many_cpu": ratio(mine.get("many_per_cpu_s", []),
                                  theirs.get("many_per_cpu_s", [])),
                "bnrl_per_call_vs_peer_many": ratio(mine["updates_per_s"],
                                                    theirs.get("many_per_s", [])),
                "loop": ratio(mine["loop_steps_per_s"], theirs["loop_steps_per_s"]),
                "act_latency": ratio(mine["act_latency_us"], theirs["act_latency_us"]),
            })
    return out


def bn_cost_rows(rows, samples) -> list[dict]:
    """Share of updates/s (and loop steps/s) a normalized critic costs against none."""
    out = []
    for row in rows:
        base = samples.get(Row(row.agent, "none").key)
        if row.critic_norm == "none" or row.actor_norm != "none" or base is None:
            continue
        mine = samples[row.key]
        costs = {}
        for name, key in (("updates_cost", "updates_per_s"), ("many_cost", "many_per_s"),
                          ("loop_cost", "loop_steps_per_s")):
            r = ratio(mine.get(key, []), base.get(key, []))
            costs[name] = [1 - x for x in (r[0], r[2], r[1])] if r else None
        out.append({"bnrl": row.key, **costs})
    return out


def _fmt(r, target: str = "") -> str:
    if r is None:
        return "-"
    return f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]{target}"


def _cpu(s: dict, key: str) -> str:
    return f"{statistics.median(s[key]):.0f}" if key in s else "-"


def _busy(s: dict, rate: str, cpu_rate: str) -> str:
    """Cores the process kept busy (CPU seconds per wall second, all its threads), median over
    rounds: where the second core goes (issue 31)."""
    if cpu_rate not in s:
        return "-"
    return f"{statistics.median(w / c for w, c in zip(s[rate], s[cpu_rate], strict=True)):.2f}"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows: the tables
    name the machine kind, since ratios differ between kinds (issue 31)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_tables(rows, libraries, samples, results) -> None:
    med = statistics.median
    print(f"\n{results['machine']}, {results['cpus']} CPUs, {results['threads']} threads")
    print("| library | agent | critic norm | actor norm | updates/s, 1 per call | "
          "updates/s, many per call | updates per CPU-s, 1 / many | cores busy, 1 / many | "
          "loop env steps/s | act latency (us) | ops | compile (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, s in samples.items():
        library, agent, critic, actor = key.split("/")
        many = _spread(s["many_per_s"]) if "many_per_s" in s else "-"
        ops = str(s["graph_ops"][-1]) if "graph_ops" in s else "-"
        compile_s = f"{med(s['compile_s']):.1f}" if "compile_s" in s else "-"
        print(f"| {library} | {agent} | {critic} | {actor} | {_spread(s['updates_per_s'])} | "
              f"{many} | {_cpu(s, 'updates_per_cpu_s')} / {_cpu(s, 'many_per_cpu_s')} | "
              f"{_busy(s, 'updates_per_s', 'updates_per_cpu_s')} / "
              f"{_busy(s, 'many_per_s', 'many_per_cpu_s')} | "
              f"{_spread(s['loop_steps_per_s'])} | {med(s['act_latency_us']):.0f} | {ops} | "
              f"{compile_s} |")
    if results["ratios"]:
        print("\nbnrl / peer, median of per-round ratios [min-max]; issue 13 targets vs SBX: "
              "per call >= 1.2x, many per call >= 1.0x, loop >= 1.2x, action latency <= 1.0x")
        print("| bnrl | peer | updates, 1 per call | updates, many per call | bnrl 1 per call "
              "vs peer many | per CPU-s, 1 / many | loop env steps | action latency (lower is "
              "better) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results["ratios"]:
            cpu = (f"{r['per_call_cpu'][0]:.2f}x / "
                   f"{r['many_cpu'][0]:.2f}x" if r["many_cpu"] else f"{r['per_call_cpu'][0]:.2f}x")
            print(f"| {r['bnrl'][5:]} | {r['peer']} | {_fmt(r['per_call'])} | {_fmt(r['many'])} "
                  f"| {_fmt(r['bnrl_per_call_vs_peer_many'])} | {cpu} | {_fmt(r['loop'])} | "
                  f"{_fmt(r['act_latency'])} |")
    if results["bn_cost"]:
        print("\nWhat a normalized critic costs bnrl against none (issue 13 targets: BN <= 10%, "
              "Batch Renorm <= 15%), median of per-round costs [min-max]")
        print("| bnrl | updates/s cost, 1 per call | many per call | loop env steps/s |")
        print("|---|---|---|---|")
        for r in results["bn_cost"]:
            cells = ["-" if c is None else f"{100 * c[0]:.0f}% [{100 * c[1]:.0f}-{100 * c[2]:.0f}]"
                     for c in (r["updates_cost"], r["many_cost"], r["loop_cost"])]
            print(f"| {r['bnrl'][5:]} | {' | '.join(cells)} |")

if __name__ == "__main__":
    sys.exit(main())
