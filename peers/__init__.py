"""Other libraries' implementations of bnrl's agents, run as variants of a benchmark grid
(``benchmark --peer``, issue 30): the check of bnrl against code nobody here wrote.

A peer runs at bnrl's resolved settings for a variant, translated into the library's own
arguments (every setting that cannot be translated is listed as a difference, or refuses the
variant), in a process that never loads TensorFlow, and is evaluated exactly as bnrl evaluates
(``envs.evaluate``). Nothing here imports TensorFlow: the peer's worker imports this package.
"""

from bnrl.peers import sbx

PEERS = {"sbx": sbx}
"""Peer libraries by the name ``--peer`` takes."""

__all__ = ["PEERS", "sbx"]
