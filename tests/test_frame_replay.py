"""The replay layout that stores each observation once (issue 26, item 3), pinned exactly.

* bytes: each ring's ``nbytes`` per transition, one frame of a frame stack (plus its k - 1 extra
  frames per buffer), against the old layout's obs beside next_obs;
* stacks: what the buffer returns (``transitions``, ``sample``, n-step windows) equals, byte for
  byte, what the env returned, across terminations, lost lives (``EpisodicLife``'s no-op reset),
  truncations and ring wrap-around; for any stream, also one that does not chain (the side store
  keeps it exact), vectors with NaN and -0.0 included;
* checkpoints: a round trip restores every array and the sampling RNG; saving and loading need no
  second copy (tracemalloc); a damaged file leaves the buffer empty, a mismatched one
  untouched; a file of the old layout (version 2) loads into the same slots;
* a DQN agent on a frame-stack space trains with it; ``frames`` comes from the env family;
* ``benchmarks/replay_memory.py`` prints what it computes.

The expected values come from a record of the stream kept here (the old layout's contents) and
an n-step window computed by hand, not from the buffer's own code.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tracemalloc
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import FrameStackObservation, TimeLimit

from bnrl.agents import make_agent
from bnrl.agents.replay import ReplayBuffer
from bnrl.common.errors import UserError
from bnrl.envs import frame_stack, make_env
from bnrl.envs.families import EpisodicLife, _channels_last
from bnrl.networks import Observation
from bnrl.training import runs
from bnrl.training.config import resolve

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "replay_memory.py"
KEYS = ("obs", "action", "reward", "next_obs", "terminated", "episode_end")


class _Lives(gym.Env):
    """An ALE stand-in: random uint8 frames, a life lost with probability 0.15 a step, the game
    over after 3; ``EpisodicLife`` reads its lives as the ALE's (``unwrapped.ale.lives()``)."""

    action_space = gym.spaces.Discrete(3)

    def __init__(self, size: int = 6) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)
        self.ale, self._lives = self, 3

    def lives(self) -> int:
        return self._lives

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._lives = 3
        return self._frame(), {}

    def step(self, action):
        if self.np_random.random() < 0.15:
            self._lives -= 1
        return self._frame(), float(action) - 1.0, self._lives == 0, False, {}

    def _frame(self) -> np.ndarray:
        return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)


def _atari_like(size: int = 6, limit: int = 25) -> gym.Env:
    """``make_atari``'s wrapper order on the stand-in: a time limit below ``EpisodicLife``, then
    ``FrameStackObservation(4)`` moved channels-last."""
    return _channels_last(FrameStackObservation(EpisodicLife(TimeLimit(_Lives(size), limit)), 4))


def _play(env: gym.Env, steps: int, seed: int = 0) -> list[tuple]:
    """``steps`` transitions of random actions, as the training loop observes them."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    stream = []
    for _ in range(steps):
        action = int(rng.integers(env.action_space.n))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        stream.append((obs, action, float(reward), next_obs, bool(terminated), bool(truncated)))
        obs = env.reset()[0] if terminated or truncated else next_obs
    return stream


def _record(stream: list[tuple], capacity: int) -> dict[str, np.ndarray]:
    """The old layout's contents after ``stream``: every field of the newest ``capacity``
    transitions, oldest first."""
    kept = stream[-capacity:]
    return {"obs": np.stack([t[0] for t in kept]), "action": np.array([t[1] for t in kept]),
            "reward": np.array([t[2] for t in kept], np.float32),
            "next_obs": np.stack([t[3] for t in kept]),
            "terminated": np.array([t[4] for t in kept], np.float32),
            "episode_end": np.array([t[4] or t[5] for t in kept])}


def _expected_batch(arrivals: list, capacity: int, idx: np.ndarray, n: int, gamma: float,
                    streams: int = 1) -> dict[str, np.ndarray]:
    """What the old layout's ``sample`` returned for slots ``idx``, each n-step window computed
    by hand over the transition's own stream (every ``streams``-th arrival), stopping at an
    episode end and at the stream's newest transition."""
    total = len(arrivals)
    rows = {key: [] for key in ("obs", "action", "reward", "next_obs", "done", "discount")}
    for slot in idx.tolist():
        t = total - 1 - (total - 1 - slot) % capacity
        reward, last, m = np.float64(0.0), t, 0  # float64 sums of float32 products, as stored
        for k in range(n):
            u = t + k * streams
            if u >= total:
                break
            reward += gamma**k * np.float32(arrivals[u][2])
            last, m = u, k + 1
            if arrivals[u][4] or arrivals[u][5]:
                break
        rows["obs"].append(arrivals[t][0])
        rows["action"].append(arrivals[t][1])
        rows["reward"].append(reward if n > 1 else np.float32(arrivals[t][2]))
        rows["next_obs"].append(arrivals[last][3])
        rows["done"].append(float(arrivals[last][4]))
        rows["discount"].append(gamma**m)
    batch = {"obs": np.stack(rows["obs"]), "action": np.array(rows["action"]),
             "reward": np.array(rows["reward"]).astype(np.float32),
             "next_obs": np.stack(rows["next_obs"]),
             "done": np.array(rows["done"], np.float32)}
    if n > 1:
        batch["discount"] = np.array(rows["discount"]).astype(np.float32)
    return batch


def _assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype or key == "action", key
        assert got[key].shape == value.shape, key
        assert got[key].tobytes() == value.astype(got[key].dtype).tobytes(), key


def _frame_buffer(capacity: int, shape=(6, 6, 4), seed: int = 3) -> ReplayBuffer:
    return ReplayBuffer(capacity, shape, (), np.int64, seed=seed, obs_dtype=np.uint8,
                        frames=shape[-1])


def _rng_copy(buffer: ReplayBuffer) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = buffer._rng.bit_generator.state
    return rng


# ----------------------------------------------------------------------------------- bytes
@pytest.mark.parametrize("shape, dtype, action, frames, frame_bytes, action_bytes", [
    ((84, 84, 4), np.uint8, ((), np.int64), 4, 84 * 84, 8),          # ALE
    ((10, 10, 6), np.uint8, ((), np.int64), 1, 600, 8),              # MinAtar
    ((3,), np.float32, ((2,), np.float32), 1, 12, 8),                # a vector, Box actions
])
def test_bytes_per_transition_are_exact(shape, dtype, action, frames, frame_bytes, action_bytes):
    capacity = 50
    buffer = ReplayBuffer(capacity, shape, action[0], action[1], obs_dtype=dtype, frames=frames)
    ring_frames = capacity + frames - 1
    nbytes = {key: buffer._storage(key).nbytes
              for key in ("obs", "first", "action", "reward", "terminated", "episode_end")}
    assert nbytes == {"obs": ring_frames * frame_bytes, "first": ring_frames,
                      "action": capacity * action_bytes, "reward": capacity * 4,
                      "terminated": capacity * 4, "episode_end": capacity}
    per_transition = frame_bytes + 1 + action_bytes + 4 + 4 + 1
    assert ReplayBuffer.transition_bytes(shape, dtype, *action, frames) == per_transition
    assert buffer.nbytes == capacity * per_transition + (frames - 1) * (frame_bytes + 1)
    assert not hasattr(buffer, "_next_obs")  # no next_obs ring beside obs


def test_frames_must_be_the_last_axis_of_an_image():
    with pytest.raises(ValueError, match=r"\(height, width, 4\) observation"):
        ReplayBuffer(5, (10, 10, 6), (), np.int64, obs_dtype=np.uint8, frames=4)
    with pytest.raises(ValueError, match="frames must be a positive int"):
        ReplayBuffer(5, (10, 10, 6), (), np.int64, obs_dtype=np.uint8, frames=0)


# ---------------------------------------------------------------------------------- stacks
def _stack(*frames: int) -> np.ndarray:
    return np.array(frames, np.uint8).reshape(1, 1, 4)


def test_stacks_across_episode_ends_and_wrap_around_by_hand():
    """Three episodes as ``FrameStackObservation`` stacks them (an episode's first stack is its
    first frame four times): a termination, a truncation, then a longer one that wraps the
    6-slot ring; the oldest transition kept still has its whole stack."""
    a = [(_stack(1, 1, 1, 1), _stack(1, 1, 1, 2), False, False),
         (_stack(1, 1, 1, 2), _stack(1, 1, 2, 3), True, False)]
    b = [(_stack(10, 10, 10, 10), _stack(10, 10, 10, 11), False, True)]
    c = [(_stack(20, 20, 20, 20), _stack(20, 20, 20, 21), False, False),
         (_stack(20, 20, 20, 21), _stack(20, 20, 21, 22), False, False),
         (_stack(20, 20, 21, 22), _stack(20, 21, 22, 23), False, False),
         (_stack(20, 21, 22, 23), _stack(21, 22, 23, 24), False, False)]
    stream = [(obs, t, float(t), next_obs, term, trunc)
              for t, (obs, next_obs, term, trunc) in enumerate(a + b + c)]
    buffer = _frame_buffer(6, (1, 1, 4))
    for transition in stream:
        buffer.add(*transition)
    got = buffer.transitions()
    for key, value in _record(stream, 6).items():
        assert got[key].tobytes() == value.astype(got[key].dtype).tobytes(), key
    np.testing.assert_array_equal(got["obs"][0], _stack(1, 1, 1, 2))  # frame 1's slot is reused
    # Stored: each transition's newest frame in a ring of 6 + 3 (counts 0-6, all still there),
    # episode starts flagged, each episode's last next_obs kept as its newest frame.
    assert buffer._obs.ravel().tolist() == [1, 2, 10, 20, 21, 22, 23, 0, 0]
    assert buffer._first.tolist() == [True, False, True, True] + [False] * 5
    assert buffer._side_obs == {}
    assert sorted(buffer._side_next) == [1, 2]  # the slots of a's and b's last transitions
    assert [int(v[0].ravel()[0]) for _, v in sorted(buffer._side_next.items())] == [3, 11]
    assert all(frame_only for _, frame_only in buffer._side_next.values())


@pytest.mark.parametrize("capacity", [1, 3, 17, 400])
@pytest.mark.parametrize("n_steps", [1, 3])
def test_sampled_batches_equal_the_old_layout(capacity, n_steps):
    """Every 5th step of 300 (lives lost, games over, time limits, the ring wrapped for all but
    the largest capacity), a batch equals the old layout's for the same draws."""
    stream = _play(_atari_like(), 300)
    ends = [(t[4], t[5]) for t in stream]
    assert (True, False) in ends and (False, True) in ends  # terminations and truncations
    buffer = _frame_buffer(capacity)
    for t, transition in enumerate(stream):
        buffer.add(*transition)
        if t % 5 == 0 or t == len(stream) - 1:
            idx = _rng_copy(buffer).integers(0, len(buffer), size=16)
            expected = _expected_batch(stream[:t + 1], capacity, idx, n_steps, 0.9)
            _assert_same(buffer.sample(16, n_steps, 0.9), expected)
    # The env's stacks are all rebuilt from the frames: no observation kept whole.
    assert buffer._side_obs == {}
    assert all(frame_only for _, frame_only in buffer._side_next.values())


@pytest.mark.parametrize("kind", ["frames", "vector"])
def test_any_stream_is_stored_exactly(kind):
    """Transitions that do not chain (an obs that is not the previous next_obs, a stack that
    is not the previous one shifted) come back exactly, and so do NaN and -0.0 vectors."""
    rng = np.random.default_rng(1)
    if kind == "frames":
        buffer = _frame_buffer(7)

        def draw():
            return rng.integers(0, 4, (6, 6, 4), dtype=np.uint8)
    else:
        buffer = ReplayBuffer(7, (3,), (), np.int64, seed=3)

        def draw():
            return rng.choice(np.array([0.0, -0.0, np.nan, 1.5], np.float32), 3)
    stream, obs = [], draw()
    for t in range(40):
        next_obs = draw()
        stream.append((obs, t % 3, 1.0, next_obs, t % 11 == 0, t % 7 == 0))
        obs = next_obs if t % 4 else draw()  # every 4th transition does not chain
    for t, transition in enumerate(stream):
        buffer.add(*transition)
        idx = _rng_copy(buffer).integers(0, len(buffer), size=8)
        _assert_same(buffer.sample(8, 2, 0.5), _expected_batch(stream[:t + 1], 7, idx, 2, 0.5))
    got = buffer.transitions()
    for key, value in _record(stream, 7).items():
        assert got[key].tobytes() == value.astype(got[key].dtype).tobytes(), key


def test_real_atari_stacks_are_rebuilt_exactly():
    """``ALE/Breakout-v5`` as the agent trains on it (episodic life, a 40-step limit): the
    buffer returns every stack as the env gave it, and keeps none whole."""
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    env = make_env("ALE/Breakout-v5", 0, agent="dqn", agents={"dqn": "discrete"},
                   training=True, max_episode_steps=40)
    try:
        stream = _play(env, 150)
    finally:
        env.close()
    assert any(t[4] for t in stream) and any(t[5] for t in stream)
    buffer = _frame_buffer(100, (84, 84, frame_stack("ALE/Breakout-v5")))
    for transition in stream:
        buffer.add(*transition)
    got = buffer.transitions()
    for key, value in _record(stream, 100).items():
        assert got[key].tobytes() == value.astype(got[key].dtype).tobytes(), key
    assert buffer._side_obs == {}


# ----------------------------------------------------------------------------- checkpoints
def _filled(capacity: int = 17, size: int = 6) -> tuple[ReplayBuffer, list]:
    stream = _play(_atari_like(size), 60)
    # An obs that does not continue the stream (four different frames): kept whole.
    stream[-5] = (np.arange(size * size * 4).astype(np.uint8).reshape(size, size, 4),
                  *stream[-5][1:])
    buffer = _frame_buffer(capacity, (size, size, 4))
    for transition in stream:
        buffer.add(*transition)
    assert buffer._side_obs and buffer._side_next
    return buffer, stream


def test_checkpoint_round_trip_is_bit_for_bit(tmp_path):
    buffer, _ = _filled()
    path = tmp_path / "replay.npz"
    buffer.save(path)
    restored = _frame_buffer(17, seed=99)
    restored.load(path)
    for key in ("obs", "first", "action", "reward", "terminated", "episode_end", "pending"):
        assert restored._storage(key).tobytes() == buffer._storage(key).tobytes(), key
    assert (restored._total, restored._size, restored._has_pending.tolist()) == (
        buffer._total, buffer._size, buffer._has_pending.tolist())
    assert restored._side_obs.keys() == buffer._side_obs.keys()
    for slot, value in buffer._side_obs.items():
        assert restored._side_obs[slot].tobytes() == value.tobytes()
    assert {s: (v.tobytes(), f) for s, (v, f) in restored._side_next.items()} == {
        s: (v.tobytes(), f) for s, (v, f) in buffer._side_next.items()}
    for _ in range(5):
        _assert_same(restored.sample(16, 3, 0.9), buffer.sample(16, 3, 0.9))


def _traced(call) -> tuple[int, int]:
    """Bytes allocated by ``call()`` and still held after it, and its peak beyond those."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before, peak - after


def test_save_and_load_need_no_second_copy(tmp_path):
    """Saving a 4.3 MB buffer and loading it allocate, beyond what stays (the loaded side
    store: one frame per episode end here), less than a fifth of it: the side store gathered
    into one array, one 256 KiB chunk and zip read buffers of a chunk's size. ``np.savez``
    copies each ring through a 16 MiB buffer (here: whole), ``np.load`` reads it whole before it
    can be copied in."""
    buffer = _frame_buffer(600, (84, 84, 4))
    for transition in _play(_atari_like(84, limit=200), 640):
        buffer.add(*transition)
    path = tmp_path / "replay.npz"
    assert buffer.nbytes > 4_000_000 and all(f for _, f in buffer._side_next.values())
    kept, extra = _traced(lambda: buffer.save(path))
    assert kept < 50_000 and extra < 0.2 * buffer.nbytes, (kept, extra, buffer.nbytes)
    with np.load(path, allow_pickle=False) as data:  # a plain npz
        assert data["obs"].tobytes() == buffer._obs.tobytes()
    restored = _frame_buffer(600, (84, 84, 4), seed=5)
    side = sum(v.nbytes for v, _ in buffer._side_next.values()) + sum(
        v.nbytes for v in buffer._side_obs.values())
    kept, extra = _traced(lambda: restored.load(path))
    assert kept < side + 100_000 and extra < 0.2 * buffer.nbytes, (kept, side, extra)
    assert restored._obs.tobytes() == buffer._obs.tobytes()


def test_a_damaged_ring_leaves_the_buffer_empty_a_mismatch_untouched(tmp_path):
    """The frame ring (20 frames of 84x84) is damaged near its end: zipfile's CRC check fails
    only once it has been read into the buffer, which is then emptied."""
    buffer, _ = _filled(size=84)
    path = tmp_path / "replay.npz"
    buffer.save(path)
    data = bytearray(path.read_bytes())
    data[data.index(b"obs.npy") + 20 * 84 * 84] ^= 0xFF  # in the frame ring's last frames
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(data))
    target, _ = _filled(size=84)
    with pytest.raises(ValueError, match="not a readable replay buffer file"):
        target.load(damaged)
    assert len(target) == 0
    other = ReplayBuffer(17, (84, 84, 4), (), np.int64, obs_dtype=np.uint8)  # frames 1
    other.add(np.ones((84, 84, 4)), 0, 1.0, np.ones((84, 84, 4)), False)
    with pytest.raises(ValueError, match="frames 4, but this buffer's is 1"):
        other.load(path)
    assert len(other) == 1 and other.transitions()["obs"].sum() == 84 * 84 * 4


def test_an_old_layout_file_loads_into_the_same_slots(tmp_path):
    """A version 2 file (obs beside next_obs, by slot) of a wrapped ring: after loading, the
    buffer samples what the saved one would have."""
    buffer, stream = _filled()
    pos = buffer._pos
    assert pos != 0
    oldest_first = _record(stream, 17)
    by_slot = {key: np.roll(value, pos, axis=0) for key, value in oldest_first.items()}
    path = tmp_path / "replay.npz"
    with open(path, "wb") as f:
        np.savez(f, **by_slot, format_version=np.asarray(2), capacity=np.asarray(17),
                 pos=np.asarray(pos), size=np.asarray(17),
                 rng_state=np.asarray(json.dumps(buffer._rng.bit_generator.state)))
    restored = _frame_buffer(17, seed=8)
    restored.load(path)
    assert restored._pos == pos
    for _ in range(5):
        _assert_same(restored.sample(16, 2, 0.9), buffer.sample(16, 2, 0.9))


# ------------------------------------------------------------------------------ the agent
def test_frames_come_from_the_env_family():
    assert frame_stack("ALE/Pong-v5") == 4
    assert frame_stack("MinAtar/Breakout-v1") == 1  # object channels, not past frames
    assert frame_stack("CartPole-v1") == 1
    space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    assert Observation.from_space(space).frames == 1  # never guessed from the shape
    assert Observation.from_space(space, 4).frames == 4


@pytest.mark.parametrize("env_id, extra, frames", [("ALE/Pong-v5", "ale_py", 4),
                                                   ("MinAtar/Breakout-v1", "minatar", 1)])
def test_a_run_agent_gets_frames_from_its_env(monkeypatch, env_id, extra, frames):
    """``runs.build_agent`` and the memory check take ``frames`` from the env family: an Atari
    transition is one 84x84 frame and 17 bytes more, a MinAtar one its whole 10x10x4 grid."""
    pytest.importorskip(extra)
    config = resolve(agent="dqn", env=env_id, agent_overrides={"buffer_size": 2**30})
    per_transition = {4: 84 * 84 + 18, 1: 400 + 18}[frames]
    monkeypatch.setattr(runs, "_memory_bytes", lambda: 2**30 * per_transition - 1)
    with pytest.raises(UserError, match=f"needs {per_transition:.1f} GiB"):
        runs.check_run(config)
    config = resolve(agent="dqn", env=env_id, agent_overrides={"buffer_size": 50})
    env = runs.make_run_env(config, 0, training=True)
    try:
        agent = runs.build_agent(config, env)
        assert agent.observation.frames == frames and agent.buffer._frames == frames
        agent.close()
    finally:
        env.close()


def test_dqn_trains_on_a_frame_stack():
    """A Nature-CNN DQN on 36x36x4 frame stacks (the smallest the Nature CNN takes) fills its
    replay from the stand-in env and takes three updates."""
    space = gym.spaces.Box(0, 255, (36, 36, 4), np.uint8)
    config = dict(batch_size=8, learning_starts=0, buffer_size=40, xla=False, hidden=(16,),
                  n_steps=3)
    agent = make_agent("dqn", space, gym.spaces.Discrete(3), config, seed=0, frames=4)
    try:
        assert agent.observation.frames == 4 and agent.buffer._frames == 4
        stream = _play(_atari_like(36), 60)
        for transition in stream:
            agent.observe(*transition)
        got = agent.buffer.transitions()
        assert got["obs"].tobytes() == _record(stream, 40)["obs"].tobytes()
        before = agent.sess.run(agent.networks.critics[0].weights)
        scalars = [agent.train_step() for _ in range(3)]
        after = agent.sess.run(agent.networks.critics[0].weights)
    finally:
        agent.close()
    assert all(np.isfinite(s["losses/q_loss"]) for s in scalars)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# ------------------------------------------------------------------------------- benchmark
def test_the_benchmark_prints_what_it_computes(capsys):
    spec = importlib.util.spec_from_file_location("replay_memory", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for capacity in (20, 40):
        assert module.main(["--capacity", str(capacity), "--minatar-channels", "6"]) == 0
        lines = capsys.readouterr().out.splitlines()
        numbers = [[float(x) for x in re.search(r"old (\d+), new (\d+), measured ([\d.]+)",
                                                  line).groups()] for line in lines[:2]]
        ale = ReplayBuffer(capacity, (84, 84, 4), (), np.int64, obs_dtype=np.uint8, frames=4)
        assert numbers[0] == [2 * 84 * 84 * 4 + 17, 84 * 84 + 18, round(ale.nbytes / capacity, 2)]
        minatar = ReplayBuffer(capacity, (10, 10, 6), (), np.int64, obs_dtype=np.uint8)
        assert numbers[1] == [2 * 600 + 17, 600 + 18, round(minatar.nbytes / capacity, 2)]
        projected = 10**6 * (84 * 84 + 18) + 3 * (84 * 84 + 1)
        assert f"new {projected / 1e9:.3f} GB" in lines[2] and "met" in lines[2]
