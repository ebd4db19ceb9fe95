"""The suites and normalization scores in configs/suites.yaml are complete and consistent."""

from __future__ import annotations

import pytest

from bnrl.agents import ACTION_SPACES
from bnrl.common.errors import UserError
from bnrl.compare import suites
from bnrl.training.config import PRESET_DIR


def test_every_suite_env_has_scores_a_preset_and_fitting_agents():
    scores = suites.env_scores()
    for suite in suites.load_suites().values():
        assert suite.description
        for env_id, entry in suite.envs.items():
            assert env_id in scores, f"{env_id} of suite {suite.name} has no normalization scores"
            assert scores[env_id].reference > scores[env_id].random
            assert scores[env_id].reference_source
            assert (PRESET_DIR / f"{env_id}.yaml").exists(), f"{env_id} has no preset"
            assert entry["steps"] > 0 and entry["agents"]
            kinds = {ACTION_SPACES[a] for a in entry["agents"]}
            assert len(kinds) == 1, f"{env_id} mixes discrete and continuous agents"


def test_the_suites_the_issue_names():
    found = suites.load_suites()
    assert set(found["classic"].envs) == {"Pendulum-v1", "MountainCarContinuous-v0",
                                         "CartPole-v1", "Acrobot-v1"}
    assert set(found["mujoco"].envs) == {"InvertedDoublePendulum-v5", "Hopper-v5",
                                        "HalfCheetah-v5", "Walker2d-v5"}
    assert found["mujoco"].extra == "mujoco"
    # The committed multi-env benchmark: at least 4 envs, at least 2 of them MuJoCo.
    assert list(found["bn-critics"].envs) == ["Pendulum-v1", "InvertedDoublePendulum-v5",
                                              "Hopper-v5", "HalfCheetah-v5"]
    assert found["bn-critics"].extra == "mujoco"


def test_normalize_and_agents_for():
    pendulum = suites.env_scores()["Pendulum-v1"]
    assert pendulum.normalize(pendulum.random) == 0.0
    assert pendulum.normalize(pendulum.reference) == pytest.approx(1.0)
    classic = suites.suite("classic")
    assert classic.agents_for("CartPole-v1", None) == ["dqn"]
    assert classic.agents_for("CartPole-v1", ["sac", "dqn"]) == ["dqn"]
    assert classic.agents_for("Pendulum-v1", ["sac", "dqn"]) == ["sac"]


def test_unknown_suite_is_one_line():
    with pytest.raises(UserError,
                       match="unknown suite 'atari': use one of classic, mujoco, bn-critics"):
        suites.suite("atari")
