"""Uniform experience replay: preallocated numpy rings, each observation stored once, with
pickle-free checkpoints that load in place.

Image observations (uint8 frames, boolean grids) are stored as uint8, a quarter of float32's
memory; n-step returns are computed when a batch is sampled (``sample(n_steps=...)``).

Each observation is stored once, as Dopamine's circular replay buffer does (Castro et al. 2018,
``replay_memory/circular_replay_buffer.py``): a transition's ``next_obs`` is the next
transition's ``obs``, so it is not stored beside it. Where it is not (the episode ended there, or
the caller's stream does not chain), the exact ``next_obs`` goes to a small side store keyed by
slot. For a frame stack (``frames = k > 1``: the last axis holds the last k frames, Mnih et al.
2015's input) only each observation's newest frame is stored and the stack is rebuilt when
sampled, padded at an episode start as gymnasium's ``FrameStackObservation`` pads it (its default
``padding_type="reset"``: the episode's first frame repeated). Every ``add`` checks that what
the buffer would rebuild is, byte for byte, what it was given, and keeps the given array in the
side store when it is not, so a sampled batch is always exactly what the old obs-beside-next_obs
layout returned.

A vector env of S sub-envs (``streams=S``) adds S transitions per step, sub-env 0, 1, ..., S-1
in turn. Interleaved like that, no transition's next_obs is the next one's obs, so with a chain
of stride 1 every next_obs would go to the side store (twice the memory for images, and a Python
loop over every sampled row). The chain therefore has stride S: a transition's stream is its
count (order of arrival) modulo S, and its stream's previous and following transitions are S
counts before and after it. This is Stable-Baselines3's ``ReplayBuffer`` layout, arrays of shape
``(buffer_size // n_envs, n_envs)``, flattened in arrival order; the capacity is a multiple of S
so that a slot always holds the same stream. With S = 1 it is the single stream as before.

Unlike Dopamine, which pads with zero transitions and never samples an index whose stack
crosses an episode start or the write cursor (``is_valid_transition``), every stored transition
can be drawn, with the same draws as before: the frame ring keeps ``k - 1`` frames per stream
more than the capacity, so the oldest transition's stack is still whole, and n-step windows stop
at their stream's newest transition (as they always did at the newest one)."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np
import numpy.typing as npt

from bnrl.common.files import atomic_open

__all__ = ["ReplayBuffer"]

# Bumped whenever the saved layout changes, so old checkpoints fail loudly instead of silently.
# Version 4 adds streams (a pending next_obs per stream); version 3 (one stream) stores each
# observation once; versions 1 and 2 (obs beside next_obs) still load.
_FORMAT_VERSION = 4
_TRANSITION_KEYS = ("action", "reward", "terminated", "episode_end")
# has_pending is one flag per stream from version 4 on (a 0-d one in version 3).
_V3_SCALARS = ("format_version", "capacity", "frames", "pos", "size", "total", "has_pending",
               "rng_state")
_SCALARS = (*_V3_SCALARS, "streams")
# The side store: whole observations by slot, and next observations kept as one frame by slot.
_SIDE_KEYS = ("side_obs_slots", "side_obs", "side_next_slots", "side_next",
              "side_next_frame_slots", "side_next_frames")
_V3_KEYS = ("obs", "first", *_TRANSITION_KEYS, "pending", *_SIDE_KEYS)
# Versions 1 and 2: obs and next_obs of every transition; version 1 had no episode_end (an
# n-step return's window stops there), its episode ends are known only where one terminated.
_V2_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "episode_end")
_V1_KEYS = _V2_KEYS[:-1]
# Bytes read per step when loading in place: the only allocation a load makes for the rings.
_CHUNK_BYTES = 1 << 18


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Byte equality (not ==: NaN != NaN and -0.0 == 0.0 would mislead a float comparison)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


class ReplayBuffer:
    """Fixed-capacity FIFO store of transitions, sampled uniformly with replacement.

    The rings are allocated once at construction, so their memory is known up front
    (`transition_bytes`); the side store grows by one observation (one frame for a frame stack)
    per episode end. Once full, each new transition overwrites the oldest one.

    Transitions of `streams` sub-envs of a vector env come in round robin (`add_batch` of one
    vector step's S rows, sub-env 0 first); each sub-env's transitions chain among themselves,
    S counts apart, as in SB3's `(buffer_size // n_envs, n_envs)` layout, so each observation
    is still stored once.

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
        frames: k > 1 when the observation's last axis is a stack of its last k frames
            (`networks.Observation.frames`); 1 otherwise.
        streams: S, the number of sub-envs whose transitions arrive round robin (the n-th
            transition added belongs to sub-env n mod S); `capacity` must be a multiple of it.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: npt.DTypeLike = np.float32,
        seed: int | None = None,
        obs_dtype: npt.DTypeLike = np.float32,
        frames: int = 1,
        streams: int = 1,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if isinstance(streams, bool) or not isinstance(streams, int | np.integer) or streams < 1:
            raise ValueError(f"streams must be a positive int, got {streams!r}")
        if capacity % streams:
            raise ValueError(f"capacity {capacity} must be a multiple of streams {streams}")
        self._capacity, self._streams = int(capacity), int(streams)
        self._obs_shape = tuple(int(d) for d in obs_shape)
        self._action_shape = tuple(int(d) for d in action_shape)
        self._frames = _check_frames(frames, self._obs_shape)
        self._obs_dtype = np.dtype(obs_dtype)
        # The frame ring: one entry per transition (its obs's newest frame, or the whole obs),
        # indexed by the transition's count modulo capacity + (k - 1) * S, so the k - 1 frames
        # of its stream before the oldest transition are still there for its stack.
        self._obs = np.zeros((self._ring_frames, *self._frame_shape), dtype=self._obs_dtype)
        self._first = np.zeros(self._ring_frames, dtype=np.bool_)  # the frame starts an episode
        self._action = np.zeros((self._capacity, *self._action_shape), dtype=action_dtype)
        self._reward = np.zeros(self._capacity, dtype=np.float32)
        self._terminated = np.zeros(self._capacity, dtype=np.float32)
        self._episode_end = np.zeros(self._capacity, dtype=np.bool_)
        # Per stream, its newest transition's next_obs while its next transition has not come.
        self._pending = np.zeros((self._streams, *self._obs_shape), dtype=self._obs_dtype)
        self._has_pending = np.zeros(self._streams, dtype=np.bool_)
        # Per slot, whether the side store holds its obs / its next_obs: a sampled batch looks up
        # only those rows in the dicts below (a Python loop over all B rows cost ~200 us).
        self._in_side_obs = np.zeros(self._capacity, dtype=np.bool_)
        self._in_side_next = np.zeros(self._capacity, dtype=np.bool_)
        self._clear()
        self._rng = np.random.default_rng(seed)

    def _clear(self) -> None:
        self._total = 0  # transitions added so far; the next one gets count _total
        self._size = 0  # number of valid transitions, <= capacity
        self._has_pending[:] = False
        # Slot -> the exact obs where the rebuilt one differs; slot -> (next_obs, frame only).
        self._side_obs: dict[int, np.ndarray] = {}
        self._side_next: dict[int, tuple[np.ndarray, bool]] = {}
        self._in_side_obs[:] = False
        self._in_side_next[:] = False

    def _set_side(self, side_obs: dict[int, np.ndarray],
                  side_next: dict[int, tuple[np.ndarray, bool]]) -> None:
        self._side_obs, self._side_next = side_obs, side_next
        self._in_side_obs[:] = False
        self._in_side_obs[list(side_obs)] = True
        self._in_side_next[:] = False
        self._in_side_next[list(side_next)] = True

    @property
    def _ring_frames(self) -> int:
        return self._capacity + (self._frames - 1) * self._streams

    @property
    def _frame_shape(self) -> tuple[int, ...]:
        return self._obs_shape[:-1] if self._frames > 1 else self._obs_shape

    @property
    def _pos(self) -> int:
        """Slot the next transition is written to."""
        return self._total % self._capacity

    def __len__(self) -> int:
        """Number of transitions currently stored."""
        return self._size

    @property
    def capacity(self) -> int:
        """Maximum number of transitions kept."""
        return self._capacity

    @property
    def streams(self) -> int:
        """Number of sub-envs whose transitions arrive round robin."""
        return self._streams

    @property
    def full(self) -> bool:
        """Whether new transitions now overwrite the oldest ones."""
        return self._size == self._capacity

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated rings (the side store not included)."""
        return sum(self._storage(key).nbytes for key in ("obs", "first", *_TRANSITION_KEYS))

    @staticmethod
    def transition_bytes(obs_shape: tuple[int, ...], obs_dtype: npt.DTypeLike,
                         action_shape: tuple[int, ...], action_dtype: npt.DTypeLike,
                         frames: int = 1) -> int:
        """Ring bytes per transition: one frame (or one whole observation), the episode-start
        flag, the action, float32 reward and termination, the bool episode end. The side store
        adds one frame (a whole observation when `frames` is 1) per episode end; a buffer of S
        streams has (frames - 1) * S frames more in all."""
        frame = int(np.prod(obs_shape[:-1] if frames > 1 else obs_shape))
        action = int(np.prod(action_shape)) * np.dtype(action_dtype).itemsize
        return frame * np.dtype(obs_dtype).itemsize + 1 + action + 4 + 4 + 1

    def add(
        self,
        obs: npt.ArrayLike,
        action: npt.ArrayLike,
        reward: float,
        next_obs: npt.ArrayLike,
        terminated: bool,
        truncated: bool = False,
    ) -> None:
        """Store one transition, overwriting the oldest one when full. It belongs to stream
        `n mod S` when it is the n-th one added (counting from 0).

        Args:
            obs: Observation before the action, shape `obs_shape`.
            action: Action taken, shape `action_shape`.
            reward: Reward received.
            next_obs: Observation after the action, shape `obs_shape`.
            terminated: True only for a true termination, False for a time-limit truncation.
            truncated: The episode ended without terminating (a time limit): an n-step return
                stops here too, and bootstraps.
        """
        # Cast as assigning into the old obs array cast (float64 -> float32, bool -> uint8).
        obs = np.asarray(obs, dtype=self._obs_dtype)
        next_obs, action = np.asarray(next_obs, dtype=self._obs_dtype), np.asarray(action)
        # Checked because numpy would otherwise broadcast e.g. a scalar into every slot.
        self._check_shape("obs", obs.shape, self._obs_shape)
        self._check_shape("next_obs", next_obs.shape, self._obs_shape)
        self._check_shape("action", action.shape, self._action_shape)
        count, i = self._total, self._pos
        stream = count % self._streams
        if self._in_side_obs[i]:
            del self._side_obs[i]
            self._in_side_obs[i] = False
        if self._in_side_next[i]:
            del self._side_next[i]
            self._in_side_next[i] = False
        # The stream's previous transition: S counts back, stored once S transitions are.
        prev = (i - self._streams) % self._capacity
        continues = self._size >= self._streams and not self._episode_end[prev]
        pending = self._pending[stream]
        if continues and prev != i and not _same_bytes(pending, obs):
            self._keep_next(prev, pending.copy())
        frame = count % self._ring_frames
        self._obs[frame] = obs[..., -1] if self._frames > 1 else obs
        self._first[frame] = not continues
        self._action[i] = action
        self._reward[i] = reward
        self._terminated[i] = float(terminated)
        self._episode_end[i] = bool(terminated) or bool(truncated)
        self._total, self._size = count + 1, min(self._size + 1, self._capacity)
        if self._frames > 1 and not _same_bytes(self._stacks(np.array([count]))[0], obs):
            self._side_obs[i] = obs.copy()
            self._in_side_obs[i] = True
        self._has_pending[stream] = not self._episode_end[i]
        if self._has_pending[stream]:
            pending[...] = next_obs
        else:
            self._keep_next(i, next_obs.copy())

    def _keep_next(self, slot: int, next_obs: np.ndarray) -> None:
        """Put a next_obs that is not the following obs into the side store: for a frame stack
        only its newest frame when the rest is the obs shifted by one (what the env's stack
        gives after any step)."""
        self._in_side_next[slot] = True
        if self._frames > 1:
            shifted = self._obs_at(np.array([slot]))[0][..., 1:]
            if _same_bytes(shifted, next_obs[..., :-1]):
                self._side_next[slot] = (next_obs[..., -1].copy(), True)
                return
        self._side_next[slot] = (next_obs, False)

    def add_batch(
        self,
        obs: npt.ArrayLike,
        action: npt.ArrayLike,
        reward: npt.ArrayLike,
        next_obs: npt.ArrayLike,
        terminated: npt.ArrayLike,
        truncated: npt.ArrayLike | None = None,
    ) -> None:
        """Store N transitions at once (leading axis N), same semantics as N calls to `add`:
        row j goes to the stream after row j - 1's, so when every call adds one vector step's S
        rows, sub-env 0 first, sub-env s is always stream s.

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
        # One by one: whether each obs chains on to the previous next_obs is decided per step.
        for k in range(n):
            self.add(obs[k], action[k], reward[k], next_obs[k], bool(terminated[k]),
                     bool(truncated[k]))

    def sample(self, batch_size: int, n_steps: int = 1,
               gamma: float | None = None) -> dict[str, np.ndarray]:
        """Draw a batch uniformly, with replacement, from the stored transitions.

        With `n_steps > 1` each drawn transition `t` becomes an n-step one, as SB3 2.7's
        `NStepReplayBuffer` computes it: its window is its stream's transitions `t, t+S, ...,
        t+(m-1)S` with `m <= n_steps`, stopping at the first one that ends the episode
        (terminated or truncated) and at the stream's newest stored one; `reward` is
        `sum_k gamma^k r_{t+kS}`,
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
                "obs": self._obs_at(idx),
                "action": self._action[idx],
                "reward": self._reward[idx],
                "next_obs": self._next_obs_at(idx),
                "done": self._terminated[idx],
            }
        last, reward, discount = self._n_step_windows(idx, n_steps, float(gamma))
        return {
            "obs": self._obs_at(idx),
            "action": self._action[idx],
            "reward": reward,
            "next_obs": self._next_obs_at(last),
            "done": self._terminated[last],
            "discount": discount,
        }

    def _n_step_windows(self, idx: np.ndarray, n_steps: int, gamma: float):
        """Per drawn index: the window's last index, its discounted reward sum and gamma^m."""
        # Transitions of t's stream newer than t: every S-th of the (pos - 1 - t) mod capacity
        # ones newer than t.
        newer = (self._pos - 1 - idx) % self._capacity // self._streams
        reward = np.zeros(idx.shape, np.float64)
        last = idx.copy()
        length = np.zeros(idx.shape, np.int64)
        open_ = np.ones(idx.shape, np.bool_)  # the window has not ended yet
        for k in range(n_steps):
            at = (idx + k * self._streams) % self._capacity
            take = open_ & (k <= newer)
            reward[take] += gamma**k * self._reward[at[take]]
            last[take], length[take] = at[take], k + 1
            open_ = take & ~self._episode_end[at]
        return last, reward.astype(np.float32), (gamma**length).astype(np.float32)

    # ------------------------------------------------------------------ rebuilding observations
    def _counts(self, slots: np.ndarray) -> np.ndarray:
        """The count (order of arrival) of the transitions in `slots`."""
        return self._total - 1 - (self._pos - 1 - slots) % self._capacity

    def _stacks(self, counts: np.ndarray) -> np.ndarray:
        """The frame stacks of the transitions of `counts`, oldest frame first: the k - 1
        frames of its stream before each one (S counts apart), each replaced by the episode's
        first frame before it started (``FrameStackObservation``'s reset padding)."""
        columns = [counts]
        for _ in range(self._frames - 1):
            newer = columns[-1]
            columns.append(np.where(self._first[newer % self._ring_frames], newer,
                                    newer - self._streams))
        return np.stack([self._obs[c % self._ring_frames] for c in reversed(columns)], axis=-1)

    def _obs_at(self, slots: np.ndarray) -> np.ndarray:
        """Fresh array of the observations of the transitions in `slots`."""
        if self._frames == 1:  # the ring has one entry per slot, and nothing in _side_obs
            return self._obs[slots]
        out = self._stacks(self._counts(slots))
        for row in np.flatnonzero(self._in_side_obs[slots]).tolist():
            out[row] = self._side_obs[int(slots[row])]
        return out

    def _next_obs_at(self, slots: np.ndarray) -> np.ndarray:
        """Fresh array of the next observations of the transitions in `slots`: the obs of the
        stream's following transition (S slots on), the side store's where the episode ended,
        the stream's pending one for the stream's newest transition."""
        if self._streams == 1:  # the common case, without a modulo over the batch
            newest = slots == (self._pos - 1) % self._capacity
        else:  # the last S transitions added are the newest of their streams
            newest = (self._pos - 1 - slots) % self._capacity < self._streams
        # A stream's newest transition reads the slot S on too (stale or empty): replaced below.
        out = self._obs_at((slots + self._streams) % self._capacity)
        for row in np.flatnonzero(self._in_side_next[slots] | newest).tolist():
            slot = int(slots[row])
            if not self._in_side_next[slot]:
                out[row] = self._pending[slot % self._streams]
                continue
            value, frame_only = self._side_next[slot]
            if frame_only:  # the obs shifted by one frame, then the kept newest frame
                obs = self._obs_at(slots[row:row + 1])[0]
                value = np.concatenate([obs[..., 1:], value[..., None]], axis=-1)
            out[row] = value
        return out

    def transitions(self) -> dict[str, np.ndarray]:
        """Copies of all stored transitions, oldest first.

        Returns:
            Arrays keyed `obs`, `action`, `reward`, `next_obs`, `terminated`, `episode_end`,
            each with leading axis `len(self)`.
        """
        # When full, the oldest transition sits at `_pos`; before that, storage order is age order.
        order = (np.arange(self._size) + (self._pos if self.full else 0)) % self._capacity
        stored = {key: self._storage(key)[order] for key in _TRANSITION_KEYS}
        return {"obs": self._obs_at(order), "next_obs": self._next_obs_at(order), **stored}

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the buffer, including its RNG state, to an `.npz` file at exactly `path`.

        The file holds only plain arrays (the RNG state is JSON text in a 0-d unicode
        array), so it loads with `allow_pickle=False`. It is written atomically
        (`common.files.atomic_open`), so a crash mid-save never leaves a truncated file. The
        rings are written straight from their memory (`_write_npz`: no reordered or chunked
        copy); only the side store is gathered into arrays.

        Args:
            path: Destination file; no `.npz` suffix is added.
        """
        path = os.fspath(path)
        frames_used = min(self._total, self._ring_frames)
        whole_next = {s: v for s, (v, frame_only) in self._side_next.items() if not frame_only}
        frame_next = {s: v for s, (v, frame_only) in self._side_next.items() if frame_only}
        payload: dict[str, np.ndarray] = {
            "obs": self._obs[:frames_used],
            "first": self._first[:frames_used],
            **{key: self._storage(key)[:self._size] for key in _TRANSITION_KEYS},
            "pending": self._pending,
            **self._side_arrays(_SIDE_KEYS[0:2], self._side_obs, self._obs_shape),
            **self._side_arrays(_SIDE_KEYS[2:4], whole_next, self._obs_shape),
            **self._side_arrays(_SIDE_KEYS[4:6], frame_next, self._frame_shape),
        }
        payload.update(
            format_version=np.asarray(_FORMAT_VERSION),
            capacity=np.asarray(self._capacity),
            frames=np.asarray(self._frames),
            streams=np.asarray(self._streams),
            pos=np.asarray(self._pos),
            size=np.asarray(self._size),
            total=np.asarray(self._total),
            has_pending=self._has_pending,
            rng_state=np.asarray(json.dumps(self._rng.bit_generator.state)),
        )
        with atomic_open(path, "wb") as f:
            _write_npz(f, payload)

    def _side_arrays(self, keys: tuple[str, ...], store: dict[int, np.ndarray],
                     shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """A side store as two arrays, keyed ``keys``: its slots, and its values stacked."""
        slots = sorted(store)
        values = (np.stack([store[s] for s in slots]) if slots
                  else np.zeros((0, *shape), self._obs_dtype))
        return {keys[0]: np.array(slots, np.int64), keys[1]: values}

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore contents, write position and RNG state from a file written by `save`.

        The buffer must have been constructed with the same capacity, shapes, frames, streams
        and dtypes. The file's headers and small members are validated before anything is
        changed, so a file that does not match leaves the buffer as it was. The rings are then
        read straight into the buffer's arrays, a chunk of `_CHUNK_BYTES` at a time: a load
        never holds a second copy of the buffer. A file damaged inside a ring (a CRC error) is found
        only while reading it; the buffer is then left empty, never half loaded. Afterwards,
        `sample` continues exactly where the saved buffer's would have.

        Files of version 3 (one stream) load into a buffer of one stream. Files of versions 1
        and 2 (obs beside next_obs, one stream) load too, through `add`: they are read whole
        first, so they need their own size once more in memory.

        Args:
            path: A file written by `save`.

        Raises:
            ValueError: If the file is not a replay checkpoint or does not match this buffer.
        """
        try:
            self._load(path)
        except zipfile.BadZipFile as exc:  # not a zip, or a member's CRC does not match
            raise ValueError(f"{path}: not a readable replay buffer file ({exc})") from None

    def _load(self, path) -> None:
        with zipfile.ZipFile(os.fspath(path)) as zf:
            members = {name[:-4] for name in zf.namelist() if name.endswith(".npy")}
            version = int(_read_small(zf, "format_version")) if "format_version" in members \
                else None
            if version in (1, 2):
                self._check_streams(path, 1)
                self._load_old_layout(path, version)
                return
            if version not in (None, 3, _FORMAT_VERSION):
                raise ValueError(f"{path}: format version {version}, expected {_FORMAT_VERSION}")
            scalars = _V3_SCALARS if version == 3 else _SCALARS
            missing = {*scalars, *_V3_KEYS} - members
            if missing:
                raise ValueError(f"{path}: not a replay buffer file, missing {sorted(missing)}")
            small = {key: _read_small(zf, key) for key in (*scalars, "pending", *_SIDE_KEYS)}
            if version == 3:  # one stream: its pending next_obs and flag, as one of S
                small.update(streams=np.asarray(1), pending=small["pending"][None],
                             has_pending=small["has_pending"][None])
            capacity, frames = int(small["capacity"]), int(small["frames"])
            pos, size, total = int(small["pos"]), int(small["size"]), int(small["total"])
            if capacity != self._capacity:
                raise ValueError(f"{path}: capacity {capacity}, but this buffer's is "
                                 f"{self._capacity}")
            if frames != self._frames:
                raise ValueError(f"{path}: frames {frames}, but this buffer's is {self._frames}")
            self._check_streams(path, int(small["streams"]))
            if not (total >= 0 and size == min(total, capacity) and pos == total % capacity):
                raise ValueError(f"{path}: inconsistent pos={pos}, size={size}, total={total}, "
                                 f"capacity={capacity}")
            frames_used = min(total, self._ring_frames)
            rows = {"obs": frames_used, "first": frames_used,
                    **{key: size for key in _TRANSITION_KEYS}}
            for key, n in rows.items():
                target = self._storage(key)
                self._check_member(path, key, _header(zf, key), (n, *target.shape[1:]),
                                   target.dtype)
            for key, target in (("pending", self._pending), ("has_pending", self._has_pending)):
                self._check_member(path, key, (small[key].shape, small[key].dtype),
                                   target.shape, target.dtype)
            side = self._side_stores(path, small, size)
            rng = self._rng_from_state(json.loads(str(small["rng_state"])), path)
            try:
                for key, n in rows.items():
                    _read_into(zf, key, self._storage(key)[:n])
            except BaseException:
                self._clear()  # part of the rings was overwritten: empty, never half loaded
                raise
        self._pending[...] = small["pending"]
        self._has_pending[...] = small["has_pending"]
        self._total, self._size = total, size
        self._set_side(*side)
        self._rng = rng

    def _check_streams(self, path, streams: int) -> None:
        if streams != self._streams:
            raise ValueError(f"{path}: streams {streams}, but this buffer's is {self._streams}")

    def _side_stores(self, path, small: dict[str, np.ndarray], size: int):
        """The side stores of a file's arrays, checked (slots of stored transitions)."""
        stores = []
        shapes = (self._obs_shape, self._obs_shape, self._frame_shape)
        for slots_key, key, shape in zip(_SIDE_KEYS[0::2], _SIDE_KEYS[1::2], shapes,
                                         strict=True):
            slots, values = small[slots_key], small[key]
            if slots.ndim != 1 or not np.all((slots >= 0) & (slots < size)):
                raise ValueError(f"{path}: {slots_key} are not slots of stored transitions")
            self._check_member(path, key, (values.shape, values.dtype), (len(slots), *shape),
                               self._obs_dtype)
            stores.append(dict(zip(slots.tolist(), values, strict=True)))
        side_next = {slot: (value, False) for slot, value in stores[1].items()}
        side_next.update((slot, (value, True)) for slot, value in stores[2].items())
        return stores[0], side_next

    def _load_old_layout(self, path, version: int) -> None:
        """A version 1 or 2 file (obs beside next_obs), added transition by transition in the
        order they arrived, into the same slots (so the RNG's draws pick the same ones)."""
        keys = _V1_KEYS if version == 1 else _V2_KEYS
        with np.load(os.fspath(path), allow_pickle=False) as data:
            missing = {*keys, "capacity", "pos", "size", "rng_state"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: not a replay buffer file, missing {sorted(missing)}")
            arrays = {key: data[key] for key in keys}
            capacity = int(data["capacity"])
            pos, size = int(data["pos"]), int(data["size"])
            rng_state: dict[str, Any] = json.loads(str(data["rng_state"]))
        if version == 1:
            arrays["episode_end"] = arrays["terminated"].astype(np.bool_)
        if capacity != self._capacity:
            raise ValueError(f"{path}: capacity {capacity}, but this buffer's is {self._capacity}")
        # Transitions are written in order, so a non-full buffer's write position is its size.
        in_range = 0 <= size <= capacity and 0 <= pos < capacity
        if not (in_range and (size == capacity or pos == size)):
            raise ValueError(f"{path}: inconsistent pos={pos}, size={size}, capacity={capacity}")
        expected = {"obs": self._obs_shape, "next_obs": self._obs_shape,
                    **{key: self._storage(key).shape[1:] for key in _TRANSITION_KEYS}}
        dtypes = {"obs": self._obs_dtype, "next_obs": self._obs_dtype,
                  **{key: self._storage(key).dtype for key in _TRANSITION_KEYS}}
        for key, arr in arrays.items():
            self._check_member(path, key, (arr.shape, arr.dtype), (size, *expected[key]),
                               dtypes[key])
        rng = self._rng_from_state(rng_state, path)
        self._clear()
        # A full ring's oldest transition sits at pos: counting from pos puts each in its slot.
        self._total = pos if size == capacity else 0
        for slot in (np.arange(size) + self._total) % capacity:
            terminated = bool(arrays["terminated"][slot])
            self.add(arrays["obs"][slot], arrays["action"][slot], arrays["reward"][slot],
                     arrays["next_obs"][slot], terminated,
                     bool(arrays["episode_end"][slot]) and not terminated)
        self._rng = rng

    def _storage(self, key: str) -> np.ndarray:
        return getattr(self, f"_{key}")

    @staticmethod
    def _check_member(path, key: str, got: tuple, shape: tuple, dtype) -> None:
        if tuple(got[0]) != tuple(shape) or np.dtype(got[1]) != np.dtype(dtype):
            raise ValueError(f"{path}: {key} has shape {tuple(got[0])} and dtype {got[1]}, "
                             f"expected {tuple(shape)} and {np.dtype(dtype)}")

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


def _check_frames(frames: int, obs_shape: tuple[int, ...]) -> int:
    """`frames` of a buffer or an observation: 1, or the size of a 3-d shape's last axis."""
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    if frames > 1 and (len(obs_shape) != 3 or obs_shape[-1] != frames):
        raise ValueError(f"a stack of {frames} frames needs a (height, width, {frames}) "
                         f"observation, not shape {obs_shape}")
    return int(frames)


def _write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez(f, **arrays)`` writes (a zip of uncompressed ``.npy`` members), each
    array's data written from its own memory, `_CHUNK_BYTES` at a time: ``np.savez`` copies
    through a 16 MiB buffer per array instead."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in arrays.items():
            # The rings' prefixes are C-contiguous views already (not np.ascontiguousarray:
            # it makes a 0-d array 1-d).
            array = np.asarray(array)
            array = array if array.flags.c_contiguous else array.copy(order="C")
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(
                    member, np.lib.format.header_data_from_array_1_0(array))
                data = memoryview(array.reshape(-1).view(np.uint8))
                for start in range(0, len(data), _CHUNK_BYTES):
                    member.write(data[start:start + _CHUNK_BYTES])


def _header(zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a `.npy` member, from its header alone."""
    with zf.open(f"{key}.npy") as f:
        return _read_header(f)[:2]


def _read_header(f) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read(f)
    return tuple(shape), np.dtype(dtype), fortran_order


def _read_small(zf: zipfile.ZipFile, key: str) -> np.ndarray:
    with zf.open(f"{key}.npy") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_into(zf: zipfile.ZipFile, key: str, target: np.ndarray) -> None:
    """Read a `.npy` member's data into `target` (C-contiguous, its shape and dtype checked),
    `_CHUNK_BYTES` at a time: no temporary array of the member's size."""
    with zf.open(f"{key}.npy") as f:
        shape, dtype, fortran_order = _read_header(f)
        if shape != target.shape or dtype != target.dtype or fortran_order:
            raise ValueError(f"{key}: shape {shape}, dtype {dtype}, expected {target.shape} "
                             f"and {target.dtype} in C order")
        view = memoryview(target.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            n = f.readinto(view[done:done + _CHUNK_BYTES])
            if not n:
                raise ValueError(f"{key}: the file ends before its data does")
            done += n
        if f.read(1):  # reading to the end makes zipfile check the member's CRC
            raise ValueError(f"{key}: more data than its header says")
