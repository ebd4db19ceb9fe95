"""Why a plain BN critic fails: train/eval gap, Q vs Monte Carlo, statistics, actor gradients.

    python benchmarks/bn_diagnosis.py --agent td3 --env Pendulum-v1 --seed 1 --steps 10000 \
        --variant none: --variant batch:critic_norm=batch,critic_batch=separate,target=polyak,\
bootstrap_mode=inference,actor_loss_mode=inference --out diag/td3-s1
    python benchmarks/bn_diagnosis.py --plot diag/td3-s1 --plot-dir docs/bn-critics

Each ``--variant NAME:KEY=VALUE,...`` trains the agent with those agent settings on top of the
env preset of ``configs/`` (exactly what ``python run.py train --set KEY=VALUE`` resolves): same
seeds, same evaluation schedule and evaluation env seeding as the training loop, so the evaluation
returns are those of the matching ``run.py train`` command. Every ``--probe-every`` env steps it
measures, on the critic (first head) and a replay batch of ``batch_size``:

* ``gap_sa``, ``gap_next``, ``gap_pi``: mean |Q(batch statistics) - Q(moving statistics)| on
  ``(s, a)`` (what bnrl logs as ``bn_Q_train_eval_gap``), on ``(s', a')`` with ``a'`` the agent's
  next action (the bootstrap input) and on ``(s, pi(s))`` (the actor-loss input), each divided by
  mean |Q| (``rel_``);
* ``bias_sa``, ``bias_next``, ``bias_pi``, ``bias_target``: the same differences signed, mean of
  Q(moving statistics) - Q(batch statistics): does the inference-mode critic (and the target
  critic, on ``(s', a')``) rate these actions higher than the training-mode one?
* DQN: ``greedy_disagree``, the fraction of the batch's states whose greedy action differs
  between the two modes, and ``action_gap``, the mean gap between the best and second-best
  Q-value (inference mode): a train/eval gap larger than the action gap flips greedy actions;
* ``q_minus_mc``: Q in inference mode (the Q used to bootstrap and to train the actor) minus the
  discounted Monte Carlo return of the greedy policy from the same state-action, over the first
  states of 5 long rollouts (rollouts run ``tail`` steps past the last state used, so that the
  cut-off discounted tail is below 2% of the return's scale);
* ``shift_sa``, ``shift_next``: per BN layer, mean over units of |batch mean - moving mean| /
  moving std for the layer's inputs on ``(s, a)`` and on ``(s', a')`` (training-mode forward),
  averaged over layers; ``shift_sa_next``: the same between the two batches;
* actor-critic agents: the norm of the Q-part of the actor gradient with the critic in inference
  mode and in training mode (batch statistics of ``(s, pi(s))``), and the cosine between the two.

It also checks, as it goes, that this script's copy of the critic gives the agent's own Q on the
trained batch (the agent's ``losses/q_values``), and that a target network's BN statistics equal
the online ones right after a target update (``target_bn=copy``). Figures are written to
``OUT/diagnosis.json``; ``--plot`` draws one PNG per run directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bnrl.agents import ACTION_SPACES, make_agent  # noqa: E402
from bnrl.common.files import atomic_write  # noqa: E402
from bnrl.envs import make_env  # noqa: E402
from bnrl.envs.evaluate import EVAL_SEED_OFFSET  # noqa: E402
from bnrl.networks import bn_layers, keras, tf  # noqa: E402
from bnrl.training.cadence import Cadence  # noqa: E402
from bnrl.training.config import resolve  # noqa: E402
from bnrl.training.evaluation import evaluate  # noqa: E402

ROLLOUTS = 5
TAIL_WEIGHT = 0.02  # discounted weight of the part of a rollout cut off after the last state used


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        settings[key.strip()] = yaml.safe_load(value)
    return name, settings


# ------------------------------------------------------------------------------------ probe
class Probe:
    """A copy of the agent's critic (and actor) in a graph of its own, with the measuring ops.

    The agent's graph is finalized; the copy is rebuilt from the models' Keras configs and gets
    the agent's weights before every measurement. Next actions are those of the TD target
    without its noise: the target actor's (the online actor's without targets; SAC's mean
    action), or DQN's greedy action under the online network in inference mode.
    """

    def __init__(self, agent):
        self.agent = agent
        self.graph = tf.Graph()
        with self.graph.as_default():
            clone = keras.Model.from_config
            self.critic = clone(agent.networks.critics[0].get_config())
            sources = [agent.networks.critics[0]]
            self.actor = None
            if agent.networks.actors:
                self.actor = clone(agent.networks.actors[0].get_config())
                self.next_actor = clone(agent.networks.actors[0].get_config())
                target = getattr(agent.algorithm, "target_actor", None)
                sources += [agent.networks.actors[0], target or agent.networks.actors[0]]
            # The target critic: the TD target's bootstrap network when there is one.
            self.target = None
            if agent.networks.target_pairs:
                self.target = clone(agent.networks.target_pairs[0][1].get_config())
                sources.append(agent.networks.target_pairs[0][1])
            self.layers = bn_layers(self.critic)
            features = keras.Model(self.critic.inputs, [layer.input for layer in self.layers])
            f32 = tf.float32
            discrete = agent.head.action_space == "discrete"
            self.obs = tf.compat.v1.placeholder(f32, [None, agent.obs_dim])
            self.next_obs = tf.compat.v1.placeholder(f32, [None, agent.obs_dim])
            if discrete:
                self.action = tf.compat.v1.placeholder(tf.int64, [None])
                next_action = tf.argmax(self.critic(self.next_obs, training=False), axis=1)
                inputs, next_inputs = self.obs, self.next_obs
            else:
                self.action = tf.compat.v1.placeholder(f32, [None, agent.head.action_dim])
                next_action = self._policy(self.next_actor, self.next_obs)
                inputs, next_inputs = [self.obs, self.action], [self.next_obs, next_action]

            def q(out, action):
                if discrete:
                    return tf.gather(out, action, axis=1, batch_dims=1)
                return out[:, 0]

            outputs = {mode: self.critic(inputs, training=mode) for mode in (True, False)}
            if discrete:  # greedy actions and action gaps on the batch's states
                self.greedy = {mode: tf.argmax(out, axis=1) for mode, out in outputs.items()}
                top2 = tf.math.top_k(outputs[False], 2).values
                self.action_gap = tf.reduce_mean(top2[:, 0] - top2[:, 1])
            self.q = {mode: q(out, self.action) for mode, out in outputs.items()}
            # What the agent's losses/q_values averages: all heads, training mode.
            self.q_values = tf.reduce_mean(self.q[True] if discrete else outputs[True])
            self.q_next = {mode: q(self.critic(next_inputs, training=mode), next_action)
                           for mode in (True, False)}
            self.features = {"sa": features(inputs, training=True),
                             "next": features(next_inputs, training=True)}
            if self.target is not None:
                self.target_layers = bn_layers(self.target)
                target_features = keras.Model(self.target.inputs,
                                              [layer.input for layer in self.target_layers])
                self.target_q = {mode: q(self.target(next_inputs, training=mode), next_action)
                                 for mode in (True, False)}
                if self.target_layers:
                    self.features["target"] = target_features(next_inputs, training=True)
            if self.actor is not None:
                pi = self._policy(self.actor, self.obs)
                self.q_pi, self.grads = {}, {}
                for mode in (True, False):
                    self.q_pi[mode] = self.critic([self.obs, pi], training=mode)[:, 0]
                    grads = tf.gradients(-tf.reduce_mean(self.q_pi[mode]),
                                         self.actor.trainable_variables)
                    self.grads[mode] = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
            models = ([self.critic] + ([self.actor, self.next_actor] if self.actor else [])
                      + ([self.target] if self.target is not None else []))
            self.variables = [v for m in models for v in m.weights]
            self.values = [tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape)
                           for v in self.variables]
            self.load = tf.group(*[v.assign(p) for v, p in zip(self.variables, self.values,
                                                                strict=True)])
            self.sess = tf.compat.v1.Session(graph=self.graph)
            self.sess.run(tf.compat.v1.global_variables_initializer())
        self.graph.finalize()
        self.sources = [v for m in sources for v in m.weights]
        for mine, theirs in zip(self.variables, self.sources, strict=True):
            if mine.shape != theirs.shape or mine.name.split("/")[-1] != theirs.name.split("/")[-1]:
                raise RuntimeError(f"probe copy mismatch: {mine.name} vs {theirs.name}")

    def _policy(self, actor, obs):
        out = actor(obs, training=False)
        if self.agent.head.kind == "squashed_gaussian":  # Gaussian actor: the mean action
            return tf.tanh(out[:, : self.agent.head.action_dim])
        return out

    def sync(self) -> None:
        values = self.agent.sess.run(self.sources)
        self.sess.run(self.load, dict(zip(self.values, values, strict=True)))

    def q_inference(self, obs, action) -> np.ndarray:
        return self.sess.run(self.q[False], {self.obs: obs, self.action: action})


def layer_shift(agent, feats: dict) -> dict:
    """Standardized distances between batch and moving statistics of each BN layer's inputs."""
    moving = agent.sess.run([(layer.moving_mean, layer.moving_variance)
                             for layer in bn_layers(agent.networks.critics[0])])
    eps = agent.config.bn_epsilon
    out = {"shift_sa": [], "shift_next": [], "shift_sa_next": [], "logvar_sa": [],
           "logvar_next": []}
    for (mean, var), x_sa, x_next in zip(moving, feats["sa"], feats["next"], strict=True):
        std = np.sqrt(var + eps)
        m_sa, m_next = x_sa.mean(0), x_next.mean(0)
        out["shift_sa"].append(float(np.mean(np.abs(m_sa - mean) / std)))
        out["shift_next"].append(float(np.mean(np.abs(m_next - mean) / std)))
        out["shift_sa_next"].append(float(np.mean(np.abs(m_sa - m_next)
                                                  / np.sqrt(x_sa.var(0) + eps))))
        out["logvar_sa"].append(float(np.mean(np.abs(np.log((x_sa.var(0) + eps) / (var + eps))))))
        out["logvar_next"].append(float(np.mean(np.abs(np.log((x_next.var(0) + eps)
                                                              / (var + eps))))))
    if "target" in feats:
        # The target network's (copied or averaged) statistics vs its own inputs on (s', a').
        target = agent.networks.target_pairs[0][1]
        moving = agent.sess.run([(layer.moving_mean, layer.moving_variance)
                                 for layer in bn_layers(target)])
        out["shift_target"] = [float(np.mean(np.abs(x.mean(0) - mean) / np.sqrt(var + eps)))
                               for (mean, var), x in zip(moving, feats["target"], strict=True)]
        out["logvar_target"] = [float(np.mean(np.abs(np.log((x.var(0) + eps) / (var + eps)))))
                                for (mean, var), x in zip(moving, feats["target"], strict=True)]
    return {k: float(np.mean(v)) for k, v in out.items()} | {"per_layer": out}


def monte_carlo(agent, env, gamma: float, probe) -> dict:
    """Q (inference mode) vs discounted returns of the greedy policy, over ROLLOUTS rollouts."""
    tail = math.ceil(math.log(TAIL_WEIGHT) / math.log(gamma))
    horizon = env.spec.max_episode_steps or 1000
    q_all, g_all = [], []
    for _ in range(ROLLOUTS):
        obs, _ = env.reset()
        states, actions, rewards, ended = [], [], [], False
        for _ in range(horizon + tail):
            action = agent.act(obs, explore=False)
            states.append(obs)
            actions.append(action)
            obs, reward, terminated, _, _ = env.step(action)
            rewards.append(float(reward))
            if terminated:
                ended = True
                break
        returns = np.zeros(len(rewards))
        running = 0.0
        for t in range(len(rewards) - 1, -1, -1):
            running = rewards[t] + gamma * running
            returns[t] = running
        used = len(rewards) if ended else max(len(rewards) - tail, 1)
        used = min(used, horizon)
        q = probe.q_inference(np.asarray(states[:used], np.float32), np.asarray(actions[:used]))
        q_all.append(q)
        g_all.append(returns[:used])
    q, g = np.concatenate(q_all), np.concatenate(g_all)
    return {"q_inference": float(q.mean()), "mc_return": float(g.mean()),
            "q_minus_mc": float((q - g).mean()), "q_minus_mc_abs": float(np.abs(q - g).mean())}


def measure(agent, probe, rollout_env, gamma: float, batch: dict, checks: dict) -> dict:
    probe.sync()
    feed = {probe.obs: batch["obs"], probe.action: batch["action"],
            probe.next_obs: batch["next_obs"]}
    run = probe.sess.run
    q_tr, q_inf, qn_tr, qn_inf, q_values = run(
        [probe.q[True], probe.q[False], probe.q_next[True], probe.q_next[False], probe.q_values],
        feed)
    scale = max(float(np.mean(np.abs(q_inf))), 1e-6)
    out = {"q_abs": scale,
           "gap_sa": float(np.mean(np.abs(q_tr - q_inf))),
           "gap_next": float(np.mean(np.abs(qn_tr - qn_inf))),
           "bias_sa": float(np.mean(q_inf - q_tr)),
           "bias_next": float(np.mean(qn_inf - qn_tr))}
    if probe.layers:
        out.update(layer_shift(agent, run(probe.features, feed)))
    if agent.head.action_space == "discrete":
        greedy_tr, greedy_inf, action_gap = run(
            [probe.greedy[True], probe.greedy[False], probe.action_gap], feed)
        out["action_gap"] = float(action_gap)
        out["greedy_disagree"] = float(np.mean(greedy_tr != greedy_inf))
    if probe.target is not None:
        qt_tr, qt_inf = run([probe.target_q[True], probe.target_q[False]], feed)
        out["gap_target"] = float(np.mean(np.abs(qt_tr - qt_inf)))
        out["bias_target"] = float(np.mean(qt_inf - qt_tr))
        # What the TD target bootstraps from vs the online critic's Q at the same (s', a').
        out["target_minus_online"] = float(np.mean(qt_inf - qn_inf))
    if probe.actor is not None:
        qp_tr, qp_inf, g_tr, g_inf = run([probe.q_pi[True], probe.q_pi[False], probe.grads[True],
                                           probe.grads[False]], {probe.obs: batch["obs"]})
        out["gap_pi"] = float(np.mean(np.abs(qp_tr - qp_inf)))
        out["bias_pi"] = float(np.mean(qp_inf - qp_tr))
        out["grad_train"] = float(np.linalg.norm(g_tr))
        out["grad_inference"] = float(np.linalg.norm(g_inf))
        out["grad_cos"] = float(g_tr @ g_inf / max(np.linalg.norm(g_tr) * np.linalg.norm(g_inf),
                                                   1e-12))
    for key in ("gap_sa", "gap_next", "gap_pi", "gap_target", "bias_sa", "bias_next", "bias_pi",
                "bias_target"):
        if key in out:
            out["rel_" + key] = out[key] / scale
    out.update(monte_carlo(agent, rollout_env, gamma, probe))
    # The copy's training-mode Q on (s, a) is the agent's own (its critic pass sees (s, a) alone
    # with critic_batch=separate): a check on this script, not on the agent.
    if agent.config.critic_batch == "separate":
        tensor = agent.runner.scalars[agent.schedule.phase(0)]["losses/q_values"]
        fed = (batch["obs"], batch["action"], batch["reward"], batch["next_obs"], batch["done"])
        theirs = agent.sess.run(tensor, dict(zip(agent.batch_phs, fed, strict=True)))
        checks["copy_max_error"] = max(checks.get("copy_max_error", 0.0),
                                       abs(float(theirs) - float(q_values)))
    return out


# ------------------------------------------------------------------------------------ train
def train_variant(agent_name: str, env_id: str, seed: int, steps: int, settings: dict,
                  probe_every: int) -> dict:
    config = resolve(agent_name, env_id, train_overrides={"seed": seed, "steps": steps},
                     agent_overrides=settings)
    agent_config = config.agent_config
    env = make_env(env_id, seed, agent=agent_name, agents=ACTION_SPACES)
    eval_env = make_env(env_id, seed + EVAL_SEED_OFFSET, agent=agent_name, agents=ACTION_SPACES)
    rollout_env = make_env(env_id, seed + 30_000, agent=agent_name, agents=ACTION_SPACES)
    rollout_env.reset(seed=seed + 30_000)
    agent = make_agent(agent_name, env.observation_space, env.action_space, agent_config, seed)
    probe = Probe(agent)
    batch_rng = np.random.default_rng(seed + 77)
    resolved = {k: getattr(agent_config, k) for k in ("critic_batch", "target", "bootstrap_mode")}
    if agent.networks.actors:
        resolved["actor_loss_mode"] = agent_config.actor_loss_mode
        resolved["next_action_mode"] = agent_config.next_action_mode
    checks: dict = {"target_copy_max_error": 0.0}
    records, evals = [], []
    obs, _ = env.reset(seed=seed)
    eval_env.reset(seed=seed + EVAL_SEED_OFFSET)
    start = time.time()
    cadence = Cadence.of(agent_config, log_every=1)
    for step in range(1, steps + 1):
        action = agent.act(obs, explore=True)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        agent.observe(obs, action, reward, next_obs, terminated, truncated)
        if terminated or truncated:
            obs, _ = env.reset()
        else:
            obs = next_obs
        # The training loop's cadence; its updates run one at a time here, so that the target
        # copy can be checked after every sync.
        for _ in range(cadence.updates_due(step, len(agent.buffer))):
            synced = "target" in agent.schedule.steps_at(agent.updates_done)
            agent.train_step()
            if synced and agent_config.target_bn == "copy":
                check_target_copy(agent, checks)
        if step % config.eval_every == 0 or step == steps:
            evals.append((step, evaluate(agent, eval_env, config.eval_episodes)[0]))
        if step % probe_every == 0 and len(agent.buffer) >= agent_config.batch_size:
            # Not buffer.sample: that would move the replay RNG and change the run.
            stored = agent.buffer.transitions()
            idx = batch_rng.integers(0, len(agent.buffer), agent_config.batch_size)
            sample = {k: v[idx] for k, v in stored.items()}
            sample["done"] = sample.pop("terminated").astype(np.float32)
            record = {"step": step, **measure(agent, probe, rollout_env, agent_config.gamma,
                                              sample, checks)}
            records.append(record)
            print(f"  step {step}: gap {record['rel_gap_sa']:.3f} "
                  f"next {record['rel_gap_next']:.3f} Q-MC {record['q_minus_mc']:+.1f} "
                  f"shift {record.get('shift_sa', 0):.2f}/{record.get('shift_next', 0):.2f} "
                  f"cos {record.get('grad_cos', float('nan')):.2f} "
                  f"eval {evals[-1][1] if evals else float('nan'):.0f}", flush=True)
    agent.close()
    for e in (env, eval_env, rollout_env):
        e.close()
    return {"settings": settings, "resolved": resolved, "evals": evals, "probes": records,
            "final_return": evals[-1][1], "checks": checks, "seconds": time.time() - start}


def check_target_copy(agent, checks: dict) -> None:
    for online, target in agent.networks.target_pairs:
        pairs = [(a.moving_mean, b.moving_mean) for a, b in zip(bn_layers(online),
                                                                bn_layers(target), strict=True)]
        for x, y in agent.sess.run(pairs):
            checks["target_copy_max_error"] = max(checks["target_copy_max_error"],
                                                  float(np.abs(x - y).max()))


# ------------------------------------------------------------------------------------- plot
PANELS = [("eval return", "evaluation return (10 episodes)"),
          ("q_minus_mc", "Q (inference mode) - Monte Carlo return"),
          ("rel_gap_sa", "train/eval gap on (s, a), / mean |Q|"),
          ("shift_sa_next", "(s, a) vs (s', a') batch means, in std"),
          ("greedy_disagree", "states whose greedy action flips between modes")]


# The two references every figure compares against; the other variants take PALETTE in order.
STYLES = {"none": dict(color="black", linestyle="--"), "plain": dict(color="tab:red", lw=2)}
PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
           "tab:olive", "tab:cyan", "tab:gray"]


def plot(run_dirs: list[str], out_dir: str, only: list[str] | None = None) -> list[str]:
    """One PNG per agent, env and seed; ``only`` picks and orders the variants drawn."""
    runs: dict = {}  # directories of one agent, env and seed are drawn together
    for run_dir in run_dirs:
        data = json.loads((Path(run_dir) / "diagnosis.json").read_text())
        key = (data["agent"], data["env"], data["seed"])
        runs.setdefault(key, {**data, "variants": {}})["variants"].update(data["variants"])
    written = []
    for data in runs.values():
        variants = data["variants"]
        if only:
            variants = {name: variants[name] for name in only if name in variants}
        others = iter(PALETTE * 2)
        styles = {name: STYLES.get(name) or dict(color=next(others)) for name in variants}
        panels = [p for p in PANELS if p[0] == "eval return" or any(
            p[0] in r for v in variants.values() for r in v["probes"])]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.8, 3.2))
        for (key, title), ax in zip(panels, axes, strict=True):
            for name, result in variants.items():
                if key == "eval return":
                    xs, ys = zip(*result["evals"], strict=True)
                else:
                    pts = [(r["step"], r[key]) for r in result["probes"] if key in r]
                    if not pts:
                        continue
                    xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", ms=3, label=name, **styles[name])
            if key.startswith(("rel_gap", "shift")):
                ax.set_yscale("log")  # the first probes (statistics still at 0 / 1) dwarf the rest
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("env steps", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle(f"{data['agent']} on {data['env']}, seed {data['seed']}", fontsize=9)
        fig.tight_layout(rect=(0, 0, 0.86, 1))
        fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7)
        path = Path(out_dir) / f"{data['agent']}-{data['env']}-s{data['seed']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="td3")
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--probe-every", type=int, default=1000)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:KEY=VALUE,... agent settings of one variant (repeatable)")
    parser.add_argument("--out", help="directory for diagnosis.json")
    parser.add_argument("--plot", nargs="*",
                        help="diagnosis directories to plot instead of training (those of one "
                        "agent, env and seed share a figure)")
    parser.add_argument("--plot-dir", default=".", help="where --plot writes its PNGs")
    parser.add_argument("--plot-variants", help="comma-separated variants to draw, in order")
    args = parser.parse_args(argv)
    if args.plot:
        only = args.plot_variants.split(",") if args.plot_variants else None
        for path in plot(args.plot, args.plot_dir, only):
            print("wrote", path)
        return 0
    if not args.out or not args.variant:
        parser.error("--out and at least one --variant are needed to train")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "diagnosis.json"
    data = (json.loads(path.read_text()) if path.exists() else
            {"agent": args.agent, "env": args.env, "seed": args.seed, "steps": args.steps,
             "variants": {}})
    for text in args.variant:
        name, settings = parse_variant(text)
        if name in data["variants"] and data["variants"][name]["settings"] == settings:
            print(f"{name}: done already")
            continue
        print(f"{name}: {settings}", flush=True)
        data["variants"][name] = train_variant(args.agent, args.env, args.seed, args.steps,
                                               settings, args.probe_every)
        atomic_write(path, json.dumps(data, indent=1))
        result = data["variants"][name]
        print(f"{name}: final return {result['final_return']:.1f} "
              f"({result['seconds']:.0f} s) checks {result['checks']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
