"""A benchmark directory's runs, read back from its result files; merging pieces of a grid.

``OUT/results/<agent>/<env>/<variant>/seed<k>.json`` (one per finished run, written by
``compare.workers``) are the source of truth: they can be copied between machines, committed,
and reported without the run directories. ``OUT/results.json`` adds the failed runs of the last
benchmark command; ``OUT/grid.json`` says which runs the grid has, so that a report counts the
missing ones instead of silently averaging a partial grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bnrl.common.errors import UserError
from bnrl.common.files import atomic_write
from bnrl.compare.grid import merge_grids, read_grid
from bnrl.compare.records import check_runs, record_problem
from bnrl.compare.results import read_result, record_settings_hash, result_path, run_key


@dataclass
class Found:
    runs: list[dict]
    """Run records: every result file, then failed runs that have none."""
    baseline: str | None = None
    variants: list[dict] = field(default_factory=list)
    """``{"name", "settings"}`` of the grid's variants, in order (empty without grid.json)."""
    cells: list[dict] = field(default_factory=list)
    """``{"agent", "env", "steps"}`` of the grid (empty without grid.json)."""
    missing: list[str] = field(default_factory=list)
    """Keys (``agent/env/variant/seedK``) of grid runs with neither a result nor a failure."""


def _result_files(out: Path) -> list[Path]:
    return sorted((out / "results").glob("*/*/*/seed*.json"))


def _key(record: dict) -> str:
    return run_key(record["agent"], record["env"], record["variant"], record["seed"])


def read_results(out: Path) -> dict[str, tuple[Path, dict]]:
    """Every result file under ``out/results`` by run key; UserError for one that is not."""
    found = {}
    for path in _result_files(out):
        record = read_result(path)
        problem = "unreadable" if record is None else record_problem(record)
        if problem is None and path != result_path(out, record["agent"], record["env"],
                                                   record["variant"], record["seed"]):
            problem = "its content names another run"
        if problem:
            raise UserError(f"{path} is not a bnrl result file ({problem}): move it away")
        found[_key(record)] = (path, record)
    return found


def check_consistent(records) -> None:
    """UserError unless the runs of each (agent, env, variant) share one settings hash and one
    bnrl version: a report must not average runs of different settings or code. The hashes
    compared are of the settings as this bnrl resolves them (``record_settings_hash``), so that
    a run made before the agent's config was resolved matches one made with the same settings
    since."""
    seen: dict[tuple, tuple[str, tuple]] = {}
    for record in records:
        if record.get("settings_hash") is None:
            continue  # a record of bnrl <= 0.2 (results.json only)
        group = (record["agent"], record["env"], record["variant"])
        made = (record.get("bnrl_version"), record_settings_hash(record))
        first = seen.setdefault(group, (_key(record), made))
        if first[1] != made:
            raise UserError(
                f"{first[0]} and {_key(record)} were made with different settings or bnrl "
                f"versions (bnrl {first[1][0]}, settings {first[1][1]} vs bnrl {made[0]}, "
                f"settings {made[1]}): a report would mix them; move the stale result files "
                "away and rerun those runs")


def collect(out: Path) -> Found:
    """The runs of a benchmark directory, checked; UserError when there are none."""
    results = {key: record for key, (_, record) in read_results(out).items()}
    for record in results.values():
        record["run_dir"] = str(out / record["run_dir"])
    runs = list(results.values())
    summary = out / "results.json"
    if summary.is_file():
        try:
            listed = json.loads(summary.read_text(encoding="utf-8"))["runs"]
        except OSError as exc:
            raise UserError(f"cannot read {summary}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{summary} is not a bnrl results file") from None
        check_runs(listed, str(summary))
        # Failed runs, and every run of a directory written before result files existed.
        runs += [r for r in listed if _key(r) not in results
                 and (r["status"] != "ok" or not results)]
    if not runs:
        raise UserError(f"{out} has no results (results/ or results.json): run `run.py "
                        f"benchmark --out {out}` or copy result files into {out}/results")
    check_runs(runs, str(out))
    check_consistent(runs)
    grid_file = out / "grid.json"
    if not grid_file.is_file():
        return Found(runs)
    grid = read_grid(grid_file)
    planned = [run_key(c["agent"], c["env"], v["name"], s) for c in grid["cells"]
               for v in grid["variants"] for s in range(grid["seeds"])]
    rank = {key: i for i, key in enumerate(planned)}
    runs.sort(key=lambda r: rank.get(_key(r), len(rank)))  # grid order; others after
    have = {_key(r) for r in runs}
    return Found(runs, grid["baseline"], grid["variants"], grid["cells"],
                 [k for k in planned if k not in have])


def merge(pieces: list[Path], out: Path) -> int:
    """Copy the result files of ``pieces`` into ``out`` and record the union of their grids.

    Everything is checked before anything is written: the grids must be compatible
    (``merge_grids``), a run in two places must have the same result, and each (agent, env,
    variant) one settings hash and bnrl version.

    Returns:
      The number of result files copied.
    """
    grid = read_grid(out / "grid.json") if (out / "grid.json").is_file() else None
    have = {key: record for key, (_, record) in read_results(out).items()}
    incoming: dict[str, tuple[Path, dict]] = {}
    for piece in pieces:
        if not (piece / "grid.json").is_file():
            raise UserError(f"{piece} is not a benchmark directory (no grid.json)")
        if piece.resolve() == out.resolve():
            raise UserError(f"{piece} is the --out directory itself: merge other directories "
                            "into it")
        piece_grid = read_grid(piece / "grid.json")
        grid = piece_grid if grid is None else merge_grids(
            grid, piece_grid, f"merging {piece}", steps_may_change=False)
        for key, (path, record) in read_results(piece).items():
            earlier = incoming.get(key, (None, have.get(key)))[1]
            if earlier is not None and _comparable(earlier) != _comparable(record):
                raise UserError(f"{key} has different results in {path} and in "
                                f"{incoming[key][0] if key in incoming else out}: keep one of "
                                "them (move the other away) and merge again")
            incoming[key] = (path, record)
    check_consistent([*have.values(), *(r for _, r in incoming.values())])
    copied = 0
    for key, (path, record) in incoming.items():
        if key in have:
            continue
        target = result_path(out, record["agent"], record["env"], record["variant"],
                             record["seed"])
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, path.read_text(encoding="utf-8"))
        copied += 1
    atomic_write(out / "grid.json", json.dumps(grid, indent=1))
    results = read_results(out)
    atomic_write(out / "results.json", json.dumps(
        {"runs": [{**r, "run_dir": str(out / r["run_dir"])} for _, r in results.values()]},
        indent=1))
    return copied


def _comparable(record: dict) -> dict:
    """A record without what differs between copies of one run (where it ran)."""
    return {k: v for k, v in record.items() if k != "run_dir"}
