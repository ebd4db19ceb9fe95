"""SBX (Stable-Baselines3 in JAX, github.com/araffin/sbx) as the peer of bnrl's SAC, TD3 and
CrossQ (``benchmark --peer sbx``, issue 30 item 4).

``arguments(agent, settings)`` translates a run's resolved bnrl settings into SBX's constructor
arguments, and lists what SBX does differently that no argument can change; a setting SBX cannot
take at all refuses the variant (``Unmatched``). ``model`` builds SBX's model from them (the
throughput benchmark's peers too), ``run`` trains and evaluates one run in a process of its own
that blocks TensorFlow: SBX imports SB3 and so torch, whose Adam crashes in a process where
TensorFlow ran (benchmarks/throughput.py). SBX's own JAX training did run beside TensorFlow when
tried, but a process of its own also keeps the two libraries' thread pools and memory apart.

The run is evaluated as ``training.loop`` evaluates bnrl's: the deterministic policy, over
``eval_episodes`` episodes of one eval env made with the run's seed + ``EVAL_SEED_OFFSET`` and
reset with that seed once, every ``eval_every`` env steps and at the end, by the same
``envs.evaluate``. Every ``checkpoint_every`` env steps and at the end the run saves SBX's model,
its replay buffer and the evaluations so far (``checkpoint-<step>/``, written whole before the
previous one goes); a rerun of an interrupted run, or of a finished one with a larger budget,
goes on from there as bnrl's runs do, its episode in progress started anew.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from bnrl.common.files import atomic_directory, atomic_write
from bnrl.common.processes import die_with_parent
from bnrl.envs import EnvBoundary, make_env, training_env
from bnrl.envs.evaluate import EVAL_SEED_OFFSET, evaluate

NAME = "sbx"
MODULE = "sbx"
"""What ``import`` finds when SBX is installed."""
EXTRA = "sbx"
"""The extra of pyproject.toml that installs SBX."""
DISTRIBUTIONS = ("sbx-rl", "jax", "flax", "optax", "stable_baselines3")
"""Packages whose versions a peer run records."""
AGENTS = ("sac", "td3", "crossq")
"""bnrl agents SBX implements as bnrl does (SBX's DQN has neither bnrl's Q-network options nor
its image encoders; PQN it lacks)."""
ACTION_SPACE = "box"
"""The action space of every agent of ``AGENTS`` (``agents.ACTION_SPACES``)."""
PLAIN_BN_WARMUP = 2**31 - 1
"""SBX's Batch Renorm warm-up for bnrl's plain BN: while warming up it is plain BN (r = 1,
d = 0), and no run reaches this many updates."""
_AGENT = "agent_config."


class Unmatched(ValueError):
    """A bnrl setting SBX's implementation of the agent cannot take: the variant has no peer."""


def arguments(agent: str, settings: dict) -> tuple[dict, list[str]]:
    """SBX's constructor arguments for a bnrl run of ``agent`` at ``settings``, and what SBX then
    still does differently from bnrl.

    Args:
      agent: the bnrl agent the run trains (``sac``, ``td3``, ``crossq``).
      settings: the run's resolved settings, flat (``compare.results.deciding_settings``:
        ``agent_config.x`` keys beside the train keys).

    Returns:
      ``(kwargs, differences)``: JSON-able keyword arguments of SBX's class (``model`` turns them
      into objects), and one text per difference, each naming SBX's choice and bnrl's.

    Raises:
      Unmatched: one line naming the setting SBX cannot take.
    """
    if agent not in AGENTS:
        raise Unmatched(f"SBX implements bnrl's {', '.join(AGENTS)}, not {agent}")
    c = {k.removeprefix(_AGENT): v for k, v in settings.items() if k.startswith(_AGENT)}
    if settings.get("n_envs", 1) != 1:
        raise Unmatched(f"n_envs={settings['n_envs']}: the SBX peer trains on one env")
    _require(c, "network", "mlp", "SBX's SimBa policies are not bnrl's SimBa")
    _require(c, "actor_network", "mlp", "SBX's SimBa policies are not bnrl's SimBa")
    policy_kwargs = {"net_arch": {"pi": list(c["actor_hidden"]), "qf": list(c["hidden"])},
                     "n_critics": c["n_critics"], "optimizer_kwargs": {"b1": c["adam_beta1"]}}
    lr = c["learning_rate"]
    kwargs = {"learning_rate": c.get("actor_learning_rate") or lr, "qf_learning_rate": lr,
              "buffer_size": c["buffer_size"], "learning_starts": c["learning_starts"],
              "batch_size": c["batch_size"], "gamma": c["gamma"], "train_freq": c["train_freq"],
              "gradient_steps": c["gradient_steps"], "policy_delay": c["policy_delay"],
              "policy_kwargs": policy_kwargs}
    differences = ["weights initialized by flax's default (LeCun normal kernels; bnrl: Keras' "
                   "Glorot uniform)"]
    if agent == "crossq":
        differences += _crossq(c, policy_kwargs)
    else:
        differences += _with_target(c, kwargs, policy_kwargs)
    if agent == "td3":
        differences += _td3(c, kwargs)
    else:
        kwargs["ent_coef"] = (f"auto_{c['init_alpha']}" if c["autotune_alpha"]
                              else float(c["init_alpha"]))
        kwargs["target_entropy"] = ("auto" if c["target_entropy"] is None
                                    else float(c["target_entropy"]))
        differences.append("the actor's log std clipped to [-20, 2] (bnrl: squashed smoothly "
                           "into [-5, 2])")
        if c["autotune_alpha"] and c["adam_beta1"] != 0.9:
            differences.append(f"the temperature's Adam beta1 0.9 (bnrl: adam_beta1 "
                               f"{c['adam_beta1']}, as for the networks)")
    return kwargs, differences


def _require(c: dict, key: str, value, why: str) -> None:
    if c.get(key, value) != value:
        raise Unmatched(f"{key}={c[key]}: {why} (the SBX peer needs {key}={value})")


def _with_target(c: dict, kwargs: dict, policy_kwargs: dict) -> list[str]:
    """SAC's and TD3's settings: target networks, a critic without BN (SBX's DroQ-style
    LayerNorm critic for ``critic_norm=layer``), an actor without a norm."""
    if c["critic_norm"] not in ("none", "layer"):
        raise Unmatched(f"critic_norm={c['critic_norm']}: SBX's SAC and TD3 critics have no "
                        "BN (CrossQ's has: compare the crossq agent)")
    _require(c, "actor_norm", "none", "SBX's SAC and TD3 actors have no norm")
    _require(c, "target", "polyak", "SBX's SAC and TD3 have target networks")
    kwargs["tau"] = c["tau"]
    if c["critic_norm"] == "none":
        return []
    _require(c, "critic_input_norm", False, "SBX's LayerNorm critic leaves its input as it is")
    _require(c, "critic_norm_position", "pre_activation",
             "SBX's LayerNorm critic normalizes before each activation")
    policy_kwargs["layer_norm"] = True
    return [f"LayerNorm epsilon 1e-6 (flax's; bnrl: bn_epsilon {c['bn_epsilon']})"]


def _crossq(c: dict, policy_kwargs: dict) -> list[str]:
    """CrossQ's settings: Batch Renorm (or plain BN: Batch Renorm that never leaves its warm-up)
    in the critic and optionally the actor, one joint critic pass, no target network."""
    norm = c["critic_norm"]
    if norm not in ("batch_renorm", "batch"):
        raise Unmatched(f"critic_norm={norm}: SBX's CrossQ critic has Batch Renorm")
    if c["actor_norm"] not in ("none", norm):
        raise Unmatched(f"actor_norm={c['actor_norm']}: SBX's CrossQ actor has the critic's "
                        f"norm ({norm}) or none")
    for key, value in (("critic_batch", "joint"), ("target", "none"),
                       ("bootstrap_mode", "training"), ("actor_loss_mode", "inference"),
                       ("next_action_mode", "inference")):
        _require(c, key, value, "SBX's CrossQ is the paper's")
    renorm = norm == "batch_renorm"
    policy_kwargs.update(batch_norm=True, batch_norm_actor=c["actor_norm"] != "none",
                         batch_norm_momentum=c["bn_momentum"],
                         renorm_warmup_steps=c["renorm_warmup"] if renorm else PLAIN_BN_WARMUP)
    differences = ["the critic's Batch Renorm on its joint (state, action) input (bnrl: "
                   + ("the state input only)" if c["critic_input_norm"] else "none)")]
    if c["critic_norm_position"] != "post_activation":
        differences.append("the critic's norm after each activation (bnrl: before, "
                           f"critic_norm_position={c['critic_norm_position']})")
    if c["actor_norm"] != "none":
        differences.append("the actor's norm on its input and after each activation (bnrl: "
                           "before each activation, none on the input)")
        if renorm and c["policy_delay"] > 1:
            differences.append(
                "the actor's Batch Renorm warm-up counted in actor updates, one per "
                f"{c['policy_delay']} updates: it lasts {c['policy_delay']} x renorm_warmup "
                "updates (bnrl: renorm_warmup updates for critic and actor)")
    if c["bn_epsilon"] != 1e-3:
        differences.append(f"BN epsilon 1e-3 (SBX's, fixed; bnrl: bn_epsilon {c['bn_epsilon']})")
    if renorm and (c["renorm_rmax"], c["renorm_dmax"]) != (3, 5):
        differences.append(f"Batch Renorm rmax 3, dmax 5 (SBX's, fixed; bnrl: "
                           f"{c['renorm_rmax']}, {c['renorm_dmax']})")
    return differences


def _td3(c: dict, kwargs: dict) -> list[str]:
    """TD3's own settings: target policy smoothing and Gaussian exploration noise."""
    _require(c, "actor_input_norm", False, "SBX's TD3 actor leaves its input as it is")
    _require(c, "action_at", 0, "SBX's TD3 critic takes the action at its input")
    if c["action_noise"] == "ou":
        raise Unmatched("action_noise=ou: the SBX peer maps Gaussian noise only")
    kwargs.update(target_policy_noise=c["target_policy_noise"],
                  target_noise_clip=c["target_noise_clip"],
                  action_noise=(None if c["action_noise"] == "none"
                                else {"normal": c["action_noise_std"]}))
    return []


def versions() -> dict:
    """Versions of SBX and what it runs on, for a peer run's record."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def model(agent: str, kwargs: dict, env, seed: int, saved: Path | None = None):
    """SBX's model of ``agent`` with ``arguments``' keyword arguments on ``env`` (an env or an
    id), or the one ``save``d to ``saved`` on ``env``; the caller has blocked TensorFlow
    (``block_tensorflow``) and set JAX's threads (``jax_threads``)."""
    # SBX, SB3 and numpy's noise are the sbx extra's: imported only where a peer runs.
    import numpy as np
    import sbx
    from stable_baselines3.common.noise import NormalActionNoise

    classes = {"sac": sbx.SAC, "td3": sbx.TD3, "crossq": sbx.CrossQ}
    kwargs = dict(kwargs)
    noise = kwargs.pop("action_noise", None)
    # device="cpu": SB3 would probe CUDA (a warning on a machine without it); SBX runs on JAX's
    # default device either way.
    if saved is None:
        made = classes[agent]("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
    else:
        made = classes[agent].load(saved, env=env, device="cpu")
    if noise is not None:  # of the model's action space: env may be an id
        shape = made.action_space.shape
        made.action_noise = NormalActionNoise(np.zeros(shape), noise["normal"] * np.ones(shape))
    return made


def block_tensorflow() -> None:
    """Make ``import tensorflow`` fail in this process: SB3 imports tensorboard, which loads
    TensorFlow when installed, and torch then segfaults in Adam's constructor on this stack."""
    sys.modules["tensorflow"] = None


def jax_threads(threads: int) -> None:
    """Limit JAX (XLA's CPU client) to one thread when ``threads`` is 1, before JAX is imported:
    XLA has no other thread-count setting, and a benchmark worker has its share of the cores."""
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1")


# ------------------------------------------------------------------------------- the worker
class _Policy:
    """SBX's model as ``envs.evaluate`` calls a policy."""

    def __init__(self, sbx_model):
        self.model = sbx_model

    def act(self, obs, explore: bool = False):
        return self.model.predict(obs, deterministic=not explore)[0]


def run(job: dict) -> dict:
    """Train and evaluate one SBX run (in the worker process); its summary, as
    ``training.loop``'s (``summary.json`` in the run directory too).

    ``job``: ``agent``, ``kwargs`` (``arguments``), the run's ``env``, ``seed``, ``steps``,
    ``eval_every``, ``eval_episodes``, ``max_episode_steps``, ``check_finite``,
    ``checkpoint_every``, ``threads``, ``run_dir`` and the progress ``label``.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    run_dir = Path(job["run_dir"])
    saved = latest_checkpoint(run_dir)
    if saved is None:
        if run_dir.exists():  # an attempt interrupted before its first checkpoint
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        state = {"eval_steps": [], "eval_returns": [], "train_time_s": 0.0, "wall_time_s": 0.0,
                 "resumes": 0}
    else:
        state = json.loads((saved / "state.json").read_text(encoding="utf-8"))
        state["resumes"] += 1
    atomic_write(run_dir / "peer.json", json.dumps(
        {"peer": NAME, "agent": job["agent"], "kwargs": job["kwargs"]}, indent=1))
    agent, env_id, seed = job["agent"], job["env"], job["seed"]
    env = training_env(env_id, agent, ACTION_SPACE, job["max_episode_steps"],
                       job["check_finite"], seed)
    # As training.runs.make_run_env and training.loop make and first reset bnrl's eval env.
    eval_env = EnvBoundary(make_env(env_id, seed + EVAL_SEED_OFFSET, agent=agent,
                                    agents={agent: ACTION_SPACE},
                                    max_episode_steps=job["max_episode_steps"]),
                           env_id, check_finite=job["check_finite"])
    eval_env.reset(seed=seed + EVAL_SEED_OFFSET)
    sbx_model = model(agent, job["kwargs"], env, seed,
                      None if saved is None else saved / "model.zip")
    if saved is not None:
        sbx_model.load_replay_buffer(saved / "replay.pkl")
        print(f"resumed {run_dir} from step {sbx_model.num_timesteps}", flush=True)
    steps, every = job["steps"], job["eval_every"]
    evaluations = {"eval_steps": state["eval_steps"], "eval_returns": state["eval_returns"]}
    train_time = [state["train_time_s"]]
    train = sbx_model.train

    def timed_train(*args, **kwargs):
        start = time.perf_counter()
        train(*args, **kwargs)
        train_time[0] += time.perf_counter() - start

    sbx_model.train = timed_train

    def evaluate_due(reached: int) -> None:
        """Evaluate at each multiple of ``every`` (and the end) the run has reached: SB3 calls
        this after the updates of the steps before, as bnrl evaluates after a step's update."""
        done = evaluations["eval_steps"]
        due = [*range(every, min(reached, steps) + 1, every), *([steps] if reached >= steps
                                                                else [])]
        for point in dict.fromkeys(s for s in due if not done or s > done[-1]):
            mean, _ = evaluate(_Policy(sbx_model), eval_env, job["eval_episodes"])
            done.append(point)
            evaluations["eval_returns"].append(mean)
            print(f"[{job['label']}] step {point}/{steps} eval={mean:.1f}", flush=True)

    started = time.time()
    saved_at = [sbx_model.num_timesteps]

    def progress() -> dict:
        """What a checkpoint keeps besides SBX's model and buffer (the evaluation lists are
        ``state``'s own)."""
        return {**state, "train_time_s": train_time[0],
                "wall_time_s": state["wall_time_s"] + time.time() - started}

    def checkpoint_due(reached: int) -> None:
        """Save at the first rollout start past each multiple of ``checkpoint_every``."""
        if reached < steps and reached // job["checkpoint_every"] > (
                saved_at[0] // job["checkpoint_every"]):
            save_checkpoint(run_dir, sbx_model, progress())
            saved_at[0] = reached

    class Evaluations(BaseCallback):
        def _on_rollout_start(self) -> None:
            evaluate_due(self.num_timesteps)
            checkpoint_due(self.num_timesteps)

        def _on_step(self) -> bool:
            return True

    # SB3 counts on from the loaded model's steps and resets the env for a new episode.
    sbx_model.learn(steps - sbx_model.num_timesteps, callback=Evaluations(),
                    reset_num_timesteps=saved is None)
    evaluate_due(sbx_model.num_timesteps)
    # A last checkpoint at the end, as bnrl's runs leave one: a larger budget (--extend) goes on
    # from here.
    final = progress()
    save_checkpoint(run_dir, sbx_model, final)
    wall = final["wall_time_s"]
    updates = int(getattr(sbx_model, "_n_updates", 0))
    summary = {"agent": agent, "env": env_id, "seed": seed, "peer": NAME,
               "steps": int(sbx_model.num_timesteps), "stopped_by": None, **evaluations,
               "final_return": evaluations["eval_returns"][-1], "wall_time_s": wall,
               "updates": updates, "resumes": state["resumes"],
               "updates_per_second": updates / train_time[0] if train_time[0] > 0 else 0.0,
               "bn_stats": {}}
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=1))
    env.close()
    eval_env.close()
    return summary


def save_checkpoint(run_dir: Path, sbx_model, state: dict) -> None:
    """SBX's model, its replay buffer and the run's ``state`` as ``run_dir/checkpoint-<step>``,
    written whole (``atomic_directory``) before the older ones are removed."""
    path = run_dir / f"checkpoint-{sbx_model.num_timesteps:010d}"
    if not path.exists():  # a finished run's last one, when a rerun had no step left to take
        with atomic_directory(path) as tmp:
            sbx_model.save(tmp / "model.zip")
            sbx_model.save_replay_buffer(tmp / "replay.pkl")
            (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    for old in run_dir.glob("checkpoint-*"):
        if old != path:
            shutil.rmtree(old)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` (``save_checkpoint``), or None."""
    found = sorted(run_dir.glob("checkpoint-*"))
    return found[-1] if found else None


def worker_main(job: dict) -> None:
    """The peer's worker process: run ``job`` and leave its summary (or its error) in
    ``job["result"]``; the traceback goes to the run's log."""
    die_with_parent(job["parent"])
    block_tensorflow()
    jax_threads(job["threads"])
    try:
        result = {"summary": run(job)}
    except BaseException as exc:  # noqa: BLE001 - the record says why the run failed
        traceback.print_exc()
        lines = str(exc).strip().splitlines()
        result = {"error": f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")}
    atomic_write(job["result"], json.dumps(result))
    sys.exit(0 if "summary" in result else 1)
