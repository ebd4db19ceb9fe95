"""Seeds trained side by side (``agents.group.AgentGroup``, issue 29) equal seeds trained alone.

K members of a group and K single agents of the same seeds are driven through the same
transitions (acting, observing, updating as the training loop does); every variable (weights,
BN moving statistics, target networks, optimizer slots, the update counter), every action and
every loss must then be equal: bit for bit on the plain path, to float tolerance with XLA. A
member that drops out leaves the others as they were; a member's checkpoint is a single
agent's. Tiny networks (hidden 16) and batches of 8 keep each test to seconds.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from gymnasium import spaces

from bnrl.agents import AGENTS, Agent, config_from_dict
from bnrl.agents.group import AgentGroup

SEEDS = (3, 4, 5)
OBS = spaces.Box(-1.0, 1.0, (3,), np.float32)
DISCRETE, BOX = spaces.Discrete(2), spaces.Box(-1.0, 1.0, (2,), np.float32)
TINY = dict(hidden=(16,), batch_size=8, buffer_size=400, learning_starts=20, xla=False)
# DQN with BN (critic and input) updating every step; SAC with BN in critic and actor, a delayed
# actor and two updates per round (the multi-update loop).
DQN_BN = dict(TINY, critic_norm="batch", critic_input_norm=True, target_update_interval=10)
SAC_BN = dict(TINY, actor_hidden=(16,), critic_norm="batch", actor_norm="batch",
              policy_delay=2, gradient_steps=2)


def _config(name: str, settings: dict):
    return config_from_dict(AGENTS[name].config_class, settings)


def _build(name: str, settings: dict, seeds=SEEDS):
    action_space = DISCRETE if name == "dqn" else BOX
    config = _config(name, settings)
    group = AgentGroup(AGENTS[name], OBS, action_space, config, seeds)
    singles = [Agent(AGENTS[name], OBS, action_space, config, seed) for seed in seeds]
    return group, singles


def _values(sess, agent) -> list[np.ndarray]:
    return sess.run(agent.variables)


def _drive(group, singles, steps: int, exact: bool, drop_at: int | None = None):
    """``steps`` env steps of every active member and its single agent on the same random
    transitions (episodes of 10 steps), updating as the loop does once ``learning_starts`` is
    reached (one step, or a round of ``gradient_steps``, with a logged update every 5th).
    Member ``active[1]`` drops out after step ``drop_at``. Returns the group's and the singles'
    scalars."""
    rngs = {i: np.random.default_rng(100 + i) for i in group.active}
    obs = {i: rngs[i].normal(size=(1, 3)).astype(np.float32) for i in group.active}
    grouped, alone = [], []
    k = group.config.gradient_steps
    for t in range(steps):
        if t == drop_at:
            group.drop(group.active[1])
        active = list(group.active)
        actions = group.act_batch([obs[i] for i in active], explore=True)
        for i, action in zip(active, actions, strict=True):
            single = singles[i].act_batch(obs[i], explore=True)
            if exact:
                np.testing.assert_array_equal(action, single)
            next_obs = rngs[i].normal(size=(1, 3)).astype(np.float32)
            reward = rngs[i].normal(size=1).astype(np.float32)
            for agent in (group.members[i], singles[i]):
                agent.observe_batch(obs[i], action, reward, next_obs, np.array([False]),
                                    np.array([t % 10 == 9]))
            obs[i] = next_obs
        if t < group.config.learning_starts:
            continue
        log = t % 5 == 0
        if k > 1:
            grouped.append(group.train_steps(k))
            alone.append([singles[i].train_steps(k) for i in active])
        else:
            grouped.append(group.train_step(log=log))
            alone.append([singles[i].train_step(log=log) for i in active])
    return grouped, alone


def _assert_members_equal_singles(group, singles, exact: bool):
    for i in range(len(singles)):
        member, single = group.members[i], singles[i]
        assert member.updates_done == single.updates_done
        for v, got, want in zip(member.variables, _values(group.sess, member),
                                _values(single.sess, single), strict=True):
            if exact:
                np.testing.assert_array_equal(got, want, err_msg=v.name)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=v.name)


def _moving_means(sess, agent) -> list[np.ndarray]:
    return [value for v, value in zip(agent.variables, _values(sess, agent), strict=True)
            if "moving_mean" in v.name]


# Steps: 200 updates of DQN, 200 of SAC (2 per round of 100), a few hundred as issue 29 asks.
@pytest.mark.parametrize("name, settings, steps", [("dqn", DQN_BN, 220), ("sac", SAC_BN, 120)],
                         ids=["dqn", "sac"])
def test_group_members_equal_single_agents_bit_for_bit(name, settings, steps, tmp_path):
    group, singles = _build(name, settings)
    try:
        _assert_members_equal_singles(group, singles, exact=True)  # the initial values
        before = _moving_means(group.sess, group.members[0])
        grouped, alone = _drive(group, singles, steps, exact=True, drop_at=steps - 40)
        assert grouped == alone  # every loss and BN diagnostic of every update
        _assert_members_equal_singles(group, singles, exact=True)
        # Not trivially equal: BN statistics moved, and the seeds trained apart.
        after = _moving_means(group.sess, group.members[0])
        assert before and not any(np.array_equal(a, b) for a, b in zip(before, after))
        first, second = (_values(group.sess, m)[-1] for m in group.members[:2])
        assert not np.array_equal(first, second)
        # The dropped member stopped where it dropped out; the others went on.
        assert group.active == [0, 2]
        counts = [m.updates_done for m in group.members]
        assert counts[0] == counts[2] > counts[1] > 0
        if name == "dqn":
            _assert_checkpoints_interchange(group, singles, tmp_path)
    finally:
        group.close()
        for single in singles:
            single.close()


def _assert_checkpoints_interchange(group, singles, tmp_path):
    """A member saves under the single agent's names: a single agent restores it to the same
    values, and a member restores a single agent's (a grid may mix grouped and single runs)."""
    member, single = group.members[2], singles[1]
    member.save(str(tmp_path / "member"))
    single.restore(str(tmp_path / "member"))
    assert single.updates_done == member.updates_done
    for got, want in zip(_values(single.sess, single), _values(group.sess, member), strict=True):
        np.testing.assert_array_equal(got, want)
    singles[0].save(str(tmp_path / "single"))
    assert not np.array_equal(_values(group.sess, member)[-1], _values(singles[0].sess,
                                                                        singles[0])[-1])
    member.restore(str(tmp_path / "single"))
    assert member.updates_done == singles[0].updates_done
    for got, want in zip(_values(group.sess, member), _values(singles[0].sess, singles[0]),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_group_members_equal_single_agents_with_xla():
    """XLA compiles each member's update on its own: equal to float tolerance (the compiled
    kernels need not sum in the plain path's order; two members, the XLA compiles are slow)."""
    group, singles = _build("sac", dict(SAC_BN, xla=True), seeds=SEEDS[:2])
    try:
        grouped, alone = _drive(group, singles, 60, exact=False)
        for got, want in zip(grouped, alone, strict=True):
            for g, w in zip(got, want, strict=True):
                for gs, ws in zip(g, w, strict=True):
                    assert gs.keys() == ws.keys()
                    np.testing.assert_allclose(list(gs.values()), list(ws.values()),
                                               rtol=1e-4, atol=1e-5)
        _assert_members_equal_singles(group, singles, exact=False)
    finally:
        group.close()
        for single in singles:
            single.close()


def test_group_refuses_repeated_seeds():
    with pytest.raises(ValueError, match="distinct seeds"):
        AgentGroup(AGENTS["dqn"], OBS, DISCRETE, _config("dqn", DQN_BN), (1, 1))


# ------------------------------------------------------------------------ the grouped loop
def _run_config(seed: int, steps: int = 80, **settings):
    from bnrl.training.config import RunConfig

    # Pendulum, SAC with BN, two updates per round (the multi-update loop), evaluated twice:
    # the smallest run that exercises every part of the loop the group changes.
    config = RunConfig(agent="sac", env="Pendulum-v1", seed=seed, steps=steps, eval_every=40,
                       eval_episodes=1, checkpoint_every=40, log_every=10,
                       agent_config=dict(SAC_BN, learning_starts=30, **settings))
    config.validate()
    return config


def _written(run_dir) -> dict:
    """What a run wrote that must not depend on grouping (timings aside)."""
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    for timing in ("wall_time_s", "updates_per_second"):
        summary.pop(timing)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    return {"summary": summary, "metrics": (run_dir / "metrics.csv").read_text(),
            "config": (run_dir / "config.yaml").read_text(), "checkpoints": checkpoints}


def test_grouped_runs_write_what_single_runs_write(tmp_path):
    from bnrl.training.loop import train, train_group

    seeds = (0, 1)
    configs = [_run_config(seed) for seed in seeds]
    results = train_group(configs, [tmp_path / "group" / f"s{s}" for s in seeds])
    for seed, config, result in zip(seeds, configs, results, strict=True):
        assert isinstance(result, dict), result
        train(config, tmp_path / "single" / f"s{seed}", progress="none")
        grouped, alone = (_written(tmp_path / kind / f"s{seed}") for kind in ("group", "single"))
        assert grouped == alone
        assert len(grouped["summary"]["eval_returns"]) == 2 and grouped["summary"]["updates"]
    assert results[0]["eval_returns"] != results[1]["eval_returns"]


def test_one_seeds_env_failure_stays_its_own(tmp_path):
    """The env of seed 1 raises at its 120th step (tests/_failing_env.py): that run ends with
    train's one line (env, step, what it keeps), the other seeds finish."""
    from tests import _failing_env

    from bnrl.common.errors import EnvFailed
    from bnrl.training.config import RunConfig
    from bnrl.training.loop import train_group

    seeds = (0, _failing_env.FAILING_SEED, 2)
    configs = []
    for seed in seeds:
        config = RunConfig(agent="sac", env=f"tests._failing_env:{_failing_env.ENV_ID}",
                           seed=seed, steps=160, eval_every=80, eval_episodes=1,
                           checkpoint_every=80,
                           agent_config=dict(SAC_BN, learning_starts=30))
        config.validate()
        configs.append(config)
    results = train_group(configs, [tmp_path / f"s{s}" for s in seeds])
    failed = results[1]
    assert isinstance(failed, EnvFailed)
    line = str(failed)
    assert "\n" not in line and _failing_env.MESSAGE in line and "env step 120" in line
    assert "keeps its checkpoint at step 80" in line and "--resume" in line
    for i in (0, 2):
        assert isinstance(results[i], dict) and results[i]["steps"] == 160
        assert (tmp_path / f"s{seeds[i]}" / "summary.json").is_file()
    assert not (tmp_path / "s1" / "summary.json").exists()


def test_a_group_resumes_each_seed_from_its_own_checkpoint(tmp_path):
    """Seed 1 was checkpointed at step 40 (a group killed between its seeds' checkpoints
    leaves them at different steps), seed 0 has nothing: the group steps seed 0 alone up to 40,
    then both, and each ends as the same seed resumed alone."""
    import shutil

    from bnrl.training.loop import train, train_group

    train(_run_config(1, steps=40), tmp_path / "group" / "s1", progress="none")
    shutil.copytree(tmp_path / "group" / "s1", tmp_path / "single" / "s1")
    results = train_group([_run_config(0), _run_config(1)],
                          [tmp_path / "group" / "s0", tmp_path / "group" / "s1"],
                          resume=[False, True])
    assert all(isinstance(r, dict) for r in results), results
    assert results[1]["resumes"] == 1 and results[0]["resumes"] == 0
    train(_run_config(0), tmp_path / "single" / "s0", progress="none")
    train(_run_config(1), tmp_path / "single" / "s1", resume=True, progress="none")
    for seed in (0, 1):
        grouped, alone = (_written(tmp_path / kind / f"s{seed}") for kind in ("group", "single"))
        assert grouped == alone


def test_one_seeds_nan_loss_is_recorded_as_its_own_failure(tmp_path):
    """The seed-1 run of a grouped unit (``compare.workers.run_unit``, what a benchmark worker
    runs) gets NaN rewards after 150 steps (tests/_nan_env.py), the env-boundary check off so
    that they reach its losses: its record fails with train's one line (the step, the loss, the
    checkpoint kept), and seed 0, trained in the same graph, finishes as an ok record."""
    import json

    from bnrl.compare import workers
    from bnrl.compare.results import RunSpec
    from tests import _nan_env

    config_file = tmp_path / "unchecked.yaml"
    config_file.write_text("train: {check_finite: false, eval_episodes: 1, checkpoint_every: 100}\n"
                           f"agent: {json.dumps(dict(TINY, actor_hidden=[16]))}\n")
    env = f"tests._nan_env:{_nan_env.ONE_SEED_ENV_ID}"
    specs = [RunSpec("sac", env, "none", seed, 200, str(config_file),
                     str(tmp_path / f"seed{seed}"), 1, 100) for seed in (0, _nan_env.NAN_SEED)]
    ok, failed = workers.run_unit(specs)
    assert failed["status"] == "failed" and "\n" not in failed["error"], failed
    match = re.match(r"NonFiniteValue: training stopped at env step (\d+): losses/\w+ is nan",
                     failed["error"])
    assert match and _nan_env.NAN_AFTER < int(match.group(1)) < 200, failed["error"]
    assert failed["error"].endswith("keeps its checkpoint at step 100"), failed["error"]
    assert (tmp_path / "seed1" / "error.txt").is_file()
    assert not (tmp_path / "seed1" / "summary.json").exists()
    assert ok["status"] == "ok" and ok["error"] is None, ok
    assert ok["eval_steps"] == [100, 200] and all(np.isfinite(ok["eval_returns"]))


def test_ctrl_c_in_a_group_says_what_every_run_kept(tmp_path, monkeypatch):
    """Ctrl-C in the grouped loop (what a benchmark worker gets from a terminal's SIGINT) ends
    it as it ends ``train``: a KeyboardInterrupt saying, for every run, the step, the checkpoint
    it keeps and to continue with --resume, and the run directories released (resuming a group
    from its checkpoints: test_a_group_resumes_each_seed_from_its_own_checkpoint)."""
    from bnrl.common import files
    from bnrl.training import loop

    real_round = loop.run_group_round

    def interrupted_round(group, members, k, log):
        if min(group.members[i].env_steps for i in members) > 50:
            raise KeyboardInterrupt
        return real_round(group, members, k, log)

    monkeypatch.setattr(loop, "run_group_round", interrupted_round)
    dirs = [tmp_path / f"s{seed}" for seed in (0, 1)]
    plain = dict(critic_norm="none", actor_norm="none", gradient_steps=1, policy_delay=1)
    with pytest.raises(KeyboardInterrupt) as stopped:
        loop.train_group([_run_config(seed, **plain) for seed in (0, 1)], dirs)
    assert str(stopped.value) == "; ".join(
        f"interrupted at env step 51; {d} keeps its checkpoint at step 40: continue with the "
        "same command and --resume" for d in dirs)
    for run_dir in dirs:
        os.close(files.lock_directory(run_dir))  # not held any more
        assert not (run_dir / "summary.json").exists()


def test_a_grid_of_fewer_units_than_workers_trains_on_every_core(monkeypatch):
    """--workers 2 on 4 cores: each run of a 4-run grid gets 2 threads (cores // workers, the
    grid's default); a cell of 5 seeds grouped into one process gets all 4, not 2 with 2 cores
    idle; two groups (3 + 2) get 2 each."""
    from bnrl.compare import workers
    from bnrl.compare.results import RunSpec

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    specs = [RunSpec("sac", "Pendulum-v1", "none", seed, 100, None, f"s{seed}", 2, 50)
             for seed in range(5)]

    def threads(k: int, runs: int = 5) -> list[list[int]]:
        units = workers._share_cores(workers._units(specs[:runs], k), 2)
        return [[spec.threads for spec in unit] for unit in units]

    assert threads(1, runs=4) == [[2], [2], [2], [2]]
    assert threads(5) == [[4] * 5]
    assert threads(3) == [[2, 2, 2], [2, 2]]
    assert threads(1, runs=1) == [[4]]  # one run left to resume
