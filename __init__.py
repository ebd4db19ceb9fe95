"""bnrl: off-policy deep RL in TensorFlow graph mode with Batch Normalization that actually updates.

Subpackages (the repository's top-level folders, mapped into ``bnrl`` by ``pyproject.toml``):

- ``bnrl.networks``: the Keras 2 guarantee, BN update collection, the wiring check, builders;
- ``bnrl.agents``: the Session agent core and DQN, DDPG, TD3, SAC, CrossQ;
- ``bnrl.envs``: gymnasium environments made ready for training;
- ``bnrl.training``: the training loop, run configuration, checkpoints, logging;
- ``bnrl.compare``: the benchmark grid, statistics and reports;
- ``bnrl.configs``: per-environment presets (YAML data).

The command line is ``bnrl`` (or ``python -m bnrl``; ``python run.py`` from a checkout).
Importing ``bnrl`` itself loads nothing heavy: TensorFlow comes with ``bnrl.networks``.
"""

__version__ = "0.3.0"
