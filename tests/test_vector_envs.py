"""Vectorized training envs (``--n-envs``): per-sub-env bookkeeping across autoreset, SB3's
update counting, one sub-env equal to the single-env loop, async equal to sync, the settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from gymnasium import spaces

from bnrl.agents import ReplayBuffer
from bnrl.agents.policy import DeterministicHead
from bnrl.common.errors import UserError
from bnrl.compare.grid import plan, read_grid
from bnrl.compare.results import resolve_spec
from bnrl.training import checkpoint, resolve, train
from bnrl.training.cadence import Cadence, run_round
from bnrl.training.runs import build_agent, make_run_env

from _cli import run_captured

# DQN on CartPole: short episodes (many ends and autoresets per sub-env), cheap updates.
DQN_SETTINGS = {"learning_starts": 120, "batch_size": 16, "hidden": [16], "buffer_size": 10_000,
                "train_freq": 2, "gradient_steps": 1, "target_update_interval": 50}
# Bounds at which CartPole-v1 terminates (gymnasium's cartpole.py): |x| > 2.4, |angle| > 12 deg.
X_LIMIT, ANGLE_LIMIT = 2.4, 12 * 2 * np.pi / 360


def _config(n_envs: int, steps: int = 480, agent: str = "dqn", env: str = "CartPole-v1",
            settings=None, **train_settings):
    train_settings = {"eval_every": steps, **train_settings}
    return resolve(agent, env, None, {"steps": steps, "eval_episodes": 1, "n_envs": n_envs,
                                      **train_settings},
                   settings if settings is not None else DQN_SETTINGS)


def _train(config, run_dir: Path) -> dict:
    return train(config, run_dir, progress="none")


def _replay(run_dir: Path, config) -> dict:
    """The transitions of the run's last checkpoint, oldest first."""
    env = make_run_env(config, 0)
    agent = build_agent(config, env)
    buffer = ReplayBuffer(agent.buffer.capacity, agent.observation.shape,
                          agent.head.action_shape, agent.head.action_dtype,
                          obs_dtype=agent.observation.dtype, streams=config.n_envs)
    agent.close()
    env.close()
    buffer.load(checkpoint.latest(run_dir) / "replay.npz")
    return buffer.transitions()


def _events(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return [(e.step, v.simple_value) for path in sorted(run_dir.glob("events.out.tfevents.*"))
            for e in LegacyEventFileLoader(str(path)).Load() if e.HasField("summary")
            for v in e.summary.value if v.tag == tag]


@pytest.fixture(scope="module")
def three_envs(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vec") / "run"
    config = _config(3, eval_every=100, checkpoint_every=200)
    summary = _train(config, run_dir)
    return config, run_dir, summary, _replay(run_dir, config)


def test_each_sub_env_is_its_own_stream_across_autoreset(three_envs):
    config, _, _, replay = three_envs
    n = config.n_envs
    assert len(replay["obs"]) == config.steps
    for i in range(n):  # arrival order is sub-env 0, 1, 2, 0, 1, 2, ...
        obs, next_obs = replay["obs"][i::n], replay["next_obs"][i::n]
        ended = replay["episode_end"][i::n]
        terminated = replay["terminated"][i::n]
        # Within an episode a sub-env's next observation is its own following one.
        assert np.array_equal(next_obs[:-1][~ended[:-1]], obs[1:][~ended[:-1]])
        # At an episode end the stored next_obs is the ended episode's last observation
        # (info["final_obs"]), not the next episode's first: for CartPole it is out of bounds
        # exactly when the step terminated, and the next episode starts near 0 (|s| <= 0.05).
        out = (np.abs(next_obs[:, 0]) > X_LIMIT) | (np.abs(next_obs[:, 2]) > ANGLE_LIMIT)
        assert np.array_equal(out, terminated.astype(bool))
        assert ended.sum() >= 3, "too few episodes to test the autoreset"
        assert np.all(np.abs(obs[1:][ended[:-1]]) <= 0.05)


def test_episodes_are_logged_per_sub_env(three_envs):
    config, run_dir, _, replay = three_envs
    n = config.n_envs
    expected = []
    for i in range(n):
        ends = np.flatnonzero(replay["episode_end"][i::n])
        # The episode ending at a sub-env's j-th transition is logged at env step (j + 1) * n.
        expected += [((j + 1) * n, length) for j, length in zip(ends, np.diff(ends, prepend=-1))]
    logged = _events(run_dir, "charts/episodic_length")
    assert sorted(logged) == sorted((step, float(length)) for step, length in expected)
    # CartPole pays 1 per step: each return is its episode's length.
    assert sorted(_events(run_dir, "charts/episodic_return")) == sorted(logged)


def test_train_freq_counts_vector_steps_as_sb3(three_envs):
    config, _, summary, _ = three_envs
    c, n = config.agent_config, config.n_envs
    # SB3: a round every train_freq calls of the vector env's step, once learning_starts env
    # steps are collected.
    rounds = sum(1 for v in range(1, config.steps // n + 1)
                 if v * n >= c.learning_starts and v % c.train_freq == 0)
    assert summary["updates"] == rounds * c.gradient_steps == 61


def test_evaluations_and_checkpoints_at_the_vector_step_reaching_each_multiple(three_envs):
    _, run_dir, summary, _ = three_envs
    assert summary["eval_steps"] == [102, 201, 300, 402, 480]
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(run_dir)] == [
        201, 402, 480]


def test_cadence_of_a_vector_env():
    cadence = Cadence(learning_starts=12, train_freq=2, gradient_steps=3, batch_size=1,
                      log_every=100, n_envs=4)
    due = [cadence.updates_due(step, 100) for step in range(4, 36, 4)]
    # Env steps 4, 8, ..., 32 are vector steps 1..8: every 2nd from env step 12 on.
    assert due == [0, 0, 0, 3, 0, 3, 0, 3]


def test_one_sub_env_is_the_single_env_loop(tmp_path):
    """With n_envs 1 a run is exactly the loop of one env: act, step, observe, reset at an
    episode end, update as the cadence says (SAC on Pendulum: truncations, the OU-free head)."""
    settings = {"learning_starts": 100, "batch_size": 16, "hidden": [16, 16],
                "actor_hidden": [16, 16], "buffer_size": 1_000}
    config = _config(1, steps=460, agent="sac", env="Pendulum-v1", settings=settings,
                     max_episode_steps=150)
    _train(config, tmp_path / "run")
    replay = _replay(tmp_path / "run", config)

    env = make_run_env(config, config.seed, training=True)
    agent = build_agent(config, env)
    cadence = Cadence.of(agent.config, config.log_every)
    obs, _ = env.reset(seed=config.seed)
    for step in range(1, config.steps + 1):
        action = agent.act(obs, explore=True)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        agent.observe(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        k = cadence.updates_due(step, len(agent.buffer))
        if k:
            run_round(agent, k, cadence.log_round(agent.updates_done, k, agent.schedule))
    expected = agent.buffer.transitions()
    weights = {v.name.split(":")[0]: value for v, value in zip(
        agent.graph.get_collection("variables"),
        agent.sess.run(agent.graph.get_collection("variables")))}
    agent.close()
    env.close()
    for key, value in expected.items():
        assert replay[key].tobytes() == value.tobytes(), key
    saved = tf.train.load_checkpoint(str(checkpoint.latest(tmp_path / "run") / "model"))
    for name, value in weights.items():
        assert np.array_equal(saved.get_tensor(name), value), name


def test_async_sub_envs_give_the_same_run(tmp_path, three_envs):
    config = _config(3, vector_env="async")
    _train(config, tmp_path / "run")
    replay = _replay(tmp_path / "run", config)
    for key, value in three_envs[3].items():
        assert replay[key].tobytes() == value.tobytes(), key


def test_ou_noise_is_kept_per_sub_env():
    config = resolve("td3", "Pendulum-v1", None, {}, {"action_noise": "ou"}).agent_config
    head = DeterministicHead(spaces.Box(-1, 1, (2,)), config, np.random.default_rng(0), n_envs=2)
    for _ in range(5):
        head.act(np.zeros(2, np.float32), True, 0, env=0)
        head.act(np.zeros(2, np.float32), True, 0, env=1)
    assert np.all(head._ou_state != 0)
    head.episode_end(env=1)
    assert np.all(head._ou_state[0] != 0) and np.all(head._ou_state[1] == 0)


@pytest.mark.parametrize("flags, message", [
    (["--n-envs", "2000"], "--n-envs must be in [1, 1024], got 2000"),
    (["--n-envs", "8", "--set", "buffer_size=4", "--set", "batch_size=2"],
     "buffer_size (4) must be at least n_envs (8)"),
])
def test_bad_vector_settings_are_one_line(flags, message, tmp_path, capsys):
    code, _, err = run_captured(["train", "--agent", "dqn", "--env", "CartPole-v1",
                                 "--logdir", tmp_path / "run", *flags], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_vector_env_mode_is_checked():
    with pytest.raises(UserError, match="vector_env must be one of sync, async, got 'threads'"):
        _config(2, vector_env="threads")


def test_the_benchmark_records_n_envs(tmp_path):
    specs = plan(tmp_path, ["dqn"], ["CartPole-v1"], ["none"], 2, 400, n_envs=4)
    assert [s.n_envs for s in specs] == [4, 4]
    assert resolve_spec(specs[0]).n_envs == 4
    assert read_grid(tmp_path / "grid.json")["n_envs"] == 4
    # A grid recorded before n_envs existed reads as the default.
    old = json.loads((tmp_path / "grid.json").read_text())
    del old["n_envs"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_grid(tmp_path / "old.json")["n_envs"] is None

