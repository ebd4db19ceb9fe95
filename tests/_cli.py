"""Helpers shared by the command-line tests: run ``bnrl`` in this process, read its stderr."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from bnrl import run
from bnrl.compare import cli, results


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


def record_planned_runs(monkeypatch) -> dict:
    """Replace the benchmark's ``run_grid`` by a fake that records the specs it is given (under
    ``"specs"`` of the returned dict) and leaves one result file per run, so that the report
    has runs: what a benchmark command plans, without training."""
    seen = {}

    def fake_run_grid(specs, out, workers, backend="local", address=None, on_result=None,
                      progress=None, seeds_per_process=1):
        seen["specs"] = specs
        records = [{**results.base_record(s, "ok"), "eval_steps": [s.steps],
                    "eval_returns": [0.0], "final_return": 0.0} for s in specs]
        for record in records:
            results.write_result(record, out)
        return records

    monkeypatch.setattr(cli, "run_grid", fake_run_grid)
    return seen


def assert_export_evaluates_like_its_run(lines: list[str], run_dir, export_dir) -> None:
    """``evaluate``'s lines for a run and for its export: the same returns, each naming what it
    evaluated (issue 28): the run its latest checkpoint, the export itself and the checkpoint
    it was made from."""
    latest = sorted((Path(run_dir) / "checkpoints").iterdir())[-1]
    step = f"(env step {int(latest.name.split('-')[-1])})"
    returns = lines[0].split(" of ")[0]
    assert returns.startswith("mean return "), lines
    assert lines == [f"{returns} of {latest} {step}",
                     f"{returns} of export {export_dir} of {latest.name} {step}"], lines
