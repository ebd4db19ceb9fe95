"""The one place that guarantees bnrl runs on Keras 2 (``tf-keras``) in TensorFlow graph mode.

Keras 3 layers cannot run in a ``tf.compat.v1.Session`` and have no ``get_updates_for``, so every
bnrl module imports ``keras`` from here instead of using ``tf.keras``. Importing this module has
two side effects, both only where the user has not chosen: it sets ``TF_USE_LEGACY_KERAS=1``, so
that *their* ``tf.keras`` also resolves to Keras 2 when they touch it after importing bnrl
(TensorFlow resolves ``tf.keras`` lazily, on first attribute access, so this works even after
``import tensorflow``), and, when it is the first to import TensorFlow, it keeps TensorFlow's
start-up log lines out of the terminal (``common.quiet.import_tensorflow``).

Graph mode is not switched on globally (that would be a side effect on the user's program): every
bnrl graph is built inside an explicit ``tf.Graph().as_default()``, where tf-keras uses its v1
layers, whose update ops ``get_updates_for`` can return.
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from bnrl.common.quiet import import_tensorflow  # noqa: E402

tf = import_tensorflow()  # its CUDA-probing start-up lines kept out of the user's terminal
from tensorflow.core.protobuf import config_pb2  # noqa: E402  (after the quiet import)

try:
    import tf_keras as keras  # noqa: E402
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "bnrl needs Keras 2 (the 'tf-keras' package) matching TensorFlow "
        f"{tf.__version__}: pip install 'tf-keras~={tf.__version__.rsplit('.', 1)[0]}.0'"
    ) from exc


class KerasVersionError(RuntimeError):
    """Raised when a model or layer comes from Keras 3 instead of Keras 2 (tf-keras)."""


def _check_versions() -> None:
    if not keras.__version__.startswith("2."):
        raise KerasVersionError(
            f"tf_keras {keras.__version__} is not Keras 2; install tf-keras 2.x matching "
            f"TensorFlow {tf.__version__}"
        )
    tf_minor = tuple(tf.__version__.split(".")[:2])
    keras_minor = tuple(keras.__version__.split(".")[:2])
    if tf_minor != keras_minor:
        raise KerasVersionError(
            f"tf-keras {keras.__version__} does not match TensorFlow {tf.__version__}; "
            f"install tf-keras~={'.'.join(tf_minor)}.0"
        )


_check_versions()


def require_keras2(obj, what: str = "model") -> None:
    """Fail with a clear message when ``obj`` is a Keras 3 object.

    Args:
      obj: a model or layer passed in by the user.
      what: how to name it in the message.
    """
    if isinstance(obj, keras.layers.Layer):
        return
    module = type(obj).__module__
    if module.startswith("keras"):
        raise KerasVersionError(
            f"the {what} is a Keras 3 object ({type(obj).__name__}); bnrl needs Keras 2: set "
            "TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported, or build it with "
            "'import tf_keras as keras'"
        )
    raise TypeError(f"expected a tf-keras {what}, got {type(obj).__name__}")


def new_graph_session(
    graph: tf.Graph, intra_op_threads: int = 0, inter_op_threads: int = 0
) -> tf.compat.v1.Session:
    """A v1 Session on ``graph`` with explicit thread pools (0 lets TensorFlow choose).

    Args:
      graph: the graph the session runs.
      intra_op_threads: threads inside one op (matmul); benchmarks give each worker its share.
      inter_op_threads: ops run side by side; 2 was worth about 45% on SAC updates on 2 cores.
    """
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=intra_op_threads,
        inter_op_parallelism_threads=inter_op_threads,
        allow_soft_placement=True,
    )
    return tf.compat.v1.Session(graph=graph, config=config)


def session_callable(sess: tf.compat.v1.Session, fetches, feeds=(), options=None):
    """``sess.make_callable(fetches, feeds)`` without ``Session.run``'s cost per call.

    TensorFlow 2.21 serves a ``make_callable`` that has a feed list through ``Session.run`` (its
    Python feed and fetch handling: about 0.45 ms a call on 2 cores, as long as a small update
    itself; benchmarks/README.md, "Seeds trained grouped"). A callable made from
    ``CallableOptions``, as tf-keras's own graph functions are, runs the same feeds and fetches
    by name: the same graph, the same numbers.

    Args:
      fetches: a tensor (the callable returns its value) or a list of tensors and operations
        (a list: each tensor's value, None for each operation).
      feeds: the tensors the callable's arguments feed, in order; each argument is converted to
        its tensor's dtype, as ``Session.run`` converts a feed.
      options: ``RunOptions`` for every call (e.g. acting on the caller's thread).
    """
    single = not isinstance(fetches, (list, tuple))
    fetches = [fetches] if single else list(fetches)
    feeds = list(feeds)
    dtypes = [f.dtype.as_numpy_dtype for f in feeds]
    tensors = [i for i, f in enumerate(fetches) if isinstance(f, tf.Tensor)]
    callable_options = config_pb2.CallableOptions(
        feed=[f.name for f in feeds], fetch=[fetches[i].name for i in tensors],
        target=[f.name for f in fetches if isinstance(f, tf.Operation)])
    if options is not None:
        callable_options.run_options.CopyFrom(options)
    run = None

    def call(*args):
        nonlocal run
        if run is None:
            # Made on the first call, not here: making one prunes and optimizes the graph for
            # its fetches (0.3 s each in a 3-seed group's graph), and many are never called (a
            # group member's own update calls, the logged update of a run that never logs).
            run = sess._make_callable_from_options(callable_options)  # tf-keras's way
        values = run(*[np.asarray(a, dtype) for a, dtype in zip(args, dtypes, strict=True)])
        if single:
            return values[0] if tensors else None
        out = [None] * len(fetches)
        for i, value in zip(tensors, values, strict=True):
            out[i] = value
        return out

    call.options = options  # what every call runs with, for a test to check
    return call
