"""The image-observation env families: Atari (``ALE/<Game>-v5``), MinAtar (``MinAtar/<Game>-v1``).

Both need an optional extra (``pip install '.[atari]'``: ale-py and opencv; ``.[minatar]``:
minatar, GPL-3.0, never vendored here); a missing one is an ``EnvError`` naming the command.

``ALE/<Game>-v5`` gets the standard DQN preprocessing, each step one of gymnasium's wrappers (or
one of SB3's ``AtariWrapper`` steps where gymnasium has none):

* the ALE env with its own ``frameskip=1`` (the wrapper skips) and v5's sticky actions
  (``repeat_action_probability=0.25``, Machado et al. 2018, section 5.2);
* ``AtariPreprocessing``: up to 30 no-op actions at reset, frame skip 4 with the max over the last
  two frames, 84x84 grayscale (Mnih et al. 2015, "Methods: preprocessing"; SB3's
  ``AtariWrapper``: ``NoopResetEnv``, ``MaxAndSkipEnv``, ``WarpFrame``);
* training only: ``EpisodicLife`` (a lost life ends the agent's episode, the game goes on; SB3's
  ``EpisodicLifeEnv``, Mnih et al. 2015) and ``ClipReward`` to [-1, 1] (Atari rewards are whole
  numbers, so this is SB3's sign clipping), with ``GameStatistics`` below them reporting each
  whole game's raw score. Evaluation plays full games and reports raw scores (Machado et al.
  2018, section 5.3);
* ``FrameStackObservation`` of the last 4 frames, moved to the channels-last ``(84, 84, 4)`` the
  Keras convolutions take.

FIRE on reset (SB3's ``FireResetEnv``) is not applied: Machado et al. 2018 recommend against
game-specific resets. A game that waits for FIRE (Breakout) then runs until v5's limit of 108k
frames (27k steps) under a greedy policy that never picks it (an evaluation with
``eval_epsilon`` > 0 ends them); Pong does not wait.
``max_episode_steps`` counts agent steps (4 frames each), as for every other env.

``MinAtar/<Game>-v1`` is the env minatar registers, with one addition: a limit of
``MINATAR_MAX_EPISODE_STEPS`` steps when none is given. minatar registers none, and a greedy
Seaquest policy that never dives is never hit and never runs out of oxygen, so its evaluation
episode would never end. 27,000 is Dopamine's ``Runner.max_steps_per_episode``, under which its
MinAtar experiments ran (Obando-Ceron & Castro 2021, "Revisiting Rainbow"). Freeway ends itself at
2,500 steps; the longest episode measured, a 652-point Breakout episode of a 10M-step PQN policy,
lasted 7,980 steps (docs/pqn.md). gymnax's ports, which the PQN paper's code runs, end episodes
at 1,000 steps, which would cap such a policy near 80 points.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import (
    AtariPreprocessing,
    ClipReward,
    FrameStackObservation,
    TimeLimit,
    TransformObservation,
)

from bnrl.common.extras import install_hint

ATARI_PREFIX, MINATAR_PREFIX = "ALE/", "MinAtar/"
FRAME_STACK = 4
FRAME_SKIP = 4
NOOP_MAX = 30
SCREEN_SIZE = 84
MINATAR_MAX_EPISODE_STEPS = 27_000


class MissingExtra(ImportError):
    """An env family's optional extra is not installed; the message says what to install."""


def family(env_id: str) -> str | None:
    """``atari``, ``minatar`` or None (a plain gymnasium id) for ``env_id``."""
    if env_id.startswith(ATARI_PREFIX):
        return "atari"
    if env_id.startswith(MINATAR_PREFIX):
        return "minatar"
    return None


def frame_stack(env_id: str) -> int:
    """Frames stacked in each observation of ``env_id``'s env (its last axis): ``FRAME_STACK``
    for Atari, 1 for anything else (MinAtar's channels are objects, not past frames). The one
    place the agent learns it (``networks.Observation.frames``): its replay stores each frame
    once."""
    return FRAME_STACK if family(env_id) == "atari" else 1


def _missing(env_id: str, extra: str, what: str) -> MissingExtra:
    return MissingExtra(f"environment {env_id!r} needs {what}, which is not installed: "
                        f"{install_hint(extra)}")


def register(env_id: str) -> None:
    """Register the family of ``env_id`` with gymnasium (a no-op for plain ids).

    Raises:
      MissingExtra: the family's extra is not installed.
    """
    kind = family(env_id)
    if kind == "minatar":
        try:  # optional extra (GPL-3.0): imported only for a MinAtar id
            import minatar.gym
        except ImportError:
            raise _missing(env_id, "minatar", "minatar") from None
        if MINATAR_PREFIX + "Breakout-v1" not in gym.registry:
            minatar.gym.register_envs()
    elif kind == "atari":
        try:  # optional extra: ale-py registers the ALE/ ids, opencv resizes the frames
            import ale_py
            import cv2  # noqa: F401 - AtariPreprocessing imports it at its first frame
        except ImportError:
            raise _missing(env_id, "atari", "ale-py and opencv-python-headless") from None
        gym.register_envs(ale_py)


class GameStatistics(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Training only, below ``EpisodicLife`` and ``ClipReward``: at the last step of each whole
    game, ``info["game"] = {"r": raw score, "l": steps}``, the no-op steps between lives included.

    The agent's episodes are lives with clipped rewards; a learning curve comparable to the
    literature needs the games' raw scores (SB3 puts its ``Monitor`` at this place for this).
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self.score, self.length = 0.0, 0

    def reset(self, **kwargs) -> tuple[Any, dict[str, Any]]:
        self.score, self.length = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.score += float(reward)
        self.length += 1
        if terminated or truncated:
            info = {**info, "game": {"r": self.score, "l": self.length}}
        return obs, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Training only: a lost life is ``terminated`` for the agent, while the game goes on.

    ``reset()`` after a lost life continues the same game with one no-op step; only a game over
    (or a truncation) resets the emulator. SB3's ``EpisodicLifeEnv`` (Mnih et al. 2015 trained
    so); gymnasium's ``AtariPreprocessing(terminal_on_life_loss=True)`` would instead restart the
    game at every lost life, and the agent would never see its later lives.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self.lives, self.game_over = 0, True

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self._ale_lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs) -> tuple[Any, dict[str, Any]]:
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.game_over = False
        self.lives = self._ale_lives()
        return obs, info


def _channels_last(env: gym.Env) -> gym.Env:
    """``FrameStackObservation``'s ``(stack, height, width)`` as ``(height, width, stack)``."""
    box = env.observation_space
    space = spaces.Box(np.moveaxis(box.low, 0, -1), np.moveaxis(box.high, 0, -1),
                       dtype=box.dtype)
    return TransformObservation(env, lambda obs: np.ascontiguousarray(np.moveaxis(obs, 0, -1)),
                                space)


def make_minatar(env_id: str, kwargs: dict[str, Any], make=gym.make) -> gym.Env:
    """``MinAtar/<Game>-v1`` as minatar registers it, limited to ``MINATAR_MAX_EPISODE_STEPS``
    steps unless ``kwargs`` sets a limit (module docstring).

    Args:
      env_id: a ``MinAtar/`` id (``register`` has run).
      kwargs: further ``gymnasium.make`` arguments (time limit, render mode).
      make: the ``gymnasium.make`` to call (``envs.make`` passes its error-translating one).
    """
    if kwargs.get("max_episode_steps") is None:
        kwargs = {**kwargs, "max_episode_steps": MINATAR_MAX_EPISODE_STEPS}
    return make(env_id, kwargs)


def make_atari(env_id: str, kwargs: dict[str, Any], training: bool, make=gym.make) -> gym.Env:
    """``ALE/<Game>-v5`` with the standard DQN preprocessing (module docstring).

    Args:
      env_id: an ``ALE/`` id (``register`` has run).
      kwargs: further ``gymnasium.make`` arguments (time limit, render mode).
      training: add the training-only wrappers (episodic life, reward clipping).
      make: the ``gymnasium.make`` to call (``envs.make`` passes its error-translating one).
    """
    kwargs = dict(kwargs)
    limit = kwargs.pop("max_episode_steps", None)
    env = make(env_id, {**kwargs, "frameskip": 1})
    env = AtariPreprocessing(env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP,
                             screen_size=SCREEN_SIZE, grayscale_obs=True,
                             terminal_on_life_loss=False)
    if limit is not None:
        # Here, not in gymnasium.make: there, with the emulator's frameskip 1, it would count
        # frames. Below EpisodicLife, so that it limits whole games.
        env = TimeLimit(env, limit)
    if training:
        env = ClipReward(EpisodicLife(GameStatistics(env)), -1.0, 1.0)
    return _channels_last(FrameStackObservation(env, FRAME_STACK))
