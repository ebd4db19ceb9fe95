"""Benchmarks of BN vs no-BN critics: the grid runner, statistics, report and plots.

Statistics follow Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice": IQM
with percentile-bootstrap CIs and the probability of improvement. Attributes are imported lazily
so that the command line's argument parsing does not load scipy.
"""

import importlib

_EXPORTS = {"GYM_THRESHOLDS": "bnrl.compare.report", "write_report": "bnrl.compare.report",
            **{name: "bnrl.compare.stats" for name in (
                "area_under_curve", "bootstrap_ci", "iqm", "probability_of_improvement",
                "steps_to_threshold", "verdict")}}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compare' has no attribute {name!r}")
