"""Uniform experience replay: a preallocated numpy ring buffer with pickle-free checkpoints.

Image observations (uint8 frames, boolean grids) are stored as uint8, a quarter of float32's
memory; n-step returns are computed when a batch is sampled (``sample(n_steps=...)``)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from bnrl.common.files import atomic_open

__all__ = ["ReplayBuffer"]

# Bumped whenever the saved layout changes, so old checkpoints fail loudly instead of silently.
_FORMAT_VERSION = 2
_ARRAY_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "episode_end")
# Version 1 had no episode_end (an n-step return's window stops there); its files still load,
# with episode ends known only where an episode terminated.
_V1_KEYS = _ARRAY_KEYS[:-1]


class ReplayBuffer:
    """Fixed-capacity FIFO store of transitions, sampled uniformly with replacement.

    Storage is allocated once at construction, so memory use is known up front and
    `add`/`sample` never allocate storage. Once full, each new transition overwrites
    the oldest one.

    `terminated` is 1.0 only for a true termination (the MDP ended, so the target is
    just the reward). A time-limit truncation must be stored as 0.0: the state after it
    still has value, and treating it as terminal would bias the critic towards the
    arbitrary episode length. `sample` returns this flag as `done`.

    Args:
        capacity: Maximum number of transitions kept.
        obs_shape: Shape of one observation, e.g. `(3,)`.
        action_shape: Shape of one action: `(act_dim,)` for Box actions, `()` for Discrete.
        action_dtype: Storage dtype of actions, e.g. `np.float32` or `np.int64`.
        seed: Seed of the buffer's own sampling RNG; None draws fresh OS entropy.
        obs_dtype: Storage dtype of observations: `np.float32`, or `np.uint8` for frames and
            boolean grids (sampled as stored; the networks convert them).
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: npt.DTypeLike = np.float32,
        seed: int | None = None,
        obs_dtype: npt.DTypeLike = np.float32,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self._capacity = int(capacity)
        self._obs_shape = tuple(int(d) for d in obs_shape)
        self._action_shape = tuple(int(d) for d in action_shape)
        self._obs = np.zeros((self._capacity, *self._obs_shape), dtype=obs_dtype)
        self._next_obs = np.zeros_like(self._obs)
        self._action = np.zeros((self._capacity, *self._action_shape), dtype=action_dtype)
        self._reward = np.zeros(self._capacity, dtype=np.float32)
        self._terminated = np.zeros(self._capacity, dtype=np.float32)
        self._episode_end = np.zeros(self._capacity, dtype=np.bool_)
        self._pos = 0  # index the next transition is written to
        self._size = 0  # number of valid transitions, <= capacity
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        """Number of transitions currently stored."""
        return self._size

    @property
    def capacity(self) -> int:
        """Maximum number of transitions kept."""
        return self._capacity

    @property
    def full(self) -> bool:
        """Whether new transitions now overwrite the oldest ones."""
        return self._size == self._capacity

    def add(
        self,
        obs: npt.ArrayLike,
        action: npt.ArrayLike,
        reward: float,
        next_obs: npt.ArrayLike,
        terminated: bool,
        truncated: bool = False,
    ) -> None:
        """Store one transition, overwriting the oldest one when full.

        Args:
            obs: Observation before the action, shape `obs_shape`.
            action: Action taken, shape `action_shape`.
            reward: Reward received.
            next_obs: Observation after the action, shape `obs_shape`.
            terminated: True only for a true termination, False for a time-limit truncation.
            truncated: The episode ended without terminating (a time limit): an n-step return
                stops here too, and bootstraps.
        """
        obs, next_obs, action = np.asarray(obs), np.asarray(next_obs), np.asarray(action)
        # Checked because numpy would otherwise broadcast e.g. a scalar into every slot.
        self._check_shape("obs", obs.shape, self._obs_shape)
        self._check_shape("next_obs", next_obs.shape, self._obs_shape)
        self._check_shape("action", action.shape, self._action_shape)
        i = self._pos
        self._obs[i] = obs
        self._next_obs[i] = next_obs
        self._action[i] = action
        self._reward[i] = reward
        self._terminated[i] = float(terminated)
        self._episode_end[i] = bool(terminated) or bool(truncated)
        self._pos = (i + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)

    def add_batch(
        self,
        obs: npt.ArrayLike,
        action: npt.ArrayLike,
        reward: npt.ArrayLike,
        next_obs: npt.ArrayLike,
        terminated: npt.ArrayLike,
        truncated: npt.ArrayLike | None = None,
    ) -> None:
        """Store N transitions at once (leading axis N), same semantics as N calls to `add`.

        Args:
            obs: Observations, shape `(N, *obs_shape)`.
            action: Actions, shape `(N, *action_shape)`.
            reward: Rewards, shape `(N,)`.
            next_obs: Next observations, shape `(N, *obs_shape)`.
            terminated: True-termination flags, shape `(N,)`.
            truncated: Truncation flags, shape `(N,)`; None: no truncation.
        """
        obs, next_obs, action = np.asarray(obs), np.asarray(next_obs), np.asarray(action)
        reward, terminated = np.asarray(reward), np.asarray(terminated)
        n = obs.shape[0] if obs.ndim else 0
        self._check_shape("obs", obs.shape, (n, *self._obs_shape))
        self._check_shape("next_obs", next_obs.shape, (n, *self._obs_shape))
        self._check_shape("action", action.shape, (n, *self._action_shape))
        self._check_shape("reward", reward.shape, (n,))
        self._check_shape("terminated", terminated.shape, (n,))
        truncated = np.zeros(n, np.bool_) if truncated is None else np.asarray(truncated)
        self._check_shape("truncated", truncated.shape, (n,))
        # Only the newest `capacity` rows can survive; dropping the rest up front also keeps
        # the write indices unique (numpy does not promise an order for repeated indices).
        skip = max(0, n - self._capacity)
        idx = (self._pos + skip + np.arange(n - skip)) % self._capacity
        self._obs[idx] = obs[skip:]
        self._next_obs[idx] = next_obs[skip:]
        self._action[idx] = action[skip:]
        self._reward[idx] = reward[skip:]
        self._terminated[idx] = terminated[skip:].astype(np.float32)
        self._episode_end[idx] = terminated[skip:].astype(np.bool_) | truncated[skip:].astype(
            np.bool_)
        self._pos = (self._pos + n) % self._capacity
        self._size = min(self._size + n, self._capacity)

    def sample(self, batch_size: int, n_steps: int = 1,
               gamma: float | None = None) -> dict[str, np.ndarray]:
        """Draw a batch uniformly, with replacement, from the stored transitions.

        With `n_steps > 1` each drawn transition `t` becomes an n-step one, as SB3 2.7's
        `NStepReplayBuffer` computes it: its window is the transitions `t, t+1, ..., t+m-1`
        with `m <= n_steps`, stopping at the first one that ends the episode (terminated or
        truncated) and at the newest stored one; `reward` is `sum_k gamma^k r_{t+k}`,
        `next_obs` and `done` are those of the window's last transition, and `discount` is
        `gamma^m`, the bootstrap's factor (Sutton & Barto 2018, section 7.1). Unlike SB3's, a
        window never runs past the newest transition into the oldest ones of a full ring (a
        FIXME in SB3's code). The draws are the same as with `n_steps = 1`.

        Args:
            batch_size: Number of transitions B to draw.
            n_steps: Steps of each return; 1 gives the stored transitions (and no `discount`).
            gamma: The discount of the n-step return (needed when `n_steps > 1`).

        Returns:
            Fresh arrays: `obs` (B, *obs_shape) in the storage dtype, `action`
            (B, *action_shape), `reward` (B,) float32, `next_obs` (B, *obs_shape) and `done`
            (B,) float32, which is 1.0 only for true terminations; with `n_steps > 1` also
            `discount` (B,) float32.

        Raises:
            ValueError: If the buffer is empty, `batch_size` or `n_steps` is not positive, or
                `gamma` is missing for n-step returns.
        """
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer; add transitions first")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if n_steps < 1 or (n_steps > 1 and gamma is None):
            raise ValueError(f"n_steps must be >= 1 (with a gamma when > 1), got {n_steps!r}")
        idx = self._rng.integers(0, self._size, size=batch_size)
        if n_steps == 1:
            return {
                "obs": self._obs[idx],
                "action": self._action[idx],
                "reward": self._reward[idx],
                "next_obs": self._next_obs[idx],
                "done": self._terminated[idx],
            }
        last, reward, discount = self._n_step_windows(idx, n_steps, float(gamma))
        return {
            "obs": self._obs[idx],
            "action": self._action[idx],
            "reward": reward,
            "next_obs": self._next_obs[last],
            "done": self._terminated[last],
            "discount": discount,
        }

    def _n_step_windows(self, idx: np.ndarray, n_steps: int, gamma: float):
        """Per drawn index: the window's last index, its discounted reward sum and gamma^m."""
        # Transitions newer than t: up to the newest, (pos - 1 - t) mod capacity of them.
        newer = (self._pos - 1 - idx) % self._capacity
        reward = np.zeros(idx.shape, np.float64)
        last = idx.copy()
        length = np.zeros(idx.shape, np.int64)
        open_ = np.ones(idx.shape, np.bool_)  # the window has not ended yet
        for k in range(n_steps):
            at = (idx + k) % self._capacity
            take = open_ & (k <= newer)
            reward[take] += gamma**k * self._reward[at[take]]
            last[take], length[take] = at[take], k + 1
            open_ = take & ~self._episode_end[at]
        return last, reward.astype(np.float32), (gamma**length).astype(np.float32)

    def transitions(self) -> dict[str, np.ndarray]:
        """Copies of all stored transitions, oldest first.

        Returns:
            Arrays keyed `obs`, `action`, `reward`, `next_obs`, `terminated`, each with
            leading axis `len(self)`.
        """
        # When full, the oldest transition sits at `_pos`; before that, storage order is age order.
        order = (np.arange(self._size) + (self._pos if self.full else 0)) % self._capacity
        return {key: self._storage(key)[order] for key in _ARRAY_KEYS}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the buffer, including its RNG state, to an `.npz` file at exactly `path`.

        The file holds only plain arrays (the RNG state is JSON text in a 0-d unicode
        array), so it loads with `allow_pickle=False`. It is written atomically
        (`common.files.atomic_open`), so a crash mid-save never leaves a truncated file.

        Args:
            path: Destination file; no `.npz` suffix is added.
        """
        path = os.fspath(path)
        n = self._size
        payload: dict[str, np.ndarray] = {key: self._storage(key)[:n] for key in _ARRAY_KEYS}
        payload.update(
            format_version=np.asarray(_FORMAT_VERSION),
            capacity=np.asarray(self._capacity),
            pos=np.asarray(self._pos),
            size=np.asarray(n),
            rng_state=np.asarray(json.dumps(self._rng.bit_generator.state)),
        )
        # A file object, not a name: np.savez would append ".npz" to a name.
        with atomic_open(path, "wb") as f:
            np.savez(f, **payload)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore contents, write position and RNG state from a file written by `save`.

        The buffer must have been constructed with the same capacity, shapes and action
        dtype. Everything is validated before anything is changed, so a failed load
        leaves the buffer as it was. Afterwards, `sample` continues exactly where the
        saved buffer's would have.

        Args:
            path: A file written by `save`.

        Raises:
            ValueError: If the file is not a replay checkpoint or does not match this buffer.
        """
        with np.load(os.fspath(path), allow_pickle=False) as data:
            version = int(data["format_version"]) if "format_version" in data.files else None
            keys = _V1_KEYS if version == 1 else _ARRAY_KEYS
            missing = {*keys, "format_version", "capacity", "pos", "size", "rng_state"}
            missing -= set(data.files)
            if missing:
                raise ValueError(f"{path}: not a replay buffer file, missing {sorted(missing)}")
            arrays = {key: data[key] for key in keys}
            capacity = int(data["capacity"])
            pos, size = int(data["pos"]), int(data["size"])
            rng_state: dict[str, Any] = json.loads(str(data["rng_state"]))

        if version not in (1, _FORMAT_VERSION):
            raise ValueError(f"{path}: format version {version}, expected {_FORMAT_VERSION}")
        if version == 1:
            arrays["episode_end"] = arrays["terminated"].astype(np.bool_)
        if capacity != self._capacity:
            raise ValueError(f"{path}: capacity {capacity}, but this buffer's is {self._capacity}")
        # Transitions are written in order, so a non-full buffer's write position is its size.
        in_range = 0 <= size <= capacity and 0 <= pos < capacity
        if not (in_range and (size == capacity or pos == size)):
            raise ValueError(f"{path}: inconsistent pos={pos}, size={size}, capacity={capacity}")
        for key, arr in arrays.items():
            target = self._storage(key)
            if arr.shape != (size, *target.shape[1:]) or arr.dtype != target.dtype:
                raise ValueError(
                    f"{path}: {key} has shape {arr.shape} and dtype {arr.dtype}, expected "
                    f"{(size, *target.shape[1:])} and {target.dtype}"
                )
        rng = self._rng_from_state(rng_state, path)

        for key, arr in arrays.items():
            self._storage(key)[:size] = arr
        self._pos, self._size, self._rng = pos, size, rng

    def _storage(self, key: str) -> np.ndarray:
        return getattr(self, f"_{key}")

    @staticmethod
    def _check_shape(name: str, got: tuple[int, ...], expected: tuple[int, ...]) -> None:
        if got != expected:
            raise ValueError(f"{name} has shape {got}, expected {expected}")

    @staticmethod
    def _rng_from_state(state: dict[str, Any], path: object) -> np.random.Generator:
        name = state.get("bit_generator") if isinstance(state, dict) else None
        bit_generator = getattr(np.random, str(name), None)
        is_bit_generator = isinstance(bit_generator, type) and issubclass(
            bit_generator, np.random.BitGenerator
        )
        if not is_bit_generator:
            raise ValueError(f"{path}: unknown RNG bit generator {name!r}")
        bg = bit_generator()
        try:
            bg.state = state
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: invalid RNG state ({e})") from e
        return np.random.Generator(bg)
