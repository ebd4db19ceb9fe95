"""compare.aggregate against rliable's own test values and hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from bnrl.compare import aggregate as agg
from bnrl.compare.stats import probability_of_improvement

# rliable/tests/rliable/metrics_test.py: score matrices are runs x tasks.
RLIABLE_X = np.array([[1, 2], [2, 2], [1, 1], [2, 1]])
RLIABLE_Y = np.array([[1, 1], [2, 2], [3, 3]])


def _groups(matrix: np.ndarray) -> list[np.ndarray]:
    return [matrix[:, task] for task in range(matrix.shape[1])]


def test_aggregates_match_rliables_test_values():
    x, y = _groups(RLIABLE_X), _groups(RLIABLE_Y)
    assert agg.aggregate_iqm(x) == 1.5 and agg.aggregate_mean(x) == 1.5
    assert agg.aggregate_iqm(y) == 2.0 and agg.aggregate_mean(y) == 2.0
    assert agg.probability_of_improvement(x, y) == pytest.approx(1 / 3)


def test_probability_of_improvement_by_hand():
    # Env A: X wins 3 of 4 pairs; env B: X = [1], Y = [1, 2]: one tie (0.5) and one loss.
    x = [np.array([2.0, 4.0]), np.array([1.0])]
    y = [np.array([1.0, 3.0]), np.array([1.0, 2.0])]
    assert agg.probability_of_improvement(x, y) == pytest.approx((0.75 + 0.25) / 2)


def test_a_margin_makes_close_runs_ties():
    # X = [1.05, 3], Y = [1, 2]: without a margin X wins 3 of 4 pairs; with margin 0.1 the pair
    # (1.05, 1) is a tie: (2 + 0.5) / 4.
    x, y = [np.array([1.05, 3.0])], [np.array([1.0, 2.0])]
    assert agg.probability_of_improvement(x, y) == pytest.approx(0.75)
    assert agg.probability_of_improvement(x, y, margin=0.1) == pytest.approx(0.625)
    # A difference of exactly the margin is a tie; the per-env function agrees.
    assert agg.probability_of_improvement([[1.5]], [[1.0]], margin=0.5) == 0.5
    assert probability_of_improvement([1.05, 3.0], [1.0, 2.0], margin=0.1)[0] == 0.625


def test_runs_at_a_ceiling_are_not_ranked_by_tiny_differences():
    # InvertedDoublePendulum-v5 in the committed grid: every run ends at the ceiling, one
    # variant a hair higher (normalized 1.0008 vs 1.0001). Without a margin 5 vs 5 separated
    # runs are significant (exact p = 2 / C(10, 5)); with the report's margin they all tie.
    x = [1.0008 + np.arange(5) * 1e-5]
    y = [1.0001 + np.arange(5) * 1e-5]
    assert agg.probability_of_improvement(x, y) == 1.0
    assert agg.permutation_test(x, y) == pytest.approx(2 / math.comb(10, 5))
    assert agg.probability_of_improvement(x, y, margin=agg.TIE_MARGIN) == 0.5
    assert agg.permutation_test(x, y, margin=agg.TIE_MARGIN) == 1.0
    # Beyond the margin the test sees the separation again.
    far = [y[0] + 2 * agg.TIE_MARGIN]
    assert agg.permutation_test(far, y, margin=agg.TIE_MARGIN) == pytest.approx(
        2 / math.comb(10, 5))


def test_normalize():
    assert agg.normalize([-1200.0, -150.0, -675.0], -1200.0, -150.0) == pytest.approx(
        [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="must differ"):
        agg.normalize([1.0], 2.0, 2.0)


def test_stratified_bootstrap_keeps_every_environment():
    # Env 0 is always 0 and env 1 always 10: a pooled (unstratified) resample could draw only
    # env-1 runs; a stratified one always has both, so the mean of means is exactly 5.
    groups = [np.zeros(4), np.full(2, 10.0)]
    low, high = agg.stratified_bootstrap_ci(agg.aggregate_mean, groups, n_resamples=500)
    assert low == high == 5.0


def test_stratified_bootstrap_ci_covers_and_narrows():
    rng = np.random.default_rng(0)
    small = [rng.normal(0.5, 0.2, 5) for _ in range(4)]
    large = [rng.normal(0.5, 0.2, 50) for _ in range(4)]
    est_s, low_s, high_s = agg.interval(agg.aggregate_iqm, small)
    est_l, low_l, high_l = agg.interval(agg.aggregate_iqm, large)
    assert low_s <= est_s <= high_s and low_l <= est_l <= high_l
    assert low_l < 0.5 < high_l
    assert high_l - low_l < high_s - low_s


def test_interval_of_probability_of_improvement_resamples_variants_independently():
    x = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 7.0])]
    y = [np.array([0.0, 0.5, 4.0]), np.array([5.5, 8.0, 9.0])]
    p, low, high = agg.interval(agg.probability_of_improvement, x, y, n_resamples=4000)
    assert p == pytest.approx((6 / 9 + 2 / 9) / 2)  # env 1: only 6 and 7 beat 5.5
    assert 0.0 <= low < p < high <= 1.0


def test_performance_profile_by_hand():
    groups = [np.array([0.1, 0.6, 0.9, 1.2]), np.array([0.5, 0.7])]
    profile, low, high = agg.performance_profile(groups, [0.0, 0.55, 1.0, 2.0],
                                                 n_resamples=300)
    # Per env fraction above tau, then the mean over the two envs.
    expected = [(1 + 1) / 2, (3 / 4 + 1 / 2) / 2, (1 / 4 + 0) / 2, 0.0]
    assert profile == pytest.approx(expected)
    assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0


@pytest.mark.parametrize("x, y", [
    ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]),
    ([0.3, 2.0, 0.1, 5.0], [1.0, 0.2, 4.0]),
    ([1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.5, 3.5, 4.5, 5.5]),
])
def test_one_environment_is_the_exact_mann_whitney_test(x, y):
    expected = scipy.stats.mannwhitneyu(x, y, method="exact").pvalue
    assert agg.permutation_test([x], [y]) == pytest.approx(expected)


def test_three_seeds_are_never_significant():
    # The quick benchmark's case: 3 vs 3 completely separated runs. The percentile bootstrap CI
    # collapses to [0, 0]; the exact test says p = 0.1, so the decision is no difference.
    x, y = [np.array([-352.0, -617.0, -344.0])], [np.array([-133.0, -176.0, -133.0])]
    p, low, high = agg.interval(agg.probability_of_improvement, x, y)
    assert (p, low, high) == (0.0, 0.0, 0.0)
    p_value = agg.permutation_test(x, y)
    assert p_value == pytest.approx(0.1)
    assert agg.decide(p, low, high, p_value) == "no significant difference"


def test_stratified_exact_test_by_convolution():
    # Two envs, 2 vs 2 each, completely separated in favour of X in both. Per env the 6
    # relabellings give P(X>Y) in {0, .25, .5, .5, .75, 1} (each 1/6 except .5: 2/6). The mean
    # of two envs is 1 only if both are 1: probability 1/36, and 0 likewise: p = 2/36.
    x = [np.array([3.0, 4.0]), np.array([10.0, 11.0])]
    y = [np.array([1.0, 2.0]), np.array([8.0, 9.0])]
    assert agg.permutation_test(x, y) == pytest.approx(2 / 36)
    # Ties are relabelled with the runs: identical samples are never significant.
    assert agg.permutation_test([np.ones(3)], [np.ones(3)]) == 1.0


def test_monte_carlo_permutations_agree_with_the_exact_test(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = [rng.normal(1.0, 1.0, 6)], [rng.normal(0.0, 1.0, 6)]
    exact = agg.permutation_test(x, y)
    monkeypatch.setattr(agg, "EXACT_LIMIT", 10)
    sampled = agg.permutation_test(x, y)
    assert sampled == pytest.approx(exact, abs=0.01)


def test_five_seeds_in_four_envs_can_be_significant():
    x = [np.arange(5.0) + 10 * e + 5 for e in range(4)]
    y = [np.arange(5.0) + 10 * e for e in range(4)]
    p, low, high = agg.interval(agg.probability_of_improvement, x, y)
    p_value = agg.permutation_test(x, y)
    assert p == pytest.approx(1.0) and p_value < 0.001
    assert agg.decide(p, low, high, p_value) == "better"
    assert agg.decide(1 - p, 1 - high, 1 - low, p_value) == "worse"


def test_holm_adjustment_by_hand():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> 0.06
    # (adjusted p-values never decrease along the sorted order); returned in the given order.
    assert agg.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert agg.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])
    assert agg.holm([0.7, 0.2]) == pytest.approx([0.7, 0.4])
    assert agg.holm([0.04]) == pytest.approx([0.04])  # one test: nothing to adjust
    assert agg.holm([0.6, 0.6, 0.6]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1
    # The committed MuJoCo grid's six answer tests (batch_naive, batch, crossq256: final score
    # and AUC): batch's p = 0.0318 becomes 4 * 0.0318 > 0.05, CrossQ's stay below.
    raw = [0.3741, 0.1239, 0.0318, 0.1778, 0.00273, 9.9e-6]
    expected = [0.3741, 3 * 0.1239, 4 * 0.0318, 3 * 0.1239, 5 * 0.00273, 6 * 9.9e-6]
    assert agg.holm(raw) == pytest.approx(expected)


def test_sample_efficiency_curve_is_the_iqm_at_each_point():
    points = [[np.array([0.0, 0.1, 0.2, 0.3])], [np.array([0.5, 0.6, 0.7, 0.8])]]
    iqm, low, high = agg.sample_efficiency_curve(points, n_resamples=200)
    assert iqm == pytest.approx([0.15, 0.65])
    assert np.all(low <= iqm) and np.all(iqm <= high)


def test_empty_environment_is_refused():
    with pytest.raises(ValueError, match="at least one run"):
        agg.permutation_test([[]], [[1.0]])
    assert math.isfinite(agg.permutation_test([[1.0]], [[2.0]]))
