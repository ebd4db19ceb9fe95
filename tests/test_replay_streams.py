"""``ReplayBuffer(streams=S)``: the transitions of S vectorized sub-envs, added round robin (one
vector step's rows, sub-env 0 first), each observation still stored once, pinned exactly.

* every stored slot and every n-step sample equal, byte for byte, a reference that keeps each
  transition the old way (obs beside next_obs, in arrival order) and computes each n-step window
  by hand over the transition's own stream; frame stacks padded as ``FrameStackObservation``
  pads them and float vectors with NaN and -0.0, terminations, truncations, streams that do not
  chain, a ring that wraps several times;
* chained frame stacks of four streams leave the side store empty: each frame is stored once;
* checkpoints: a round trip of three streams restores every array, the side store and the
  sampling RNG; a version 3 file (one stream) still loads; a file of other streams is refused;
* bad ``streams`` and a capacity that is not a multiple of it are refused.

The helpers are small copies of tests/test_frame_replay.py's, for a stream of S sub-envs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnrl.agents.replay import ReplayBuffer

from test_frame_replay import _assert_same, _expected_batch, _record, _rng_copy

GAMMA = 0.9
FRAME = (3, 3)
RINGS = ("obs", "first", "action", "reward", "terminated", "episode_end", "pending",
         "has_pending")


class _SubEnv:
    """One sub-env's transitions: episodes of random length (terminated with probability
    ``p_term`` a step, else truncated with ``p_trunc``), observations as an env returns them:
    with ``frames = k > 1`` a stack of the last k uint8 frames on the last axis, an episode's
    first stack its first frame k times (``FrameStackObservation``'s ``padding_type="reset"``);
    with ``frames = 1`` a float32 vector with NaN and -0.0 in it. A sub-env that does not chain
    returns a fresh observation after every step (never the previous next_obs); one that chains
    still breaks the chain with probability ``p_break``."""

    def __init__(self, rng: np.random.Generator, frames: int, chains: bool = True,
                 p_term: float = 0.08, p_trunc: float = 0.06, p_break: float = 0.03) -> None:
        self.rng, self.frames, self.chains = rng, frames, chains
        self.p_term, self.p_trunc, self.p_break = p_term, p_trunc, p_break
        self.obs = self._reset() if chains else self._fresh()

    def _frame(self) -> np.ndarray:
        return self.rng.integers(0, 256, FRAME, dtype=np.uint8)

    def _vector(self) -> np.ndarray:
        v = self.rng.standard_normal(3).astype(np.float32)
        v[self.rng.random(3) < 0.1] = np.nan
        v[self.rng.random(3) < 0.1] = -0.0
        return v

    def _reset(self) -> np.ndarray:
        if self.frames == 1:
            return self._vector()
        return np.repeat(self._frame()[..., None], self.frames, axis=-1)

    def _fresh(self) -> np.ndarray:
        """An observation that continues nothing (four unrelated frames for a stack)."""
        if self.frames == 1:
            return self._vector()
        return self.rng.integers(0, 256, (*FRAME, self.frames), dtype=np.uint8)

    def step(self) -> tuple:
        obs = self.obs
        if not self.chains:
            next_obs = self._fresh()
        elif self.frames == 1:
            next_obs = self._vector()
        else:
            next_obs = np.concatenate([obs[..., 1:], self._frame()[..., None]], axis=-1)
        terminated = bool(self.rng.random() < self.p_term)
        truncated = not terminated and bool(self.rng.random() < self.p_trunc)
        if not self.chains:
            self.obs = self._fresh()
        elif terminated or truncated:
            self.obs = self._reset()
        else:
            self.obs = self._fresh() if self.rng.random() < self.p_break else next_obs
        action, reward = int(self.rng.integers(4)), float(self.rng.standard_normal())
        return obs, action, reward, next_obs, terminated, truncated


def _vector_step(envs: list[_SubEnv], buffers: list[ReplayBuffer], arrivals: list) -> None:
    """One step of every sub-env, added as one batch, sub-env 0 first (the training loop's
    order); ``arrivals`` keeps each transition whole, in the order it was added."""
    rows = [env.step() for env in envs]
    arrivals.extend(rows)
    columns = list(zip(*rows))
    for buffer in buffers:
        buffer.add_batch(np.stack(columns[0]), np.array(columns[1]), np.array(columns[2]),
                         np.stack(columns[3]), np.array(columns[4]), np.array(columns[5]))


def _buffer(capacity: int, streams: int, frames: int, seed: int = 3) -> ReplayBuffer:
    if frames == 1:
        return ReplayBuffer(capacity, (3,), (), np.int64, seed=seed, streams=streams)
    return ReplayBuffer(capacity, (*FRAME, frames), (), np.int64, seed=seed, obs_dtype=np.uint8,
                        frames=frames, streams=streams)


def _expected_side(arrivals: list, streams: int, capacity: int, frames: int):
    """The slots whose obs, and whose next_obs, only the side store can give: a next_obs that
    ended the episode or is not the obs of the stream's following transition; a frame stack that
    is not its stream's frames, the last k arrivals of the stream (every ``streams``-th) padded
    at the episode's start as ``FrameStackObservation`` pads it."""
    total = len(arrivals)
    newest = [t[0][..., -1] if frames > 1 else t[0] for t in arrivals]

    def starts(u: int) -> bool:
        return u < streams or arrivals[u - streams][4] or arrivals[u - streams][5]

    obs_slots, next_slots = set(), set()
    for c in range(max(0, total - capacity), total):
        u = c + streams
        if arrivals[c][4] or arrivals[c][5] or (
                u < total and arrivals[u][0].tobytes() != arrivals[c][3].tobytes()):
            next_slots.add(c % capacity)
        if frames > 1:
            chain = [c]
            for _ in range(frames - 1):
                chain.append(chain[-1] if starts(chain[-1]) else chain[-1] - streams)
            stack = np.stack([newest[v] for v in reversed(chain)], axis=-1)
            if stack.tobytes() != arrivals[c][0].tobytes():
                obs_slots.add(c % capacity)
    return obs_slots, next_slots


def _assert_matches(buffer: ReplayBuffer, arrivals: list, batch_size: int = 64) -> None:
    """Every stored slot, and a 1-step and a 3-step batch, equal the reference; the side store
    holds what only it can give, nothing more."""
    streams, capacity = buffer.streams, buffer.capacity
    got = buffer.transitions()
    for key, value in _record(arrivals, capacity).items():
        assert got[key].tobytes() == value.astype(got[key].dtype).tobytes(), key
    for n in (1, 3):
        idx = _rng_copy(buffer).integers(0, len(buffer), size=batch_size)
        expected = _expected_batch(arrivals, capacity, idx, n, GAMMA, streams)
        _assert_same(buffer.sample(batch_size, n, GAMMA), expected)
    obs_slots, next_slots = _expected_side(arrivals, streams, capacity, buffer._frames)
    assert sorted(buffer._side_obs) == sorted(obs_slots)
    assert sorted(buffer._side_next) == sorted(next_slots)
    _assert_side_flags(buffer)


def _sub_envs(streams: int, frames: int, seed: int = 0, **kwargs) -> list[_SubEnv]:
    """``streams`` sub-envs; every third one (sub-env 2, 5, ...) does not chain."""
    rng = np.random.default_rng(seed)
    return [_SubEnv(rng, frames, chains=s % 3 != 2, **kwargs) for s in range(streams)]


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("frames", [1, 4])
@pytest.mark.parametrize("streams", [1, 3, 4])
def test_every_slot_and_n_step_sample_equals_the_reference(streams, frames):
    """60 vector steps into a ring of 7 per stream (it wraps 8 times): after every step, each
    stored transition and a 1-step and a 3-step batch equal the reference, and the side store
    holds exactly the observations the chains of stride S cannot give. Adding the same rows one
    by one with ``add`` fills the same rings."""
    capacity = 7 * streams
    envs = _sub_envs(streams, frames, seed=streams * 10 + frames)
    buffer, one_by_one = _buffer(capacity, streams, frames), _buffer(capacity, streams, frames)
    arrivals: list = []
    for _ in range(60):
        _vector_step(envs, [buffer], arrivals)
        for transition in arrivals[-streams:]:
            one_by_one.add(*transition)
        _assert_matches(buffer, arrivals)
    assert any(t[4] for t in arrivals) and any(t[5] for t in arrivals)
    assert any(not (t[4] or t[5]) for t in arrivals[-capacity:])  # windows longer than 1
    for key in RINGS:
        assert one_by_one._storage(key).tobytes() == buffer._storage(key).tobytes(), key
    if streams > 1:  # the sub-env that does not chain keeps its observations in the side store
        assert buffer._side_next and (buffer._side_obs or frames == 1)


def _assert_side_flags(buffer: ReplayBuffer) -> None:
    """The per-slot flags say exactly which slots the side store holds."""
    assert np.flatnonzero(buffer._in_side_obs).tolist() == sorted(buffer._side_obs)
    assert np.flatnonzero(buffer._in_side_next).tolist() == sorted(buffer._side_next)


# --------------------------------------------------------------------------------- memory
def test_chained_frame_stacks_of_four_streams_are_each_stored_once():
    """Four sub-envs of frame stacks: 10 vector steps with episode ends (the side store keeps
    their last next_obs), then 15 without, so none is left among the 20 transitions kept. The
    side store is then empty: each frame is in the frame ring once, and nowhere else. With a
    chain of stride 1 the same rows put every next_obs but the newest in the side store."""
    streams, capacity = 4, 20
    envs = _sub_envs(streams, 4, seed=7)
    for env in envs:
        env.chains, env.p_break, env.obs = True, 0.0, env._reset()
        env.p_term = env.p_trunc = 0.2
    buffer = _buffer(capacity, streams, 4)
    stride_one = _buffer(capacity, 1, 4)
    arrivals: list = []
    for step in range(25):
        if step == 10:
            assert buffer._side_next
            for env in envs:
                env.p_term = env.p_trunc = 0.0
        _vector_step(envs, [buffer, stride_one], arrivals)
    assert not any(t[4] or t[5] for t in arrivals[-capacity:])
    assert buffer._side_obs == {} and buffer._side_next == {}
    assert not buffer._in_side_obs.any() and not buffer._in_side_next.any()
    assert buffer._obs.shape == (capacity + 3 * streams, *FRAME)  # k - 1 frames per stream more
    _assert_matches(buffer, arrivals)
    assert len(stride_one._side_next) == capacity - 1


# ---------------------------------------------------------------------------- checkpoints
def _filled(streams: int, capacity: int, steps: int = 40, seed: int = 1):
    envs = _sub_envs(streams, 4, seed=seed)
    buffer = _buffer(capacity, streams, 4)
    arrivals: list = []
    for _ in range(steps):
        _vector_step(envs, [buffer], arrivals)
    return buffer, envs, arrivals


def _assert_restored(restored: ReplayBuffer, buffer: ReplayBuffer) -> None:
    for key in RINGS:
        assert restored._storage(key).shape == buffer._storage(key).shape, key
        assert restored._storage(key).tobytes() == buffer._storage(key).tobytes(), key
    assert (restored._total, restored._size) == (buffer._total, buffer._size)
    assert {s: v.tobytes() for s, v in restored._side_obs.items()} == {
        s: v.tobytes() for s, v in buffer._side_obs.items()}
    assert {s: (v.tobytes(), f) for s, (v, f) in restored._side_next.items()} == {
        s: (v.tobytes(), f) for s, (v, f) in buffer._side_next.items()}
    assert restored._in_side_obs.tobytes() == buffer._in_side_obs.tobytes()
    assert restored._in_side_next.tobytes() == buffer._in_side_next.tobytes()
    _assert_side_flags(restored)


def test_checkpoint_round_trip_of_three_streams(tmp_path):
    """Saved mid-episode (a pending next_obs per stream), loaded into a fresh buffer: the same
    arrays, side store and draws, and both go on equal to the reference as more steps come."""
    buffer, envs, arrivals = _filled(3, 21)
    assert buffer._side_obs and buffer._side_next and buffer._has_pending.sum() >= 1
    path = tmp_path / "replay.npz"
    buffer.save(path)
    with np.load(path, allow_pickle=False) as data:
        assert int(data["format_version"]) == 4 and int(data["streams"]) == 3
        assert data["pending"].shape == (3, *FRAME, 4) and data["has_pending"].shape == (3,)
    restored = _buffer(21, 3, 4, seed=99)
    restored.load(path)
    _assert_restored(restored, buffer)
    for _ in range(3):
        _assert_matches(restored, arrivals)
        _assert_matches(buffer, arrivals)
    for _ in range(10):  # adds after a load chain on to the restored pending next_obs
        _vector_step(envs, [buffer, restored], arrivals)
        _assert_matches(restored, arrivals)
        _assert_matches(buffer, arrivals)
    _assert_restored(restored, buffer)


def test_a_version_3_file_loads_and_other_streams_are_refused(tmp_path):
    """A version 3 file (one stream: pending of the observation's shape, a 0-d has_pending, no
    streams) loads into a one-stream buffer and samples as the saved buffer does; a file of
    other streams (version 1 to 3 files have one) is refused, the buffer left as it was."""
    buffer, envs, arrivals = _filled(1, 21, steps=50, seed=2)
    assert buffer._has_pending[0]
    path = tmp_path / "v4.npz"
    buffer.save(path)
    with np.load(path, allow_pickle=False) as data:
        members = {key: data[key] for key in data.files}
    members.update(format_version=np.asarray(3), pending=members["pending"][0],
                   has_pending=np.asarray(bool(members["has_pending"][0])))
    del members["streams"]
    v3 = tmp_path / "v3.npz"
    with open(v3, "wb") as f:
        np.savez(f, **members)
    restored = _buffer(21, 1, 4, seed=99)
    restored.load(v3)
    _assert_restored(restored, buffer)
    for _ in range(3):
        _assert_matches(restored, arrivals)
        _assert_matches(buffer, arrivals)
    _vector_step(envs, [buffer, restored], arrivals)
    _assert_matches(restored, arrivals)

    three, _, _ = _filled(3, 21)
    three_path = tmp_path / "three.npz"
    three.save(three_path)
    with pytest.raises(ValueError, match="streams 1, but this buffer's is 3"):
        three.load(v3)
    with pytest.raises(ValueError, match="streams 3, but this buffer's is 1"):
        restored.load(three_path)
    # A version 2 file (obs beside next_obs by slot, one stream) is refused the same way.
    record = _record(arrivals, 21)
    pos = buffer._pos
    v2 = tmp_path / "v2.npz"
    with open(v2, "wb") as f:
        np.savez(f, **{key: np.roll(value, pos, axis=0) for key, value in record.items()},
                 format_version=np.asarray(2), capacity=np.asarray(21), pos=np.asarray(pos),
                 size=np.asarray(21),
                 rng_state=np.asarray(json.dumps(buffer._rng.bit_generator.state)))
    with pytest.raises(ValueError, match="streams 1, but this buffer's is 3"):
        three.load(v2)
    restored_three = _buffer(21, 3, 4, seed=99)
    restored_three.load(three_path)
    _assert_restored(restored_three, three)  # the refused loads left `three` as it was
    _assert_restored(restored, buffer)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("streams", [0, -2, True, 2.0, "3"])
def test_streams_must_be_a_positive_int(streams):
    with pytest.raises(ValueError, match="streams must be a positive int"):
        ReplayBuffer(12, (3,), (), np.int64, streams=streams)


def test_capacity_must_be_a_multiple_of_streams():
    with pytest.raises(ValueError, match="capacity 10 must be a multiple of streams 3"):
        ReplayBuffer(10, (3,), (), np.int64, streams=3)
    assert ReplayBuffer(12, (3,), (), np.int64, streams=np.int64(3)).streams == 3
