"""XLA's persistent compilation cache, shared by processes that compile the same updates.

Every seed of a benchmark cell compiles the same XLA update (the HLO does not depend on the seed),
each in a process of its own, and so do many tests; a compile costs seconds to tens of seconds
on 2 cores. With ``--tf_xla_persistent_cache_directory``, TensorFlow saves each executable there
and a later compile loads it instead, but only when the new HLO equals the saved one exactly (its
strict check): the executable, and every number it computes, is the one a fresh compile gives.
Entries are written to a temporary file and renamed, so processes running side by side can
share a directory. An executable is machine code of one XLA version for one kind of CPU, so the
file names carry both: a directory copied to another machine, or kept across an upgrade, is
then a cache miss, never a wrong executable.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from importlib import metadata
from os import PathLike

DIRECTORY_FLAG = "--tf_xla_persistent_cache_directory"


def _machine() -> str:
    """What an executable depends on: the TensorFlow version and the CPU's instruction sets."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        cpu = ""
    cpu = cpu or platform.processor() or platform.machine()
    return f"tf{metadata.version('tensorflow')}_{hashlib.sha1(cpu.encode()).hexdigest()[:10]}"


def with_xla_cache(env: Mapping[str, str], directory: str | PathLike) -> dict[str, str]:
    """``env`` with ``TF_XLA_FLAGS`` naming ``directory`` as XLA's persistent cache, for a process
    that has not imported TensorFlow yet (it reads the flags once); unchanged when the flags
    already name a cache directory (the user's choice)."""
    env = dict(env)
    flags = env.get("TF_XLA_FLAGS", "")
    if DIRECTORY_FLAG not in flags:
        env["TF_XLA_FLAGS"] = (f"{flags} {DIRECTORY_FLAG}={directory} "
                               f"--tf_xla_persistent_cache_prefix=xla_{_machine()}").strip()
    return env
