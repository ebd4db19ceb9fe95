"""Tests for agents.replay.ReplayBuffer: ring semantics, sampling, and pickle-free checkpoints."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from bnrl.agents.replay import ReplayBuffer

OBS_SHAPE = (3,)
ACT_SHAPE = (2,)


def _filled(n: int, capacity: int = 5, seed: int | None = 0) -> ReplayBuffer:
    """A buffer holding transitions 0..n-1, where transition i has every field equal to i."""
    buf = ReplayBuffer(capacity, OBS_SHAPE, ACT_SHAPE, seed=seed)
    for i in range(n):
        buf.add(np.full(OBS_SHAPE, i), np.full(ACT_SHAPE, i), i, np.full(OBS_SHAPE, i + 0.5), i % 2)
    return buf


def test_empty_buffer() -> None:
    buf = ReplayBuffer(4, OBS_SHAPE, ACT_SHAPE)
    assert len(buf) == 0 and buf.capacity == 4 and not buf.full
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)


@pytest.mark.parametrize("capacity", [0, -1, 2.0])
def test_bad_capacity(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity, OBS_SHAPE, ACT_SHAPE)  # type: ignore[arg-type]


def test_ring_wraparound_keeps_last_capacity() -> None:
    buf = _filled(7, capacity=5)
    assert len(buf) == 5 and buf.full
    data = buf.transitions()
    np.testing.assert_array_equal(data["reward"], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(data["obs"][:, 0], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(data["next_obs"][:, 0], [2.5, 3.5, 4.5, 5.5, 6.5])
    np.testing.assert_array_equal(data["action"][:, 1], [2, 3, 4, 5, 6])


def test_add_rejects_wrong_shapes() -> None:
    buf = ReplayBuffer(4, OBS_SHAPE, ACT_SHAPE)
    with pytest.raises(ValueError, match="obs"):
        buf.add(np.zeros(4), np.zeros(ACT_SHAPE), 0.0, np.zeros(OBS_SHAPE), False)
    with pytest.raises(ValueError, match="action"):
        buf.add(np.zeros(OBS_SHAPE), 0.0, 0.0, np.zeros(OBS_SHAPE), False)


def test_add_batch_matches_repeated_add() -> None:
    one = _filled(12, capacity=5)
    many = ReplayBuffer(5, OBS_SHAPE, ACT_SHAPE, seed=0)
    i = np.arange(12.0)
    column = i[:, None]
    many.add_batch(
        np.repeat(column, 3, axis=1), np.repeat(column, 2, axis=1), i,
        np.repeat(column + 0.5, 3, axis=1), i % 2,
    )
    assert len(many) == 5 and many.full
    for key, arr in one.transitions().items():
        np.testing.assert_array_equal(many.transitions()[key], arr)


def test_sample_shapes_and_dtypes() -> None:
    buf = _filled(3, capacity=10)
    batch = buf.sample(32)
    assert set(batch) == {"obs", "action", "reward", "next_obs", "done"}
    assert batch["obs"].shape == (32, *OBS_SHAPE) and batch["obs"].dtype == np.float32
    assert batch["next_obs"].shape == (32, *OBS_SHAPE) and batch["next_obs"].dtype == np.float32
    assert batch["action"].shape == (32, *ACT_SHAPE) and batch["action"].dtype == np.float32
    assert batch["reward"].shape == (32,) and batch["reward"].dtype == np.float32
    assert batch["done"].shape == (32,) and batch["done"].dtype == np.float32


def test_discrete_actions() -> None:
    buf = ReplayBuffer(4, OBS_SHAPE, (), action_dtype=np.int64, seed=0)
    buf.add(np.zeros(OBS_SHAPE), 1, 0.0, np.zeros(OBS_SHAPE), False)
    batch = buf.sample(5)
    assert batch["action"].shape == (5,) and batch["action"].dtype == np.int64
    assert (batch["action"] == 1).all()


def test_sample_only_from_filled_part() -> None:
    buf = ReplayBuffer(100, OBS_SHAPE, ACT_SHAPE, seed=0)
    for r in (1.0, 2.0, 3.0):  # nonzero, unlike the zeros in the 97 unfilled slots
        buf.add(np.zeros(OBS_SHAPE), np.zeros(ACT_SHAPE), r, np.zeros(OBS_SHAPE), False)
    assert set(np.unique(buf.sample(2000)["reward"])) == {1.0, 2.0, 3.0}


def test_sample_is_consistent_per_transition() -> None:
    batch = _filled(7, capacity=5).sample(64)
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["reward"])
    np.testing.assert_array_equal(batch["next_obs"][:, 0], batch["reward"] + 0.5)
    np.testing.assert_array_equal(batch["done"], batch["reward"] % 2)


def test_terminated_vs_truncated_stored_as_given() -> None:
    buf = ReplayBuffer(4, OBS_SHAPE, ACT_SHAPE)
    zeros_o, zeros_a = np.zeros(OBS_SHAPE), np.zeros(ACT_SHAPE)
    buf.add(zeros_o, zeros_a, 0.0, zeros_o, terminated=True)
    # A time-limit truncation is stored as not terminated: the agent must still bootstrap.
    buf.add(zeros_o, zeros_a, 0.0, zeros_o, terminated=False)
    buf.add(zeros_o, zeros_a, 0.0, zeros_o, terminated=np.bool_(True))
    np.testing.assert_array_equal(buf.transitions()["terminated"], [1.0, 0.0, 1.0])


def test_same_seed_same_samples() -> None:
    a, b, c = _filled(5, seed=3), _filled(5, seed=3), _filled(5, seed=4)
    np.testing.assert_array_equal(a.sample(50)["reward"], b.sample(50)["reward"])
    assert not np.array_equal(a.sample(50)["reward"], c.sample(50)["reward"])


@pytest.mark.parametrize("n", [0, 3, 7])
def test_save_load_roundtrip_continues_rng(tmp_path: Path, n: int) -> None:
    buf = _filled(n, capacity=5, seed=11)
    if n:
        buf.sample(4)  # advance the RNG so a fresh-seeded restore would not match
    path = tmp_path / "replay.npz"
    buf.save(path)

    restored = ReplayBuffer(5, OBS_SHAPE, ACT_SHAPE, seed=999)
    restored.load(path)
    assert len(restored) == len(buf) and restored.full == buf.full
    for key, arr in buf.transitions().items():
        np.testing.assert_array_equal(restored.transitions()[key], arr)
    if n:
        for _ in range(3):
            expected, got = buf.sample(8), restored.sample(8)
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key])
    # Writes continue at the same ring position as well.
    for b in (buf, restored):
        b.add(np.full(OBS_SHAPE, 42), np.zeros(ACT_SHAPE), 42.0, np.zeros(OBS_SHAPE), False)
    np.testing.assert_array_equal(restored.transitions()["reward"], buf.transitions()["reward"])


def test_saved_file_is_plain_npz(tmp_path: Path) -> None:
    path = tmp_path / "buffer.bin"  # np.savez must not append ".npz" to the given name
    _filled(7).save(path)
    assert path.exists() and zipfile.is_zipfile(path)
    assert [p.name for p in tmp_path.iterdir()] == ["buffer.bin"]  # no temp file left
    with np.load(path, allow_pickle=False) as data:
        assert data["obs"].shape == (5, *OBS_SHAPE)
        assert data["rng_state"].shape == () and data["rng_state"].dtype.kind == "U"
        assert int(data["pos"]) == 2 and int(data["size"]) == 5 and int(data["capacity"]) == 5


@pytest.mark.parametrize(
    "other",
    [
        dict(capacity=6, obs_shape=OBS_SHAPE, action_shape=ACT_SHAPE),
        dict(capacity=5, obs_shape=(4,), action_shape=ACT_SHAPE),
        dict(capacity=5, obs_shape=OBS_SHAPE, action_shape=(1,)),
        dict(capacity=5, obs_shape=OBS_SHAPE, action_shape=ACT_SHAPE, action_dtype=np.int64),
    ],
)
def test_load_mismatch_raises_and_leaves_buffer_intact(tmp_path: Path, other: dict) -> None:
    path = tmp_path / "replay.npz"
    _filled(7).save(path)
    target = ReplayBuffer(**other)
    with pytest.raises(ValueError):
        target.load(path)
    assert len(target) == 0


def test_load_rejects_foreign_npz(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a replay buffer"):
        ReplayBuffer(5, OBS_SHAPE, ACT_SHAPE).load(path)
