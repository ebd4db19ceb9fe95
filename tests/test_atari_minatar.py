"""The image env families: ALE's standard DQN preprocessing, MinAtar as it is, their presets,
and one-line errors when an extra is missing (envs/families.py, training/config.py).

Tests that run ALE or MinAtar skip without the ``atari`` / ``minatar`` extras.
"""

from __future__ import annotations

import re
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import AtariPreprocessing, ClipReward, FrameStackObservation

from bnrl.common.errors import UserError
from bnrl.common.extras import install_hint
from bnrl.envs import EnvError, make_env
from bnrl.envs.families import MINATAR_MAX_EPISODE_STEPS, EpisodicLife
from bnrl.training import runs
from bnrl.training.config import RunConfig, resolve
from bnrl.training.runs import make_run_env

from _cli import main, one_line

AGENTS = {"dqn": "discrete", "sac": "box"}


def _chain(env) -> list[type]:
    found = []
    while isinstance(env, gym.Wrapper):
        found.append(type(env))
        env = env.env
    return found


# ------------------------------------------------------------------------- missing extras
@pytest.mark.parametrize("env_id,extra,module", [("MinAtar/Breakout-v1", "minatar", "minatar"),
                                                 ("ALE/Pong-v5", "atari", "ale_py")])
def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, capsys, env_id, extra,
                                                        module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, f"{module}.gym", None)
    with pytest.raises(EnvError, match=re.escape(install_hint(extra))):
        make_env(env_id, 0)
    code = main(["train", "--agent", "dqn", "--env", env_id, "--steps", "10", "--quiet"])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith("bnrl: error: ") and install_hint(extra) in line


# -------------------------------------------------------------------------------- MinAtar
def test_minatar_as_it_is():
    pytest.importorskip("minatar")
    env = make_env("MinAtar/Breakout-v1", 0, agent="dqn", agents=AGENTS)
    obs, _ = env.reset()
    assert env.observation_space.shape == (10, 10, 4) and env.observation_space.dtype == bool
    assert obs.dtype == bool and obs.shape == (10, 10, 4)
    assert env.action_space == gym.spaces.Discrete(3)
    env.close()


def test_a_minatar_episode_that_never_ends_is_truncated():
    """Seaquest's sub left at the surface is never hit and never runs out of oxygen: without the
    default limit an evaluation of that greedy policy would never return."""
    pytest.importorskip("minatar")
    env = make_env("MinAtar/Seaquest-v1", 0, agent="dqn", agents=AGENTS)
    env.reset()
    for step in range(1, MINATAR_MAX_EPISODE_STEPS + 1):
        _, _, terminated, truncated, _ = env.step(0)
        assert not terminated
        if truncated:
            break
    assert step == MINATAR_MAX_EPISODE_STEPS == 27_000 and truncated
    env.close()
    limited = make_env("MinAtar/Seaquest-v1", 0, agent="dqn", agents=AGENTS, max_episode_steps=5)
    limited.reset()
    assert [limited.step(0)[3] for _ in range(5)] == [False] * 4 + [True]
    limited.close()


def test_vector_agents_refuse_image_envs_in_one_line():
    """An image env with Box actions (registered here) for SAC: refused before any agent is
    built, naming the agent that takes images."""

    class ImageBox(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (8, 8, 1), np.uint8)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros((8, 8, 1), np.uint8), {}

    gym.register("BnrlTestImageBox-v0", entry_point=ImageBox)
    try:
        config = RunConfig(agent="sac", env="BnrlTestImageBox-v0")
        config.validate()
        with pytest.raises(UserError, match=r"'sac' takes vector observations only.*use dqn"):
            make_run_env(config, 0)
    finally:
        del gym.registry["BnrlTestImageBox-v0"]


# ------------------------------------------------------------------------------------ ALE
@pytest.fixture(scope="module")
def atari():
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")


def test_ale_training_and_evaluation_wrappers(atari):
    train = make_env("ALE/Breakout-v5", 0, agent="dqn", agents=AGENTS, training=True)
    evaluation = make_env("ALE/Breakout-v5", 0, agent="dqn", agents=AGENTS)
    try:
        for env in (train, evaluation):
            assert env.observation_space == gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
            assert {AtariPreprocessing, FrameStackObservation} <= set(_chain(env))
            pre = next(w for w in _chain_objects(env) if isinstance(w, AtariPreprocessing))
            assert (pre.frame_skip, pre.noop_max, pre.screen_size) == (4, 30, (84, 84))
            assert pre.grayscale_obs and not pre.terminal_on_life_loss
            assert env.unwrapped._frameskip == 1  # the wrapper skips, not the emulator
            sticky = env.unwrapped.ale.getFloat("repeat_action_probability")
            assert sticky == pytest.approx(0.25)  # Machado et al. 2018
        # episodic life and reward clipping in training only
        assert {EpisodicLife, ClipReward} <= set(_chain(train))
        assert not {EpisodicLife, ClipReward} & set(_chain(evaluation))
    finally:
        train.close()
        evaluation.close()


def _chain_objects(env) -> list:
    found = []
    while isinstance(env, gym.Wrapper):
        found.append(env)
        env = env.env
    return found


def test_ale_frame_stack_is_channels_last_newest_last(atari):
    env = make_env("ALE/Pong-v5", 0, agent="dqn", agents=AGENTS)
    try:
        obs, _ = env.reset()
        assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
        assert all((obs[..., k] == obs[..., 0]).all() for k in range(4))  # padded with reset
        previous = obs
        for _ in range(30):
            obs, *_ = env.step(env.action_space.sample())
            np.testing.assert_array_equal(obs[..., :3], previous[..., 1:])
            previous = obs
        assert previous[..., 3].any()
    finally:
        env.close()


def test_episodic_life_ends_the_episode_not_the_game(atari):
    """Breakout, random play: a lost life is terminated for the agent; the reset after it goes
    on with the same game (one life fewer, the frame counter not restarted)."""
    env = make_env("ALE/Breakout-v5", 0, agent="dqn", agents=AGENTS, training=True)
    try:
        env.reset()
        ale = env.unwrapped.ale
        assert ale.lives() == 5
        rewards = set()
        for _ in range(5000):
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            rewards.add(float(reward))
            if terminated or truncated:
                break
        assert terminated and ale.lives() == 4 and not ale.game_over()
        frame = ale.getEpisodeFrameNumber()
        env.reset()
        assert ale.lives() == 4 and ale.getEpisodeFrameNumber() > frame
        assert rewards <= {0.0, 1.0}  # clipped (Breakout's bricks give 1, 4 or 7)
    finally:
        env.close()


# -------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("env_id,expected", [
    ("MinAtar/Breakout-v1", dict(learning_rate=2.5e-4, train_freq=1, target_update_interval=1000,
                                 exploration_final_eps=0.1, double_q=False, buffer_size=100_000)),
    ("ALE/Pong-v5", dict(learning_rate=1e-4, train_freq=4, target_update_interval=250,
                         exploration_final_eps=0.01, double_q=False, learning_starts=100_000)),
    ("CartPole-v1", dict(learning_rate=5e-4, double_q=True)),  # its own file, unchanged
])
def test_family_presets(env_id, expected):
    config = resolve(agent="dqn", env=env_id).agent_config
    assert {key: getattr(config, key) for key in expected} == expected


def test_family_preset_yields_to_flags():
    config = resolve(agent="dqn", env="MinAtar/Asterix-v1",
                     agent_overrides={"learning_rate": 1e-3, "n_steps": 3})
    assert config.agent_config.learning_rate == 1e-3 and config.agent_config.n_steps == 3
    assert config.steps == 5_000_000  # the family's train: section


@pytest.mark.parametrize("env_id,encoder,expected", [
    ("MinAtar/Breakout-v1", "nature", "encoder 'nature' needs at least 36x36 pixels, the "
                                      "observation has shape (10, 10, 4): use minatar or auto"),
    ("CartPole-v1", "minatar", "encoder 'minatar' is convolutional but the observation has "
                               "shape (4,): it needs (height, width, channels); use mlp or auto")])
def test_an_encoder_that_does_not_fit_is_one_line(capsys, tmp_path, env_id, encoder, expected):
    if env_id.startswith("MinAtar/"):
        pytest.importorskip("minatar")
    code = main(["train", "--agent", "dqn", "--env", env_id, "--set", f"encoder={encoder}",
                 "--steps", "10", "--logdir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err  # less the warning that 10 steps never reach learning_starts
    lines = [line for line in err.splitlines() if not line.startswith("bnrl: warning:")]
    assert code == 2
    assert one_line("\n".join(lines)) == f"bnrl: error: {env_id}: {expected}"
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_game_statistics_report_whole_games_with_raw_scores(atari):
    """Breakout, random play in the training env: five lives are five episodes for the agent;
    ``info["game"]`` comes with the last one only, counting every agent step and the four no-op
    steps that continued the game after a lost life, and a raw score at least the clipped one."""
    env = make_env("ALE/Breakout-v5", 1, agent="dqn", agents=AGENTS, training=True)
    try:
        env.reset()
        episodes, steps, clipped, game = 0, 0, 0.0, None
        while game is None and steps < 20_000:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            steps, clipped = steps + 1, clipped + float(reward)
            if terminated or truncated:
                episodes += 1
                game = info.get("game")
                if game is None:
                    env.reset()
        assert episodes == 5 and env.unwrapped.ale.game_over()
        assert game["l"] == steps + 4 and game["r"] >= clipped
    finally:
        env.close()


def test_max_episode_steps_counts_agent_steps(atari):
    env = make_env("ALE/Pong-v5", 0, agent="dqn", agents=AGENTS, max_episode_steps=10)
    try:
        env.reset()
        ends = [env.step(0)[3] for _ in range(10)]
        assert ends == [False] * 9 + [True]
        assert env.unwrapped.ale.getEpisodeFrameNumber() >= 40  # 4 frames a step, and no-ops
    finally:
        env.close()


def test_the_memory_check_counts_uint8_images(monkeypatch):
    """The replay-memory check before a run counts a MinAtar transition as its uint8 storage
    (400 bytes of observation, stored once: not beside its next observation), not as float32;
    then a 1-byte episode-start flag, float32 reward and done flag, a bool episode end and an
    int64 action."""
    pytest.importorskip("minatar")
    monkeypatch.setattr(runs, "_memory_bytes", lambda: 1000 * 2**30)
    config = resolve(agent="dqn", env="MinAtar/Breakout-v1",
                     agent_overrides={"buffer_size": 2**30})
    needed = 2**30 * (400 + 1 + 4 * 2 + 1 + 8)
    runs.check_run(config)  # 418 GiB fit in 1000
    monkeypatch.setattr(runs, "_memory_bytes", lambda: needed - 1)
    with pytest.raises(UserError, match="buffer_size 1073741824 needs 418.0 GiB"):
        runs.check_run(config)
