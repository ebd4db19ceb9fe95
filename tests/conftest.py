"""Shared fixtures: agents built once per test module.

Building an agent (Keras layer calls, gradients, function tracing) and its first updates (the
XLA compiles) take seconds each; many tests build the same agent. ``agents`` builds each
distinct (agent, spaces, resolved config, seed) once per module and hands it out in exactly the
state a new build gives.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from bnrl.common.xla_cache import with_xla_cache

# XLA's persistent compilation cache, shared by the suite's processes (issue 24 item 6): many
# tests compile an update that another test, process or seed compiled already; each later
# compile loads the executable (common/xla_cache.py says why that changes no number). Set before
# TensorFlow is imported (it reads TF_XLA_FLAGS once); xdist workers and subprocesses inherit it.
os.environ.update(with_xla_cache(os.environ, Path(tempfile.gettempdir()) / "bnrl-tests-xla"))

from bnrl.agents import agent_class, config_from_dict, make_agent  # noqa: E402


class AgentCache:
    """Agents built once, each handed out as it was right after its build.

    ``get`` builds an agent on its first request and saves it; every later request restores that
    save, which resets everything a run carries (weights, optimizer slots, BN statistics, the
    update counter, env steps, the random generator, the replay buffer, the numpy acting path's
    weights) and restarts the exploration noise: the test sees exactly what a new build would
    give it. Tests must not close these agents: the cache closes them at the end of the module.
    """

    def __init__(self, directory):
        self._directory = directory
        self._agents = {}

    def get(self, name: str, observation_space, action_space, config: dict, seed: int = 0):
        resolved = config_from_dict(agent_class(name).config_class, config)
        key = (name, repr(observation_space), repr(action_space), repr(resolved), seed)
        if key not in self._agents:
            agent = make_agent(name, observation_space, action_space, resolved, seed)
            checkpoint = str(self._directory / str(len(self._agents)))
            agent.save(checkpoint)
            self._agents[key] = (agent, checkpoint)
            return agent
        agent, checkpoint = self._agents[key]
        agent.restore(checkpoint)
        agent.head.episode_end()  # the OU noise state is no part of a checkpoint
        return agent

    def close(self) -> None:
        for agent, _ in self._agents.values():
            agent.close()
        self._agents.clear()


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    """The module's ``AgentCache``: ``agents.get(name, obs_space, act_space, config, seed)``."""
    cache = AgentCache(tmp_path_factory.mktemp("agents"))
    yield cache
    cache.close()


# The files that take longest, longest first. The suite runs on xdist workers (``-n auto --dist
# loadfile``), each taking whole files in collection order; xdist's own order (most tests first,
# ``--no-loadscope-reorder`` turns it off) put these files of few, long tests last, so one
# worker ran them alone at the end while the other had finished. Started first, the many short
# files fill the gaps at the end instead. The order is measured: each file's summed
# ``--durations=0`` times on 2 cores (2026-12-07: 200, 158, 81, 78, 76, 71, 57, 45, 40 s); a
# file that grows past the last of them belongs here, or one worker finishes it alone.
LONGEST_FIRST = ("test_benchmark.py", "test_group.py", "test_agent_bn.py", "test_multi_update.py",
                 "test_export.py", "test_bn_settings.py", "test_cli.py", "test_agents.py",
                 "test_learning.py")


def pytest_collection_modifyitems(items):
    """The LONGEST_FIRST files first, then the others by their number of tests (xdist's order)."""
    counts: dict = {}
    for item in items:
        counts[item.path] = counts.get(item.path, 0) + 1
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -counts[item.path]))
