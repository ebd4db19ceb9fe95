"""Benchmarks of critic variants (BN or not, remedies, CrossQ): the grid runner, result files,
statistics across environments, report and plots.

Statistics follow Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice":
normalized-score IQM with stratified bootstrap CIs, the probability of improvement, performance
profiles, paired with an exact permutation test. Attributes are imported lazily so that the
command line's argument parsing does not load scipy.
"""

import importlib

_EXPORTS = {"write_report": "bnrl.compare.report",
            **{name: "bnrl.compare.stats" for name in (
                "area_under_curve", "bootstrap_ci", "iqm", "probability_of_improvement",
                "steps_to_threshold")}}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compare' has no attribute {name!r}")
