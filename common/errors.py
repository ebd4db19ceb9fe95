"""Errors the command line reports as one line instead of a traceback."""

import numpy as np


class UserError(Exception):
    """Bad input from the user (flags, config, run directory): one line, exit code 2."""


class RunFailed(RuntimeError):
    """A run or an evaluation stopped on a fault of what it runs, not of its input: a non-finite
    value, an environment that raised. The message is one line naming the step and what failed,
    and, for a training run, what it kept (exit code 1)."""


class NonFiniteValue(RunFailed):
    """A NaN or infinite observation, reward or action at the env boundary, loss or evaluation
    return; a training run keeps its last good checkpoint."""


NonFiniteLoss = NonFiniteValue
"""Issue 11's name of the loss check, kept for the callers that catch it."""


class EnvFailed(RunFailed):
    """The environment raised in ``reset()`` or ``step()``; a training run keeps its last
    checkpoint."""


class StorageError(RuntimeError):
    """A file of a running run could not be written (disk full, quota, I/O error); everything
    complete before it is kept and the run can be resumed (exit code 1)."""


def one_line(text: object, limit: int = 500) -> str:
    """``text`` as one line of at most ``limit`` characters: an error message stays one readable
    line whatever the input (a pasted file, a megabyte-long YAML value, a multi-line reason).
    The middle goes, so that both what failed and the advice at the end stay."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    tail = limit // 3
    return f"{line[:limit - tail - 5]} ... {line[-tail:]}"


# Lines of a TensorFlow graph-mode error that are context, not the reason.
_CONTEXT = ("Graph execution error", "Detected at node", "File ", "Node:", "[[",
            "Original stack trace")


def error_line(exc: BaseException, limit: int = 200) -> str:
    """The informative line of an exception, for a one-line message: an OSError's reason and
    file, else the first line that is not TensorFlow's context (its OpError text starts with
    such lines); empty when the exception has no text."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(_CONTEXT)), None)
    return one_line(reason or (lines[0] if lines else ""), limit)


def error_text_line(text: object, limit: int = 200) -> str:
    """``error_line`` of an error kept as text (a failed run's recorded error, a traceback file):
    a traceback's last line (the exception itself), else the first line, cut to ``limit``
    characters; ``unknown error`` when there is no text."""
    lines = [line.strip() for line in str(text or "unknown error").splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def first_nonfinite(values) -> str | None:
    """None when every value is finite, else the first that is not, for a message
    (``nan at index 2``; a single value as itself)."""
    if np.isfinite(values).all():
        return None
    flat = np.ravel(values)
    index = int(np.flatnonzero(~np.isfinite(flat))[0])
    return f"{flat[index]} at index {index}" if flat.size > 1 else str(flat[0])
