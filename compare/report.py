"""Markdown report and figures of a benchmark: the aggregate answer first, then per env.

The report reads run records (``compare.records``), one per agent x env x variant x seed;
``agent`` is the grid's agent, and a variant may train another (``run_agent``, e.g. CrossQ as a
variant of SAC). Failed and missing runs are counted in the report and excluded from every
statistic. Returns are normalized per env with the random and reference scores of
``configs/suites.yaml`` (``compare.suites``) for the aggregates across envs.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bnrl.common.errors import error_text_line
from bnrl.common.files import atomic_open, atomic_write
from bnrl.compare import aggregate as agg
from bnrl.compare.records import default_baseline, result_problem
from bnrl.compare.stats import (
    CONFIDENCE,
    N_RESAMPLES,
    area_under_curve,
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    steps_to_threshold,
)
from bnrl.compare.suites import EnvScores, env_scores
from bnrl.compare.variants import point_name, split_point

BN_KEYS = ("bn_Q_moving_mean", "bn_Q_moving_variance", "bn_Q_train_eval_gap",
           "bn_Q_greedy_agreement")
BN_LABELS = {"bn_Q_moving_mean": "L2 norm of moving mean\n(mean over BN layers)",
             "bn_Q_moving_variance": "L2 norm of moving variance\n(mean over BN layers)",
             "bn_Q_train_eval_gap": "mean |Q(batch stats) - Q(moving stats)|",
             "bn_Q_greedy_agreement": "share of states whose greedy action\nis the same "
                                      "in both modes"}
# Fixed colours so a variant looks the same in every subplot and figure.
_COLORS = {"none": "0.25", "batch": "tab:blue", "batch_renorm": "tab:orange",
           "layer": "tab:green", "crossq": "tab:red", "batch_naive": "tab:purple"}
_EXTRA_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold")
_DASH = "—"

Run = dict[str, Any]

_SPEED_WORDS = {"better": "faster", "worse": "slower"}
"""The verdicts' words when the compared score is the area under the curve (learning speed)."""


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _ordered(runs: list[Run], variants: list[dict] | None, baseline: str | None):
    """The variants in grid order (else first seen) and the baseline (default ``none`` if
    present, else the first), which comes first."""
    names = list(dict.fromkeys([*(v["name"] for v in variants or []),
                                *(str(r.get("variant")) for r in runs)]))
    baseline = default_baseline(names, baseline)
    return [baseline, *(n for n in names if n != baseline)], baseline


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
    return f"{round(value, digits) + 0.0:,.{digits}f}"  # + 0.0: no "-0.00"


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
    in pyplot's registry; it works headless.
    """
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
    """Eval return vs env steps, one subplot per agent x env, two a row."""
    agents = list(dict.fromkeys(a for a, _ in groups))
    envs = list(dict.fromkeys(e for _, e in groups))
    panels = [(agent, env) for agent in agents for env in envs]
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    # Large enough to read at 100% in a browser (issue 28): about 700 x 500 pixels a panel.
    fig = _new_figure(6.4 * columns, 4.6 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    for ax, (agent, env) in zip(axes, panels, strict=False):
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
            ax.plot(grid, matrix.mean(axis=0), color=color, lw=1.8, marker="o", ms=3,
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


def bn_keys(runs: list[Run]) -> list[str]:
    """The ``BN_KEYS`` some run kept, in order: a column of bn_stats.png each (the greedy
    agreement only for Q-networks acting greedily)."""
    return [key for key in BN_KEYS if any(key in (r.get("bn_stats") or {}) for r in runs)]


def _plot_bn_stats(
    groups: dict[tuple[str, str], dict[str, list[Run]]],
    variants: list[str],
    path: Path,
) -> bool:
    """BN moving statistics vs steps: rows agent x env, columns the ``BN_KEYS`` runs kept.

    Always writes the file (a placeholder if no run logged BN stats), so the
    set of outputs does not depend on the grid.

    Returns:
        The statistics drawn, one column each (empty when no run had BN statistics).
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
        return []

    keys = bn_keys([r for _, by_v in rows for rs in by_v.values() for r in rs])
    fig = _new_figure(4.4 * len(keys), 3.0 * len(rows))
    axes = fig.subplots(len(rows), len(keys), squeeze=False)
    for i, ((agent, env), by_variant) in enumerate(rows):
        for j, key in enumerate(keys):
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
            ax.set_title(f"{agent} / {env}: {key}", fontsize=9)
            ax.set_xlabel("environment steps")
            ax.set_ylabel(BN_LABELS[key])
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
    fig.suptitle("Critic BN statistics: mean over seeds (thick), each seed (thin). The "
                 "train/eval gap is in return units: large when it is near the gaps between "
                 "actions' Q values (docs/bn-critics.md)", fontsize=10)
    _save_figure(fig, path)
    return keys


# --------------------------------------------------------------------------- #
# Aggregates across environments
# --------------------------------------------------------------------------- #
def _normalized_groups(by_env: dict[str, dict[str, list[Run]]], variant: str,
                       scores: dict[str, EnvScores], envs: list[str],
                       metric=_final_return) -> list[np.ndarray]:
    """``metric`` of ``variant``'s successful runs, normalized, one array per env. The
    normalization is affine, so a normalized AUC is the mean normalized score over the run."""
    return [scores[e].normalize(_finite(metric(r) for r in by_env[e].get(variant, [])
                                        if _is_ok(r))) for e in envs]


class _Test(NamedTuple):
    """A report line with a test whose verdict waits for its section's Holm adjustment: the
    line is ``head`` + p-values + ``mid`` + verdict + ``tail``."""
    head: str
    stats: tuple[float, float, float, float]  # P(improvement), its CI, exact p
    mid: str
    tail: str = ""
    words: dict[str, str] | None = None
    p_name: str = "exact permutation p"


def _test(x: list[np.ndarray], y: list[np.ndarray],
          margin: float) -> tuple[float, float, float, float]:
    """P(improvement) of groups ``x`` over ``y`` with its stratified CI, and the exact p."""
    improved = functools.partial(agg.probability_of_improvement, margin=margin)
    return (*agg.interval(improved, x, y), agg.permutation_test(x, y, margin=margin))


def _iqms(x: list[np.ndarray], y: list[np.ndarray]) -> str:
    """Aggregate IQMs of normalized scores ``x`` and ``y`` with their CIs, as report text."""
    return (f"{_ci(*agg.interval(agg.aggregate_iqm, x))} vs "
            f"{_ci(*agg.interval(agg.aggregate_iqm, y))}, ")


def _settle(lines: list[str | _Test]) -> list[str]:
    """A section's lines with each test's verdict, its p-values Holm-adjusted over the
    section's tests (a section asks several questions; see the Method note)."""
    tests = [t for t in lines if isinstance(t, _Test)]
    adjusted = iter(agg.holm([t.stats[3] for t in tests]))
    out = []
    for line in lines:
        if isinstance(line, str):
            out.append(line)
            continue
        p, low, high, p_value = line.stats
        q = next(adjusted)
        p_text = (f"{line.p_name} = {p_value:.3f}"
                  + (f", Holm-adjusted p = {q:.3f}" if len(tests) > 1 else ""))
        verdict = agg.decide(p, low, high, q)
        out.append(f"{line.head}P(improvement) {_ci(p, low, high)}, {p_text}{line.mid}"
                   f"{(line.words or {}).get(verdict, verdict)}{line.tail}")
    return out


def _scored_envs(by_env: dict, variants: list[str], scores: dict) -> list[str]:
    """Envs with normalization scores where every one of ``variants`` has a successful run."""
    return [e for e, by_v in by_env.items() if e in scores and all(
        _finite(_final_return(r) for r in by_v.get(v, []) if _is_ok(r)).size for v in variants)]


def _aggregate_lines(agent: str, by_env: dict, variants: list[str], baseline: str,
                     scores: dict) -> list[str]:
    """The answer for one agent: each variant against the baseline across envs."""
    unscored = [e for e in by_env if e not in scores]
    lines: list[str | _Test] = []
    if unscored:
        lines.append(f"Not in the aggregate (no normalization scores in configs/suites.yaml): "
                     f"{', '.join(unscored)}.")
    if len(variants) == 1:
        return [*lines, f"- {agent}: only one variant, `{baseline}`: nothing to compare it "
                "with (a benchmark compares variants with a baseline: give --variants two or "
                "more).", ""]
    # An env without scores is answered on its own, in returns: its section's tests, here too.
    for env in unscored:
        lines += ["", f"On {env}, against `{baseline}`, in returns (the tests of its section "
                  "below, Holm-adjusted over that env's tests):", ""]
        lines += _env_comparisons(by_env[env], variants, baseline, None)
    all_envs = _scored_envs(by_env, [baseline], scores)
    if not all_envs:
        return [*lines, ""] if unscored else [
            *lines, f"- {agent}: no env with normalization scores and successful "
            f"`{baseline}` runs: nothing to aggregate.", ""]
    if unscored:
        lines += ["", "Across the envs with normalization scores:", ""]
    for variant in variants[1:]:
        envs = _scored_envs(by_env, [baseline, variant], scores)
        if not envs:
            lines.append(f"- `{variant}` vs `{baseline}`: cannot compare, no env has "
                         "successful runs of both")
            continue
        x = _normalized_groups(by_env, variant, scores, envs)
        y = _normalized_groups(by_env, baseline, scores, envs)
        left_out = [e for e in by_env if e in scores and e not in envs]
        sizes = f"{sum(g.size for g in x)} vs {sum(g.size for g in y)} runs"
        lines.append(_Test(
            f"- `{variant}` vs `{baseline}`: IQM normalized score {_iqms(x, y)}",
            _test(x, y, agg.TIE_MARGIN), ": **",
            f"** ({len(envs)} env{'s' * (len(envs) > 1)}, {sizes}"
            + (f"; without {', '.join(left_out)}, where one of them has no successful run"
               if left_out else "") + ")"))
        # Learning speed, the claim made for CrossQ (Bhatt et al. 2024): variants that all
        # end at an env's ceiling can still differ in how soon they get there.
        groups = [_normalized_groups(by_env, v, scores, envs, _auc) for v in (variant, baseline)]
        kept = [i for i in range(len(envs)) if all(g[i].size for g in groups)]
        speed = "  - learning speed (normalized score averaged over the run, AUC): "
        if not kept:
            lines.append(speed + "cannot compare, no env has runs of both with two or more "
                         "evaluations")
            continue
        x, y = ([g[i] for i in kept] for g in groups)
        lines.append(_Test(
            f"{speed}IQM {_iqms(x, y)}", _test(x, y, agg.TIE_MARGIN), ": **",
            "**" + (f" ({len(kept)} of the {len(envs)} envs: the others have runs with "
                    "fewer than two evaluations)" if len(kept) < len(envs) else ""),
            _SPEED_WORDS))
    return [*_settle(lines), ""]


def _ci(estimate: float, low: float, high: float) -> str:
    return f"{_fmt(estimate, 2)} [{_fmt(low, 2)}, {_fmt(high, 2)}]"


def _by_agent(groups: dict) -> dict[str, dict[str, dict[str, list[Run]]]]:
    out: dict[str, dict[str, dict[str, list[Run]]]] = {}
    for (agent, env), by_variant in groups.items():
        out.setdefault(agent, {})[env] = by_variant
    return out


def _counts(runs: list[Run], missing: list[str]) -> tuple[int, int, int]:
    ok = sum(_is_ok(r) for r in runs)
    return ok, len(runs) - ok, len(missing)


def _answer(groups: dict, points: list[tuple[str | None, list[str], str]], scores: dict,
            runs: list[Run], missing: list[str]) -> list[str]:
    ok, failed, n_missing = _counts(runs, missing)
    lines = ["## Answer", ""]
    if failed or n_missing:
        lines += [f"**Incomplete grid: {n_missing} of {len(runs) + n_missing} runs missing, "
                  f"{failed} failed.** Every number below uses only the {ok} successful runs "
                  "(each env weighs the same; an env without a successful run of a variant is "
                  "left out of that variant's comparison, and the line says so).", ""]
    baseline = against = f"`{points[0][2]}`"
    if points[0][0] is not None:
        variant, key, _ = split_point(points[0][2])
        baseline, against = f"`{variant}` at each value of `{key}`", f"`{variant}` at that value"
    lines += [f"Baseline: {baseline}. Final evaluation return normalized per env (0 = "
              "random policy, 1 = the reference score of configs/suites.yaml); IQM over all "
              f"runs of all envs with {CONFIDENCE:.0%} stratified bootstrap CIs; "
              "P(improvement) = chance that a run of the variant beats a run of "
              f"{against} on the same env, averaged over envs; the verdict needs both its "
              "CI and an exact permutation test, its p Holm-adjusted over all the tests of "
              "the agent's answer (see Method). The indented line under each "
              "compares learning speed the same way: the normalized score averaged over the "
              "run (area under the evaluation curve).", ""]
    for agent, by_env in _by_agent(groups).items():
        lines += [f"### {agent} on {', '.join(by_env)}", ""]
        for label, variants, baseline in points:
            if label is not None:
                lines += [f"At {label}:", ""]
            lines += _aggregate_lines(agent, by_env, variants, baseline, scores)
    return lines


def _points(order: list[str], baseline: str) -> list[tuple[str | None, list[str], str]]:
    """What a report compares: ``(label, variants, baseline)`` per value of a sweep (label
    ``learning_rate=1e-4``, the baseline first), each its own family of tests; without a sweep
    one ``(None, order, baseline)``."""
    split = {name: split_point(name) for name in order}
    if split.get(baseline) is None or not all(split.values()):
        return [(None, order, baseline)]
    base, key, _ = split[baseline]
    variants = [base, *dict.fromkeys(v for v, _, _ in split.values() if v != base)]
    values = dict.fromkeys(x for _, _, x in split.values())
    return [(f"{key}={x}", [n for v in variants if (n := point_name(v, key, x)) in split],
             point_name(base, key, x)) for x in values]


def _sensitivity(groups: dict, points: list[tuple[str | None, list[str], str]],
                 path: Path) -> list[str]:
    """Each variant's final return and AUC against the swept value, per agent x env: a table
    and ``sensitivity.png`` (issue 30: a normalization that helps at one learning rate only is
    not a recommendation)."""
    key = split_point(points[0][2])[1]
    values = [label.partition("=")[2] for label, _, _ in points]
    variants = list(dict.fromkeys(split_point(n)[0] for _, names, _ in points for n in names))

    def runs_of(by_variant, variant, value):
        return [r for r in by_variant.get(point_name(variant, key, value), []) if _is_ok(r)]

    lines = [f"## Sensitivity to {key}", "",
             f"Each variant at each value of `{key}`, per env: IQM final return [95% CI] and "
             f"mean AUC (the mean evaluation return over the run). Each value's comparisons "
             f"above are their own family of tests. Figure: `sensitivity.png`.", ""]
    panels = list(groups.items())
    fig = _new_figure(12.8, 4.4 * len(panels))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    numbers = _as_numbers(values)
    x = numbers if numbers is not None else np.arange(len(values), dtype=float)
    for row, ((agent, env), by_variant) in zip(axes, panels, strict=True):
        lines += [f"### {agent} / {env}", "", "| Variant | "
                  + " | ".join(f"{key}={v}" for v in values) + " |",
                  "|---|" + "---|" * len(values)]
        for variant in variants:
            cells, drawn = [], {"final": [], "auc": []}
            for value in values:
                ok = runs_of(by_variant, variant, value)
                final, auc = _finite(_final_return(r) for r in ok), _finite(_auc(r) for r in ok)
                cells.append(f"{_fmt(iqm(final))} {_ci_text(final, iqm)} / {_fmt(_mean(auc))}"
                             if final.size else _DASH)
                for name, scores, stat in (("final", final, iqm), ("auc", auc, np.mean)):
                    drawn[name].append((stat(scores), *bootstrap_ci(scores, stat))
                                       if scores.size else (np.nan,) * 3)
            lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
            for ax, name in zip(row, ("final", "auc"), strict=True):
                est, low, high = np.array(drawn[name], dtype=float).T
                color = _color(variant, variants)
                ax.plot(x, est, color=color, marker="o", lw=1.8, label=variant)
                ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
        lines.append("")
        for ax, what in zip(row, ("IQM final return", "mean AUC (mean eval return)"),
                            strict=True):
            ax.set_title(f"{agent} / {env}", fontsize=10)
            ax.set_xlabel(key)
            ax.set_ylabel(what)
            if numbers is not None and numbers.min() > 0 and numbers.max() >= 10 * numbers.min():
                ax.set_xscale("log")
            ax.set_xticks(x, values)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Sensitivity to {key}: estimate per value, 95% bootstrap CI band",
                 fontsize=11)
    _save_figure(fig, path)
    return lines


def _as_numbers(texts: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(t) for t in texts])
    except ValueError:
        return None


def _ci_text(x: np.ndarray, statistic) -> str:
    low, high = bootstrap_ci(x, statistic)
    return f"[{_fmt(low)}, {_fmt(high)}]" if math.isfinite(low) else "[n<2]"


def _sample_efficiency(by_env: dict, variant: str, scores: dict, envs: list[str]):
    """Aggregate IQM normalized score at the fractions of the step budget where every run of
    ``envs`` was evaluated (nothing interpolated between evaluations, or drawn before the
    first)."""
    curves = {e: [c for c in (_curve(r) for r in by_env[e].get(variant, []) if _is_ok(r))
                  if c[0].size] for e in envs}
    fraction_sets = [{round(float(x) / s[-1], 6) for x in s} for e in envs for s, _ in curves[e]]
    fractions = np.array(sorted(set.intersection(*fraction_sets))) if fraction_sets else []
    if not len(fractions):
        return np.empty(0), np.empty(0), np.empty(0), np.empty(0)
    points = [[scores[e].normalize(np.array([v[np.isclose(s / s[-1], f)][0]
                                             for s, v in curves[e]])) for e in envs]
              for f in fractions]
    return (fractions, *agg.sample_efficiency_curve(points))


def _profile_taus(scores: np.ndarray) -> np.ndarray:
    """The tau axis of a performance profile: zoomed to the scores, with a margin (a 0-1 axis
    drew a grid whose scores all lie near 1 as lines on top of each other, issue 28)."""
    lo, hi = float(scores.min()), float(scores.max())
    pad = max(0.05 * (hi - lo), 0.01)
    return np.linspace(lo - pad, hi + pad, 200)


def _plot_aggregates(groups: dict, variants: list[str], baseline: str, scores: dict,
                     aggregate_path: Path, profiles_path: Path) -> None:
    """``aggregate.png`` (IQM and mean with CI bars, sample-efficiency curves) and
    ``profiles.png`` (performance profiles with CI bands), one row per agent."""
    agents = _by_agent(groups)
    fig = _new_figure(15.0, 3.6 * len(agents))
    axes = fig.subplots(len(agents), 3, squeeze=False)
    prof = _new_figure(6.0, 3.6 * len(agents))
    prof_axes = prof.subplots(len(agents), 1, squeeze=False)
    for i, (agent, by_env) in enumerate(agents.items()):
        ax_iqm, ax_mean, ax_curve = axes[i]
        ax_prof = prof_axes[i][0]
        shown = [v for v in variants if _scored_envs(by_env, [v], scores)]
        if shown:  # one tau axis for all variants, from below every run's score
            pooled = np.concatenate([g for v in shown for g in _normalized_groups(
                by_env, v, scores, _scored_envs(by_env, [v], scores))])
            taus = _profile_taus(pooled)
        for k, variant in enumerate(shown):
            envs = _scored_envs(by_env, [variant], scores)
            x = _normalized_groups(by_env, variant, scores, envs)
            color = _color(variant, variants)
            for ax, statistic in ((ax_iqm, agg.aggregate_iqm), (ax_mean, agg.aggregate_mean)):
                est, low, high = agg.interval(statistic, x)
                ax.barh(k, est, xerr=[[est - low], [high - est]], color=color, alpha=0.8,
                        capsize=4)
            fractions, curve, low, high = _sample_efficiency(by_env, variant, scores, envs)
            ax_curve.plot(fractions, curve, color=color, lw=1.8, marker="o", ms=3, label=variant)
            ax_curve.fill_between(fractions, low, high, color=color, alpha=0.2, lw=0)
            profile, low, high = agg.performance_profile(x, taus)
            ax_prof.plot(taus, profile, color=color, lw=1.8, label=variant)
            ax_prof.fill_between(taus, low, high, color=color, alpha=0.2, lw=0)
        for ax, what in ((ax_iqm, "IQM"), (ax_mean, "mean")):
            ax.set_yticks(range(len(shown)), shown)
            ax.invert_yaxis()
            ax.set_xlabel(f"{what} normalized final score ({CONFIDENCE:.0%} CI)")
            ax.set_title(f"{agent}: {what} over envs", fontsize=10)
            ax.grid(alpha=0.3, axis="x")
        ax_curve.set_xlabel("fraction of the step budget (at evaluations)")
        ax_curve.set_ylabel("IQM normalized score")
        ax_curve.set_title(f"{agent}: sample efficiency", fontsize=10)
        ax_prof.set_xlabel("normalized score tau")
        ax_prof.set_ylabel("fraction of runs > tau")
        ax_prof.set_title(f"{agent}: performance profile, {CONFIDENCE:.0%} CI bands",
                          fontsize=10)
        for ax in (ax_curve, ax_prof):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Aggregates across envs (baseline {baseline}); stratified bootstrap CIs",
                 fontsize=11)
    _save_figure(fig, aggregate_path)
    _save_figure(prof, profiles_path)


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #
def _grid_summary(runs: list[Run], groups: dict, variants: list[str], baseline: str,
                  settings: dict[str, dict], missing: list[str],
                  cells: list[dict]) -> list[str]:
    ran = [*groups, *((c["agent"], c["env"]) for c in cells)]
    agents = list(dict.fromkeys(a for a, _ in ran))
    envs = list(dict.fromkeys(e for _, e in ran))
    waiting = [e for e in envs if e not in {e for _, e in groups}]
    # (length, text) sorts non-negative integer seeds numerically.
    seeds = sorted({str(r.get("seed")) for r in runs}, key=lambda s: (len(s), s))
    budgets = {}
    for r in runs:
        steps = r.get("steps") or (int(_curve(r)[0][-1]) if _curve(r)[0].size else None)
        if steps is not None:
            budgets.setdefault(str(r.get("env")), set()).add(int(steps))
    steps_text = "; ".join(f"{e} {', '.join(f'{s:,}' for s in sorted(v))}"
                           for e, v in budgets.items()) or _DASH
    ok, failed, n_missing = _counts(runs, missing)
    described = []
    for v in variants:
        made = settings.get(v)
        text = f"`{v}`" + (" (baseline)" if v == baseline else "")
        if made is not None:
            text += ": " + (", ".join(f"{k}={val}" for k, val in made.items()) or "defaults")
        described.append(text)
    versions = sorted({str(r["bnrl_version"]) for r in runs if r.get("bnrl_version")})
    lines = [
        "## Grid",
        "",
        f"- Agents: {', '.join(agents) or _DASH}",
        f"- Environments: {', '.join(envs) or _DASH}"
        + (f" (no runs yet: {', '.join(waiting)})" if waiting else ""),
        f"- Variants: {'; '.join(described) or _DASH}",
        f"- Seeds: {', '.join(seeds) or _DASH}",
        f"- Environment steps per run: {steps_text}",
        f"- Runs: {len(runs) + n_missing} planned, {ok} ok, {failed} failed, {n_missing} missing",
    ]
    if versions:
        lines.append(f"- bnrl version: {', '.join(versions)}")
    lines += _peer_lines(runs, variants)
    resumed = [str(r.get("run_dir") or r.get("seed")) for r in runs if r.get("resumes")]
    if resumed:
        # training.loop starts a fresh episode with a new seed on resume.
        lines.append(f"- Resumed from a checkpoint: {len(resumed)} run(s), {', '.join(resumed)} "
                     "(a resumed run starts new episodes, so it does not repeat an "
                     "uninterrupted run step for step)")
    if missing:
        lines.append(f"- Missing runs: {', '.join(missing[:20])}"
                     + (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))
    return [*lines, ""]


def _peer_lines(runs: list[Run], variants: list[str]) -> list[str]:
    """A line per variant a peer library ran (``benchmark --peer``): the library, its versions
    and every difference from bnrl's settings it could not match (``peers``), so that a verdict
    is read with them."""
    lines = []
    for variant in variants:
        made = [r for r in runs if r.get("variant") == variant and r.get("peer_versions")]
        if not made:
            continue
        peer = str((made[0].get("settings") or {}).get("peer", "a peer library"))
        versions = ", ".join(f"{name} {version}" for name, version
                             in made[0]["peer_versions"].items() if version)
        differences = list(dict.fromkeys(d for r in made for d in r.get("peer_differences")
                                         or []))
        lines.append(f"- `{variant}`: {peer}'s implementation ({versions}) at the variant's "
                     "resolved bnrl settings; differences from bnrl's settings: "
                     + ("; ".join(differences) or "none"))
    return lines


def _cell_section(
    agent: str,
    env: str,
    by_variant: dict[str, list[Run]],
    variants: list[str],
    baseline: str,
    scores: EnvScores | None,
    label: str | None = None,
) -> list[str]:
    """Table and probability-of-improvement lines for one agent x env (at sweep value
    ``label``)."""
    threshold = scores.threshold if scores is not None else None
    header = ["Variant", "ok / runs", "Mean final return", "IQM final return [95% CI]"]
    if scores is not None:
        header.append("IQM normalized")
    header.append("Mean AUC")
    if threshold is not None:
        header.append(f"Median steps to {threshold:g} (seeds reached)")
    header += ["Mean wall time (s)", "Mean updates/s"]
    lines = [f"### {agent} / {env}" + (f", {label}" if label else ""), ""]
    if scores is not None:
        lines.append(f"Normalized: (return - {scores.random:g}) / ({scores.reference:g} - "
                     f"{scores.random:g}), reference: {scores.reference_source}. Returns "
                     f"within {_tie_margin(scores):.3g} of each other tie in P(improvement) "
                     f"({agg.TIE_MARGIN:.0%} of that range).")
    lines.append(
        f"Threshold: {threshold:g} (first evaluation with mean return at or above it)."
        if threshold is not None else "No return threshold known for this environment."
    )
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    for variant in variants:
        all_runs = by_variant.get(variant, [])
        ok = [r for r in all_runs if _is_ok(r)]
        f = _finite(_final_return(r) for r in ok)
        iqm_cell = f"{_fmt(iqm(f))} {_ci_text(f, iqm)}" if f.size else _DASH
        row = [f"`{variant}`", f"{len(ok)} / {len(all_runs)}", _fmt(_mean(f)), iqm_cell]
        if scores is not None:
            row.append(_fmt(iqm(scores.normalize(f)), 2) if f.size else _DASH)
        row.append(_fmt(_mean(_finite(_auc(r) for r in ok))))
        if threshold is not None:
            hits = [steps_to_threshold(*_curve(r), threshold) for r in ok]
            reached = [h for h in hits if h is not None]
            median = float(np.median(reached)) if reached else None
            row.append(f"{_fmt(median, 0)} ({len(reached)}/{len(ok)})" if ok else _DASH)
        row += [_fmt(_mean(r.get("wall_time_s") for r in ok)),
                _fmt(_mean(r.get("updates_per_second") for r in ok))]
        lines.append("| " + " | ".join(row) + " |")

    if any(v != baseline and v in by_variant for v in variants):
        lines += ["", f"Against `{baseline}` (final return; indented, learning speed: the area "
                  "under the evaluation curve; p Holm-adjusted over this env's tests):", ""]
    return [*lines, *_env_comparisons(by_variant, variants, baseline, scores), ""]


def _env_comparisons(by_variant: dict[str, list[Run]], variants: list[str], baseline: str,
                     scores: EnvScores | None) -> list[str]:
    """Each variant against ``baseline`` on one env, in returns: the final return and, indented,
    the AUC, each with its verdict, p Holm-adjusted over the env's tests."""
    def successful(variant: str, measure) -> np.ndarray:
        return _finite(measure(r) for r in by_variant.get(variant, []) if _is_ok(r))

    base = successful(baseline, _final_return)
    margin = _tie_margin(scores) if scores is not None else 0.0
    tests: list[str | _Test] = []
    for variant in [v for v in variants if v != baseline and v in by_variant]:
        f = successful(variant, _final_return)
        if not f.size or not base.size:
            missing = variant if not f.size else baseline
            tests.append(f"- `{variant}`: cannot compare, no successful `{missing}` runs")
            continue
        tests.append(_pairwise(f"- `{variant}`: ", f, base, margin))
        x, y = successful(variant, _auc), successful(baseline, _auc)
        if x.size and y.size:
            tests.append(_pairwise("  - learning speed (AUC): ", x, y, margin, _SPEED_WORDS))
    return _settle(tests)


def _tie_margin(scores: EnvScores) -> float:
    """The aggregate's tie margin in one env's returns."""
    return agg.TIE_MARGIN * abs(scores.reference - scores.random)


def _pairwise(head: str, x: np.ndarray, y: np.ndarray, margin: float,
              words: dict[str, str] | None = None) -> _Test:
    """One env's comparison of runs ``x`` against ``y`` (returns closer than ``margin`` tie)."""
    stats = (*probability_of_improvement(x, y, margin=margin),
             agg.permutation_test([x], [y], margin=margin))
    return _Test(head, stats, f" ({x.size} vs {y.size} runs): ", words=words, p_name="exact p")


def _method_note(bn_drawn: list[str]) -> list[str]:
    pct = f"{CONFIDENCE:.0%}"
    return [
        "## Method",
        "",
        "Statistics follow Agarwal et al. 2021, *Deep Reinforcement Learning at the Edge "
        "of the Statistical Precipice* (rliable's definitions, re-implemented with numpy and "
        "scipy in `bnrl.compare.aggregate`).",
        "",
        "- **Final return** is each run's last evaluation (deterministic policy, BN in "
        "inference mode). **Normalized score** = (return - random) / (reference - random) "
        "with the per-env scores and sources of `configs/suites.yaml`.",
        "- **IQM** is the interquartile mean (25% trimmed mean), over all runs of all envs "
        "pooled for the aggregate; **mean** is the mean over envs of the per-env mean.",
        f"- **{pct} CIs** of aggregates are percentile intervals of a *stratified* bootstrap "
        f"({N_RESAMPLES} resamples, seed 0): the runs of each env are resampled within that "
        "env, each variant independently. Per-env CIs are ordinary percentile bootstraps.",
        "- **P(improvement)** of X over the baseline Y: P(X > Y) + 0.5 P(X = Y) over all "
        "pairs of runs on one env (Mann-Whitney U / nm), averaged over envs. Two runs whose "
        f"scores differ by at most {agg.TIE_MARGIN:.0%} of the env's (reference - random) "
        "range count as equal (a practical-equivalence margin; rliable has none): variants "
        "that all end at an env's ceiling tie there instead of being ranked by differences "
        "of 0.01%. Envs without normalization scores use no margin.",
        "- **Verdict**: `better` or `worse` only when the bootstrap CI of P(improvement) "
        "excludes 0.5 *and* an exact stratified permutation test (variant labels exchanged "
        "within each env, all arrangements enumerated, the per-env null distributions "
        "convolved) rejects 'no difference' at 5% after the Holm adjustment below; "
        "otherwise `no significant difference`. "
        "Percentile CIs collapse to a point when runs are completely separated (3 vs 3 "
        "separated seeds give [1.00, 1.00]), but the exact test's p for 3 vs 3 on one env is "
        "0.1, so three seeds on one env can never give a confident verdict.",
        "- **AUC** is the trapezoid area under the evaluation curve divided by its step "
        "span, i.e. the mean evaluation return over training. The *learning speed* lines (in "
        "the answer, of the normalized AUC; per env, of the AUC) use the same statistics and "
        "verdict rule as the final score (`faster` / `slower` for `better` / `worse`): a "
        "variant that reaches an env's ceiling sooner wins it even when every variant ends "
        "there.",
        "- **Multiple comparisons**: the answer for an agent, and the comparisons of each "
        "env, are each one family of tests (two per variant: final score and learning "
        "speed). Their exact p-values are Holm-adjusted (Holm 1979) within the family, and "
        "the verdict uses the adjusted p, so the chance of any false `better` / `worse` in a "
        "family is at most 5% whatever the dependence between its tests. The raw p is "
        "printed next to it. The smallest exact p of n vs n runs on one env is "
        "2 / C(2n, n) (0.0079 for 5 vs 5), so an env with k tests needs k times that below "
        "5% to call anything: at 5 seeds, at most three variants besides the baseline.",
        "- **Steps to threshold** is the first evaluation step whose mean return reaches "
        "the env's threshold (configs/suites.yaml); the median is over the seeds that "
        "reached it.",
        "- **aggregate.png**: IQM and mean normalized score per variant with CI bars, and "
        "the sample-efficiency curve (IQM normalized score at each fraction of the step "
        "budget where every run was evaluated, stratified CI band). **profiles.png**: "
        "fraction of runs (each env weighing the same) whose normalized score exceeds tau, "
        "with CI bands, on a tau axis zoomed to the scores.",
        "- **curves.png**: per env, curves linearly interpolated onto the union of "
        "evaluation steps within the span every seed covers; the band is the pointwise "
        f"{pct} percentile-bootstrap CI of the mean over seeds.",
        "- **bn_stats.png**: "
        + (("critic BN moving mean, moving variance and train/eval output gap per BN run"
            + (", and the share of states whose greedy action is the same with batch and "
               "moving statistics" if "bn_Q_greedy_agreement" in bn_drawn else "") + ".")
           if bn_drawn else "no run logged BN statistics, so it only holds a placeholder."),
        "- Failed and missing runs are excluded from all statistics and counted above; runs "
        "of one variant made with different settings or bnrl versions are never reported "
        "together (result files carry a settings hash and the version).",
        "",
    ]


def write_report(
    runs: list[Run],
    out_dir: str | Path,
    baseline: str | None = None,
    missing: Iterable[str] = (),
    variants: list[dict] | None = None,
    cells: list[dict] | None = None,
    incomparable: Iterable[str] = (),
) -> Path:
    """Write ``report.md``, ``aggregate.png``, ``profiles.png``, ``curves.png`` and
    ``bn_stats.png`` for a benchmark.

    Args:
        runs: Run records (``compare.records``), failed ones included. A run marked ``ok``
            whose result is not finite (``records.result_problem``) is reported as failed.
        out_dir: Directory for the outputs; created if missing. Every file is written
            atomically (``common.files``).
        baseline: The variant the others are compared with (default ``none`` if present,
            else the first).
        missing: Keys (``agent/env/variant/seedK``) of planned runs with no record.
        variants: The grid's ``{"name", "settings"}`` in order (else order of appearance).
        cells: The grid's ``{"agent", "env", "steps"}``, so that envs without runs yet are
            named too.
        incomparable: Why the runs are not comparable (``collect.incomparable``), when they
            are reported anyway; stated at the report's top.

    Returns:
        Path of ``report.md``.
    """
    runs = [_failed_if_no_result(r) for r in runs]
    # A huge return overflows a mean or a bootstrap resample to inf, shown as a dash: numpy's
    # and scipy's warnings about it would only be noise on the command line.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return _write_report(runs, Path(out_dir), baseline, list(missing), variants, cells,
                             list(incomparable))


def _failed_if_no_result(run: Run) -> Run:
    """``run``, as a failed run when it is marked ``ok`` without a finite result: dropped from
    the statistics, it must not be counted as a success."""
    problem = result_problem(run) if _is_ok(run) else None
    if problem is None:
        return run
    return {**run, "status": "failed",
            "error": f"no finite result ({problem}): counted as a failed run"}


def _write_report(runs: list[Run], out: Path, baseline: str | None, missing: list[str],
                  variants: list[dict] | None, cells: list[dict] | None,
                  incomparable: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    scores = env_scores()
    thresholds = {e: s.threshold for e, s in scores.items() if s.threshold is not None}
    groups = _group(runs)
    order, baseline = _ordered(runs, variants, baseline)
    settings = {v["name"]: v["settings"] for v in variants or []}
    for r in runs:
        if r.get("variant_settings") is not None:
            settings.setdefault(str(r["variant"]), r["variant_settings"])

    _plot_curves(groups, order, thresholds, out / "curves.png")
    bn_drawn = _plot_bn_stats(groups, order, out / "bn_stats.png")
    _plot_aggregates(groups, order, baseline, scores, out / "aggregate.png",
                     out / "profiles.png")

    lines = ["# Benchmark report", ""]
    if incomparable:
        lines += ["**Not comparable, reported anyway (`--allow-incomparable`): a verdict below "
                  "may credit these differences to a variant.**", "",
                  *(f"- {problem}" for problem in incomparable), ""]
    points = _points(order, baseline)
    lines += _answer(groups, points, scores, runs, missing)
    lines += _grid_summary(runs, groups, order, baseline, settings, missing,
                           cells or [])
    lines += ["Figures: `aggregate.png` (aggregate scores and sample efficiency), "
              "`profiles.png` (performance profiles), `curves.png` (evaluation return per "
              "env), `bn_stats.png` (critic BN statistics).", "", "## Per environment", ""]
    for (agent, env), by_variant in groups.items():
        for label, variants, base in points:
            lines += _cell_section(agent, env, by_variant, variants, base, scores.get(env),
                                   label)
    if points[0][0] is not None:
        lines += _sensitivity(groups, points, out / "sensitivity.png")

    failed = [r for r in runs if not _is_ok(r)]
    lines += ["## Failed runs", ""]
    lines += [
        f"- {r.get('agent')} / {r.get('env')} / `{r.get('variant')}` / seed {r.get('seed')}"
        f" (`{r.get('run_dir', _DASH)}`): {error_text_line(r.get('error'))}"
        for r in failed
    ] or ["None."]
    lines.append("")
    lines += _method_note(bn_drawn)

    report = out / "report.md"
    atomic_write(report, "\n".join(lines))
    return report
