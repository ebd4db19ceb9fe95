"""bnrl: off-policy deep RL in TensorFlow graph mode with Batch Normalization that actually updates.

Subpackages (the repository's top-level folders, mapped into ``bnrl`` by ``pyproject.toml``):

- ``bnrl.networks``: the Keras 2 guarantee, BN update collection, the wiring check, builders;
- ``bnrl.agents``: the Session agent core and DQN, DDPG, TD3, SAC, CrossQ;
- ``bnrl.envs``: gymnasium environments made ready for training;
- ``bnrl.training``: the training loop, run configuration, checkpoints, logging;
- ``bnrl.compare``: the benchmark grid, statistics and reports;
- ``bnrl.configs``: per-environment presets (YAML data).

The command line is ``bnrl`` (or ``python -m bnrl``; ``python run.py`` from a checkout); the
same from Python is ``bnrl.train(...)`` and ``bnrl.evaluate(...)`` (``bnrl.training.api``).
Importing ``bnrl`` itself loads nothing heavy: TensorFlow comes with the first of those names
used, or with ``bnrl.networks``.
"""

__version__ = "0.3.0"

# The Python API, imported on first use (PEP 562) so that ``import bnrl`` stays instant.
_API = {"train": "bnrl.training.api", "evaluate": "bnrl.training.api", "Run": "bnrl.training.api",
        "Callback": "bnrl.training.callbacks", "Evaluation": "bnrl.training.callbacks",
        "StopOnReturn": "bnrl.training.callbacks",
        "StopOnNoImprovement": "bnrl.training.callbacks"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'bnrl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
