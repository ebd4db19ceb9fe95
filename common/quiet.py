"""Import TensorFlow without its start-up noise, unless the user asked for it (issue 28).

On a machine without a GPU, ``import tensorflow`` prints about a dozen lines to the C stderr
(``Could not find cuda drivers``, ``failed call to cuInit: CUDA error``, CPU feature notes): noise
for a CPU user, printed before any Python logging setting can apply. bnrl keeps them out of the
user's terminal whenever it is the first to import TensorFlow, from the library as from the
command line, and leaves them alone when the user asked for TensorFlow's logs by setting
``TF_CPP_MIN_LOG_LEVEL`` below 3 (docs/troubleshooting.md).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

QUIET_LEVEL = "3"
"""``TF_CPP_MIN_LOG_LEVEL`` that hides TensorFlow's C++ INFO, WARNING and ERROR lines (a run's
errors still raise in Python)."""


def import_tensorflow():
    """``import tensorflow``, with its start-up lines hidden unless the user asked for them.

    Unless ``TF_CPP_MIN_LOG_LEVEL`` is already set, it is set to 3 (the C++ log lines of the
    process); the lines TensorFlow writes while it loads, before absl's logging reads that
    setting, are hidden by silencing the C stderr during the import only. A user's level below 3
    is respected: nothing is hidden. Nothing happens when TensorFlow is already imported.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL) != QUIET_LEVEL:
        import tensorflow
        return tensorflow
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        # Imported here, under the silenced stderr: that is the point of this function.
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


def quiet_tensorflow() -> None:
    """``import_tensorflow`` plus the Python-side quiet of bnrl's own processes (command line,
    benchmark workers): TensorFlow's Python warnings and the deprecation notes of the libraries
    it uses stay out of a run's output. A library import does not change the user's logging or
    warning filters; this does, because the process is bnrl's."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="gymnasium")
    import_tensorflow()
