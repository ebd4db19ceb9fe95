"""``AgentGroup``: the seeds of one setting trained side by side, one ``sess.run`` per step.

Every seed run alone pays TensorFlow's cost of a call (about 0.6 ms plain, 1.3 ms with XLA:
benchmarks/README.md) on every update; small Q-networks take about as long again to update. A
group puts K agents, identical but for their seed, into one graph and session, and runs all K
updates (or acts) in one ``sess.run``, as JAX users ``vmap`` over seeds (PureJaxRL, PQN). Issue
29. Measured, that cost grows with the ops a call runs, so one call for K seeds costs about what
K calls cost, and grouping gains nothing on 2 cores (benchmarks/README.md, "Seeds trained
grouped"): the benchmark's default stays one seed per process.

Grouping changes no number. Each member is an ``Agent`` built into the shared graph
(``Agent(graph=...)``) and keeps everything a single agent keeps: its own update counter (which
seeds its in-graph noise), replay buffer, random generator, policy head and wiring check. What a
shared graph would change, its initial weights, is taken from the seed's own graph: TensorFlow
draws an initializer from the graph seed and the op's seed, and a graph has one graph seed, so
each member's variables are set from the values an agent of that seed alone starts with. Its
``Saver`` writes them under that agent's names, so a member's checkpoint is a single agent's and
either restores the other's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from bnrl.agents.agent import Agent
from bnrl.agents.algorithm import Algorithm
from bnrl.networks import new_graph_session, session_callable, tf


class AgentGroup:
    """Agents of one algorithm and config, one per seed, in one graph and session.

    Args:
      algorithm, observation_space, action_space, config, frames, n_envs: as ``Agent``'s, the
        same for every member.
      seeds: one member per seed (distinct).

    Attributes:
      members: the agents, in the order of ``seeds``; each acts, observes, samples, saves and
        restores as a single agent, and may also be updated alone (``member.update``).
      active: the indices of the members the group steps (``drop`` removes a failed one).
    """

    def __init__(self, algorithm: type[Algorithm], observation_space, action_space,
                 config=None, seeds: Sequence[int] = (0,), frames: int = 1, n_envs: int = 1):
        seeds = [int(s) for s in seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"an agent group needs distinct seeds, got {seeds}")
        self.graph = tf.Graph()
        self.members: list[Agent] = []
        savers, initial = [], {}
        for seed in seeds:
            names, values = _alone(algorithm, observation_space, action_space, config, seed,
                                   frames, n_envs)
            with self.graph.as_default(), tf.name_scope(f"seed_{seed}"):
                member = Agent(algorithm, observation_space, action_space, config, seed, frames,
                               n_envs, graph=self.graph)
                _check_same_variables(member, names, values)
                savers.append(tf.compat.v1.train.Saver(
                    dict(zip(names, member.variables, strict=True)), max_to_keep=None,
                    save_relative_paths=True))
            initial.update({v.initializer.inputs[1]: value
                            for v, value in zip(member.variables, values, strict=True)})
            self.members.append(member)
        first = self.members[0].config
        self.sess = new_graph_session(self.graph, first.intra_op_threads, first.inter_op_threads)
        # Every variable's initializer fed the value its seed starts with alone: the shared
        # graph's own initial draws never run.
        self.sess.run([v.initializer for m in self.members for v in m.variables], initial)
        for member, saver in zip(self.members, savers, strict=True):
            member.bind(self.sess, saver)
        self.graph.finalize()
        self.active = list(range(len(self.members)))
        self._calls: dict = {}

    @property
    def config(self):
        """The members' config (one for all)."""
        return self.members[0].config

    def drop(self, index: int) -> None:
        """Stop stepping member ``index`` (it failed); the others go on as before."""
        self.active.remove(index)

    # ------------------------------------------------------------------------------ one run
    def _run(self, key, parts: list[tuple[list, list]], feeds: list[list]) -> list[list]:
        """One ``sess.run`` of every part's fetches fed every part's arrays; each part's results.
        Callables are cached by ``key`` (a callable adds no ops: a finalized graph takes
        a new subset of members when one drops out)."""
        fn = self._calls.get(key)
        if fn is None:
            fetches = [f for part_fetches, _ in parts for f in part_fetches]
            placeholders = [p for _, part_feeds in parts for p in part_feeds]
            fn = self._calls[key] = session_callable(self.sess, fetches, placeholders)
        out = fn(*[array for arrays in feeds for array in arrays])
        results, start = [], 0
        for part_fetches, _ in parts:
            results.append(out[start:start + len(part_fetches)])
            start += len(part_fetches)
        return results

    def _lockstep(self, members: list[Agent]) -> int:
        """The update count all ``members`` share (so their schedule's phase is one)."""
        counts = {m.updates_done for m in members}
        if len(counts) != 1:
            raise RuntimeError(f"the members of an agent group are not in lockstep: update "
                               f"counts {sorted(counts)}")
        return counts.pop()

    # ------------------------------------------------------------------------------ acting
    def _members(self, indices: Sequence[int] | None) -> list[Agent]:
        return [self.members[i] for i in (self.active if indices is None else indices)]

    def act_batch(self, obs: Sequence[np.ndarray], explore: bool = False,
                  members: Sequence[int] | None = None) -> list[np.ndarray]:
        """The actions of ``members`` (default: the active ones) on their own sub-envs'
        observations (``obs[j]`` for the j-th), as each one's ``act_batch`` would give them,
        in one ``sess.run``."""
        members = self._members(members)
        xs = [m.checked_batch(o) for m, o in zip(members, obs, strict=True)]
        fetches = [m.act_fetch(explore) for m in members]
        running = [i for i, f in enumerate(fetches) if f is not None]
        outs: list = [None] * len(members)
        if running:
            parts = [([fetches[i]], [members[i].obs_ph]) for i in running]
            key = ("act", *(fetches[i].name for i in running))
            for i, result in zip(running, self._run(key, parts, [[xs[i]] for i in running]),
                                 strict=True):
                outs[i] = result[0]
        return [m.actions(out, explore) for m, out in zip(members, outs, strict=True)]

    # ------------------------------------------------------------------------------ updating
    def train_step(self, log: bool = False,
                   members: Sequence[int] | None = None) -> list[dict[str, float]]:
        """One gradient step of each of ``members`` (default: the active ones) on a batch from
        its own replay buffer (as its ``train_step`` samples it), all in one ``sess.run``; each
        member's scalars."""
        members = self._members(members)
        self._lockstep(members)
        for m in members:
            m._weights_changed()
        calls = [m.runner.update_call(m.runner.phase(), log) for m in members]
        parts = [(fetches, feeds) for _, fetches, feeds in calls]
        key = ("update", log, *(fetches[0].name for fetches, _ in parts))
        feeds = [m.runner.feed(m.sample()) for m in members]
        return [m.runner.updated(names, result) for m, (names, _, _), result
                in zip(members, calls, self._run(key, parts, feeds), strict=True)]

    def train_steps(self, k: int,
                    members: Sequence[int] | None = None) -> list[list[dict[str, float]]]:
        """``k`` gradient steps of each of ``members`` (default: the active ones, as each
        one's ``train_steps`` samples them), one ``sess.run`` of their multi-update loops per
        block (``update_many``); each member's scalars per step."""
        members = self._members(members)
        self._lockstep(members)
        batches = [[m.sample() for _ in range(k)] for m in members]
        for m in members:
            m._weights_changed()
        parts = [m.runner.many_call() for m in members]
        key = ("many", *(fetches[0].name for fetches, _ in parts))
        out: list[list] = [[] for _ in members]
        # Lockstep: every member splits its round at the Batch Renorm warm-up alike.
        blocks = [m.runner.warmup_blocks(b) for m, b in zip(members, batches, strict=True)]
        for j in range(len(blocks[0])):
            feeds = [m.runner.feed_many(b[j]) for m, b in zip(members, blocks, strict=True)]
            for i, (m, result) in enumerate(zip(members, self._run(key, parts, feeds),
                                                strict=True)):
                out[i] += m.runner.updated_many(result)
        return out

    def close(self) -> None:
        self.sess.close()


def _alone(algorithm, observation_space, action_space, config, seed: int, frames: int,
           n_envs: int) -> tuple[list[str], list[np.ndarray]]:
    """The names and initial values of the variables of the agent of ``seed`` alone (in its
    own graph, with its graph seed), in the order they are made."""
    agent = Agent(algorithm, observation_space, action_space, config, seed, frames, n_envs)
    try:
        return [v.op.name for v in agent.variables], agent.sess.run(agent.variables)
    finally:
        agent.close()


def _check_same_variables(member: Agent, names: list[str], values: list[np.ndarray]) -> None:
    """A member's variables are those of its seed alone, made in the same order: same count,
    shapes, dtypes and kinds (the last part of the name without the suffix a shared graph
    makes it unique with, e.g. ``moving_mean``, ``beta1_power``)."""
    mine = member.variables
    problems = [] if len(mine) == len(names) else [f"{len(mine)} variables, not {len(names)}"]
    for v, name, value in zip(mine, names, values, strict=False):
        if (tuple(v.shape), v.dtype.as_numpy_dtype, _kind(v.op.name)) != (
                value.shape, value.dtype.type, _kind(name)):
            problems.append(f"{v.op.name} {tuple(v.shape)} is not {name} {value.shape}")
    if problems:
        raise RuntimeError(f"agent group member seed {member.seed} was built unlike the agent "
                           f"alone: {'; '.join(problems[:3])}")


def _kind(name: str) -> str:
    return re.sub(r"_\d+$", "", name.rsplit("/", 1)[-1])
