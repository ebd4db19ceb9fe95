"""The training loop: act, observe, update, evaluate, log, checkpoint, resume.

``train(config, run_dir)`` is what ``run.py train`` and every benchmark worker call. Everything a
run writes lives in its directory: ``config.yaml`` (resolved settings), TensorBoard events,
``metrics.csv`` (eval returns), ``checkpoints/`` and, at the end, ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from bnrl.agents import make_agent
from bnrl.envs import EnvError, make_env
from bnrl.training import checkpoint
from bnrl.training.config import RunConfig, from_dict, read_yaml
from bnrl.training.errors import NonFiniteLoss, UserError
from bnrl.training.logger import ScalarLogger

# Scalars kept in summary.json for the benchmark's bn_stats.png.
_BN_HISTORY = ("bn_Q_moving_mean", "bn_Q_moving_variance", "bn_Q_train_eval_gap")


def make_run_env(config: RunConfig, seed: int, render_mode: str | None = None):
    """The env of a run, with EnvError turned into a UserError."""
    try:
        return make_env(config.env, seed, agent=config.agent,
                        max_episode_steps=config.max_episode_steps, render_mode=render_mode)
    except EnvError as exc:
        raise UserError(str(exc)) from None


def build_agent(config: RunConfig, env, threads: int | None = None):
    """The run's agent for ``env``; ``threads`` caps TensorFlow's intra-op pool (benchmarks)."""
    agent_config = config.agent_config_object()
    if threads is not None:
        agent_config.intra_op_threads = threads
        agent_config.inter_op_threads = min(agent_config.inter_op_threads or threads, threads)
    return make_agent(config.agent, env.observation_space, env.action_space, agent_config,
                      config.seed)


def evaluate(agent, env, episodes: int, frames: list | None = None) -> tuple[float, float]:
    """Mean and std of the return of the deterministic policy over ``episodes`` episodes.

    Args:
      agent: acts with ``explore=False`` (BN in inference mode).
      env: an env used only for evaluation.
      episodes: number of episodes.
      frames: when a list is given, the first episode's rendered frames are appended to it.
    """
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset()
        done, total = False, 0.0
        while not done:
            if frames is not None and episode == 0:
                frames.append(env.render())
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, explore=False))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise, nothing when quiet."""

    def __init__(self, total: int, initial: int, mode: str, label: str):
        self.mode = mode if mode != "auto" else ("bar" if sys.stderr.isatty() else "plain")
        self.total, self.label, self._last_line = total, label, time.time()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit="step",
                             dynamic_ncols=True)

    def update(self, step: int, n: int = 1, **info) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if info:
                self._bar.set_postfix(info, refresh=False)
        elif self.mode == "plain" and (info or time.time() - self._last_line > 30):
            self._last_line = time.time()
            extra = " ".join(f"{k}={v}" for k, v in info.items())
            print(f"[{self.label}] step {step}/{self.total} {extra}".rstrip(), flush=True)

    def write(self, message: str) -> None:
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def prepare_run_dir(run_dir, config: RunConfig, resume: bool) -> RunConfig:
    """Create a new run directory, or check and reload an existing one for ``--resume``."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.exists():
            raise UserError(f"cannot resume {run_dir}: no config.yaml there (not a bnrl run)")
        old = from_dict(read_yaml(saved))
        if (old.agent, old.env, old.seed) != (config.agent, config.env, config.seed):
            raise UserError(
                f"cannot resume {run_dir}: it is {old.agent} on {old.env} seed {old.seed}, "
                f"not {config.agent} on {config.env} seed {config.seed}")
        old.steps = config.steps  # resuming may extend the step goal
        config = old
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} already exists: pass --resume to continue it "
                        "or choose another --logdir")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".yaml.tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    os.replace(tmp, saved)
    return config


def train(config: RunConfig, run_dir, resume: bool = False, progress: str = "auto",
          threads: int | None = None) -> dict:
    """Train one agent on one env, as described by ``config``, in ``run_dir``.

    Args:
      config: resolved run configuration.
      run_dir: the run directory (must not exist unless ``resume``).
      resume: continue from the latest complete checkpoint of ``run_dir``.
      progress: ``auto`` (bar on a terminal, lines otherwise), ``bar``, ``plain`` or ``none``.
      threads: TensorFlow threads for this run (benchmark workers share the cores).

    Returns:
      The run summary (also written to ``summary.json``).

    Raises:
      UserError: bad input (one line, for the command line).
      NonFiniteLoss: a loss became NaN/inf; the last good checkpoint is kept.
    """
    run_dir = Path(run_dir)
    make_run_env(config, config.seed).close()  # bad env ids fail before the run dir exists
    config = prepare_run_dir(run_dir, config, resume)
    env = make_run_env(config, config.seed)
    eval_env = make_run_env(config, config.seed + 10_000)
    agent = build_agent(config, env, threads)
    state = {"episodes": 0, "resets": 0, "eval_steps": [], "eval_returns": [],
             "bn_history": {"steps": []}, "wall_time_s": 0.0, "train_time_s": 0.0}
    ckpt = checkpoint.latest(run_dir) if resume else None
    if ckpt is not None:
        state = checkpoint.load_loop_state(ckpt)
        checkpoint.restore_agent(agent, ckpt)
        state["resets"] += 1
    step = agent.env_steps
    bar = Progress(config.steps, step, progress, f"{config.agent}/{config.env}/s{config.seed}")
    if ckpt is not None:
        bar.write(f"resumed {run_dir} from step {step} ({ckpt.name})")
    elif resume:
        bar.write(f"no complete checkpoint in {run_dir}: starting from step 0")
    logger = ScalarLogger(run_dir, resume_step=step if resume else None)
    # A fresh episode on every (re)start; the seed moves on so a resumed run explores anew.
    obs, _ = env.reset(seed=config.seed + 1_000_003 * state["resets"])
    eval_env.reset(seed=config.seed + 10_000 + 1_000_003 * state["resets"])
    ep_return, ep_length = 0.0, 0
    started = time.time() - state["wall_time_s"]
    window = {"time": time.time(), "step": step, "updates": agent.updates_done}
    train_time = state["train_time_s"]
    last_eval = state["eval_returns"][-1] if state["eval_returns"] else None
    log_due = False
    try:
        while step < config.steps:
            action = agent.act(obs, explore=True)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            agent.observe(obs, action, reward, next_obs, terminated)
            step += 1
            ep_return += float(reward)
            ep_length += 1
            if terminated or truncated:
                state["episodes"] += 1
                logger.scalars({"charts/episodic_return": ep_return,
                                "charts/episodic_length": ep_length}, step)
                agent.on_episode_end()
                obs, _ = env.reset()
                ep_return, ep_length = 0.0, 0
            else:
                obs = next_obs
            if agent.ready_to_train():
                t0 = time.perf_counter()
                for _ in range(agent.config.gradient_steps):
                    # Log the first complete update (actor included) once log_every have passed.
                    log_due = log_due or agent.updates_done % config.log_every == 0
                    log = log_due and agent.schedule.is_complete(agent.updates_done)
                    log_due = log_due and not log
                    scalars = agent.train_step(log=log)
                    _check_finite(scalars, step)
                    if log:
                        _log_update(logger, scalars, step, state, window, agent)
                train_time += time.perf_counter() - t0
            if step % config.eval_every == 0 or step == config.steps:
                mean, std = evaluate(agent, eval_env, config.eval_episodes)
                logger.eval_return(step, mean, std)
                state["eval_steps"].append(step)
                state["eval_returns"].append(mean)
                last_eval = mean
            bar.update(step, **({"eval": f"{last_eval:.1f}"} if step % config.eval_every == 0
                                and last_eval is not None else {}))
            if step % config.checkpoint_every == 0 or step == config.steps:
                state["wall_time_s"] = time.time() - started
                state["train_time_s"] = train_time
                logger.flush()  # events up to a checkpoint survive a kill -9 after it
                checkpoint.save(run_dir, step, agent, state, config.keep_checkpoints)
    finally:
        bar.close()
        logger.close()
        env.close()
        eval_env.close()
    summary = _summary(config, agent, state, time.time() - started, train_time)
    agent.close()
    tmp = run_dir / "summary.json.tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, run_dir / "summary.json")
    return summary


def _check_finite(scalars: dict, step: int) -> None:
    for name, value in scalars.items():
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"training stopped at env step {step}: {name} is {value}; the last good "
                "checkpoint is kept (lower the learning rate or check the rewards)")


def _log_update(logger, scalars: dict, step: int, state: dict, window: dict, agent) -> None:
    now, updates = time.time(), agent.updates_done
    elapsed = max(now - window["time"], 1e-9)
    scalars = dict(scalars)
    scalars["charts/updates_per_second"] = (updates - window["updates"]) / elapsed
    scalars["charts/env_steps_per_second"] = (step - window["step"]) / elapsed
    window.update(time=now, step=step, updates=updates)
    logger.scalars(scalars, step)
    history = state["bn_history"]
    if "bn_Q_moving_mean" in scalars:
        history["steps"].append(step)
        for name in _BN_HISTORY:
            history.setdefault(name, []).append(scalars.get(name, float("nan")))


def _summary(config: RunConfig, agent, state: dict, wall: float, train_time: float) -> dict:
    bn = state["bn_history"] if len(state["bn_history"]["steps"]) else {}
    return {
        "agent": config.agent, "env": config.env, "seed": config.seed,
        "critic_norm": agent.config.critic_norm, "steps": config.steps,
        "eval_steps": state["eval_steps"], "eval_returns": state["eval_returns"],
        "final_return": state["eval_returns"][-1] if state["eval_returns"] else None,
        "wall_time_s": wall, "updates": agent.updates_done,
        "updates_per_second": agent.updates_done / train_time if train_time > 0 else 0.0,
        "bn_stats": bn,
    }


def evaluate_run(run_dir, episodes: int, render_video: bool = False, seed: int | None = None):
    """Load the latest checkpoint of a run and evaluate it; returns (mean, std, video_path)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a bnrl run (no config.yaml); pass the --logdir of a "
                        "train run")
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    config = from_dict(read_yaml(run_dir / "config.yaml"))
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise UserError(f"{run_dir} has no complete checkpoint yet")
    checkpoint.load_loop_state(ckpt)
    eval_seed = config.seed + 20_000 if seed is None else seed
    if render_video:
        # rgb_array frames only: no window, no sound (SDL would print errors on a headless box).
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    env = make_run_env(config, eval_seed, render_mode="rgb_array" if render_video else None)
    agent = build_agent(config, env)
    checkpoint.restore_agent(agent, ckpt)
    frames = [] if render_video else None
    mean, std = evaluate(agent, env, episodes, frames)
    video = None
    if frames:
        video = run_dir / "eval.gif"
        _write_gif(frames, video)
    env.close()
    agent.close()
    return mean, std, video


def _write_gif(frames: list, path: Path) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames if frame is not None]
    tmp = path.with_suffix(".gif.tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=33,
                   loop=0)
    os.replace(tmp, path)
