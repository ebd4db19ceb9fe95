"""Build gymnasium environments in the form every bnrl agent expects.

The agents assume three things about an environment, and `make_env` guarantees
them (or fails early with a one-line `EnvError`):

* observations are a 1-D float32 vector, or an image: a (height, width, channels) uint8 or bool
  array, passed on as it is (DQN stores it as uint8 and converts it in its graph); the Atari and
  MinAtar families (`envs.families`) come with their standard preprocessing;
* continuous actions live in [-1, 1] (the actor's tanh range), whatever the
  environment's own bounds are; discrete actions are indices 0..n-1;
* `terminated` and `truncated` stay separate, because a time-limit truncation
  must still bootstrap from the next state while a true termination must not.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any, Final

import gymnasium as gym
import numpy as np
from gymnasium import error as gym_error
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import RescaleAction, TransformAction, TransformObservation

from bnrl.common.errors import EnvFailed, NonFiniteValue, error_line, first_nonfinite, one_line
from bnrl.common.extras import install_hint
from bnrl.envs.families import MissingExtra, family, make_atari, make_minatar, register

__all__ = ["EnvBoundary", "EnvError", "check_agent_env", "env_action_bounds", "make_env"]

_log = logging.getLogger(__name__)

_KIND_NAMES: Final[dict[str, str]] = {
    "discrete": "a discrete (Discrete)",
    "box": "a continuous (Box)",
}

_UNKNOWN_ID_HINT: Final[str] = (
    "use a gymnasium id such as Pendulum-v1 or CartPole-v1, ALE/<Game>-v5, MinAtar/<Game>-v1, "
    "or 'module:EnvId' for your own"
)


class EnvError(ValueError):
    """A user-facing problem with an environment, described in one line.

    Subclasses ValueError so callers that only know about bad arguments still catch it.
    """


def _is_int(value: object) -> bool:
    # numbers.Integral covers numpy ints; bool is excluded because True is not a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _env_name(env: gym.Env) -> str:
    spec = env.unwrapped.spec
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _agents_for(kind: str, agents: Mapping[str, str]) -> str:
    names = [name for name, k in agents.items() if k == kind]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _check_agent_name(agent: str, agents: Mapping[str, str] | None) -> str:
    if agents is None:
        raise TypeError("make_env(agent=...) needs agents= (bnrl.agents.ACTION_SPACES)")
    kind = agents.get(agent)
    if kind is None:
        raise EnvError(f"unknown agent {agent!r}: use one of {', '.join(agents)}")
    return kind


def check_agent_env(agent: str, env: gym.Env, agents: Mapping[str, str]) -> None:
    """Check that `agent` can act in `env`'s action space.

    Args:
        agent: An agent name, one of the keys of `agents`.
        env: Any gymnasium environment (wrapped or not).
        agents: The action-space kind of every agent by name, "discrete" (`spaces.Discrete`)
            or "box" (`bnrl.agents.ACTION_SPACES`, the agents' registry).

    Raises:
        EnvError: If the agent is unknown or needs another kind of action space.
    """
    kind = _check_agent_name(agent, agents)
    space = env.action_space
    if isinstance(space, spaces.Discrete if kind == "discrete" else spaces.Box):
        return
    if isinstance(space, spaces.Discrete):
        hint = f"use {_agents_for('discrete', agents)} for discrete actions"
    elif isinstance(space, spaces.Box):
        hint = f"use {_agents_for('box', agents)} for continuous actions"
    else:
        hint = "bnrl agents support only Discrete or Box action spaces"
    raise EnvError(
        f"agent {agent!r} needs {_KIND_NAMES[kind]} action space but {_env_name(env)} "
        f"has {one_line(str(space))}; {hint}"
    )


def _check_spaces(env: gym.Env) -> None:
    """Reject observation/action spaces the agents cannot handle."""
    name = _env_name(env)
    obs_space = env.observation_space
    if not (isinstance(obs_space, spaces.Box) and (len(obs_space.shape) == 1
                                                   or _is_image_space(obs_space))):
        raise EnvError(
            f"{name} has observation space {one_line(str(obs_space))}; bnrl accepts 1-D Box "
            "(vector) observations and (height, width, channels) uint8 or bool images"
        )

    act_space = env.action_space
    if isinstance(act_space, spaces.Discrete):
        # Agents emit argmax indices 0..n-1; a shifted start would silently be off by `start`.
        if int(act_space.start) != 0:
            raise EnvError(
                f"{name} has action space {act_space}; bnrl accepts Discrete action spaces "
                "that start at 0"
            )
        return
    if isinstance(act_space, spaces.Box):
        ok = (
            len(act_space.shape) == 1
            and np.issubdtype(act_space.dtype, np.floating)
            and bool(np.all(np.isfinite(act_space.low)))
            and bool(np.all(np.isfinite(act_space.high)))
            and bool(np.all(act_space.low < act_space.high))
        )
        if not ok:
            raise EnvError(
                f"{name} has action space {one_line(str(act_space))}; bnrl accepts 1-D float Box "
                "action spaces with finite bounds (low < high) or Discrete action spaces"
            )
        return
    raise EnvError(
        f"{name} has action space {one_line(str(act_space))}; "
        "bnrl accepts only Discrete or 1-D Box action spaces"
    )


def _is_image_space(space) -> bool:
    """Whether ``space`` is an image bnrl passes on uncast: a 3-D uint8 or bool ``Box``."""
    return (isinstance(space, spaces.Box) and len(space.shape) == 3
            and np.dtype(space.dtype) in (np.dtype(np.uint8), np.dtype(np.bool_)))


def _missing_dependency(env_id: str, exc: Exception) -> EnvError:
    text = one_line(str(exc))
    for extra, label in (("box2d", "Box2D"), ("mujoco", "MuJoCo")):
        if extra in text.lower():
            return EnvError(
                f"environment {env_id!r} needs {label}, which is not installed: "
                f"{install_hint(extra)}"
            )
    return EnvError(f"environment {env_id!r} needs a package that is not installed: {text}")


def _import_failure(env_id: str, exc: ImportError) -> EnvError:
    module = env_id.split(":", 1)[0] if ":" in env_id else None
    # gymnasium re-raises a failed 'module:' import as a new exception; the original,
    # which knows the missing module's name, is its cause.
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    missing = getattr(cause, "name", None)
    if module is not None and missing is not None and (
        module == missing or module.startswith(missing + ".")
    ):
        return EnvError(
            f"cannot import module {module!r} named in {env_id!r}: the part before ':' must be "
            "an importable Python module that registers the environment"
        )
    where = f"importing module {module!r}" if module is not None else "making the environment"
    return EnvError(f"{where} for {env_id!r} failed: {one_line(str(cause))}")


def _make_raw(env_id: str, kwargs: dict[str, Any], training: bool = False) -> gym.Env:
    """`gymnasium.make` with its many error types translated into one-line EnvErrors; an Atari
    id gets its preprocessing (``training``: with the training-only wrappers), a MinAtar id its
    default time limit."""
    try:
        register(env_id)
    except MissingExtra as e:
        raise EnvError(str(e)) from None
    if family(env_id) == "atari":
        return make_atari(env_id, kwargs, training, make=_make_one)
    if family(env_id) == "minatar":
        return make_minatar(env_id, kwargs, make=_make_one)
    return _make_one(env_id, kwargs)


def _make_one(env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    """One `gymnasium.make`, its errors as one-line EnvErrors."""
    module, _, name = env_id.rpartition(":")
    try:
        return gym.make(env_id, **kwargs)
    except TypeError as e:
        # An env whose constructor takes no render_mode cannot render at all.
        if "render_mode" in kwargs and "render_mode" in str(e):
            raise _cannot_render(env_id, kwargs["render_mode"], []) from e
        raise
    except gym_error.DependencyNotInstalled as e:
        raise _missing_dependency(env_id, e) from e
    except (gym_error.NamespaceNotFound, gym_error.NameNotFound) as e:
        if module:
            raise EnvError(
                f"unknown environment {env_id!r}: importing {module!r} did not register "
                f"{name!r}; call gymnasium.register(id={name!r}, entry_point=...) in that module"
            ) from e
        raise EnvError(f"unknown environment {env_id!r}: {_UNKNOWN_ID_HINT}") from e
    except (gym_error.VersionNotFound, gym_error.DeprecatedEnv) as e:
        raise EnvError(f"unknown version of environment {env_id!r}: {one_line(str(e))}") from e
    except gym_error.Error as e:
        raise EnvError(f"cannot make environment {env_id!r}: {one_line(str(e))}") from e
    except ImportError as e:
        raise _import_failure(env_id, e) from e


class _SeedFirstReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Use `seed` for the first `reset()` so a seeded env is reproducible without the caller
    having to remember `reset(seed=...)`; later resets continue the env's own RNG stream."""

    def __init__(self, env: gym.Env, seed: int) -> None:
        """Wrap `env`.

        Args:
            env: The environment to wrap.
            seed: Seed passed to the first `reset()` call that does not give its own.
        """
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        gym.Wrapper.__init__(self, env)
        self._pending_seed: int | None = seed

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset, injecting the construction seed if this is the first reset."""
        if seed is None:
            seed = self._pending_seed
        # An explicit first seed also consumes the pending one: re-seeding later would
        # restart the episode stream and repeat start states.
        self._pending_seed = None
        return super().reset(seed=seed, options=options)


def _cannot_render(env_id: str, render_mode: str, modes) -> EnvError:
    have = ", ".join(map(str, modes)) or "none"
    return EnvError(f"environment {env_id!r} cannot render {render_mode!r} frames (its render "
                    f"modes: {have}); recording a video needs an env that renders {render_mode}")


def _check_render_mode(env: gym.Env, env_id: str, render_mode: str) -> None:
    modes = env.metadata.get("render_modes") or []
    if render_mode not in modes or env.render_mode != render_mode:
        raise _cannot_render(env_id, render_mode, modes)


# Ids already checked by this process or the one that started it: benchmark workers inherit the
# environment variable, so a grid checks (and warns) once, not once per worker.
_CHECKED_VAR: Final[str] = "BNRL_CHECKED_ENVS"
# bnrl rescales every Box action space to [-1, 1] itself (`_unit_box_actions`): the checker's
# advice to use such a space is about the raw env and does not apply.
_IRRELEVANT_WARNINGS: Final[tuple[str, ...]] = (
    "For Box action spaces, we recommend using a symmetric and normalized space",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _checked_ids() -> list[str]:
    return [i for i in os.environ.get(_CHECKED_VAR, "").split(",") if i]


def _check_custom_env(env_id: str) -> None:
    """Run gymnasium's `check_env` once on a fresh instance of a user's `module:EnvId` env.

    A fresh instance, so that the checker's resets and steps do not change the env that is
    trained. Render modes are not checked (rendering only matters for videos, which check it
    themselves). What the checker finds is logged as one line each (logger `bnrl.envs.make`):
    its warnings, and the first check that failed. A failed check does not stop training: bnrl's
    own wrappers cast observations, and envs that worked before the checker was run still do.
    """
    if env_id in _checked_ids():
        return
    env = _make_one(env_id, {})
    failure = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                check_env(env.unwrapped, skip_render_check=True)
            except Exception as e:  # noqa: BLE001 - whatever the checker raises is its finding
                failure = f"fails gymnasium's env checker: {one_line(e) or type(e).__name__}"
    finally:
        env.close()
    os.environ[_CHECKED_VAR] = ",".join([*_checked_ids(), env_id])
    shown = []
    for w in caught:
        text = one_line(_ANSI.sub("", str(w.message))).removeprefix("WARN: ")
        if text not in shown and not text.startswith(_IRRELEVANT_WARNINGS):
            shown.append(text)
    for text in shown + ([failure] if failure else []):
        _log.warning("bnrl: warning: environment %r: %s", env_id, text)


def env_action_bounds(env: gym.Env) -> tuple[np.ndarray, np.ndarray] | None:
    """The env's own action bounds that `make_env` rescales [-1, 1] actions to.

    An action `a` in [-1, 1] reaches the environment as `low + (a + 1) / 2 * (high - low)`.

    Args:
        env: An env returned by `make_env`.

    Returns:
        `(low, high)` as arrays, or None when the action space is not a Box.
    """
    wrapper = env
    while isinstance(wrapper, gym.Wrapper):
        if isinstance(wrapper, RescaleAction):
            box = wrapper.env.action_space
            return np.array(box.low), np.array(box.high)
        wrapper = wrapper.env
    return None


def _float32_observations(env: gym.Env) -> gym.Env:
    """Cast observations and their space to float32, the dtype of the TF graph's inputs."""
    box = env.observation_space
    assert isinstance(box, spaces.Box)
    # Not DtypeObservation: it builds the float32 Box from float64 bounds, which makes
    # gymnasium warn about lost precision on every make. Casting the bounds ourselves is
    # the same result, silently (huge float64 bounds become +-inf, which is what they mean).
    with np.errstate(over="ignore"):
        low, high = box.low.astype(np.float32), box.high.astype(np.float32)
    space = spaces.Box(low, high, dtype=np.float32)
    # Cast every observation, even when the space already says float32: some envs
    # return float64 arrays anyway.
    return TransformObservation(
        env, func=lambda obs: np.asarray(obs, dtype=np.float32), observation_space=space
    )


def _unit_box_actions(env: gym.Env) -> gym.Env:
    """Expose actions in [-1, 1]: clip first, then rescale linearly to the env's bounds."""
    box = env.action_space
    assert isinstance(box, spaces.Box)
    # Bounds in the box's own dtype: float64 bounds would make gymnasium warn about lost precision.
    low, high = -np.ones(box.shape, box.dtype), np.ones(box.shape, box.dtype)
    rescaled = RescaleAction(env, min_action=low, max_action=high)
    unit = spaces.Box(low, high, dtype=box.dtype)
    # Not gymnasium's ClipAction: since 1.0 it advertises an unbounded (-inf, inf) action
    # space, so `action_space.sample()` (used for warm-up exploration) would draw from a
    # normal distribution and agents could not read the [-1, 1] bounds from the space.
    return TransformAction(
        rescaled,
        func=lambda a: np.clip(np.asarray(a, dtype=box.dtype), -1.0, 1.0),
        action_space=unit,
    )


class EnvBoundary(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The edge between an environment and a bnrl run: nothing crosses it unchecked.

    * An exception the environment raises in ``reset()`` or ``step()`` becomes one ``EnvFailed``
      naming the env and the exception (the original is its cause, for a traceback file); the
      training loop adds the step and what the run kept.
    * With ``check_finite``, a NaN or infinite observation or reward coming out, or action going
      in, is a ``NonFiniteValue`` naming the quantity and the value: trained on, it would put NaN
      rows into the replay buffer while the losses may stay finite, and end as NaN evaluation
      returns in the results. The check costs a few microseconds per step.

    Args:
        env: An env made by `make_env` (observations are float32 vectors or uint8/bool images).
        env_id: The id to name in messages.
        check_finite: Check observations, rewards and actions.
    """

    def __init__(self, env: gym.Env, env_id: str, check_finite: bool = True) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, env_id=env_id, check_finite=check_finite)
        gym.Wrapper.__init__(self, env)
        self.env_id, self.check_finite = env_id, check_finite
        # Discrete actions are ints: only a Box action can be NaN.
        self._box_actions = isinstance(env.action_space, spaces.Box)

    def _failed(self, call: str, exc: Exception) -> EnvFailed:
        return EnvFailed(f"environment {self.env_id!r} raised {type(exc).__name__} in {call}: "
                         f"{error_line(exc) or 'no message'}")

    def _check_observation(self, obs) -> None:
        bad = first_nonfinite(obs)
        if bad is not None:
            raise NonFiniteValue(f"environment {self.env_id!r} returned a non-finite "
                                 f"observation ({bad})")

    def reset(self, **kwargs) -> tuple[Any, dict[str, Any]]:
        try:
            obs, info = self.env.reset(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a user's env can raise anything
            raise self._failed("reset()", exc) from exc
        if self.check_finite:
            self._check_observation(obs)
        return obs, info

    def step(self, action):
        if self.check_finite and self._box_actions:
            bad = first_nonfinite(action)
            if bad is not None:
                raise NonFiniteValue(f"the agent's action for {self.env_id!r} is not finite "
                                     f"({bad})")
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as exc:  # noqa: BLE001 - a user's env can raise anything
            raise self._failed("step()", exc) from exc
        if self.check_finite:
            self._check_observation(obs)
            try:
                finite = math.isfinite(reward)
            except TypeError:
                raise EnvFailed(f"environment {self.env_id!r} returned a reward that is not a "
                                f"number: {one_line(repr(reward), 60)}") from None
            if not finite:
                raise NonFiniteValue(f"environment {self.env_id!r} returned a non-finite "
                                     f"reward ({reward})")
        return obs, reward, terminated, truncated, info


def make_env(
    env_id: str,
    seed: int | None = None,
    *,
    agent: str | None = None,
    agents: Mapping[str, str] | None = None,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    training: bool = False,
) -> gym.Env:
    """Make a gymnasium environment wrapped for bnrl agents.

    The returned env has float32 1-D observations, or (height, width, channels) uint8 or bool
    images as the env gives them; a Box action space is exposed as
    [-1, 1] (clipped, then rescaled linearly to the env's bounds); a Discrete action
    space is unchanged. gymnasium's TimeLimit is kept, so running out of time is
    reported as `truncated=True`, never as `terminated`.

    Args:
        env_id: A registered gymnasium id (e.g. "Pendulum-v1"), or "module:EnvId" to
            import `module` first so that it can register its own environment.
        seed: If given, seeds the action and observation spaces and the first `reset()`
            that does not pass its own seed, so equal seeds give equal trajectories
            under equal actions.
        agent: If given, an agent name from `agents`; the env's action space must be of
            the kind that agent supports.
        agents: With `agent`, the action-space kind of every agent by name
            (`bnrl.agents.ACTION_SPACES`).
        max_episode_steps: Overrides the registered episode-length limit when given.
        render_mode: Passed to `gymnasium.make` when given; the env must list it in its
            `metadata["render_modes"]`.
        training: The env an agent trains on (not evaluation): Atari ids then also get episodic
            life and reward clipping (`envs.families`).

    A user's `module:EnvId` env also goes through gymnasium's `check_env` the first time it
    is made; what the checker finds is logged as one-line warnings (see `_check_custom_env`).

    Returns:
        The wrapped environment.

    Raises:
        EnvError: If the id, agent, seed or limits are invalid, a dependency is missing,
            the env's spaces are not supported, or the env cannot render in `render_mode`.
            The message is a single line.
    """
    if not isinstance(env_id, str) or not env_id or env_id.count(":") > 1:
        raise EnvError(f"invalid environment id {env_id!r}: {_UNKNOWN_ID_HINT}")
    if agent is not None:
        _check_agent_name(agent, agents)  # fail before paying for the env's construction
    if seed is not None:
        if not _is_int(seed) or seed < 0:
            raise EnvError(f"invalid seed {seed!r}: use a non-negative int or None")
        seed = int(seed)  # numpy ints are fine as input, but keep the recorded seed plain
    if max_episode_steps is not None:
        if not _is_int(max_episode_steps) or max_episode_steps <= 0:
            raise EnvError(
                f"invalid max_episode_steps {max_episode_steps!r}: use a positive int or None"
            )
        max_episode_steps = int(max_episode_steps)

    kwargs: dict[str, Any] = {"max_episode_steps": max_episode_steps}
    # Only forward render_mode when asked: custom envs need not accept the keyword.
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    env = _make_raw(env_id, kwargs, training)

    try:
        if agent is not None:
            check_agent_env(agent, env, agents)
        _check_spaces(env)
        if render_mode is not None:
            _check_render_mode(env, env_id, render_mode)
        if ":" in env_id:
            _check_custom_env(env_id)
    except EnvError:
        env.close()
        raise

    if len(env.observation_space.shape) == 1:
        env = _float32_observations(env)
    if isinstance(env.action_space, spaces.Box):
        env = _unit_box_actions(env)

    if seed is not None:
        env = _SeedFirstReset(env, seed)
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
    return env
