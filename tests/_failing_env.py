"""A tiny continuous env that crashes for one seed, for the benchmark's failed-run tests.

Importing it registers ``BnrlFailing-v0``; the benchmark names it
``tests._failing_env:BnrlFailing-v0`` so that the spawned grid workers (fresh interpreters)
import and register it themselves.

An env instance whose ``reset`` was seeded with ``FAILING_SEED`` raises ``RuntimeError`` on its
``FAIL_AFTER``-th step (counted over all its episodes); every other instance runs forever. The
training loop seeds its env's first reset with the run's seed and its eval env with seed + 10000,
so exactly the training env of the seed-``FAILING_SEED`` run fails, after the replay warm-up.
With ``BNRL_FAILING_ENV_OFF=1`` in the environment (grid workers inherit it) nothing fails: the
"fixed" env a rerun retries the failed run with.

``BnrlSelfKilling-v0`` is the same env, but its failing instance prints ``KILL_LINE`` and kills
its own process with SIGKILL (as the OOM killer would), so nothing of Python's runs after it.
``BnrlBrokenConstructor-v0`` raises in its constructor.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "BnrlFailing-v0"
KILLING_ENV_ID = "BnrlSelfKilling-v0"
KILL_LINE = "self-killing env: SIGKILL now"
FAILING_SEED = 1
FAIL_AFTER = 120
MESSAGE = "simulated env crash"


class FailingEnv(gym.Env[np.ndarray, np.ndarray]):
    """Reward -(obs . obs) - a^2 with obs drifting by the action: a trivially learnable task."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-5.0, 5.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
        self._obs = np.zeros(3, dtype=np.float32)
        self._fail = False
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:  # later resets (seed=None) keep the instance's verdict
            self._fail = seed == FAILING_SEED
        self._obs = self.np_random.uniform(-1.0, 1.0, size=3).astype(np.float32)
        return self._obs.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._steps += 1
        off = os.environ.get("BNRL_FAILING_ENV_OFF")
        if self._fail and self._steps >= FAIL_AFTER and not off:
            raise RuntimeError(f"{MESSAGE} at step {self._steps} (seed {FAILING_SEED})")
        a = float(np.asarray(action).reshape(-1)[0])
        self._obs = np.clip(self._obs + 0.1 * a, -5.0, 5.0).astype(np.float32)
        reward = -float(self._obs @ self._obs) - 0.1 * a * a
        return self._obs.copy(), reward, False, False, {}


class SelfKillingEnv(FailingEnv):
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._fail and self._steps + 1 >= FAIL_AFTER and not os.environ.get(
                "BNRL_FAILING_ENV_OFF"):
            print(KILL_LINE, file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


class BrokenConstructorEnv(FailingEnv):
    def __init__(self) -> None:
        raise ValueError("this env's constructor fails")


# Entry points by name, not by class: were this file also imported under another module name
# (``_failing_env``), the registry would still make ``tests._failing_env``'s classes, the ones a
# test monkeypatches.
_MODULE = "tests._failing_env"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=f"{_MODULE}:FailingEnv", max_episode_steps=50)
if KILLING_ENV_ID not in gym.registry:
    gym.register(id=KILLING_ENV_ID, entry_point=f"{_MODULE}:SelfKillingEnv", max_episode_steps=50)
if "BnrlBrokenConstructor-v0" not in gym.registry:
    gym.register(id="BnrlBrokenConstructor-v0", entry_point=f"{_MODULE}:BrokenConstructorEnv")
