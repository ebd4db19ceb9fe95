"""Training runs: configuration, the training loop, checkpoints and logging.

Attributes are imported lazily so that ``training.errors`` (used by the command line while it
parses arguments) does not pull in TensorFlow.
"""

import importlib

_EXPORTS = {"RunConfig": "bnrl.training.config", "resolve": "bnrl.training.config",
            "NonFiniteLoss": "bnrl.training.errors", "UserError": "bnrl.training.errors",
            "evaluate": "bnrl.training.loop", "evaluate_run": "bnrl.training.loop",
            "train": "bnrl.training.loop"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
