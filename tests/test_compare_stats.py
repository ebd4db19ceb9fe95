"""Tests of compare.stats (hand-computed values) and compare.report (smoke)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from bnrl.compare import (
    area_under_curve,
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    steps_to_threshold,
    verdict,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- #
# IQM
# --------------------------------------------------------------------------- #
def test_iqm_drops_a_quarter_at_each_end() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean(3, 4, 5, 6)
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # order does not matter


def test_iqm_ignores_outliers() -> None:
    # n=10: int(0.25 * 10) = 2 values cut from each end -> mean(2..7) = 4.5,
    # whereas the two outliers drag the plain mean to 93.6.
    x = [-100, 1, 2, 3, 4, 5, 6, 7, 8, 1000]
    assert iqm(x) == pytest.approx(4.5)
    assert np.mean(x) == pytest.approx(93.6)


# --------------------------------------------------------------------------- #
# Curves
# --------------------------------------------------------------------------- #
def test_auc_of_linear_curve_is_its_midpoint_value() -> None:
    assert area_under_curve([0, 10, 20], [0, 10, 20]) == pytest.approx(10.0)
    # Unevenly spaced evaluations of r = 2 * s + 1 on [100, 300]: mean is r(200).
    steps = np.array([100, 150, 290, 300])
    assert area_under_curve(steps, 2 * steps + 1) == pytest.approx(401.0)
    assert math.isnan(area_under_curve([5], [1.0]))


def test_steps_to_threshold() -> None:
    steps, rets = [0, 1000, 2000, 3000], [-900.0, -400.0, -200.0, -150.0]
    assert steps_to_threshold(steps, rets, -200.0) == 2000.0  # ">=" counts
    assert steps_to_threshold(steps, rets, -1000.0) == 0.0
    assert steps_to_threshold(steps, rets, -100.0) is None


# --------------------------------------------------------------------------- #
# Probability of improvement
# --------------------------------------------------------------------------- #
def test_probability_of_improvement_separated_and_identical() -> None:
    p, low, high = probability_of_improvement([10, 11, 12], [1, 2, 3])
    assert (p, low, high) == (1.0, 1.0, 1.0)
    p, low, high = probability_of_improvement([1, 2, 3], [10, 11, 12])
    assert (p, low, high) == (0.0, 0.0, 0.0)
    p, low, high = probability_of_improvement([5, 5, 5], [5, 5, 5])
    assert (p, low, high) == (0.5, 0.5, 0.5)  # all ties count one half


def test_probability_of_improvement_mixed_by_hand() -> None:
    # Pairs (x, y): 1 beats nothing; 3 beats 2 and ties 3 (0.5); 5 beats both.
    # (0 + 1.5 + 2) / (3 * 2) = 3.5 / 6.
    p, low, high = probability_of_improvement([1, 3, 5], [2, 3])
    assert p == pytest.approx(3.5 / 6)
    assert 0.0 <= low <= p <= high <= 1.0
    # Reproducible with the same seed.
    assert probability_of_improvement([1, 3, 5], [2, 3]) == (p, low, high)


def test_probability_of_improvement_too_few_runs() -> None:
    p, low, high = probability_of_improvement([2.0], [1.0])
    assert p == 1.0 and math.isnan(low) and math.isnan(high)


# --------------------------------------------------------------------------- #
# Bootstrap CI
# --------------------------------------------------------------------------- #
def test_bootstrap_ci_small_samples() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 10.0])
    assert low <= iqm([1.0, 2.0, 3.0, 4.0, 10.0]) <= high


def test_bootstrap_ci_of_mean_covers_true_mean() -> None:
    # 200 repetitions of n=10 normal draws. The nominal level is 95%, but the
    # percentile bootstrap under-covers at n=10 (it ignores the t-correction
    # and the sample variance's downward bias; ~91% in theory), and with 200
    # repetitions the Monte Carlo std of the coverage is ~2 points, hence the
    # wide 88-99% band.
    rng = np.random.default_rng(123)
    true_mean, hits, reps = 3.0, 0, 200
    for i in range(reps):
        low, high = bootstrap_ci(rng.normal(true_mean, 2.0, size=10), np.mean, seed=i)
        hits += low <= true_mean <= high
    assert 0.88 <= hits / reps <= 0.99


# --------------------------------------------------------------------------- #
# Verdict
# --------------------------------------------------------------------------- #
def test_verdict_wording() -> None:
    assert verdict(0.9, 0.7, 1.0).startswith("batch improves on none (P=0.90, 95% CI [0.70")
    assert verdict(0.1, 0.0, 0.3, "layer").startswith("layer is worse than none")
    line = verdict(0.6, 0.3, 0.9)
    assert line.startswith("no significant difference between batch and none")
    assert "includes 0.5" in line and "more seeds" in line
    assert "too thin" in verdict(1.0, 1.0, 1.0, n_a=2, n_b=3)
    assert "too thin" not in verdict(1.0, 1.0, 1.0, n_a=3, n_b=3)
    assert "\n" not in verdict(0.6, 0.3, 0.9, n_a=1, n_b=1)


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #
def _run(variant: str, seed: int, level: float, status: str = "ok") -> dict:
    """A synthetic Pendulum run that learns towards ``level``."""
    rng = np.random.default_rng(seed + (100 if variant == "batch" else 0))
    # Eval steps differ slightly between seeds, as with episode-aligned evals.
    steps = [0] + [1000 * k + 10 * seed for k in range(1, 11)]
    rets = [-1400 + (level + 1400) * (1 - math.exp(-k / 3)) + rng.normal(0, 20)
            for k in range(11)]
    bn = {}
    if variant != "none":
        bn = {"steps": steps,
              "bn_Q_moving_mean": [0.1 * k + seed for k in range(11)],
              "bn_Q_moving_variance": [1 + 0.5 * k for k in range(11)],
              "bn_Q_train_eval_gap": [0.2 / (k + 1) for k in range(11)]}
    failed = status == "failed"
    return {
        "agent": "sac", "env": "Pendulum-v1", "variant": variant, "seed": seed,
        "status": status, "error": "Traceback (most recent call last):\n  ...\n"
        "FloatingPointError: NaN in critic loss" if failed else None,
        "run_dir": f"sac/Pendulum-v1/{variant}/seed{seed}",
        "eval_steps": [] if failed else steps, "eval_returns": [] if failed else rets,
        "final_return": None if failed else rets[-1], "auc": None,
        "wall_time_s": 12.0 + seed, "updates_per_second": 800.0 - seed,
        "bn_stats": {} if failed else bn,
    }


def test_write_report(tmp_path: Path) -> None:
    runs = [_run("none", s, -600.0) for s in range(3)]
    runs += [_run("batch", s, -100.0) for s in range(3)]
    runs.append(_run("batch", 3, -100.0, status="failed"))
    report = write_report(runs, tmp_path / "out")

    text = report.read_text()
    assert report == tmp_path / "out" / "report.md"
    assert "| Variant | ok / runs |" in text
    assert "IQM" in text
    assert "| `batch` | 3 / 4 |" in text
    assert "FloatingPointError: NaN in critic loss" in text  # one line, not the traceback
    assert "`batch`: batch improves on none (P=1.00" in text
    assert "(3/3)" in text  # all batch seeds reach -200, no none seed does -> (0/3)
    assert "(0/3)" in text
    for name in ("curves.png", "bn_stats.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bn_stats.png", "curves.png", "report.md"]


def test_write_report_without_bn_or_successful_runs(tmp_path: Path) -> None:
    runs = [_run("none", s, -600.0) for s in range(2)]
    runs.append(_run("layer", 0, -170.0, status="failed"))
    runs[-1]["bn_stats"] = {}
    text = write_report(runs, tmp_path).read_text()
    assert "| `layer` | 0 / 1 | — | — |" in text
    assert "cannot compare, no successful `layer` runs" in text
    assert "placeholder" in text
    assert (tmp_path / "bn_stats.png").read_bytes()[:8] == PNG_MAGIC
