"""Import TensorFlow without its start-up noise (command line, benchmark workers)."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_tensorflow() -> None:
    """Import TensorFlow with its start-up logs hidden (call it before anything imports it).

    ``TF_CPP_MIN_LOG_LEVEL=3`` hides the C++ INFO/WARNING/ERROR lines about CUDA probing on CPU
    machines (errors of a run still raise in Python); the lines TensorFlow prints through absl
    before that setting applies are hidden by silencing the C stderr during the import only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="gymnasium")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        # Imported here, under the silenced stderr: that is the point of this function.
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
