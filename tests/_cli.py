"""Helpers shared by the command-line tests: run ``bnrl`` in this process, read its stderr."""

from __future__ import annotations

import contextlib
import io

from bnrl import run


def main(args: list[str]) -> int:
    """``run.main(args)`` in this process; argparse's SystemExit becomes its exit code."""
    try:
        return run.main(args)
    except SystemExit as exc:
        return exc.code


def train_quiet(args: list[str]) -> None:
    """``bnrl train ARGS --quiet`` in this process; asserts that it succeeded."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", *args, "--quiet"])
    assert code == 0, out.getvalue()


def one_line(stderr: str) -> str:
    """The single non-empty stderr line (asserts there is exactly one and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{stderr}"
    return lines[0]


def run_captured(args: list, capsys) -> tuple[int, str, str]:
    """``main(args)`` (each argument made a string) with pytest's ``capsys``: exit code, stdout
    and stderr of this call alone."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
