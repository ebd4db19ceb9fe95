"""Statistics across environments: normalized scores, stratified bootstrap, exact tests.

Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice") aggregate a suite of
tasks through normalized scores: the interquartile mean (IQM) of all runs of all tasks, the mean
of the per-task means, the probability of improvement averaged over tasks, performance profiles
(the fraction of runs above each normalized score) and sample-efficiency curves, each with a
*stratified* bootstrap CI: the runs of each task are resampled within that task, so every
resample keeps every task. The definitions are rliable's (``rliable.metrics``,
``rliable.library``), re-implemented with numpy and scipy because rliable is archived; the tests
check them against rliable's own test values.

A sample here is ``groups``: one 1-D array of scores (one per run, i.e. per seed) for each
environment, in a fixed environment order; environments may have different numbers of runs
(a failed run is missing, never imputed).

Percentile bootstrap intervals of the probability of improvement collapse to a point when the
runs are completely separated (with 3 vs 3 seeds every resample is separated too, so the CI is
[1, 1]); ``permutation_test`` gives the exact p-value of the same statistic under the hypothesis
that the variant labels are exchangeable within each environment, and ``decide`` requires both
the interval and the test before it calls a difference. Both take a ``margin`` below which
two runs tie (rliable has none: 0 by default; the report uses ``TIE_MARGIN``). A report makes
several tests (two per variant); ``holm`` adjusts their p-values as one family.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats

from bnrl.compare.stats import CONFIDENCE, N_RESAMPLES, pairs_improved

Groups = Sequence[np.ndarray | Sequence[float]]

# Above this many label arrangements in one environment, its permutation distribution is
# sampled (MONTE_CARLO_PERMUTATIONS draws) instead of enumerated: C(20, 10) = 184,756 is exact.
EXACT_LIMIT = 200_000
MONTE_CARLO_PERMUTATIONS = 20_000
SIGNIFICANCE = 1.0 - CONFIDENCE

# The report's practical-equivalence margin: normalized scores closer than 1% of an env's
# (reference - random) range are a tie (93 returns on InvertedDoublePendulum-v5, 36 on
# Hopper-v5). Without it, variants that all end at an env's ceiling are ranked by differences
# of 0.01%, and five such ties in a row read as a significant win.
TIE_MARGIN = 0.01


def _as_groups(groups: Groups) -> list[np.ndarray]:
    out = [np.asarray(g, dtype=float).ravel() for g in groups]
    if not out or any(g.size == 0 for g in out):
        raise ValueError("every environment needs at least one run")
    return out


def normalize(scores, random_score: float, reference_score: float) -> np.ndarray:
    """``(score - random) / (reference - random)``: 0 is a random policy, 1 the reference."""
    if reference_score == random_score:
        raise ValueError("the reference and random scores of an environment must differ")
    return (np.asarray(scores, dtype=float) - random_score) / (reference_score - random_score)


# --------------------------------------------------------------------------------- aggregates
# Each aggregate takes groups whose arrays may carry leading resample axes (shape (..., runs)),
# so that the bootstrap evaluates all resamples at once.
def aggregate_iqm(groups) -> np.ndarray | float:
    """IQM of all runs of all environments pooled (rliable ``aggregate_iqm``)."""
    pooled = np.concatenate([np.asarray(g, dtype=float) for g in groups], axis=-1)
    return scipy.stats.trim_mean(pooled, 0.25, axis=-1)


def aggregate_mean(groups) -> np.ndarray | float:
    """Mean over environments of the per-environment mean (rliable ``aggregate_mean``)."""
    return np.mean([np.mean(np.asarray(g, dtype=float), axis=-1) for g in groups], axis=0)


def probability_of_improvement(x_groups, y_groups, margin: float = 0.0) -> np.ndarray | float:
    """Average over environments of P(X > Y) (rliable ``probability_of_improvement``); pairs
    closer than ``margin`` count as ties (``stats.pairs_improved``)."""
    if len(x_groups) != len(y_groups):
        raise ValueError("both variants need the same environments")
    return np.mean([pairs_improved(np.asarray(x, dtype=float), np.asarray(y, dtype=float),
                                   margin) for x, y in zip(x_groups, y_groups, strict=True)],
                   axis=0)


# ------------------------------------------------------------------------------ bootstrap CIs
def _resample(groups: list[np.ndarray], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` stratified resamples: each environment's runs drawn with replacement within it."""
    return [g[rng.integers(0, g.size, size=(n, g.size))] for g in groups]


def stratified_bootstrap_ci(
    statistic: Callable[..., np.ndarray],
    *samples: Groups,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of ``statistic(*samples)`` under stratified bootstrap resampling.

    Each sample (a variant's groups) is resampled independently, and within each sample each
    environment separately (rliable's ``StratifiedIndependentBootstrap``).

    Args:
      statistic: function of one groups list per sample; its arrays get a leading axis of
        ``n_resamples`` and it must reduce the last (runs) axis.
      *samples: one groups list per variant (one array of runs per environment).
      n_resamples: bootstrap resamples.
      confidence: interval coverage.
      seed: resampling seed, so reports are reproducible.

    Returns:
      ``(low, high)``, each of the statistic's shape.
    """
    rng = np.random.default_rng(seed)
    resampled = [_resample(_as_groups(s), n_resamples, rng) for s in samples]
    values = np.asarray(statistic(*resampled))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha], axis=0)
    return low, high


def interval(statistic, *samples: Groups, **kwargs) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of a scalar aggregate with its stratified bootstrap CI."""
    estimate = float(statistic(*[_as_groups(s) for s in samples]))
    low, high = stratified_bootstrap_ci(statistic, *samples, **kwargs)
    return estimate, float(low), float(high)


# ---------------------------------------------------------------------- performance profiles
def performance_profile(groups: Groups, taus: Sequence[float], **kwargs):
    """Fraction of runs whose normalized score exceeds each ``tau``, with CI bands.

    rliable's score distribution (``np.mean(scores > tau)`` over runs and tasks), taken as the
    mean over environments of the per-environment fraction so that an environment with a
    missing run still weighs as much as the others (identical when run counts are equal).

    Returns:
      ``(profile, low, high)``: arrays of ``len(taus)``.
    """
    taus = np.asarray(taus, dtype=float)

    def profile(gs):
        return np.mean([np.mean(np.asarray(g)[..., None, :] > taus[:, None], axis=-1)
                        for g in gs], axis=0)

    groups = _as_groups(groups)
    low, high = stratified_bootstrap_ci(profile, groups, **kwargs)
    return profile(groups), low, high


# ---------------------------------------------------------------------------- exact testing
def _split_statistics(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                      margin: float) -> np.ndarray:
    """P(X > Y) for every relabelling of one environment's pooled runs (or a random sample)."""
    pooled = np.concatenate([x, y])
    n, k = pooled.size, x.size
    if math.comb(n, k) <= EXACT_LIMIT:
        labels = np.zeros((math.comb(n, k), n), dtype=bool)
        for row, chosen in enumerate(itertools.combinations(range(n), k)):
            labels[row, list(chosen)] = True
    else:
        order = np.argsort(rng.random((MONTE_CARLO_PERMUTATIONS, n)), axis=1)
        labels = order < k
    idx = np.broadcast_to(np.arange(n), labels.shape)
    xs = pooled[idx[labels].reshape(len(labels), k)]
    ys = pooled[idx[~labels].reshape(len(labels), n - k)]
    return pairs_improved(xs, ys, margin)


def permutation_test(x_groups: Groups, y_groups: Groups, seed: int = 0,
                     margin: float = 0.0) -> float:
    """Two-sided p-value of the average probability of improvement against 0.5.

    The null hypothesis is that a run's variant label does not matter within each environment
    (labels exchangeable per stratum); the statistic is ``probability_of_improvement``, whose
    null distribution is the distribution of the mean of independent per-environment
    relabellings, computed exactly by convolution when each environment has at most
    ``EXACT_LIMIT`` arrangements (else from ``MONTE_CARLO_PERMUTATIONS`` random ones). With one
    environment this is the exact two-sided Mann-Whitney test: 3 vs 3 completely separated runs
    give p = 0.1, so three seeds can never be called significant at 5%. ``margin`` is
    ``probability_of_improvement``'s: the statistic relabelled is the one reported.
    """
    xs, ys = _as_groups(x_groups), _as_groups(y_groups)
    observed = float(probability_of_improvement(xs, ys, margin))
    rng = np.random.default_rng(seed)
    # Exact distribution of the sum of per-environment statistics, as {value: probability}.
    # Values are multiples of 0.5 / (n_x n_y), rounded to merge float noise.
    dist = {0.0: 1.0}
    for x, y in zip(xs, ys, strict=True):
        values, counts = np.unique(np.round(_split_statistics(x, y, rng, margin), 12),
                                   return_counts=True)
        probs = counts / counts.sum()
        merged: dict[float, float] = {}
        for total, p in dist.items():
            for v, q in zip(values, probs, strict=True):
                key = round(total + float(v), 9)
                merged[key] = merged.get(key, 0.0) + p * q
        dist = merged
    n_env = len(xs)
    extreme = abs(observed - 0.5) - 1e-9
    return float(min(1.0, sum(p for total, p in dist.items()
                              if abs(total / n_env - 0.5) >= extreme)))


def decide(p_improve: float, low: float, high: float, p_value: float) -> str:
    """``better``, ``worse`` or ``no significant difference``.

    A direction is called only when the bootstrap CI of the probability of improvement excludes
    0.5 *and* the permutation test rejects "no difference" at the 5% level.
    """
    if not (np.isfinite(low) and np.isfinite(high)) or p_value >= SIGNIFICANCE:
        return "no significant difference"
    if low > 0.5 and p_improve > 0.5:
        return "better"
    if high < 0.5 and p_improve < 0.5:
        return "worse"
    return "no significant difference"


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values of a family of tests, in the given order.

    The i-th smallest of m p-values is multiplied by m - i + 1, the products made
    non-decreasing in that order and capped at 1. Rejecting every test whose adjusted p is
    below 5% keeps the chance of one or more false rejections in the family at 5%, whatever
    the dependence between the tests: a report's final-score and learning-speed tests of one
    variant, both against one baseline, are far from independent.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * np.arange(p.size, 0, -1))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def sample_efficiency_curve(points: Sequence[Groups], **kwargs):
    """Aggregate IQM with its stratified CI at each point of training.

    Args:
      points: for each point (e.g. a fraction of each environment's step budget), the groups
        of normalized scores of the runs evaluated there.

    Returns:
      ``(iqm, low, high)``: arrays with one value per point.
    """
    rows = np.array([interval(aggregate_iqm, groups, **kwargs) for groups in points])
    return rows[:, 0], rows[:, 1], rows[:, 2]
