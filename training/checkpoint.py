"""Atomic checkpoints: a checkpoint directory appears complete or not at all.

Each checkpoint is written into ``checkpoints/.tmp-<step>`` and renamed to
``checkpoints/step-<step>`` (``os.replace`` of a directory is atomic on POSIX), so a run killed at
any moment, SIGKILL included, leaves only complete checkpoints and maybe a stale temporary that
the next save removes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bnrl.training.errors import UserError

_PREFIX = "step-"
_REQUIRED = ("agent.json", "model.index", "loop.json")


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
             and p.name[len(_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def save(run_dir, step: int, agent, loop_state: dict, keep: int) -> Path:
    """Write agent + loop state as checkpoint ``step`` atomically; keep the last ``keep``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{step}"
    agent.save(str(tmp))
    with open(tmp / "loop.json", "w") as f:
        json.dump(loop_state, f)
        f.flush()
        os.fsync(f.fileno())
    final = root / f"{_PREFIX}{step:09d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir) -> Path | None:
    """The newest complete checkpoint, or None when the run has none."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def load_loop_state(path: Path) -> dict:
    """Validate a checkpoint's files and return its loop state (UserError if corrupt)."""
    missing = [name for name in _REQUIRED if not (path / name).exists()]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete or corrupt "
                        f"(missing {', '.join(missing)})")
    try:
        with open(path / "loop.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        raise UserError(f"checkpoint {path} is corrupt: loop.json is unreadable") from None


def restore_agent(agent, path: Path) -> None:
    """``agent.restore`` with TensorFlow/numpy errors turned into one-line UserErrors."""
    try:
        agent.restore(str(path))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt checkpoint
        raise UserError(f"checkpoint {path} is corrupt or from another config: "
                        f"{_reason(exc)}") from None


# Lines of a TensorFlow graph-mode error that are context, not the reason.
_CONTEXT = ("Graph execution error", "Detected at node", "File ", "Node:", "[[",
            "Original stack trace")


def _reason(exc: Exception) -> str:
    """The informative line of an exception (TF's OpError text starts with context lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if not line.startswith(_CONTEXT):
            return line
    return lines[0] if lines else type(exc).__name__
