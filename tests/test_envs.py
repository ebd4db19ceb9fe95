"""Tests for envs.make_env: spaces, action scaling, seeding, time limits and error messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from bnrl.agents import ACTION_SPACES
from bnrl.common.extras import install_hint
from bnrl.envs import EnvError, check_agent_env, make_env


def _spy_actions(monkeypatch: pytest.MonkeyPatch, env: gym.Env) -> list[np.ndarray]:
    """Record every action the *unwrapped* env receives, i.e. after all of make_env's wrappers."""
    received: list[np.ndarray] = []
    inner = env.unwrapped
    original = inner.step

    def step(action):
        received.append(np.array(action, copy=True))
        return original(action)

    monkeypatch.setattr(inner, "step", step)
    return received


def _rollout(env: gym.Env, actions: list) -> list[tuple]:
    """Reset, then step through `actions`, resetting (unseeded) whenever an episode ends."""
    steps: list[tuple] = [env.reset()[:1]]
    for a in actions:
        steps.append(env.step(a)[:4])
        if steps[-1][2] or steps[-1][3]:
            steps.append(env.reset()[:1])
    return steps


def _assert_same_rollout(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        for xa, xb in zip(sa, sb, strict=True):
            np.testing.assert_array_equal(xa, xb)


# --- actions ------------------------------------------------------------------------------


def test_pendulum_actions_rescale_from_unit_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env("Pendulum-v1", seed=0)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    received = _spy_actions(monkeypatch, env)
    env.reset()
    for a in (1.0, -1.0, 0.0, 0.5):
        env.step(np.array([a], dtype=np.float32))
    np.testing.assert_allclose(np.concatenate(received), [2.0, -2.0, 0.0, 1.0], atol=1e-6)


def test_pendulum_actions_are_clipped_before_rescaling(monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env("Pendulum-v1", seed=0)
    received = _spy_actions(monkeypatch, env)
    env.reset()
    # Rescaled without clipping these would reach the env as 6.0 and -14.0.
    for a in (3.0, -7.0):
        env.step(np.array([a], dtype=np.float32))
    np.testing.assert_allclose(np.concatenate(received), [2.0, -2.0], atol=1e-6)


def test_pendulum_scaled_action_matches_direct_env_step() -> None:
    wrapped = make_env("Pendulum-v1")
    direct = gym.make("Pendulum-v1")
    obs_w, _ = wrapped.reset(seed=5)
    obs_d, _ = direct.reset(seed=5)
    np.testing.assert_allclose(obs_w, obs_d)
    obs_w, rew_w, *_ = wrapped.step(np.array([0.25], dtype=np.float32))
    obs_d, rew_d, *_ = direct.step(np.array([0.5], dtype=np.float32))
    np.testing.assert_allclose(obs_w, obs_d, rtol=1e-6)
    assert rew_w == pytest.approx(rew_d)


def test_discrete_actions_pass_through() -> None:
    env = make_env("CartPole-v1", agent="dqn", agents=ACTION_SPACES)
    assert env.action_space == gym.spaces.Discrete(2)


# --- observations -------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_observations_are_float32(env_id: str) -> None:
    env = make_env(env_id, seed=0)
    assert env.observation_space.dtype == np.float32
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    obs, *_ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32


def test_non_vector_observations_rejected() -> None:
    with pytest.raises(EnvError, match="1-D Box"):
        make_env("FrozenLake-v1")


# --- seeding ------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_same_seed_same_trajectory(env_id: str) -> None:
    a, b = make_env(env_id, seed=123), make_env(env_id, seed=123)
    actions = [a.action_space.sample() for _ in range(60)]
    assert all(np.array_equal(x, b.action_space.sample()) for x in actions)
    _assert_same_rollout(_rollout(a, actions), _rollout(b, actions))
    # The seed applies to the first reset only; later resets continue, so episodes differ.
    first = a.reset()[0]
    assert np.array_equal(first, b.reset()[0])
    assert not np.array_equal(first, a.reset()[0])


def test_different_seed_different_start() -> None:
    a, b = make_env("Pendulum-v1", seed=1), make_env("Pendulum-v1", seed=2)
    assert not np.array_equal(a.reset()[0], b.reset()[0])


def test_explicit_reset_seed_wins() -> None:
    a, b = make_env("Pendulum-v1", seed=1), make_env("Pendulum-v1", seed=2)
    np.testing.assert_array_equal(a.reset(seed=9)[0], b.reset(seed=9)[0])


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_invalid_seed_rejected(seed: object) -> None:
    with pytest.raises(EnvError, match="invalid seed"):
        make_env("Pendulum-v1", seed=seed)  # type: ignore[arg-type]


# --- time limits --------------------------------------------------------------------------


def test_time_limit_truncates_without_terminating() -> None:
    env = make_env("CartPole-v1", seed=0, max_episode_steps=5)
    env.reset()
    flags = [env.step(a)[2:4] for a in (0, 1, 0, 1, 0)]
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_registered_limit_kept_unless_overridden() -> None:
    assert make_env("CartPole-v1").spec.max_episode_steps == 500
    assert make_env("CartPole-v1", max_episode_steps=5).spec.max_episode_steps == 5


def test_termination_is_not_truncation() -> None:
    env = make_env("CartPole-v1", seed=0)
    env.reset()
    for _ in range(100):  # always pushing left topples the pole in well under 100 steps
        _, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            break
    assert (terminated, truncated) == (True, False)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_invalid_max_episode_steps_rejected(steps: object) -> None:
    with pytest.raises(EnvError, match="max_episode_steps"):
        make_env("CartPole-v1", max_episode_steps=steps)  # type: ignore[arg-type]


# --- errors -------------------------------------------------------------------------------


def _one_line_error(env_id: str, **kwargs: object) -> str:
    with pytest.raises(EnvError) as info:
        if "agent" in kwargs:
            kwargs["agents"] = ACTION_SPACES
        make_env(env_id, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_env_error_is_value_error() -> None:
    assert issubclass(EnvError, ValueError)


def test_unknown_id() -> None:
    message = _one_line_error("Foo-v0")
    assert "'Foo-v0'" in message and "Pendulum-v1" in message and "module:EnvId" in message


@pytest.mark.parametrize("env_id", ["Pendulum-v9", "Pendulum-v0", "nosuchns/Foo-v0", "a:b:c"])
def test_other_bad_ids_are_one_line(env_id: str) -> None:
    assert env_id in _one_line_error(env_id)


def test_unimportable_module_part() -> None:
    message = _one_line_error("bnrl_no_such_module:Foo-v0")
    assert "'bnrl_no_such_module'" in message


def test_dqn_on_pendulum_rejected() -> None:
    message = _one_line_error("Pendulum-v1", agent="dqn")
    assert "discrete" in message and "Pendulum-v1" in message and "sac" in message


def test_sac_on_cartpole_rejected() -> None:
    message = _one_line_error("CartPole-v1", agent="sac")
    assert "continuous (Box)" in message and "Discrete(2)" in message and "dqn" in message


def test_unknown_agent_lists_accepted_names() -> None:
    message = _one_line_error("CartPole-v1", agent="ppo")
    assert all(name in message for name in ACTION_SPACES)


def test_check_agent_env_on_made_env() -> None:
    env = make_env("Pendulum-v1")
    for agent, kind in ACTION_SPACES.items():
        if kind == "box":
            check_agent_env(agent, env, ACTION_SPACES)
        else:
            with pytest.raises(EnvError):
                check_agent_env(agent, env, ACTION_SPACES)


@pytest.mark.parametrize(
    ("env_id", "module", "extra"),
    [("LunarLanderContinuous-v3", "Box2D", "box2d"), ("HalfCheetah-v5", "mujoco", "mujoco")],
)
def test_missing_dependency_suggests_extra(env_id: str, module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    assert install_hint(extra) in _one_line_error(env_id)


# --- user environments --------------------------------------------------------------------


def test_module_colon_env_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    env = make_env("_custom_env:BnrlToyEnv-v0", seed=0, agent="td3", agents=ACTION_SPACES)
    # The toy env emits float64 and acts in [0, 10]: both must be normalised.
    assert env.observation_space.dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs, _ = env.reset()
    assert obs.dtype == np.float32
    received = []
    for a in (-1.0, 0.0, 1.0, 4.0):
        obs, *_ = env.step(np.array([a], dtype=np.float32))
        received.append(obs[0])
    np.testing.assert_allclose(received, [0.0, 5.0, 10.0, 10.0], atol=1e-5)
    assert env.spec.max_episode_steps == 7


def test_module_that_registers_other_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    message = _one_line_error("_custom_env:Missing-v0")
    assert "did not register" in message


# --- evaluation ---------------------------------------------------------------------------


class _Corridor(gym.Env):
    """Records the actions it receives; an episode is ``length`` steps, the reward the action."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(4)

    def __init__(self, length: int):
        self.length, self.actions, self.t = length, [], 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.actions.append(int(action))
        self.t += 1
        return np.zeros(1, np.float32), float(action), self.t == self.length, False, {}


class _Always:
    """A policy that takes action 3, counting its calls; ``explore`` must be False."""

    def __init__(self):
        self.calls = 0

    def act(self, obs, explore):
        assert explore is False
        self.calls += 1
        return 3


@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.0])
def test_an_epsilon_greedy_evaluation_takes_the_drawn_random_actions(epsilon: float) -> None:
    """Each step draws one uniform from a generator seeded with ``action_seed``, and below
    ``epsilon`` a uniformly random action from it instead of the policy's."""
    from bnrl.envs.evaluate import evaluate

    env, policy = _Corridor(length=20), _Always()
    mean, std = evaluate(policy, env, 3, epsilon, action_seed=(7, 100))
    rng = np.random.default_rng((7, 100))
    expected, greedy = [], 0
    for _ in range(3 * 20):
        if epsilon and rng.random() < epsilon:
            expected.append(int(rng.integers(4)))
        else:
            expected.append(3)
            greedy += 1
    assert env.actions == expected and policy.calls == greedy
    returns = np.array(expected, float).reshape(3, 20).sum(axis=1)
    assert (mean, std) == (returns.mean(), returns.std())
    # The three cases are what they claim: greedy only, random only, and a mix.
    assert {0.0: greedy == 60, 1.0: greedy == 0}.get(epsilon, 0 < greedy < 60)
