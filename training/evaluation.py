"""Evaluation: the deterministic policy's return over episodes, of an agent, a run or an
export."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

from gymnasium import error as gym_error
from gymnasium.wrappers import RecordVideo

from bnrl.common.errors import RunFailed, UserError, error_line
from bnrl.common.extras import install_hint
from bnrl.common.files import fsync_dir, fsync_file, temporary_directory
from bnrl.envs.evaluate import evaluate
from bnrl.training import checkpoint
from bnrl.training.config import check_epsilon
from bnrl.training.export import ExportedPolicy, is_export
from bnrl.training.runs import build_agent, make_run_env, open_run


class RunEvaluation(NamedTuple):
    """What ``evaluate_run`` measured, and on what."""

    mean: float
    std: float
    episodes: int
    checkpoint: str
    """The checkpoint evaluated: its path and env step (an export's: the one it was made from)."""
    video: Path | None


def evaluate_run(run_dir, episodes: int, render_video: bool = False,
                 seed: int | None = None, epsilon: float | None = None) -> RunEvaluation:
    """Evaluate the latest checkpoint of a run, or a policy written by ``bnrl export``.

    Args:
      run_dir: a run directory, or an export directory (it holds ``bnrl_policy.json``).
      episodes: episodes to run.
      render_video: also record the first episode as ``run_dir/eval.mp4`` (needs moviepy).
      seed: env seed; default the run's seed + 20000. Also seeds the random actions.
      epsilon: epsilon-greedy evaluation (Q-network agents); default the run's
        ``eval_epsilon``.

    Returns:
      mean and std of the returns, and which checkpoint they are of.

    Raises:
      UserError: bad input, a malformed run or export, or a video that cannot be written there,
        all before any episode runs (one line).
      RunFailed: the env raised, or a value was not finite (one line naming the episode's env
        and the value).
    """
    run_dir = Path(run_dir)
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if render_video:
        _require_moviepy()
    export = is_export(run_dir)
    ckpt = None
    if not export:
        config, ckpt = open_run(run_dir)
    video = run_dir / "eval.mp4" if render_video else None
    with contextlib.ExitStack() as stack:
        work = _video_workspace(stack, video, export) if video else None
        if export:
            policy = ExportedPolicy(run_dir)
            config = policy.run_config()
            made_from = policy.metadata.get("checkpoint", "an unnamed checkpoint")
            steps = policy.metadata.get("env_steps")
            source = f"export {run_dir} of {made_from}" + (
                f" (env step {steps})" if steps is not None else "")
        else:
            source = f"{ckpt} (env step {checkpoint.step_of(ckpt)})"
        eval_seed = config.seed + 20_000 if seed is None else seed
        if epsilon is None:
            epsilon = config.eval_epsilon
        else:
            check_epsilon(config.agent, epsilon, "--epsilon")
        if render_video:
            # rgb_array frames only: no window, no sound (SDL would print errors on a headless
            # box).
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        env = make_run_env(config, eval_seed,
                           render_mode="rgb_array" if render_video else None)
        if ckpt is not None:
            try:
                policy = build_agent(config, env)
                checkpoint.restore_agent(policy, ckpt)
            except BaseException:
                env.close()
                raise
        try:
            if video is None:
                mean, std = evaluate(policy, env, episodes, epsilon, eval_seed)
            else:
                mean, std = _evaluate_recording(policy, env, episodes, epsilon, eval_seed,
                                                video, work)
        except RunFailed as exc:
            raise type(exc)(f"evaluation of {run_dir} stopped: {exc}") from exc
        finally:
            env.close()
            policy.close()
    return RunEvaluation(mean, std, episodes, source, video)


def _video_workspace(stack: contextlib.ExitStack, video: Path, export: bool) -> Path:
    """Where RecordVideo writes, beside ``video``, held by ``stack``: made (or refused) before
    anything runs, so that a video that cannot be written costs no evaluation."""
    if video.is_dir():
        raise UserError(f"--render-video writes {video}, which is a directory: move it away")
    try:
        return stack.enter_context(temporary_directory(video))
    except OSError as exc:
        raise UserError(f"--render-video writes {video}, but {video.parent} is not writable "
                        f"({exc.strerror}): copy the {'export' if export else 'run'} directory "
                        "to a writable place and evaluate the copy") from None


def _require_moviepy() -> None:
    try:
        import moviepy  # noqa: F401 - gymnasium's RecordVideo writes MP4 with it
    except ImportError:
        raise UserError("--render-video needs moviepy, which is not installed: "
                        f"{install_hint('video')}") from None


def _evaluate_recording(policy, env, episodes: int, epsilon: float, action_seed: int,
                        video: Path, work: Path) -> tuple[float, float]:
    """``evaluate`` with gymnasium's ``RecordVideo`` recording the first episode to ``video``.

    RecordVideo writes into ``work``, a temporary directory beside ``video``; the finished MP4 is
    renamed over ``video``, so a reader never sees half a file.
    """
    recorder = RecordVideo(env, str(work / "video"), episode_trigger=lambda e: e == 0,
                           name_prefix="eval", disable_logger=True)
    try:
        result = evaluate(policy, recorder, episodes, epsilon, action_seed)
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
