"""Throughput of bnrl's DQN on images, against SB3's and SBX's DQN on the same CPU.

    python benchmarks/dqn_throughput.py                               # bnrl only
    python benchmarks/dqn_throughput.py --compare-sb3 --compare-sbx   # + the peers

Two Q-networks: MinAtar's (Young & Tian 2019: 16 3x3 convolutions, 128 units) on
``MinAtar/Breakout-v1`` (10x10x4 booleans), and the Nature CNN (Mnih et al. 2015) on
``ALE/Pong-v5`` with bnrl's preprocessing (84x84x4 uint8); bnrl with ``critic_norm`` none, batch
(Keras' fused kernel on the conv layers) and layer. Per configuration: gradient updates/s with
one update per call and with many per call (bnrl: ``gradient_steps=K`` in one XLA-compiled
``sess.run``; SBX: ``train(gradient_steps=K)``, one jitted loop; SB3 has no such path), the same
per CPU-second, and env steps/s of the whole training loop (act, env step, store, an update
every 4th vector step, as the presets train) with 1 and with ``--n-envs`` sub-envs.

Matched settings: batch 32, Adam at 1e-4, Huber loss, no double Q (SB3's and SBX's DQN), one
network (the encoder's dense layer, then the Q-values), replay filled with the same number of
transitions first. SB3 gets MinAtar's network as a ``features_extractor_class`` with
``net_arch=[]``, SBX as a ``DQNPolicy`` whose ``build`` makes it; both take the Nature CNN as their
``CnnPolicy``. Replays hold ``--fill`` random transitions before updates are timed; bnrl's
stores each frame once, the peers' store obs and next_obs. Every configuration runs in a process
of its own (``throughput.in_own_process``), rounds alternate the order, and ratios
are medians of per-round ratios, as in ``benchmarks/throughput.py``, whose helpers this uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402
    _fmt,
    _spread,
    exit_unless_known,
    exit_unless_positive,
    exit_without_peers,
    in_own_process,
    ratio,
    timed,
)

NETWORKS = {"minatar": "MinAtar/Breakout-v1", "nature": "ALE/Pong-v5"}
NORMS = ("none", "batch", "layer")
BATCH, LEARNING_RATE, TRAIN_FREQ = 32, 1e-4, 4


@dataclass(frozen=True)
class Job:
    library: str  # "bnrl", "sb3" or "sbx"
    network: str  # a key of NETWORKS
    norm: str = "none"
    compiled: bool = False  # bnrl with xla_single_update=true (its default keeps conv nets plain)

    @property
    def key(self) -> str:
        return f"{self.library}/{self.network}/{self.norm}" + ("+xla" if self.compiled else "")


def jobs_of(networks, norms, libraries, compiled_bn: bool = False) -> list[Job]:
    """bnrl with each norm (and, with ``compiled_bn``, BN's single update XLA-compiled too), then
    each peer (no normalization: theirs have none), per network."""
    return [job for network in networks for job in (
        [Job("bnrl", network, norm) for norm in norms]
        + [Job("bnrl", network, norm, compiled=True) for norm in norms
           if compiled_bn and norm == "batch"]
        + [Job(library, network) for library in libraries])]


def _env(network: str, n_envs: int = 1):
    """bnrl's training env of ``network`` (``envs.vector`` for ``n_envs`` sub-envs); the peers
    get the same env (bnrl.envs loads no TensorFlow)."""
    from bnrl.envs import make_env, vector_env

    env_id = NETWORKS[network]
    if n_envs == 1:
        return make_env(env_id, 0, training=True)
    return vector_env(lambda seed: make_env(env_id, seed, training=True), list(range(n_envs)))


# ------------------------------------------------------------------------------------ bnrl
def bnrl_agent(job: Job, threads: int, gradient_steps: int = 1, n_envs: int = 1):
    from bnrl.agents import make_agent
    from bnrl.envs import frame_stack

    env = _env(job.network, n_envs)
    config = {"critic_norm": job.norm, "batch_size": BATCH, "learning_rate": LEARNING_RATE,
              "double_q": False, "loss": "huber", "buffer_size": 10_000, "learning_starts": 0,
              "train_freq": TRAIN_FREQ, "gradient_steps": gradient_steps,
              "intra_op_threads": threads, "inter_op_threads": threads,
              "xla_single_update": True if job.compiled else None}
    space = getattr(env, "single_observation_space", env.observation_space)
    actions = getattr(env, "single_action_space", env.action_space)
    agent = make_agent("dqn", space, actions, config, seed=0,
                       frames=frame_stack(NETWORKS[job.network]), n_envs=n_envs)
    return agent, env


def fill(agent, env, n: int) -> None:
    """``n`` transitions of random play in the agent's replay."""
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(n):
        action = int(rng.integers(env.action_space.n))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        agent.observe(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs


def bnrl_measure(job: Job, threads: int, updates: int, many: int, loop_steps: int,
                 n_envs: int, fill_steps: int) -> dict:
    agent, env = bnrl_agent(job, threads)
    fill(agent, env, fill_steps)
    for _ in range(20):
        agent.train_step()
    rate, cpu_rate = timed(agent.train_step, updates)
    out = {"updates_per_s": rate, "updates_per_cpu_s": cpu_rate}
    agent.close()
    agent, env = bnrl_agent(job, threads, gradient_steps=many)
    fill(agent, env, fill_steps)
    agent.train_steps(many)  # compiles
    rate, cpu_rate = timed(lambda: agent.train_steps(many), max(1, updates // many))
    out.update(many_per_s=rate * many, many_per_cpu_s=cpu_rate * many)
    agent.close()
    for n in (1, n_envs):
        out[f"loop_{n}_per_s"] = bnrl_loop(job, threads, loop_steps, n)
    return out


def bnrl_loop(job: Job, threads: int, steps: int, n_envs: int) -> float:
    """Env steps/s of act, env step, store and an update every ``TRAIN_FREQ`` vector steps."""
    agent, env = bnrl_agent(job, threads, n_envs=n_envs)
    vector = n_envs > 1
    obs, _ = env.reset(seed=0)
    obs = obs if vector else obs[None]

    def run(vector_steps):
        nonlocal obs
        for k in range(vector_steps):
            action = agent.act_batch(obs, explore=True)
            if vector:
                next_obs, reward, terminated, truncated, info = env.step(action)
                stored = next_obs.copy()
                for i in np.flatnonzero(terminated | truncated):
                    stored[i] = info["final_obs"][i]
                agent.observe_batch(obs, action, reward, stored, terminated, truncated)
            else:
                next_obs, reward, terminated, truncated, _ = env.step(int(action[0]))
                agent.observe(obs[0], action[0], reward, next_obs, terminated, truncated)
                next_obs = (env.reset()[0] if terminated or truncated else next_obs)[None]
            obs = next_obs
            if k % TRAIN_FREQ == 0 and len(agent.buffer) >= BATCH:
                agent.train_step()

    run(min(200, steps // n_envs))  # warm-up: the first updates allocate (and compile, with BN)
    start = time.perf_counter()
    run(steps // n_envs)
    rate = steps / (time.perf_counter() - start)
    agent.close()
    env.close()
    return rate


# ----------------------------------------------------------------------------- SB3 and SBX
def peer_model(job: Job, threads: int, fill_steps: int, n_envs: int = 1):
    """SB3's or SBX's DQN at the matched settings on bnrl's env of ``job.network``."""
    sys.modules["tensorflow"] = None  # as in throughput.peer_model: torch and TF do not mix
    if job.library == "sbx" and threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1")
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(threads)
    env = make_vec_env(lambda: _env(job.network), n_envs=n_envs)
    kwargs = dict(batch_size=BATCH, learning_rate=LEARNING_RATE, learning_starts=fill_steps,
                  train_freq=TRAIN_FREQ, gradient_steps=1, buffer_size=10_000, seed=0, verbose=0)
    if job.library == "sbx":
        import sbx

        policy = _sbx_minatar_policy() if job.network == "minatar" else "CnnPolicy"
        return sbx.DQN(policy, env, **kwargs)
    import stable_baselines3

    if job.network == "minatar":
        policy_kwargs = dict(features_extractor_class=_sb3_minatar_extractor(),
                             features_extractor_kwargs={}, net_arch=[])
        return stable_baselines3.DQN("MlpPolicy", env, policy_kwargs=policy_kwargs,
                                     device="cpu", **kwargs)
    return stable_baselines3.DQN("CnnPolicy", env, device="cpu", **kwargs)


def _sb3_minatar_extractor():
    """MinAtar's network for SB3: 16 3x3 convolutions, 128 units (the Q layer is SB3's)."""
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MinAtarCNN(BaseFeaturesExtractor):
        def __init__(self, observation_space):
            super().__init__(observation_space, 128)
            h, w, c = observation_space.shape
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(c, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                torch.nn.Linear(16 * (h - 2) * (w - 2), 128), torch.nn.ReLU())

        def forward(self, obs):
            return self.net(obs.float().permute(0, 3, 1, 2))

    return MinAtarCNN


def _sbx_minatar_policy():
    """MinAtar's network for SBX: a ``DQNPolicy`` whose ``build`` makes it."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from sbx.common.type_aliases import RLTrainState
    from sbx.dqn.policies import DQNPolicy

    class MinAtarQNetwork(nn.Module):
        n_actions: int

        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(x.astype(jnp.float32)))
            x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
            return nn.Dense(self.n_actions)(x)

    class MinAtarPolicy(DQNPolicy):
        def build(self, key, lr_schedule):
            key, qf_key = jax.random.split(key, 2)
            obs = jnp.array([self.observation_space.sample()])
            self.qf = MinAtarQNetwork(n_actions=int(self.action_space.n))
            params = self.qf.init({"params": qf_key}, obs)
            self.qf_state = RLTrainState.create(
                apply_fn=self.qf.apply, params=params, target_params=params,
                tx=self.optimizer_class(learning_rate=lr_schedule(1), **self.optimizer_kwargs))
            self.qf.apply = jax.jit(self.qf.apply)
            return key

    return MinAtarPolicy


def peer_measure(job: Job, threads: int, updates: int, many: int, loop_steps: int,
                 n_envs: int, fill_steps: int) -> dict:
    model = peer_model(job, threads, fill_steps)
    model.learn(fill_steps)  # only collects: SB3 trains once num_timesteps > learning_starts
    out = {}
    if job.library == "sbx":
        model.train(gradient_steps=1, batch_size=BATCH)  # compiles
        for _ in range(20):
            model.train(gradient_steps=1, batch_size=BATCH)
        rate, cpu_rate = timed(lambda: model.train(gradient_steps=1, batch_size=BATCH), updates)
        out.update(updates_per_s=rate, updates_per_cpu_s=cpu_rate)
        model.train(gradient_steps=many, batch_size=BATCH)
        rate, cpu_rate = timed(lambda: model.train(gradient_steps=many, batch_size=BATCH),
                               max(1, updates // many))
        out.update(many_per_s=rate * many, many_per_cpu_s=cpu_rate * many)
    else:  # SB3's train(gradient_steps=N) is a Python loop of N single updates
        model.train(gradient_steps=20, batch_size=BATCH)
        rate, cpu_rate = timed(lambda: model.train(gradient_steps=updates, batch_size=BATCH), 1)
        out.update(updates_per_s=rate * updates, updates_per_cpu_s=cpu_rate * updates)
    for n in (1, n_envs):
        model = peer_model(job, threads, fill_steps, n)
        model.learning_starts = BATCH
        model.learn(200 * n)  # compiles SBX's jitted functions before the clock starts
        start = time.perf_counter()
        model.learn(loop_steps, reset_num_timesteps=False)
        out[f"loop_{n}_per_s"] = loop_steps / (time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------------- driver
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=",".join(NETWORKS), help="comma list")
    parser.add_argument("--norms", default=",".join(NORMS), help="bnrl's critic norms")
    parser.add_argument("--updates", type=int, default=300, help="timed updates per round")
    parser.add_argument("--many", type=int, default=50, help="updates per many-updates call")
    parser.add_argument("--loop-steps", type=int, default=2_000, help="timed loop env steps")
    parser.add_argument("--n-envs", type=int, default=8, help="sub-envs of the second loop")
    parser.add_argument("--fill", type=int, default=2_000,
                        help="random transitions in the replay before updates are timed")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compare-sb3", action="store_true")
    parser.add_argument("--compare-sbx", action="store_true")
    parser.add_argument("--compiled-bn", action="store_true",
                        help="also time BN with its single update XLA-compiled "
                        "(xla_single_update=true), against the default plain graph")
    parser.add_argument("--json", default="dqn_throughput.json", help="output file")
    args = parser.parse_args(argv)
    args.networks, args.norms = args.networks.split(","), args.norms.split(",")
    exit_unless_known(parser, "network", args.networks, NETWORKS)
    exit_unless_known(parser, "norm", args.norms, NORMS)
    exit_unless_positive(parser, args, ("updates", "many", "loop_steps", "n_envs", "fill",
                                        "repeats", "threads"))
    exit_without_peers(parser, args, {"sb3": ("stable_baselines3",), "sbx": ("sbx",)})
    extras = {"minatar": "minatar", "nature": "ale_py"}
    for name in args.networks:
        if importlib.util.find_spec(extras[name]) is None:
            parser.exit(2, f"--networks {name} needs: pip install "
                        f"'.[{'minatar' if name == 'minatar' else 'atari'}]'\n")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from bnrl.common.files import atomic_write
    from bnrl.common.quiet import quiet_tensorflow

    quiet_tensorflow()
    libraries = [lib for lib in ("sb3", "sbx") if getattr(args, f"compare_{lib}")]
    jobs = jobs_of(args.networks, args.norms, libraries, args.compiled_bn)
    samples: dict[str, dict[str, list]] = {}
    started = time.time()
    measure_args = (args.threads, args.updates, args.many, args.loop_steps, args.n_envs,
                    args.fill)
    for repeat in range(args.repeats):
        for job in jobs if repeat % 2 == 0 else jobs[::-1]:
            # bnrl in its own process too: each job starts from the same clean state.
            fn = bnrl_measure if job.library == "bnrl" else peer_measure
            result = in_own_process(fn, job, *measure_args)
            for key, value in result.items():
                samples.setdefault(job.key, {}).setdefault(key, []).append(value)
            print(f"round {repeat + 1} {job.key}: " + ", ".join(
                f"{k} {v:.0f}" for k, v in result.items()), flush=True)
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "threads": args.threads, "load_average": os.getloadavg(),
               "minutes": (time.time() - started) / 60,
               "settings": {k: getattr(args, k) for k in ("updates", "many", "loop_steps",
                                                          "n_envs", "fill", "repeats")},
               "samples": samples, "ratios": ratio_rows(jobs, samples, args.n_envs)}
    print_tables(jobs, samples, results, args.n_envs)
    atomic_write(args.json, json.dumps(results, indent=1))
    return 0


COLUMNS = ("updates_per_s", "many_per_s", "updates_per_cpu_s", "loop_1_per_s", "loop_n_per_s")


def _column(s: dict, key: str, n_envs: int) -> list:
    return s.get(key.replace("loop_n", f"loop_{n_envs}"), [])


def ratio_rows(jobs, samples, n_envs: int) -> list[dict]:
    """bnrl (each norm) against each peer of its network, each norm against none, and a
    compiled BN update against the default one."""
    out = []
    for job in jobs:
        if job.library != "bnrl":
            continue
        mine = samples[job.key]
        others = [j for j in jobs if j.network == job.network and (
            j.library != "bnrl" or (j.norm == "none" and job.norm != "none")
            or (job.compiled and j.norm == job.norm and not j.compiled))]
        for other in others:
            theirs = samples[other.key]
            out.append({"bnrl": job.key, "against": other.key, **{
                key: ratio(_column(mine, key, n_envs), _column(theirs, key, n_envs))
                for key in COLUMNS}})
    return out


def print_tables(jobs, samples, results, n_envs: int) -> None:
    print(f"\n| library | network | norm | updates/s, 1 per call | many per call | per CPU-s, "
          f"1 per call | loop env steps/s, 1 env | {n_envs} envs |")
    print("|---|---|---|---|---|---|---|---|")
    for job in jobs:
        s = samples[job.key]
        cells = [_spread(v) if v else "-" for v in (_column(s, k, n_envs) for k in COLUMNS)]
        norm = job.norm + (", XLA single update" if job.compiled else "")
        print(f"| {job.library} | {job.network} | {norm} | {' | '.join(cells)} |")
    print("\nratios, median of per-round ratios [min-max] (issue 26 targets: updates/s >= 1.2x "
          "SBX; BN within 15% of none)")
    print(f"| bnrl | against | updates, 1 per call | many per call | per CPU-s | loop, 1 env | "
          f"loop, {n_envs} envs |")
    print("|---|---|---|---|---|---|---|")
    for r in results["ratios"]:
        print(f"| {r['bnrl'][5:]} | {r['against']} | "
              + " | ".join(_fmt(r[k]) for k in COLUMNS) + " |")
    print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs; {results['machine']} (only ratios of one run carry over)")


if __name__ == "__main__":
    sys.exit(main())
