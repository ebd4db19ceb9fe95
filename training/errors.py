"""Errors the command line reports as one line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (flags, config, run directory): one line, exit code 2."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept (exit code 1)."""
