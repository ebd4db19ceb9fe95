"""The one way bnrl writes a file: complete or not at all, and durable once it is there.

Every result, checkpoint part, report and plot goes through ``atomic_open`` (or ``atomic_write``):
the data is written to a temporary file in the same directory, flushed and fsync'ed, renamed over
the target (``os.replace`` is atomic on POSIX), and the directory is fsync'ed so that the rename
itself survives a power cut. A reader, or a run killed at any moment, sees the old file or the new
one, never a torn one. On any error the temporary file is removed and the old file is untouched.

Whole directories (an export) go through ``atomic_directory``, scratch space (a video being
recorded) through ``temporary_directory``: both work in a hidden ``.NAME.XXXXXXXX.tmp`` beside
their target, held with a lock while the process lives, so that the next write to the same place
removes what a killed process left there (and nothing a live one is writing).

``lock_directory`` keeps a second process from writing into the same run or benchmark directory.
``check_creatable`` tells, before any work, whether an output can be made where it is asked for;
``make_dirs`` and ``remove_empty`` make an output's parents and take them back when it fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
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


def _temporaries_of(path: Path) -> Iterator[Path]:
    """The hidden temporary directories ``temporary_directory(path)`` makes (``mkdtemp``'s eight
    random characters between ``.NAME.`` and ``.tmp``)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if pattern.fullmatch(name):
            yield path.parent / name


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries beside ``path`` that no live process holds: what an interrupted
    write (a killed export, a killed video recording) left behind."""
    for stale in _temporaries_of(path):
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it, or no flock here: it may be in use
            os.close(fd)
            continue
        shutil.rmtree(stale, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def temporary_directory(beside: str | os.PathLike) -> Iterator[Path]:
    """A new hidden directory ``.NAME.XXXXXXXX.tmp`` next to ``beside`` (``NAME`` its name),
    removed with its content when the block ends, however it ends.

    It is locked (``flock``) while this process holds it: a process killed meanwhile (SIGKILL
    included) leaves it unlocked, and the next ``temporary_directory`` or ``atomic_directory``
    for the same place removes it first. (A writer killed in the microseconds between ``mkdtemp``
    and its lock leaves an unlocked one too; so would a live writer in that window be mistaken
    for a dead one, which needs two processes writing the same target at the same instant.)

    Raises:
      OSError: the directory cannot be made (a read-only or full file system, no permission).
    """
    beside = Path(beside)
    _remove_stale_temporaries(beside)
    tmp = Path(tempfile.mkdtemp(dir=beside.parent, prefix=f".{beside.name}.", suffix=".tmp"))
    try:
        held = lock_directory(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place
        os.close(held)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside ``path`` (``temporary_directory``) that becomes ``path`` when
    the block ends without error (every file in it fsync'ed first); on any error it is removed.
    ``path`` must not exist.

    The directory gets the mode ``mkdir`` would give it (``mkdtemp`` makes 0700).
    """
    path = Path(path)
    with temporary_directory(path) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        fsync_tree(tmp)
        os.rename(tmp, path)
    fsync_dir(path.parent)


def check_creatable(path: str | os.PathLike) -> str | None:
    """Why a new file or directory cannot be made at ``path``, or None when it can.

    Its nearest existing ancestor must be a directory this process can write in. That is probed
    by making (and removing) an empty directory there: the one test that neither a read-only
    mount nor root's exemption from permission bits (``os.access``) can fool. Nothing is left
    behind.
    """
    path = Path(os.path.abspath(path))
    ancestor = path.parent
    while not os.path.exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        return f"{ancestor} is a file, not a directory"
    try:
        probe = tempfile.mkdtemp(dir=ancestor, prefix=".bnrl-probe-")
    except OSError as exc:
        return f"cannot write in {ancestor} ({exc.strerror})"
    os.rmdir(probe)
    return None


def make_dirs(path: str | os.PathLike) -> list[Path]:
    """``mkdir -p path``; the directories it created, deepest first (for ``remove_empty``).

    Raises:
      OSError: a directory could not be made; the ones made before it are removed again.
    """
    path = Path(path)
    missing, parent = [], path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    created: list[Path] = []
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                continue  # made meanwhile by another process: not this one's to remove
            created.insert(0, directory)
    except OSError:
        remove_empty(created)
        raise
    return created


def remove_empty(directories: list[Path]) -> None:
    """rmdir each directory (deepest first) while they are empty: what ``make_dirs`` made for a
    write that failed, so that a refused command leaves nothing behind."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


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
