"""Replay memory per transition, the layout before issue 26 (obs beside next_obs) against the
one that stores each observation once (``agents.replay``), and the size of a 1M-transition Atari
buffer.

    python benchmarks/replay_memory.py                    # capacity 1000 per measured buffer
    python benchmarks/replay_memory.py --capacity 20      # what the test runs

For each observation kind, "old" is the bytes of one slot of the old layout's arrays (obs and
next_obs, action, reward, terminated, episode end), "new" the ring bytes per transition
(``ReplayBuffer.transition_bytes``) and "measured" a real buffer's ring bytes (``nbytes``, which
includes a frame stack's k - 1 extra frames) divided by its capacity. A kept next observation
adds one frame (a whole observation without a frame stack) per episode end: the 1M projection
says how many episode ends fit under the 7.5 GB target (issue 26).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bnrl.agents.replay import ReplayBuffer

ATARI = ((84, 84, 4), 4)  # AtariPreprocessing + FrameStackObservation(4) (envs/families.py)
ACTION = ((), np.int64)  # a Discrete action, as DQN's head stores it
TARGET_BYTES = 7.5e9
PROJECTED = 1_000_000


def old_layout_bytes(obs_shape: tuple[int, ...], obs_dtype) -> int:
    """One slot of the layout before issue 26: obs and next_obs whole, action, float32 reward
    and terminated, bool episode end."""
    obs = int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
    return 2 * obs + int(np.prod(ACTION[0])) * np.dtype(ACTION[1]).itemsize + 4 + 4 + 1


def row(name: str, obs_shape: tuple[int, ...], frames: int, capacity: int) -> tuple[str, int]:
    """The line of one observation kind, and its new bytes per transition."""
    new = ReplayBuffer.transition_bytes(obs_shape, np.uint8, *ACTION, frames)
    buffer = ReplayBuffer(capacity, obs_shape, *ACTION, obs_dtype=np.uint8, frames=frames)
    measured = buffer.nbytes / capacity
    return (f"{name} {obs_shape} uint8: old {old_layout_bytes(obs_shape, np.uint8)}, "
            f"new {new}, measured {measured:.2f} bytes per transition at capacity {capacity}"), new


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=1000,
                        help="capacity of each measured buffer (default 1000)")
    parser.add_argument("--minatar-channels", default="4,10",
                        help="MinAtar channel counts to show (Breakout 4 ... Seaquest 10)")
    args = parser.parse_args(argv)
    if args.capacity < 1:
        parser.error("--capacity must be positive")
    line, atari = row("ALE", *ATARI, args.capacity)
    print(line)
    for channels in (int(c) for c in args.minatar_channels.split(",")):
        print(row("MinAtar", (10, 10, channels), 1, args.capacity)[0])
    shape, frames = ATARI
    frame = int(np.prod(shape[:-1]))
    old_total = PROJECTED * old_layout_bytes(shape, np.uint8)
    new_total = PROJECTED * atari + (frames - 1) * (frame + 1)
    ends = int((TARGET_BYTES - new_total) // frame)
    print(f"{PROJECTED} ALE transitions: old {old_total / 1e9:.3f} GB, new {new_total / 1e9:.3f} "
          f"GB + {frame} bytes per episode end (target <= {TARGET_BYTES / 1e9} GB: "
          f"{'met' if new_total <= TARGET_BYTES else 'missed'} with up to {max(ends, 0)} "
          f"episode ends, episodes of {PROJECTED / max(ends, 1):.1f} steps on average)")
    return 0 if new_total <= TARGET_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
