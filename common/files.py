"""The one way bnrl writes a file: complete or not at all, and durable once it is there.

Every result, checkpoint part, report and plot goes through ``atomic_open`` (or ``atomic_write``):
the data is written to a temporary file in the same directory, flushed and fsync'ed, renamed over
the target (``os.replace`` is atomic on POSIX), and the directory is fsync'ed so that the rename
itself survives a power cut. A reader, or a run killed at any moment, sees the old file or the new
one, never a torn one. On any error the temporary file is removed and the old file is untouched.

``lock_directory`` keeps a second process from writing into the same run or benchmark directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory, making the renames and creations inside it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync one file's data (a file another library wrote, before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root``, so that what a rename makes visible is
    durable too."""
    for directory, _, names in os.walk(root):
        for name in names:
            fsync_file(os.path.join(directory, name))
        fsync_dir(directory)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside ``path`` that becomes ``path`` when the block ends without
    error (every file in it fsync'ed first); on any error it is removed. ``path`` must not exist.

    The directory gets the mode ``mkdir`` would give it (``mkdtemp`` makes 0700).
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        fsync_tree(tmp)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file next to ``path``, created with the mode ``open`` would give it (0666 less the
    umask; ``tempfile.mkstemp`` makes 0600 files, unreadable to the people results are for)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends without error.

    Args:
      path: the file to (re)write; its directory must exist.
      mode: ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``.
      **kwargs: passed to ``open`` (``newline``, ``encoding``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
    path = Path(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: name the target
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically and durably."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def lock_directory(directory: str | os.PathLike) -> int:
    """Take an exclusive lock on ``directory`` for this process, without waiting.

    The lock is a ``flock`` on the directory's own descriptor (no lock file to clean up). It is
    released when the returned descriptor is closed, and by the kernel when the process dies,
    SIGKILL included, so a crashed run never leaves a stale lock. Child processes do not inherit
    it (the descriptor is close-on-exec).

    Raises:
      BlockingIOError: another process holds the lock.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        pass  # a filesystem without flock (some network mounts): work unlocked rather than not
    return fd
