"""Benchmarks of critic variants (BN or not, remedies, CrossQ): the grid and its runs, result
files, statistics across environments, report and plots.

Statistics follow Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice":
normalized-score IQM with stratified bootstrap CIs, the probability of improvement, performance
profiles, paired with an exact permutation test.

Modules, from the ground up: ``records`` (the run record a result file holds), ``stats`` and
``aggregate`` (the statistics), ``suites`` and ``variants`` (what a grid is made of),
``results`` (one run's spec and result file, the settings hash), ``grid`` (``grid.json`` and the
runs it plans), ``workers`` (running them), ``collect`` (reading a directory's results back,
merging pieces), ``report`` (report.md and figures) and ``cli`` (the commands of ``run.py``).
"""

from bnrl.compare.report import write_report
from bnrl.compare.stats import (
    area_under_curve,
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    steps_to_threshold,
)

__all__ = ["area_under_curve", "bootstrap_ci", "iqm", "probability_of_improvement",
           "steps_to_threshold", "write_report"]
