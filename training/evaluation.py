"""Evaluation: the deterministic policy's return over episodes, of an agent, a run or an
export."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from gymnasium import error as gym_error
from gymnasium.wrappers import RecordEpisodeStatistics, RecordVideo

from bnrl.common.errors import UserError, error_line
from bnrl.common.files import fsync_dir, fsync_file
from bnrl.training import checkpoint
from bnrl.training.export import ExportedPolicy, is_export
from bnrl.training.runs import build_agent, make_run_env, open_run


def evaluate(agent, env, episodes: int) -> tuple[float, float]:
    """Mean and std of the return of the deterministic policy over ``episodes`` episodes.

    Args:
      agent: acts with ``explore=False`` (BN in inference mode); an ``ExportedPolicy`` too.
      env: an env used only for evaluation (not closed here).
      episodes: number of episodes.
    """
    # Returns are counted by gymnasium's own wrapper; it closes nothing and owns no resources.
    stats = RecordEpisodeStatistics(env, buffer_length=episodes)
    for _ in range(episodes):
        obs, _ = stats.reset()
        done = False
        while not done:
            obs, _, terminated, truncated, _ = stats.step(agent.act(obs, explore=False))
            done = terminated or truncated
    returns = np.array(stats.return_queue, dtype=np.float64)
    return float(np.mean(returns)), float(np.std(returns))


def evaluate_run(run_dir, episodes: int, render_video: bool = False, seed: int | None = None):
    """Evaluate the latest checkpoint of a run, or a policy written by ``bnrl export``.

    Args:
      run_dir: a run directory, or an export directory (it holds ``bnrl_policy.json``).
      episodes: episodes to run.
      render_video: also record the first episode as ``run_dir/eval.mp4`` (needs moviepy).
      seed: env seed; default the run's seed + 20000.

    Returns:
      ``(mean, std, video_path or None)``.
    """
    run_dir = Path(run_dir)
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if render_video:
        _require_moviepy()
    if is_export(run_dir):
        policy = ExportedPolicy(run_dir)
        config, ckpt = policy.run_config(), None
    else:
        config, ckpt = open_run(run_dir)
    eval_seed = config.seed + 20_000 if seed is None else seed
    if render_video:
        # rgb_array frames only: no window, no sound (SDL would print errors on a headless box).
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    env = make_run_env(config, eval_seed, render_mode="rgb_array" if render_video else None)
    if ckpt is not None:
        policy = build_agent(config, env)
        checkpoint.restore_agent(policy, ckpt)
    video = run_dir / "eval.mp4" if render_video else None
    try:
        if video is None:
            mean, std = evaluate(policy, env, episodes)
        else:
            mean, std = _evaluate_recording(policy, env, episodes, video)
    finally:
        env.close()
        policy.close()
    return mean, std, video


def _require_moviepy() -> None:
    try:
        import moviepy  # noqa: F401 - gymnasium's RecordVideo writes MP4 with it
    except ImportError:
        raise UserError("--render-video needs moviepy, which is not installed: "
                        "pip install 'bnrl[video]'") from None


def _evaluate_recording(policy, env, episodes: int, video: Path) -> tuple[float, float]:
    """``evaluate`` with gymnasium's ``RecordVideo`` recording the first episode to ``video``.

    RecordVideo writes into a temporary directory beside ``video``; the finished MP4 is renamed
    over ``video``, so a reader never sees half a file.
    """
    work = Path(tempfile.mkdtemp(dir=video.parent, prefix=f".{video.name}.", suffix=".tmp"))
    try:
        recorder = RecordVideo(env, str(work / "video"), episode_trigger=lambda e: e == 0,
                               name_prefix="eval", disable_logger=True)
        try:
            result = evaluate(policy, recorder, episodes)
            if recorder.recording:  # RecordVideo writes at the next reset; one episode has none
                recorder.stop_recording()
        except gym_error.DependencyNotInstalled as exc:
            # Raised on the first render() (Pendulum imports pygame then).
            raise UserError(f"cannot record a video: {error_line(exc)}") from None
        recorded = work / "video" / "eval-episode-0.mp4"
        if not recorded.is_file():
            raise UserError("no video was recorded: the env's render() returned no rgb_array "
                            "frames")
        fsync_file(recorded)
        os.replace(recorded, video)
        fsync_dir(video.parent)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
