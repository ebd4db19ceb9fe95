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
from bnrl.compare.records import check_runs, default_baseline, record_problem, result_problem
from bnrl.compare.results import (
    read_result,
    record_settings_hash,
    result_path,
    run_key,
    unexplained_differences,
)


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
    incomparable: list[str] = field(default_factory=list)
    """Why the runs are not comparable, when reported anyway (``--allow-incomparable``)."""


def _result_files(out: Path) -> list[Path]:
    # Any depth: a namespaced env id (MinAtar/Breakout-v1, ALE/Pong-v5) is one more directory.
    return sorted((out / "results").rglob("seed*.json"))


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


def _variant_settings(record: dict, grid_variants: dict[str, dict]) -> dict:
    """The settings of a record's variant: as the record says, else as its grid says."""
    made = record.get("variant_settings")
    return made if isinstance(made, dict) else grid_variants.get(record["variant"], {})


def _budget(record: dict) -> int | None:
    """A run's step budget; for a record of bnrl <= 0.2, its last evaluation's step."""
    steps = record.get("steps")
    if steps is None and record.get("eval_steps"):
        steps = max(record["eval_steps"])
    return None if steps is None else int(steps)


def usable(record: dict) -> bool:
    """Whether a run record enters the statistics: a finished run with a finite result."""
    return record["status"] == "ok" and result_problem(record) is None


def incomparable(records, baseline: str, variants: list[dict] | None = None,
                 cells: list[dict] | None = None) -> list[str]:
    """Why ``records`` cannot be reported together, one sentence per problem ([] when they
    can); only runs that enter the statistics (``usable``) are checked.

    Within a cell (agent x env) runs must have one step budget (the grid's, when ``cells`` are
    given) and one bnrl version; within a variant, one settings hash; and each variant's runs
    must differ from the baseline's only in the variants' own settings
    (``results.unexplained_differences``). Settings are compared as this bnrl resolves them
    (``record_settings_hash``), so that a run made before the agent's config was resolved
    matches one made with the same settings since.
    """
    grid_variants = {v["name"]: v["settings"] for v in variants or []}
    planned = {(c["agent"], c["env"]): c["steps"] for c in cells or []}
    by_cell: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for record in records:
        if usable(record):
            by_cell.setdefault((record["agent"], record["env"]), {}).setdefault(
                record["variant"], []).append(record)
    problems = []
    for (agent, env), by_variant in by_cell.items():
        cell = [r for runs in by_variant.values() for r in runs]
        budget = planned.get((agent, env), _budget(cell[0]))
        odd = next((r for r in cell if _budget(r) != budget), None)
        if odd is not None:
            problems.append(f"{_key(odd)} ran {_steps_text(_budget(odd))} steps, "
                            f"{_steps_text(budget)} in the rest of {agent} on {env}"
                            if (agent, env) not in planned else
                            f"{_key(odd)} ran {_steps_text(_budget(odd))} steps, its grid "
                            f"cell {agent} on {env} has {_steps_text(budget)}")
        odd = next((r for r in cell if r.get("bnrl_version") != cell[0].get("bnrl_version")),
                   None)
        if odd is not None:
            problems.append(f"{_key(cell[0])} and {_key(odd)} were made by different bnrl "
                            f"versions ({_version(cell[0])} vs {_version(odd)})")
        for runs in by_variant.values():
            made = [r for r in runs if r.get("settings_hash") is not None]
            odd = next((r for r in made if record_settings_hash(r)
                        != record_settings_hash(made[0])), None)
            if odd is not None:
                problems.append(f"{_key(made[0])} and {_key(odd)} were made with different "
                                "settings")
        base = by_variant.get(baseline)
        for name, runs in by_variant.items():
            if base is None or name == baseline:
                continue  # no baseline runs in this cell: nothing is compared with them
            differ = unexplained_differences(base[0], runs[0],
                                             _variant_settings(base[0], grid_variants),
                                             _variant_settings(runs[0], grid_variants))
            if differ:
                problems.append(
                    f"{_key(runs[0])} differs from the baseline run {_key(base[0])} in "
                    f"{', '.join(differ[:3])}" + (f" and {len(differ) - 3} more settings"
                                                  if len(differ) > 3 else "")
                    + f" (the baseline's in brackets), which variant '{name}' does not set")
    first_made: dict[tuple[str, str], dict | None] = {}
    for record in (r for by_variant in by_cell.values() for runs in by_variant.values()
                   for r in runs if isinstance(r.get("variant_settings"), dict)):
        first = first_made.setdefault((record["agent"], record["variant"]), record)
        if first is not None and first["variant_settings"] != record["variant_settings"]:
            # The answer pools a variant's runs of every env.
            problems.append(f"{_key(first)} and {_key(record)} ran variant "
                            f"'{record['variant']}' with different settings "
                            f"({_settings_text(first)} vs {_settings_text(record)})")
            first_made[(record["agent"], record["variant"])] = None  # said once
    return problems


def _settings_text(record: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in record["variant_settings"].items()) or "none"


def _steps_text(steps: int | None) -> str:
    return "an unknown number of" if steps is None else f"{steps:,}"


def _version(record: dict) -> str:
    version = record.get("bnrl_version")
    return f"bnrl {version}" if version else "bnrl <= 0.2"


def check_comparable(records, baseline: str, variants: list[dict] | None = None,
                     cells: list[dict] | None = None, allow: bool = False) -> list[str]:
    """``incomparable(...)``; a one-line UserError unless it is empty or ``allow``
    (``--allow-incomparable``: the report then states the problems at its top). Variants of
    one cell made with the same settings are refused in any case: their runs are the same."""
    seen: dict[tuple, dict] = {}
    for record in records:
        digest = record_settings_hash(record) if usable(record) else None
        if digest is None:
            continue
        first = seen.setdefault((record["agent"], record["env"], digest), record)
        if first["variant"] != record["variant"]:
            raise UserError(f"variants '{first['variant']}' and '{record['variant']}' of "
                            f"{record['agent']} on {record['env']} were made with the same "
                            f"settings ({_key(first)}, {_key(record)}): their runs are the "
                            "same experiment; move one of them away")
    problems = incomparable(records, baseline, variants, cells)
    if problems and not allow:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"not comparable: {problems[0]}{more}; a report would credit the "
                        "difference to the variant: rerun those runs alike or move them "
                        "away (--allow-incomparable reports them anyway, saying so at the "
                        "report's top)")
    return problems


def collect(out: Path, allow: bool = False) -> Found:
    """The runs of a benchmark directory, checked; UserError when there are none, when one is
    malformed, or when they are not comparable (``check_comparable``; with ``allow``, the
    problems are returned in ``Found.incomparable`` instead)."""
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
    grid = read_grid(out / "grid.json") if (out / "grid.json").is_file() else None
    if grid is None:
        baseline = report_baseline(runs, None, [])
        return Found(runs, incomparable=check_comparable(runs, baseline, allow=allow))
    planned = [run_key(c["agent"], c["env"], v["name"], s) for c in grid["cells"]
               for v in grid["variants"] for s in range(grid["seeds"])]
    rank = {key: i for i, key in enumerate(planned)}
    runs.sort(key=lambda r: rank.get(_key(r), len(rank)))  # grid order; others after
    have = {_key(r) for r in runs}
    problems = check_comparable(runs, report_baseline(runs, grid["baseline"], grid["variants"]),
                                grid["variants"], grid["cells"], allow)
    return Found(runs, grid["baseline"], grid["variants"], grid["cells"],
                 [k for k in planned if k not in have], problems)


def report_baseline(runs: list[dict], baseline: str | None, variants: list[dict]) -> str:
    """The baseline a report of ``runs`` compares with (``records.default_baseline`` over the
    grid's variants, then those of the runs, as ``report.write_report`` orders them)."""
    names = list(dict.fromkeys([*(v["name"] for v in variants), *(r["variant"] for r in runs)]))
    return default_baseline(names, baseline)


def merge(pieces: list[Path], out: Path, allow: bool = False) -> int:
    """Copy the result files of ``pieces`` into ``out`` and record the union of their grids.

    Everything is checked before anything is written: the grids must be compatible
    (``merge_grids``), a run in two places must have the same result, and all runs must be
    comparable (``check_comparable``, ``allow`` as there).

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
    records = [*have.values(), *(r for key, (_, r) in incoming.items() if key not in have)]
    check_comparable(records, report_baseline(records, grid["baseline"], grid["variants"]),
                     grid["variants"], grid["cells"], allow)
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
