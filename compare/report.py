"""Markdown report and figures for a BN-critic benchmark (``results.json``).

Each run record (one per agent x env x variant x seed) is a dict::

    {"agent", "env", "variant", "seed", "status": "ok" | "failed", "error",
     "run_dir", "eval_steps", "eval_returns", "final_return", "auc",
     "wall_time_s", "updates_per_second",
     "bn_stats": {"steps", "bn_Q_moving_mean", "bn_Q_moving_variance",
                  "bn_Q_train_eval_gap"}}   # {} for the "none" variant

Failed runs are listed in the report but excluded from every statistic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from bnrl.compare.stats import (
    CONFIDENCE,
    N_RESAMPLES,
    area_under_curve,
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    steps_to_threshold,
    verdict,
)
from bnrl.training.errors import UserError
from bnrl.training.files import atomic_open, atomic_write

# Return at which an environment counts as solved (gymnasium's
# ``spec.reward_threshold`` where one exists). Pendulum-v1 has no official
# threshold; -200 is the commonly used "solved" level (RL Zoo agents reach
# about -150).
GYM_THRESHOLDS: dict[str, float] = {
    "CartPole-v1": 475.0,
    "MountainCarContinuous-v0": 90.0,
    "Acrobot-v1": -100.0,
    "Pendulum-v1": -200.0,
}

BASELINE = "none"
VARIANT_ORDER = ("none", "batch", "batch_renorm", "layer")
BN_KEYS = ("bn_Q_moving_mean", "bn_Q_moving_variance", "bn_Q_train_eval_gap")
# Fixed colours so a variant looks the same in every subplot and figure.
_COLORS = {"none": "0.25", "batch": "tab:blue", "batch_renorm": "tab:orange",
           "layer": "tab:green"}
_EXTRA_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_DASH = "—"

Run = dict[str, Any]


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
_NUMBER = (int, float)
# Fields every run record needs, and fields that are None or of a type.
_REQUIRED_FIELDS = {"agent": str, "env": str, "variant": str, "seed": int, "status": str}
_OPTIONAL_FIELDS = {"error": str, "run_dir": str, "final_return": _NUMBER, "auc": _NUMBER,
                    "wall_time_s": _NUMBER, "updates_per_second": _NUMBER, "eval_steps": list,
                    "eval_returns": list, "bn_stats": dict}


def check_runs(runs: Any, source: str) -> None:
    """One-line UserError, naming ``source`` and the first bad record, unless ``runs`` is a
    non-empty list of run records (schema in the module docstring)."""
    if not isinstance(runs, list):
        raise UserError(f"{source}: 'runs' must be a list of run records, not a "
                        f"{type(runs).__name__}")
    if not runs:
        raise UserError(f"{source} lists no runs: nothing to report")
    for index, run in enumerate(runs):
        problem = _record_problem(run)
        if problem:
            raise UserError(f"{source}: run {index} is not a bnrl run record ({problem})")


def _record_problem(run: Any) -> str | None:
    if not isinstance(run, dict):
        return f"a {type(run).__name__}, not a mapping"
    for key, kind in _REQUIRED_FIELDS.items():
        if not isinstance(run.get(key), kind) or isinstance(run.get(key), bool):
            return f"bad or missing {key}"
    for key, kind in _OPTIONAL_FIELDS.items():
        value = run.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"bad {key}"
    series = [("eval_steps", run.get("eval_steps")), ("eval_returns", run.get("eval_returns"))]
    series += [(f"bn_stats.{k}", v) for k, v in (run.get("bn_stats") or {}).items()]
    for key, values in series:
        try:
            np.asarray(values if values is not None else [], dtype=float)
        except (TypeError, ValueError):
            return f"non-numeric {key}"
    return None


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _ordered(variants: Iterable[str]) -> list[str]:
    """Known variants in canonical order (baseline first), then the rest sorted."""
    vs = set(variants)
    return [v for v in VARIANT_ORDER if v in vs] + sorted(vs - set(VARIANT_ORDER))


def _color(variant: str, variants: list[str]) -> str:
    """Colour of a variant, stable across figures of one report."""
    if variant in _COLORS:
        return _COLORS[variant]
    extras = [v for v in variants if v not in _COLORS]
    return _EXTRA_COLORS[extras.index(variant) % len(_EXTRA_COLORS)]


def _is_ok(run: Run) -> bool:
    return run.get("status") == "ok"


def _curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation curve of a run as float arrays sorted by step."""
    steps = np.asarray(run.get("eval_steps") or [], dtype=float)
    rets = np.asarray(run.get("eval_returns") or [], dtype=float)
    n = min(steps.size, rets.size)
    order = np.argsort(steps[:n], kind="stable")
    return steps[:n][order], rets[:n][order]


def _final_return(run: Run) -> float:
    """The runner's final return, falling back to the last evaluation."""
    value = run.get("final_return")
    if value is None:
        _, rets = _curve(run)
        return float(rets[-1]) if rets.size else math.nan
    return float(value)


def _auc(run: Run) -> float:
    """AUC recomputed from the curve so every run uses the same definition."""
    steps, rets = _curve(run)
    if steps.size >= 2:
        return area_under_curve(steps, rets)
    value = run.get("auc")
    return math.nan if value is None else float(value)


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def _mean(values: Iterable[Any]) -> float:
    arr = _finite(values)
    return float(arr.mean()) if arr.size else math.nan


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return _DASH
    return f"{value:,.{digits}f}"


def _one_line(error: Any) -> str:
    """One informative line of an error message or traceback."""
    lines = [ln.strip() for ln in str(error or "unknown error").splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    # In a traceback the exception itself is the last line.
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= 200 else line[:197] + "..."


def _save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG, atomically (through a file object)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def _group(runs: list[Run]) -> dict[tuple[str, str], dict[str, list[Run]]]:
    """Runs keyed by (agent, env), then variant; keys in first-seen order."""
    groups: dict[tuple[str, str], dict[str, list[Run]]] = {}
    for run in runs:
        key = (str(run.get("agent")), str(run.get("env")))
        groups.setdefault(key, {}).setdefault(str(run.get("variant")), []).append(run)
    return groups


def _on_common_grid(
    curves: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate curves onto one step grid.

    The grid is the union of all evaluation steps restricted to the span that
    every curve covers: runs may log evaluations a few steps apart (episode
    boundaries), and linear interpolation between neighbouring evaluations is
    harmless, while extrapolating a shorter run would invent data. Hence the
    mean at each grid step always averages the same set of seeds.

    Args:
        curves: ``(steps, values)`` pairs, each sorted by step.

    Returns:
        ``(grid, matrix)`` with ``matrix[i]`` the i-th curve on ``grid``; an
        empty grid if the curves share no span.
    """
    curves = [(s, v) for s, v in curves if s.size]
    if not curves:
        return np.empty(0), np.empty((0, 0))
    lo = max(s[0] for s, _ in curves)
    hi = min(s[-1] for s, _ in curves)
    grid = np.unique(np.concatenate([s for s, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    return grid, np.stack([np.interp(grid, s, v) for s, v in curves])


def _mean_band(matrix: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise 95% percentile-bootstrap CI of the mean over seeds (rows).

    Same method as the tables (``bootstrap_ci``), vectorized over grid steps.
    Returns None for fewer than 2 seeds.
    """
    if matrix.shape[0] < 2 or matrix.shape[1] == 0:
        return None
    res = scipy.stats.bootstrap(
        (matrix,), np.mean, axis=0, n_resamples=N_RESAMPLES,
        confidence_level=CONFIDENCE, method="percentile",
        rng=np.random.default_rng(seed),
    )
    return np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def _new_figure(width: float, height: float) -> Any:
    """A figure rendered by the non-interactive Agg canvas.

    Attaching ``FigureCanvasAgg`` to a bare ``Figure`` selects Agg for this
    figure only. Unlike ``matplotlib.use("Agg")`` + pyplot it neither changes
    the caller's global backend (e.g. in a notebook) nor keeps figures alive
    in pyplot's registry; it works headless. Imported lazily so importing this
    module has no matplotlib cost or side effects.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------- #
# Figures
# --------------------------------------------------------------------------- #
def _plot_curves(
    groups: dict[tuple[str, str], dict[str, list[Run]]],
    variants: list[str],
    thresholds: dict[str, float],
    path: Path,
) -> None:
    """Eval return vs env steps, one subplot per agent x env (rows x columns)."""
    agents = list(dict.fromkeys(a for a, _ in groups))
    envs = list(dict.fromkeys(e for _, e in groups))
    fig = _new_figure(4.6 * len(envs), 3.4 * len(agents))
    axes = fig.subplots(len(agents), len(envs), squeeze=False)
    for i, agent in enumerate(agents):
        for j, env in enumerate(envs):
            ax = axes[i][j]
            ax.set_title(f"{agent} / {env}", fontsize=10)
            by_variant = groups.get((agent, env))
            if not by_variant:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center",
                        transform=ax.transAxes, color="0.5")
                ax.set_axis_off()
                continue
            drew = False
            for variant in variants:
                ok = [r for r in by_variant.get(variant, []) if _is_ok(r)]
                grid, matrix = _on_common_grid([_curve(r) for r in ok])
                if grid.size == 0:
                    continue
                color = _color(variant, variants)
                ax.plot(grid, matrix.mean(axis=0), color=color, lw=1.8,
                        label=f"{variant} (n={matrix.shape[0]})")
                band = _mean_band(matrix)
                if band is not None:
                    ax.fill_between(grid, band[0], band[1], color=color, alpha=0.2, lw=0)
                drew = True
            if env in thresholds:
                ax.axhline(thresholds[env], color="0.5", ls="--", lw=0.8,
                           label=f"threshold {thresholds[env]:g}")
            if not drew:
                ax.text(0.5, 0.5, "no successful runs", ha="center", va="center",
                        transform=ax.transAxes, color="0.5")
            ax.set_xlabel("environment steps")
            ax.set_ylabel("eval return")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("Evaluation return: mean over seeds, 95% bootstrap CI band", fontsize=11)
    _save_figure(fig, path)


def _bn_series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One BN statistic of a run vs steps; per-unit vectors are averaged."""
    stats = run.get("bn_stats") or {}
    steps = np.asarray(stats.get("steps") or [], dtype=float)
    values = np.asarray(stats.get(key) or [], dtype=float)
    if values.ndim > 1:  # e.g. one value per BN unit or layer at each step
        values = values.reshape(values.shape[0], -1).mean(axis=1)
    n = min(steps.size, values.size)
    order = np.argsort(steps[:n], kind="stable")
    return steps[:n][order], values[:n][order]


def _plot_bn_stats(
    groups: dict[tuple[str, str], dict[str, list[Run]]],
    variants: list[str],
    path: Path,
) -> bool:
    """BN moving statistics vs steps: rows agent x env, columns ``BN_KEYS``.

    Always writes the file (a placeholder if no run logged BN stats), so the
    set of outputs does not depend on the grid.

    Returns:
        Whether any run had BN statistics.
    """
    rows = [
        (key, {v: [r for r in rs if _is_ok(r) and r.get("bn_stats")] for v, rs in by_v.items()})
        for key, by_v in groups.items()
    ]
    rows = [(key, {v: rs for v, rs in by_v.items() if rs}) for key, by_v in rows]
    rows = [(key, by_v) for key, by_v in rows if by_v]
    if not rows:
        fig = _new_figure(6.0, 2.0)
        fig.text(0.5, 0.5, "no BN variant in this benchmark", ha="center", va="center")
        _save_figure(fig, path)
        return False

    fig = _new_figure(4.4 * len(BN_KEYS), 3.0 * len(rows))
    axes = fig.subplots(len(rows), len(BN_KEYS), squeeze=False)
    for i, ((agent, env), by_variant) in enumerate(rows):
        for j, key in enumerate(BN_KEYS):
            ax = axes[i][j]
            for variant in variants:
                color = _color(variant, variants)
                series = [_bn_series(r, key) for r in by_variant.get(variant, [])]
                for steps, values in series:  # thin line per seed
                    ax.plot(steps, values, color=color, lw=0.7, alpha=0.45)
                grid, matrix = _on_common_grid(series)
                if grid.size:
                    ax.plot(grid, matrix.mean(axis=0), color=color, lw=1.8,
                            label=f"{variant} (n={matrix.shape[0]})")
            if key == "bn_Q_train_eval_gap":
                ax.axhline(0.0, color="0.5", lw=0.8)
            ax.set_title(f"{agent} / {env}: {key.removeprefix('bn_Q_')}", fontsize=9)
            ax.set_xlabel("steps")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
    fig.suptitle("Critic BN statistics: mean over seeds (thick), each seed (thin)",
                 fontsize=11)
    _save_figure(fig, path)
    return True


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #
def _grid_summary(runs: list[Run], groups: dict, variants: list[str]) -> list[str]:
    agents = list(dict.fromkeys(a for a, _ in groups))
    envs = list(dict.fromkeys(e for _, e in groups))
    # (length, text) sorts non-negative integer seeds numerically.
    seeds = sorted({str(r.get("seed")) for r in runs}, key=lambda s: (len(s), s))
    last_steps = sorted({int(_curve(r)[0][-1]) for r in runs if _curve(r)[0].size})
    if not last_steps:
        steps = _DASH
    elif len(last_steps) == 1:
        steps = f"{last_steps[0]:,}"
    else:
        steps = f"{last_steps[0]:,} to {last_steps[-1]:,} (differs between runs)"
    n_ok = sum(_is_ok(r) for r in runs)
    labels = [f"{v} (baseline)" if v == BASELINE else v for v in variants]
    return [
        "## Grid",
        "",
        f"- Agents: {', '.join(agents) or _DASH}",
        f"- Environments: {', '.join(envs) or _DASH}",
        f"- Variants: {', '.join(labels) or _DASH}",
        f"- Seeds: {', '.join(seeds) or _DASH}",
        f"- Environment steps per run (last evaluation): {steps}",
        f"- Runs: {len(runs)} total, {n_ok} ok, {len(runs) - n_ok} failed",
        "",
    ]


def _cell_section(
    agent: str,
    env: str,
    by_variant: dict[str, list[Run]],
    variants: list[str],
    threshold: float | None,
) -> list[str]:
    """Table and probability-of-improvement lines for one agent x env."""
    header = ["Variant", "ok / runs", "Mean final return", "IQM final return [95% CI]",
              "Mean AUC"]
    if threshold is not None:
        header.append(f"Median steps to {threshold:g} (seeds reached)")
    header += ["Mean wall time (s)", "Mean updates/s"]
    lines = [f"## {agent} / {env}", ""]
    lines.append(
        f"Threshold: {threshold:g} (first evaluation with mean return at or above it)."
        if threshold is not None else "No return threshold known for this environment."
    )
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    finals: dict[str, np.ndarray] = {}
    for variant in variants:
        all_runs = by_variant.get(variant, [])
        ok = [r for r in all_runs if _is_ok(r)]
        finals[variant] = _finite(_final_return(r) for r in ok)
        f = finals[variant]
        if f.size:
            low, high = bootstrap_ci(f, iqm)
            ci = f" [{_fmt(low)}, {_fmt(high)}]" if math.isfinite(low) else " [n<2]"
            iqm_cell = _fmt(iqm(f)) + ci
        else:
            iqm_cell = _DASH
        row = [f"`{variant}`", f"{len(ok)} / {len(all_runs)}", _fmt(_mean(f)), iqm_cell,
               _fmt(_mean(_auc(r) for r in ok))]
        if threshold is not None:
            hits = [steps_to_threshold(*_curve(r), threshold) for r in ok]
            reached = [h for h in hits if h is not None]
            median = float(np.median(reached)) if reached else None
            row.append(f"{_fmt(median, 0)} ({len(reached)}/{len(ok)})" if ok else _DASH)
        row += [_fmt(_mean(r.get("wall_time_s") for r in ok)),
                _fmt(_mean(r.get("updates_per_second") for r in ok))]
        lines.append("| " + " | ".join(row) + " |")

    others = [v for v in variants if v != BASELINE]
    if others:
        lines += ["", f"Probability of improvement over `{BASELINE}` (final return):", ""]
    base = finals.get(BASELINE, np.empty(0))
    for variant in others:
        f = finals[variant]
        if not f.size or not base.size:
            missing = variant if not f.size else BASELINE
            lines.append(f"- `{variant}`: cannot compare, no successful `{missing}` runs")
            continue
        p, low, high = probability_of_improvement(f, base)
        lines.append(f"- `{variant}`: "
                     + verdict(p, low, high, variant, BASELINE, n_a=f.size, n_b=base.size))
    lines.append("")
    return lines


def _method_note(has_bn: bool) -> list[str]:
    pct = f"{CONFIDENCE:.0%}"
    return [
        "## Method",
        "",
        "Statistics follow Agarwal et al. 2021, *Deep Reinforcement Learning at the Edge "
        "of the Statistical Precipice* (rliable).",
        "",
        "- **Final return** is the runner's `final_return` per seed. **IQM** is the "
        "interquartile mean (25% trimmed mean, `scipy.stats.trim_mean`), robust to one "
        "outlier seed yet more efficient than the median; with fewer than 4 seeds nothing "
        "is trimmed and it equals the mean.",
        f"- **{pct} CIs** are percentile bootstrap intervals (`scipy.stats.bootstrap`, "
        f"`method='percentile'`, {N_RESAMPLES} resamples, fixed seed 0). Percentile "
        "intervals stay defined for the tiny or tied samples common in RL (BCa may not), "
        "but under-cover at small n: with 3-5 seeds treat them as optimistic.",
        "- **P(improvement)** of variant X over the baseline Y is P(X > Y) + 0.5 P(X = Y) "
        "over all pairs of runs, i.e. the Mann-Whitney U statistic / (n*m); its CI "
        "resamples X and Y independently. A difference is called significant only if the "
        "CI excludes 0.5. With few seeds even complete separation is weak evidence "
        "(3 vs 3 fully separated seeds give CI [1.00, 1.00] yet an exact two-sided "
        "Mann-Whitney p of 0.1).",
        "- **AUC** is the trapezoid area under the evaluation curve divided by its step "
        "span, i.e. the mean evaluation return over training; recomputed from each curve.",
        "- **Steps to threshold** is the first evaluation step whose mean return reaches "
        "the threshold; the median is over the seeds that reached it.",
        "- **curves.png**: curves are linearly interpolated onto the union of evaluation "
        "steps within the span every seed covers (no extrapolation); the band is the "
        f"pointwise {pct} percentile-bootstrap CI of the mean over seeds.",
        "- **bn_stats.png**: "
        + ("critic BN moving mean, moving variance and train/eval output gap per BN run."
           if has_bn else "no run logged BN statistics, so it only holds a placeholder."),
        "- Failed runs are excluded from all statistics and listed above.",
        "",
    ]


def write_report(
    runs: list[Run],
    out_dir: str | Path,
    thresholds: dict[str, float] | None = None,
) -> Path:
    """Write ``report.md``, ``curves.png`` and ``bn_stats.png`` for a benchmark.

    Args:
        runs: Run records, i.e. ``results.json["runs"]`` (schema in the module
            docstring).
        out_dir: Directory for the outputs; created if missing. Every file is
            written atomically (``training.files``).
        thresholds: Return threshold per env id; defaults to ``GYM_THRESHOLDS``.

    Returns:
        Path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = GYM_THRESHOLDS if thresholds is None else thresholds
    groups = _group(runs)
    variants = _ordered(str(r.get("variant")) for r in runs)

    _plot_curves(groups, variants, thresholds, out / "curves.png")
    has_bn = _plot_bn_stats(groups, variants, out / "bn_stats.png")

    lines = ["# BN critic benchmark report", ""]
    lines += _grid_summary(runs, groups, variants)
    lines += ["Figures: `curves.png` (evaluation return), `bn_stats.png` (critic BN "
              "statistics).", ""]
    for (agent, env), by_variant in groups.items():
        lines += _cell_section(agent, env, by_variant, variants, thresholds.get(env))

    failed = [r for r in runs if not _is_ok(r)]
    lines += ["## Failed runs", ""]
    lines += [
        f"- {r.get('agent')} / {r.get('env')} / `{r.get('variant')}` / seed {r.get('seed')}"
        f" (`{r.get('run_dir', _DASH)}`): {_one_line(r.get('error'))}"
        for r in failed
    ] or ["None."]
    lines.append("")
    lines += _method_note(has_bn)

    report = out / "report.md"
    atomic_write(report, "\n".join(lines))
    return report
