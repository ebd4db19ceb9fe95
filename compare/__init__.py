"""Statistics and reports for comparing BN critics against no-BN critics.

Follows Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice":
IQM with percentile-bootstrap CIs and the probability of improvement.
"""

from compare.report import GYM_THRESHOLDS, write_report
from compare.stats import (
    area_under_curve,
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    steps_to_threshold,
    verdict,
)

__all__ = [
    "GYM_THRESHOLDS",
    "area_under_curve",
    "bootstrap_ci",
    "iqm",
    "probability_of_improvement",
    "steps_to_threshold",
    "verdict",
    "write_report",
]
