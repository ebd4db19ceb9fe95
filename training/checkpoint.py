"""Atomic checkpoints: a checkpoint directory appears complete or not at all.

Each checkpoint is written into ``checkpoints/.tmp-<step>``, every file in it is fsync'ed
(TensorFlow's Saver does not), and the directory is renamed to ``checkpoints/step-<step>``
(``os.replace`` of a directory is atomic on POSIX) and the ``checkpoints`` directory fsync'ed. A
run killed at any moment, SIGKILL or power cut included, leaves only complete checkpoints and
maybe a stale temporary that the next save removes. Old checkpoints are pruned by renaming them
away first, so a reader (``evaluate`` while the run trains) sees a checkpoint whole or not at
all, and then moves on to the newest one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from bnrl.common.errors import StorageError, UserError, error_line
from bnrl.common.files import atomic_write, fsync_dir, fsync_tree

_PREFIX = "step-"
_REQUIRED = ("agent.json", "model.index", "loop.json")
REPLAY = "replay.npz"
# What the training loop reads back from loop.json, by type.
_LOOP_STATE = {"episodes": int, "resets": int, "eval_steps": list, "eval_returns": list,
               "bn_history": dict, "wall_time_s": (int, float), "train_time_s": (int, float)}
_NO_REPLAY_HINT = "pass --without-replay to resume with an empty replay buffer"


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(path: Path) -> int:
    """The env step a checkpoint directory was written at."""
    return int(Path(path).name[len(_PREFIX):])


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
             and p.name[len(_PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def save(run_dir, step: int, agent, loop_state: dict, keep: int) -> Path:
    """Write agent + loop state as checkpoint ``step`` atomically; keep the last ``keep``.

    Raises:
      StorageError: a part could not be written (disk full...); nothing of it is left behind and
        the older checkpoints are untouched.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{step}"
    final = root / f"{_PREFIX}{step:09d}"
    try:
        agent.save(str(tmp))
        atomic_write(tmp / "loop.json", json.dumps(loop_state))
        fsync_tree(tmp)
        if final.exists():
            _prune(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) or _is_tensorflow_error(exc):
            raise StorageError(f"cannot write checkpoint {final}: {error_line(exc)}") from exc
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        _prune(old)
    return final


def _is_tensorflow_error(exc: Exception) -> bool:
    """TensorFlow reports a failed write (ENOSPC included) as an ``OpError``, not an OSError."""
    return type(exc).__module__.startswith("tensorflow")


def _prune(path: Path) -> None:
    """Remove a checkpoint: renamed away first (atomic), so no reader sees it half deleted."""
    doomed = path.with_name(f".tmp-pruned-{path.name}")
    try:
        os.replace(path, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def latest(run_dir) -> Path | None:
    """The newest complete checkpoint, or None when the run has none."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def load_loop_state(path: Path) -> dict:
    """Check that a checkpoint is complete and return its loop state (UserError naming the
    missing or corrupt file otherwise). A checkpoint pruned meanwhile by a run still training is
    replaced by that run's newest one."""
    return _follow_pruning(_read_loop_state, Path(path))[1]


def _read_loop_state(path: Path) -> dict:
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if not any(path.glob("model.data-*")):
        missing.append("model.data-*")
    if missing:
        raise UserError(f"checkpoint {path} is incomplete or corrupt "
                        f"(missing {', '.join(missing)})")
    try:
        state = json.loads((path / "loop.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"checkpoint {path} is corrupt: loop.json is unreadable") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is corrupt: loop.json is not a mapping")
    bad = [key for key, kind in _LOOP_STATE.items() if not isinstance(state.get(key), kind)]
    if "bn_history" not in bad and not isinstance(state["bn_history"].get("steps"), list):
        bad.append("bn_history.steps")
    if bad:
        raise UserError(f"checkpoint {path} is corrupt: loop.json lacks or garbles "
                        f"{', '.join(bad)}")
    return state


def restore_agent(agent, path: Path, replay: bool = False) -> Path:
    """Restore ``agent`` from a checkpoint, with every failure a one-line UserError naming the
    file; returns the checkpoint restored (the run's newest when ``path`` was pruned meanwhile).

    Args:
      agent: a freshly built agent of the run's config.
      path: a checkpoint directory.
      replay: also load the replay buffer, which must then be there and readable (resuming
        training); evaluation does not need it.
    """
    return _follow_pruning(lambda p: _restore(agent, p, replay), Path(path))[0]


def _restore(agent, path: Path, replay: bool) -> None:
    _read_loop_state(path)  # every required part is there
    try:
        json.loads((path / "agent.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"checkpoint {path} is corrupt: agent.json is unreadable") from None
    replay_file = path / REPLAY
    if replay and not replay_file.is_file():
        raise UserError(f"checkpoint {path} has no {REPLAY} (its replay buffer): "
                        f"{_NO_REPLAY_HINT}")
    with _without_replay(path) as view:
        try:
            agent.restore(str(view))
        except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt checkpoint
            raise UserError(f"checkpoint {path} is corrupt or from another config: "
                            f"{error_line(exc)}") from None
    if replay:
        try:
            agent.buffer.load(replay_file)
        except Exception as exc:  # noqa: BLE001 - numpy/zip errors of a damaged file
            raise UserError(f"checkpoint {path}: {REPLAY} is unreadable "
                            f"({error_line(exc).replace(str(replay_file) + ': ', '')}): "
                            f"{_NO_REPLAY_HINT}") from None


@contextlib.contextmanager
def _without_replay(path: Path) -> Iterator[Path]:
    """The checkpoint seen without its replay buffer: a temporary directory of links to its
    other files (``Agent.restore`` loads a replay file whenever there is one; the caller
    decides whether and how to load it)."""
    if not (path / REPLAY).exists():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bnrl-restore-") as view:
        for part in path.iterdir():
            if part.name != REPLAY:
                os.symlink(part.resolve(), Path(view) / part.name)
        yield Path(view)


def _follow_pruning(read: Callable[[Path], object], path: Path) -> tuple[Path, object]:
    """``(checkpoint, read(checkpoint))``, moving on to the run's newest checkpoint while the
    one being read turns out to have been pruned (its directory is gone)."""
    while True:
        try:
            return path, read(path)
        except UserError:
            if path.exists():
                raise
            newest = latest(path.parent.parent)
            if newest is None or step_of(newest) <= step_of(path):
                raise
            path = newest
