"""Training runs: configuration, the training loop, checkpoints and logging.

Attributes are imported lazily so that ``training.errors`` (used by the command line while it
parses arguments) does not pull in TensorFlow.
"""

import importlib

_EXPORTS = {"RunConfig": "training.config", "resolve": "training.config",
            "NonFiniteLoss": "training.errors", "UserError": "training.errors",
            "evaluate": "training.loop", "evaluate_run": "training.loop", "train": "training.loop"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
