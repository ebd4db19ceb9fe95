"""When a run updates and when it logs: the one place that decides.

After every (vector) env step the training loop (and ``benchmarks/bn_diagnosis.py``) asks
``Cadence`` how many gradient steps are due (``learning_starts``, ``train_freq``,
``gradient_steps``, as SB3 counts them: ``train_freq`` in vector steps of ``n_envs`` env steps)
and whether the round's last update is the one to log (``log_every``), then runs the round with
``run_round``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cadence:
    """The update and logging cadence of a run.

    Attributes:
      learning_starts: env steps of random actions before the first update.
      train_freq: vector steps (of ``n_envs`` env steps each) between rounds of updates.
      gradient_steps: updates per round.
      batch_size: transitions the data store must hold before a round (a batch of the replay
        buffer; PQN: its whole rollout).
      log_every: updates between scalar logs.
      n_envs: sub-envs of the run's vector env.
      log_due: a log fell due on an update that did not compute every loss (a critic-only
        update of a delayed actor); it is taken at the next round that ends complete.
    """

    learning_starts: int
    train_freq: int
    gradient_steps: int
    batch_size: int
    log_every: int
    n_envs: int = 1
    log_due: bool = False

    @classmethod
    def of(cls, agent_config, log_every: int, n_envs: int = 1) -> Cadence:
        """The cadence of an agent's resolved config and the run's ``log_every`` and
        ``n_envs``."""
        return cls(**agent_config.rounds(n_envs), log_every=log_every, n_envs=n_envs)

    def updates_due(self, env_steps: int, stored: int) -> int:
        """Gradient steps to take now that ``env_steps`` env steps are done and the replay
        buffer holds ``stored`` transitions: ``gradient_steps`` at every ``train_freq``-th
        vector step once ``learning_starts`` env steps are done and a batch is stored, else 0.
        (SB3's ``OffPolicyAlgorithm.learn``: ``train_freq`` counts ``env.step`` calls of the
        vector env, ``learning_starts`` its ``num_timesteps``.)"""
        if (env_steps >= self.learning_starts and stored >= self.batch_size
                and (env_steps // self.n_envs) % self.train_freq == 0):
            return self.gradient_steps
        return 0

    def log_round(self, first: int, k: int, schedule) -> bool:
        """Whether the last of the ``k`` updates numbered from ``first`` is logged.

        A log falls due at every ``log_every``-th update. It is taken from the round's last
        update when that update is complete (``schedule.is_complete``: the actor's loss too),
        else it stays due for the next round.
        """
        self.log_due = self.log_due or any((first + j) % self.log_every == 0 for j in range(k))
        log = self.log_due and schedule.is_complete(first + k - 1)
        self.log_due = self.log_due and not log
        return log


def run_round(agent, k: int, log: bool) -> tuple[list[dict], dict | None]:
    """``k`` gradient steps of ``agent`` on batches from its replay buffer.

    With ``gradient_steps > 1`` the round runs through the multi-update loop (one ``sess.run``);
    a logged last update runs on its own, with its BN diagnostics.

    Returns:
      The scalars of every update, and those of the logged update (None without a log).
    """
    scalars, logged = [], None
    unlogged = k - 1 if log else k
    if agent.config.gradient_steps > 1:
        scalars += agent.train_steps(unlogged)
    else:
        scalars += [agent.train_step() for _ in range(unlogged)]
    if log:
        logged = agent.train_step(log=True)
        scalars.append(logged)
    return scalars, logged


def run_group_round(group, members: list[int], k: int,
                    log: bool) -> list[tuple[list[dict], dict | None]]:
    """``run_round`` for ``members`` of an ``agents.group.AgentGroup`` in lockstep: the same
    updates, each ``sess.run`` running all members' at once; each member's
    ``(scalars, logged)``."""
    unlogged = k - 1 if log else k
    if group.config.gradient_steps > 1:
        scalars = group.train_steps(unlogged, members)
    else:
        steps = [group.train_step(members=members) for _ in range(unlogged)]
        scalars = [[step[j] for step in steps] for j in range(len(members))]
    logged = group.train_step(log=True, members=members) if log else [None] * len(members)
    return [(values + ([last] if last is not None else []), last)
            for values, last in zip(scalars, logged, strict=True)]
