"""Training runs: configuration, the training loop, evaluation, checkpoints, export, logging."""

from bnrl.common.errors import EnvFailed, NonFiniteLoss, NonFiniteValue, RunFailed, UserError
from bnrl.training.config import RunConfig, resolve
from bnrl.training.evaluation import evaluate, evaluate_run
from bnrl.training.loop import train, train_group

__all__ = ["EnvFailed", "NonFiniteLoss", "NonFiniteValue", "RunConfig", "RunFailed", "UserError",
           "evaluate", "evaluate_run", "resolve", "train", "train_group"]
