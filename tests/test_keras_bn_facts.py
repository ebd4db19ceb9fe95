"""The tf-keras BatchNormalization facts of docs/keras-batchnorm.md, pinned on this stack.

Each test is one statement of that page (TensorFlow 2.21, tf-keras 2.21, graph mode). The
facts bnrl's own machinery relies on are also pinned where that machinery is tested
(tests/test_batchnorm.py, tests/test_agent_bn.py); these are the ones about Keras itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnrl.networks import keras, tf

RNG = np.random.default_rng(0)
DATA = RNG.normal(3.0, 2.0, (16, 3)).astype(np.float32)


def _graph_model():
    """Input(3) -> BN, a functional model called on a placeholder (the seeds' setup)."""
    inp = keras.Input((3,))
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inp, bn(inp))
    x = tf.compat.v1.placeholder(tf.float32, [None, 3])
    return model, bn, x


def _session():
    sess = tf.compat.v1.Session()
    sess.run(tf.compat.v1.global_variables_initializer())
    return sess


def test_update_ops_belong_to_the_call_and_never_reach_update_ops():
    with tf.Graph().as_default() as graph:
        model, bn, x = _graph_model()
        model(x, training=True)
        assert graph.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS) == []
        # model.updates also holds the build call's ops, bound to Keras' own Input.
        assert len(model.updates) == 4 and len(model.get_updates_for(x)) == 2
        sess = _session()
        sess.run(model.get_updates_for(x), {x: DATA})
        np.testing.assert_allclose(sess.run(bn.moving_mean), 0.01 * DATA.mean(0), rtol=1e-5)
        with pytest.raises(tf.errors.InvalidArgumentError, match="must feed a value"):
            sess.run(model.updates, {x: DATA})


def test_training_none_is_inference_in_graph_mode():
    with tf.Graph().as_default():
        model, bn, x = _graph_model()
        y_none, y_false = model(x), model(x, training=False)
        sess = _session()
        sess.run(tf.compat.v1.assign(bn.moving_mean, [1.0, 2.0, 3.0]))
        a, b = sess.run([y_none, y_false], {x: DATA})
        np.testing.assert_array_equal(a, b)
        # Inference: normalized with the moving statistics, not the batch's.
        np.testing.assert_allclose(a, (DATA - [1.0, 2.0, 3.0]) / np.sqrt(1.0 + 1e-3), rtol=1e-5)


def test_every_training_call_creates_its_own_updates():
    with tf.Graph().as_default():
        model, bn, x = _graph_model()
        model(x, training=True)
        first = model.get_updates_for(x)
        model(x, training=True)
        both = model.get_updates_for(x)
        second = [op for op in both if op not in first]
        assert len(first) == 2 and len(second) == 2  # each call updates mean and variance
        once = 0.01 * DATA.mean(0)
        sess = _session()
        sess.run(both, {x: DATA})
        # In one run the two updates of a variable are unordered: both apply, each computed
        # from the value before the other (2 x once) or after it (once + 0.99 x once).
        after_one_run = sess.run(bn.moving_mean)
        assert (np.allclose(after_one_run, 2 * once, rtol=1e-4)
                or np.allclose(after_one_run, once + 0.99 * once, rtol=1e-4)), after_one_run
        sess.run(tf.compat.v1.variables_initializer([bn.moving_mean]))
        sess.run(first, {x: DATA})
        sess.run(second, {x: DATA})
        np.testing.assert_allclose(sess.run(bn.moving_mean), once + 0.99 * once, rtol=1e-4)


def test_fused_batch_norm_uses_the_bessel_corrected_variance():
    variances = {}
    for shape in ((16, 3), (16, 1, 1, 3)):
        with tf.Graph().as_default():
            bn = keras.layers.BatchNormalization(momentum=0.0)
            x = tf.compat.v1.placeholder(tf.float32, shape)
            bn(x, training=True)
            sess = _session()
            sess.run(bn.get_updates_for(x), {x: DATA.reshape(shape)})
            variances[len(shape), bn.fused] = sess.run(bn.moving_variance)
    assert set(variances) == {(2, False), (4, True)}  # fused only on 4-D inputs
    np.testing.assert_allclose(variances[2, False], DATA.var(0), rtol=1e-5)
    np.testing.assert_allclose(variances[4, True], DATA.var(0, ddof=1), rtol=1e-5)


def test_batch_renorm_statistics_move_only_with_its_update_ops():
    with tf.Graph().as_default():
        bn = keras.layers.BatchNormalization(
            renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 1 / 3, "dmax": 5.0})
        x = tf.compat.v1.placeholder(tf.float32, [None, 3])
        y = bn(x, training=True)
        names = {v.name.split("/")[-1].split(":")[0] for v in bn.weights}
        assert {"renorm_mean", "renorm_stddev", "moving_stddev"} <= names
        sess = _session()
        sess.run(y, {x: DATA})
        assert not sess.run(bn.renorm_mean).any() and not sess.run(bn.moving_mean).any()
        sess.run(bn.get_updates_for(x), {x: DATA})
        np.testing.assert_allclose(sess.run(bn.renorm_mean), 0.01 * DATA.mean(0), rtol=1e-4)
        np.testing.assert_allclose(sess.run(bn.moving_mean), 0.01 * DATA.mean(0), rtol=1e-4)


def test_the_docs_page_cites_tests_that_exist():
    """Every ``tests/...::name`` (and ``::name`` after it) on the page is a test function."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "keras-batchnorm.md").read_text()
    cited, current = [], None
    for ref in re.findall(r"`((?:tests/\w+\.py)?::\w+)`", text):
        path, _, name = ref.partition("::")
        current = path or current
        cited.append((current, name))
    assert len(cited) >= 20
    for path, name in cited:
        source = (root / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
