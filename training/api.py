"""The Python API: ``bnrl.train(...)`` and ``bnrl.evaluate(...)`` (issue 28).

What ``run.py train`` and ``run.py evaluate`` do, as functions: the same presets, checks, run
directory and checkpoints, so a run started here resumes from the command line and the other way
round. Stable-Baselines3's ``model.learn(total_timesteps, callback=..., progress_bar=True)`` is
``bnrl.train(agent, env, steps=..., callbacks=[...], progress_bar=True)``; what comes back is a
``Run``: its curves and results, and its trained agent, evaluation and export on demand.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path

from bnrl.common.errors import UserError
from bnrl.training import checkpoint
from bnrl.training.callbacks import Callback
from bnrl.training.config import resolve
from bnrl.training.evaluation import RunEvaluation, evaluate_run
from bnrl.training.export import export_policy
from bnrl.training.loop import train as train_loop
from bnrl.training.runs import build_agent, make_run_env, open_run


def train(agent: str = "sac", env: str = "Pendulum-v1", *, steps: int | None = None,
          seed: int = 0, settings: dict | None = None, config: str | Path | None = None,
          logdir: str | Path | None = None, resume: bool = False, callbacks=(),
          progress_bar: bool = False, eval_every: int | None = None,
          eval_episodes: int | None = None, eval_epsilon: float | None = None,
          checkpoint_every: int | None = None, log_every: int | None = None,
          max_episode_steps: int | None = None, n_envs: int | None = None,
          vector_env: str | None = None) -> Run:
    """Train ``agent`` on ``env``, as ``run.py train`` does; returns the finished ``Run``.

    Args:
      agent: ``dqn``, ``pqn``, ``ddpg``, ``td3``, ``sac`` or ``crossq``.
      env: a gymnasium id (``ALE/<Game>-v5`` and ``MinAtar/<Game>-v1`` included) or
        ``module:EnvId``.
      steps: env steps (default: the env preset's, else 20,000).
      seed: the run's seed.
      settings: agent settings (``run.py train --set``), e.g. ``{"critic_norm": "batch"}``.
      config: a YAML file with ``train:`` and ``agent:`` sections (``--config``).
      logdir: the run directory (TensorBoard events, ``metrics.csv``, checkpoints); None trains
        in a temporary directory, removed with the ``Run`` (``Run.close``).
      resume: continue the run in ``logdir`` from its latest checkpoint.
      callbacks: ``bnrl.Callback`` objects, called at each evaluation and checkpoint; one that
        returns False stops the run (``bnrl.StopOnReturn``, ``bnrl.StopOnNoImprovement``).
      progress_bar: a tqdm bar on a terminal (plain lines in a log); silent by default.
      eval_every, eval_episodes, eval_epsilon, checkpoint_every, log_every,
        max_episode_steps, n_envs, vector_env: as the ``run.py train`` flags of the same names
        (default: the preset's).

    Raises:
      UserError: a bad setting, env or directory (one line), before anything is written.
      RunFailed: the run stopped (a non-finite value, the env raised); its last checkpoint is
        kept and ``train(..., resume=True)`` continues it.
    """
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise UserError(f"callbacks must be bnrl.Callback objects, not "
                            f"{type(callback).__name__}: subclass bnrl.Callback")
    if resume and logdir is None:
        raise UserError("resume=True needs the logdir of the run to continue")
    run_config = resolve(agent, env, config, dict(
        steps=steps, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes,
        eval_epsilon=eval_epsilon, checkpoint_every=checkpoint_every, log_every=log_every,
        max_episode_steps=max_episode_steps, n_envs=n_envs, vector_env=vector_env),
        settings or {})
    scratch = None if logdir is not None else Path(tempfile.mkdtemp(prefix="bnrl-run-"))
    run_dir = Path(logdir) if logdir is not None else scratch / "run"
    try:
        train_loop(run_config, run_dir, resume=resume,
                   progress="auto" if progress_bar else "none", callbacks=callbacks)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Run(run_dir, scratch)


def evaluate(run: str | Path, episodes: int = 10, seed: int | None = None,
             render_video: bool = False, epsilon: float | None = None) -> RunEvaluation:
    """Evaluate a run directory's latest checkpoint, or a policy written by ``export``, as
    ``run.py evaluate`` does: the deterministic policy's mean and std return over ``episodes``
    episodes (env seed: the run's + 20000 unless given; epsilon-greedy with ``epsilon``, by
    default the run's ``eval_epsilon``), and which checkpoint that was."""
    return evaluate_run(run, episodes, render_video, seed, epsilon)


class Run:
    """A finished (or stopped) training run: its directory, settings and results, and on demand
    its trained agent, evaluations and export.

    ``Run(logdir)`` opens any finished run directory written by ``train`` or ``run.py train``.
    ``summary`` is its ``summary.json`` (curves, final return, updates/s, ``stopped_by``).
    """

    def __init__(self, directory: str | Path, _scratch: Path | None = None):
        self.dir = Path(directory)
        self.config, latest = open_run(self.dir)
        self.checkpoint = latest
        """The latest complete checkpoint: what ``agent``, ``evaluate`` and ``export`` use."""
        try:
            self.summary = json.loads((self.dir / "summary.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"run {self.dir} has not finished (no summary.json): continue it "
                            "with bnrl.train(..., logdir=..., resume=True), or evaluate its "
                            "latest checkpoint with bnrl.evaluate") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.dir / 'summary.json'} is unreadable: {exc}") from None
        self._agent = self._env = None
        self._cleanup = weakref.finalize(self, _remove, _scratch) if _scratch else None

    @property
    def eval_steps(self) -> list[int]:
        return list(self.summary["eval_steps"])

    @property
    def eval_returns(self) -> list[float]:
        """Mean return of each evaluation, at ``eval_steps``."""
        return list(self.summary["eval_returns"])

    @property
    def final_return(self) -> float | None:
        return self.eval_returns[-1] if self.eval_returns else None

    @property
    def agent(self):
        """The agent restored from ``checkpoint`` (built once, closed by ``close``):
        ``run.agent.act(obs)`` is the trained policy, BN in inference mode."""
        if self._agent is None:
            self._env = make_run_env(self.config, self.config.seed + 20_000)
            self._agent = build_agent(self.config, self._env)
            checkpoint.restore_agent(self._agent, self.checkpoint)
        return self._agent

    def evaluate(self, episodes: int = 10, seed: int | None = None,
                 render_video: bool = False, epsilon: float | None = None) -> RunEvaluation:
        """``bnrl.evaluate`` of this run (a video goes to ``RUN/eval.mp4``)."""
        return evaluate_run(self.dir, episodes, render_video, seed, epsilon)

    def export(self, out: str | Path) -> dict:
        """Write the policy as a SavedModel in the new directory ``out`` (``run.py export``);
        returns its metadata."""
        return export_policy(self.dir, out)

    def close(self) -> None:
        """Close the agent, and remove the run directory if ``train`` made it temporary."""
        for part in (self._agent, self._env):
            if part is not None:
                part.close()
        self._agent = self._env = None
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        final = self.final_return
        return (f"Run({str(self.dir)!r}: {self.config.agent} on {self.config.env}, seed "
                f"{self.config.seed}, {self.summary.get('steps')} steps, final return "
                f"{'none' if final is None else f'{final:.1f}'})")


def _remove(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
