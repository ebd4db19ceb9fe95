"""Callbacks of a training run: code of yours called at each evaluation and checkpoint.

Stable-Baselines3's convention (``model.learn(callback=...)``): a callback returns ``False`` to
stop the run; anything else (``None`` included) lets it go on. A stopped run ends as a finished
one does, only earlier: its last checkpoint is at the step it stopped at, ``summary.json`` and
the TensorBoard HPARAMS results are written, and ``summary["stopped_by"]`` names the callback.
``train(..., resume=True)`` with a larger budget continues it. An exception a callback raises
ends the run where it is and propagates unchanged (the run keeps its last checkpoint): ``bnrl
tune`` prunes a trial so, with Optuna's ``TrialPruned``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the greedy policy (``eval_episodes`` episodes on the eval env;
    epsilon-greedy with ``eval_epsilon``)."""

    step: int
    """Env steps trained when it ran."""
    mean_return: float
    std_return: float


class Callback:
    """Override the events you need; return ``False`` from one to stop the run."""

    def on_evaluation(self, evaluation: Evaluation, agent) -> bool | None:
        """After each evaluation (``agent`` is the live agent: ``agent.act(obs)`` works)."""

    def on_checkpoint(self, step: int, path: Path) -> bool | None:
        """After each checkpoint is written (``path``: its directory)."""


class StopOnReturn(Callback):
    """Stop once an evaluation's mean return reaches ``threshold`` (SB3's
    ``StopTrainingOnRewardThreshold``)."""

    def __init__(self, threshold: float):
        if not math.isfinite(threshold):
            raise ValueError(f"StopOnReturn needs a finite threshold, not {threshold}")
        self.threshold = threshold

    def on_evaluation(self, evaluation: Evaluation, agent) -> bool:
        return evaluation.mean_return < self.threshold


class StopOnNoImprovement(Callback):
    """Stop after ``patience`` evaluations in a row without a new best mean return, counted once
    ``min_evaluations`` have run (SB3's ``StopTrainingOnNoModelImprovement``)."""

    def __init__(self, patience: int, min_evaluations: int = 0):
        if patience < 1 or min_evaluations < 0:
            raise ValueError("StopOnNoImprovement needs patience >= 1 and min_evaluations >= 0, "
                             f"not {patience} and {min_evaluations}")
        self.patience, self.min_evaluations = patience, min_evaluations
        self.best, self.stale, self.seen = -math.inf, 0, 0

    def on_evaluation(self, evaluation: Evaluation, agent) -> bool:
        self.seen += 1
        if evaluation.mean_return > self.best:
            self.best, self.stale = evaluation.mean_return, 0
        elif self.seen > self.min_evaluations:
            self.stale += 1
        return self.stale < self.patience


def stopping(callbacks, event: str, *args) -> str | None:
    """Call ``event`` on every callback, in order (each sees the event even when an earlier one
    asked to stop); the class name of the first that returned ``False``, or None."""
    stop = None
    for callback in callbacks:
        if getattr(callback, event)(*args) is False and stop is None:
            stop = type(callback).__name__
    return stop
