"""A catalogue of user model shapes, each trained through a hand-built Session loop (issue 10).

For every shape: the moving statistics after several optimizer steps equal a numpy EMA of the
batch statistics of the exact tensors each BN call normalized in that run (fetched in the same
``sess.run`` as the train op, so the forward pass is the one the step used), ``check_wiring`` is
``[]`` on the correct train op, and it reports the problem on at least one miswired one.

Keras EMA: ``moving <- moving * momentum + batch_stat * (1 - momentum)`` with the biased batch
variance, except fused BN (4-D inputs), whose moving variance uses the Bessel-corrected one, and
Batch Renorm, which keeps ``moving_stddev <- EMA(sqrt(var + eps))`` and sets
``moving_variance = stddev**2 - eps``.

The op names read by ``_bn_input`` are Keras' own (white-box on purpose: it is how the test finds
the tensor a given call normalized).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import bnrl.networks as nw
from bnrl.networks import keras, tf

MOMENTUM = 0.99  # Keras default
EPS = 1e-3  # Keras default
RTOL = ATOL = 1e-5
N_STEPS = 4
BATCH = 32
REPO = Path(__file__).resolve().parents[1]
UPDATE_OPS = tf.compat.v1.GraphKeys.UPDATE_OPS

pytestmark = pytest.mark.filterwarnings("ignore:`tf.layers:UserWarning",
                                        "ignore:`tf.keras.backend.set_learning_phase`")


# ---------------------------------------------------------------------------------- helpers
def _ph(*shape, name=None):
    return tf.compat.v1.placeholder(tf.float32, (None, *shape), name=name)


def _data(*shape, seed=0, batch=BATCH, n=N_STEPS):
    """Batches far from standardized, so that every moving statistic visibly moves."""
    rng = np.random.RandomState(seed)
    scale = 0.5 + np.arange(int(np.prod(shape))).reshape(shape) % 3
    return [rng.randn(batch, *shape) * scale + 3.0 for _ in range(n)]


def _targets(n_out=1, seed=1, n=N_STEPS, batch=BATCH):
    rng = np.random.RandomState(seed)
    return [rng.randn(batch, n_out) for _ in range(n)]


def _bn_input(graph: tf.Graph, scope: str) -> tf.Tensor:
    """The tensor the BN call with name scope ``scope`` normalized."""
    for name in (f"{scope}/moments/mean", f"{scope}/FusedBatchNormV3"):
        try:
            return graph.get_operation_by_name(name).inputs[0]
        except KeyError:
            continue
    raise AssertionError(f"no BN call '{scope}'")


def _mse(out, y):
    return tf.reduce_mean(tf.square(out - y))


def _opt():
    return tf.compat.v1.train.AdamOptimizer(0.05)


@dataclass
class Track:
    """One BN layer and the tensors its training-mode calls normalize, in call order."""

    layer: object  # anything with moving_mean / moving_variance variables
    calls: list
    fused: bool = False  # moving variance from the Bessel-corrected batch variance
    renorm: bool = False
    state: list = field(default_factory=list)

    def start(self, width: int):
        # Keras starts moving_stddev at sqrt(moving_variance's initial 1), without epsilon.
        self.state = [np.zeros(width), np.ones(width), np.ones(width)]

    def step(self, x: np.ndarray):
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axes), x.var(axes, ddof=1 if self.fused else 0)
        m, v, std = self.state
        m = m * MOMENTUM + mean * (1 - MOMENTUM)
        if self.renorm:
            std = std * MOMENTUM + np.sqrt(var + EPS) * (1 - MOMENTUM)
            v = np.maximum(std * std - EPS, 0.0)
        else:
            v = v * MOMENTUM + var * (1 - MOMENTUM)
        self.state = [m, v, std]


def _train(graph, train_op, tracks: list[Track], feeds: list[dict]) -> None:
    """Run ``train_op`` once per feed and assert, after every step, that each tracked layer's
    moving statistics equal the numpy EMA of the inputs its calls normalized in that run."""
    with graph.as_default():
        init = tf.compat.v1.global_variables_initializer()
    inputs = [x for t in tracks for x in t.calls]
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        for t in tracks:
            t.start(sess.run(t.layer.moving_mean).shape[0])
        for feed in feeds:
            _, fetched = sess.run([train_op, inputs], feed)
            fetched = iter(fetched)
            for t in tracks:
                for _ in t.calls:  # one update per call, in call order
                    t.step(next(fetched))
                got = sess.run([t.layer.moving_mean, t.layer.moving_variance])
                for value, expected in zip(got, t.state[:2]):
                    np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL)
    for t in tracks:  # the statistics moved far enough for the comparison to mean something
        assert max(np.abs(t.state[0]).max(), np.abs(t.state[1] - 1).max()) > 100 * ATOL


def _problems(op, models, *expected: str) -> list[str]:
    """check_wiring(op, models), asserting each expected fragment is in some reported line."""
    problems = nw.check_wiring(op, models)
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    return problems


def _mlp_bn(name="model", n_in=4):
    """Input -> Dense(8) -> BN -> ReLU -> Dense(1), functional."""
    inp = keras.Input((n_in,))
    h = keras.layers.Dense(8, name="dense")(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(h))
    return keras.Model(inp, keras.layers.Dense(1, name="out")(h), name=name)


# ------------------------------------------------------------------------------ Sequential
def test_sequential_without_input():
    """Built by its first call: there is no separate build call."""
    g = tf.Graph()
    with g.as_default():
        model = keras.Sequential([keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn"),
                                  keras.layers.ReLU(), keras.layers.Dense(1)], name="seq")
        x, y = _ph(4), _ph(1)
        out, updates = nw.training_call(model, x)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        naive = _opt().minimize(loss)
        assert nw.check_wiring(train_op, [model]) == []
        problems = _problems(naive, [model], "BN layer 'bn' call 'seq/bn' normalizes with batch "
                             "statistics but its moving_mean is never updated")
        assert len(problems) == 2
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "seq/bn")])],
           [{x: X, y: Y} for X, Y in zip(_data(4), _targets())])


def test_sequential_with_input_and_all_model_updates():
    """With an Input the model is built at construction, in a build call on Keras' own Input
    placeholder; running ``model.updates`` (the seed-2 answer's add_to_collection) also runs that
    call's (learning-phase conditional) updates, which need that placeholder fed."""
    g = tf.Graph()
    with g.as_default():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                                  keras.layers.BatchNormalization(name="bn"),
                                  keras.layers.Dense(1)], name="seq")
        x, y = _ph(4, name="x"), _ph(1)
        loss = _mse(model(x, training=True), y)
        train_op = nw.minimize_with_updates(_opt(), loss, nw.collect_updates(model, x))
        miswired = nw.minimize_with_updates(_opt(), loss, model.updates)
        init = tf.compat.v1.global_variables_initializer()
        assert nw.check_wiring(train_op, [model]) == []
        input_name = model.inputs[0].op.name
        problems = _problems(miswired, [model], f"depends on placeholder {input_name}",
                             "You must feed a value for placeholder")
        # Each statistic: written by a call the loss does not use, and so written twice.
        assert len(problems) == 4
        assert sum("updated by call 'bn', but the loss uses call seq/bn" in p
                   for p in problems) == 2
        assert sum("updated 2 times per step (calls bn, seq/bn)" in p for p in problems) == 2
    feeds = [{x: X, y: Y} for X, Y in zip(_data(4), _targets())]
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "seq/bn")])], feeds)
    with tf.compat.v1.Session(graph=g) as sess:  # what the report announces
        sess.run(init)
        with pytest.raises(tf.errors.InvalidArgumentError, match="must feed a value"):
            sess.run(miswired, feeds[0])


# ------------------------------------------------------------------- nested / composed models
def test_nested_functional():
    """A functional model inside a functional model; collecting a separate call of the inner
    model (a natural mistake) leaves the outer model's call of the inner BN stale."""
    g = tf.Graph()
    with g.as_default():
        inner_in = keras.Input((4,))
        inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn_inner")(
            keras.layers.Dense(8)(inner_in)), name="inner")
        outer_in = keras.Input((4,))
        h = keras.layers.Dense(8)(inner(outer_in))
        h = keras.layers.BatchNormalization(name="bn_outer")(h)
        outer = keras.Model(outer_in, keras.layers.Dense(1)(h), name="outer")
        x, y, x_inner = _ph(4), _ph(1), _ph(4, name="x_inner")
        out, updates = nw.training_call(outer, x)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        _, inner_updates = nw.training_call(inner, x_inner)
        outer_only = [op for op in updates if "bn_outer" in op.name]
        miswired = nw.minimize_with_updates(_opt(), loss, outer_only + inner_updates)
        assert len(updates) == 4 and nw.check_wiring(train_op, [outer]) == []
        _problems(miswired, [outer],
                  "BN layer 'bn_inner' call 'outer/inner/bn_inner' normalizes with batch "
                  "statistics but its moving_mean is never updated",
                  "BN layer 'bn_inner' has its moving_variance updated by call "
                  "'inner_1/bn_inner', but the loss uses call outer/inner/bn_inner: it depends on "
                  "placeholder x_inner")
    tracks = [Track(inner.get_layer("bn_inner"), [_bn_input(g, "outer/inner/bn_inner")]),
              Track(outer.get_layer("bn_outer"), [_bn_input(g, "outer/bn_outer")])]
    _train(g, train_op, tracks, [{x: X, y: Y} for X, Y in zip(_data(4), _targets())])


def test_sequential_inside_functional():
    g = tf.Graph()
    with g.as_default():
        seq = keras.Sequential([keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn")],
                               name="trunk")
        inp = keras.Input((4,))
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.ReLU()(seq(inp))),
                            name="head")
        x, y = _ph(4), _ph(1)
        out, updates = nw.training_call(model, x)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        assert nw.check_wiring(train_op, [model]) == []
        assert len(_problems(_opt().minimize(loss), [model],
                             "BN layer 'bn' call 'head/trunk/bn' normalizes")) == 2
    _train(g, train_op, [Track(seq.get_layer("bn"), [_bn_input(g, "head/trunk/bn")])],
           [{x: X, y: Y} for X, Y in zip(_data(4), _targets())])


# ------------------------------------------------------------------- one model, s and s'
def test_same_model_on_s_and_next_s():
    """Q(s) in training mode for the loss, Q(s') in inference mode for the target: the updates
    are those of the s call. Issue 10 finding 3: updates of a training-mode call on s' while the
    loss uses the call on s used to pass."""
    g = tf.Graph()
    with g.as_default():
        model = _mlp_bn("q")
        s, s2, r = _ph(4, name="s"), _ph(4, name="s2"), _ph(1)
        q, updates = nw.training_call(model, s)
        target = tf.stop_gradient(r + 0.9 * model(s2, training=False))
        loss = _mse(q, target)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        model(s2, training=True)  # e.g. built for a diagnostic, not used by the loss
        wrong_call = nw.minimize_with_updates(_opt(), loss, nw.collect_updates(model, s2))
        both = nw.minimize_with_updates(_opt(), loss, updates + nw.collect_updates(model, s2))
        assert nw.check_wiring(train_op, [model]) == []
        problems = _problems(
            wrong_call, [model], "call 'q/bn' normalizes with batch statistics but its moving_mean "
            "is never updated", "has its moving_mean updated by call 'q_2/bn', but the loss uses "
            "call q/bn: the loss does not use that call's output")
        assert len(problems) == 4
        _problems(both, [model], "'bn' has its moving_variance updated 2 times per step",
                  "updated by call 'q_2/bn'")
    data, data2 = _data(4), _data(4, seed=5)
    feeds = [{s: S, s2: S2 * 3 - 2, r: R} for S, S2, R in zip(data, data2, _targets())]
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "q/bn")])], feeds)


def test_batch_statistics_target_updates_nothing():
    """A training-mode bootstrap (the BN-critic remedy): Q(s') normalized with the batch
    statistics of s' through ``batch_statistics_call``, whose updates must never run. The target
    equals the network evaluated by hand with s' batch statistics; the moving statistics follow
    the s call alone; running the s' call's updates is reported."""
    g = tf.Graph()
    with g.as_default():
        model = _mlp_bn("q")
        s, s2, r = _ph(4, name="s"), _ph(4, name="s2"), _ph(1)
        q, updates = nw.training_call(model, s)
        q_next = nw.batch_statistics_call(model, s2)
        loss = _mse(q, tf.stop_gradient(r + 0.9 * q_next))
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        _, stat_updates = nw.training_call(model, s2)  # the same call, built the usual way
        running_them = nw.minimize_with_updates(_opt(), loss, updates + stat_updates)
        assert nw.check_wiring(train_op, [model]) == []
        _problems(running_them, [model], "'bn' has its moving_mean updated 2 times per step")
        leaked = nw.with_updates(_opt().minimize(loss), updates + [
            op for op in g.get_operations() if op.name.startswith("q_1/bn/AssignMovingAvg")
            and op.type == "AssignSubVariableOp"])
        _problems(leaked, [model], "call 'q_1/bn' was made with batch_statistics_call")
    data, data2 = _data(4), _data(4, seed=5)
    feeds = [{s: S, s2: S2 * 3 - 2, r: R} for S, S2, R in zip(data, data2, _targets())]
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "q/bn")])], feeds)
    with tf.compat.v1.Session(graph=g) as sess:  # the target used the s' batch statistics
        sess.run(tf.compat.v1.variables_initializer(model.variables))
        h_in = _bn_input(g, "q_1/bn")
        got, h = sess.run([q_next, h_in], {s2: feeds[0][s2]})
        bn = model.get_layer("bn")
        gamma, beta, kernel, bias = sess.run([bn.gamma, bn.beta, *model.get_layer("out").weights])
        normed = (h - h.mean(0)) / np.sqrt(h.var(0) + EPS) * gamma + beta
        np.testing.assert_allclose(got, np.maximum(normed, 0) @ kernel + bias, rtol=1e-4,
                                   atol=1e-5)


# --------------------------------------------------------------------------- shared BN layer
def _siamese():
    a, b = keras.Input((3,)), keras.Input((3,))
    bn = keras.layers.BatchNormalization(name="bn")
    dense = keras.layers.Dense(1, name="out")
    merged = keras.layers.Concatenate()([bn(a), bn(b)])
    return keras.Model([a, b], dense(merged), name="siamese")


def test_shared_bn_layer_one_update_per_call_in_call_order():
    """Issue 10 finding 5: one BN layer applied to two tensors in one call of the model.
    ``training_call(..., shared=True)`` runs both calls' updates, the second after the first:
    m <- EMA(EMA(m, stats(a)), stats(b)), which is what Keras ``fit`` computes (pinned below)."""
    g = tf.Graph()
    with g.as_default():
        model = _siamese()
        xa, xb, y = _ph(3), _ph(3), _ph(1)
        out, updates = nw.training_call(model, [xa, xb], shared=True)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        assert len(updates) == 4 and nw.check_wiring(train_op, [model]) == []
        scopes = sorted({op.name.split("/AssignMovingAvg")[0] for op in updates})
        assert scopes == ["siamese/bn", "siamese/bn_1"]
        with pytest.raises(ValueError, match="shared by two branches.*training_call.*shared=True"):
            nw.collect_updates(model, [xa, xb])
        # The same kind of update ops without the order: two unordered writes per statistic.
        model2 = _siamese()
        out2 = model2([xa, xb], training=True)
        plain = model2.get_updates_for([xa, xb])
        miswired = nw.minimize_with_updates(_opt(), _mse(out2, y), plain)
        scopes2 = ", ".join(sorted({op.name.split("/AssignMovingAvg")[0] for op in plain}))
        problems = _problems(miswired, [model2], "has its moving_mean updated 2 times per step "
                             f"(calls {scopes2})", "shared=True")
        assert len(problems) == 2
        with pytest.raises(ValueError, match="shared by two branches.*pass shared=True"):
            nw.training_call(_siamese(), [xa, xb])
    data_a, data_b = _data(3), _data(3, seed=3)
    feeds = [{xa: A * 4, xb: B * 0.3 - 4, y: Y} for A, B, Y in zip(data_a, data_b, _targets())]
    calls = [_bn_input(g, "siamese/bn"), _bn_input(g, "siamese/bn_1")]
    track = Track(model.get_layer("bn"), calls)
    _train(g, train_op, [track], feeds)
    # The order matters: both updates computed from the same pre-step value would differ.
    ordered = unordered = np.zeros(3)
    for feed in feeds:
        a, b = feed[xa].mean(0), feed[xb].mean(0)
        ordered = (ordered * MOMENTUM + a * (1 - MOMENTUM)) * MOMENTUM + b * (1 - MOMENTUM)
        unordered = unordered - (unordered - a) * (1 - MOMENTUM) - (unordered - b) * (1 - MOMENTUM)
    np.testing.assert_allclose(track.state[0], ordered, rtol=1e-6)  # fed as float32
    assert np.abs(unordered - ordered).max() > 20 * ATOL


def test_shared_bn_layer_matches_keras_fit():
    """Keras ``fit`` (eager, learning rate 0 so that only the statistics move) applies one
    update per call in call order; bnrl's shared=True gives the same moving statistics."""
    data_a, data_b = _data(3), _data(3, seed=3)
    data_b = [b * 0.3 - 4 for b in data_b]
    ys = _targets()
    fit_model = _siamese()
    fit_model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    for a, b, y in zip(data_a, data_b, ys):
        fit_model.fit([a, b], y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    fit_stats = [fit_model.get_layer("bn").moving_mean.numpy(),
                 fit_model.get_layer("bn").moving_variance.numpy()]
    g = tf.Graph()
    with g.as_default():
        model = _siamese()
        xa, xb, y = _ph(3), _ph(3), _ph(1)
        out, updates = nw.training_call(model, [xa, xb], shared=True)
        train_op = nw.minimize_with_updates(tf.compat.v1.train.GradientDescentOptimizer(0.0),
                                            _mse(out, y), updates)
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        for a, b, target in zip(data_a, data_b, ys):
            sess.run(train_op, {xa: a, xb: b, y: target})
        ours = sess.run([model.get_layer("bn").moving_mean, model.get_layer("bn").moving_variance])
    for got, expected in zip(ours, fit_stats):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert np.abs(fit_stats[0]).max() > 1e-2


def test_shared_batch_renorm_is_refused():
    g = tf.Graph()
    with g.as_default():
        a, b = keras.Input((3,)), keras.Input((3,))
        bn = keras.layers.BatchNormalization(renorm=True, name="rn")
        model = keras.Model([a, b], keras.layers.Concatenate()([bn(a), bn(b)]))
        with pytest.raises(ValueError, match="Batch Renorm layers \\(rn\\)"):
            nw.training_call(model, [_ph(3), _ph(3)], shared=True)


# ------------------------------------------------------------------------------ Batch Renorm
def test_batch_renorm():
    g = tf.Graph()
    with g.as_default():
        inp = keras.Input((4,))
        h = keras.layers.Dense(8)(inp)
        h = keras.layers.BatchNormalization(renorm=True, name="rn",
                                            renorm_clipping={"rmax": 3.0, "rmin": 1 / 3,
                                                             "dmax": 5.0})(h)
        model = keras.Model(inp, keras.layers.Dense(1)(h), name="renorm")
        x, x2, y = _ph(4), _ph(4, name="x2"), _ph(1)
        out, updates = nw.training_call(model, x)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        _, other = nw.training_call(model, x2)
        twice = nw.minimize_with_updates(_opt(), loss, updates + other)
        assert nw.check_wiring(train_op, [model]) == []
        _problems(twice, [model], "'rn' has its moving_mean updated 2 times per step",
                  "'rn' has its moving_variance updated 2 times per step",
                  "updated by call 'renorm_1/rn', but the loss uses call renorm/rn")
        assert len(_problems(_opt().minimize(loss), [model], "never updated")) == 2
    _train(g, train_op, [Track(model.get_layer("rn"), [_bn_input(g, "renorm/rn")], renorm=True)],
           [{x: X, y: Y} for X, Y in zip(_data(4), _targets())])


# ---------------------------------------------------------------------- fused BN on a CNN
def test_small_cnn_with_fused_bn():
    """Conv2D -> BN (fused: 4-D input) -> ReLU -> pooling -> Dense. Fused BN's moving variance
    uses the Bessel-corrected batch variance (n = batch * height * width)."""
    g = tf.Graph()
    with g.as_default():
        model = keras.Sequential([keras.layers.Conv2D(3, 2, name="conv"),
                                  keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)],
                                 name="cnn")
        x, y = _ph(3, 3, 2), _ph(1)
        out, updates = nw.training_call(model, x)
        assert model.get_layer("bn").fused
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        assert nw.check_wiring(train_op, [model]) == []
        assert len(_problems(_opt().minimize(loss), [model],
                             "BN layer 'bn' call 'cnn/bn' normalizes with batch statistics but "
                             "its moving_variance is never updated")) == 2
    feeds = [{x: X, y: Y} for X, Y in zip(_data(3, 3, 2, batch=8), _targets(batch=8))]
    conv_out = _bn_input(g, "cnn/bn")
    _train(g, train_op, [Track(model.get_layer("bn"), [conv_out], fused=True)], feeds)
    # n = 8 * 2 * 2 = 32: the biased variance's EMA is visibly different from what Keras does.
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _train(g, train_op, [Track(model.get_layer("bn"), [conv_out], fused=False)], feeds)


# ------------------------------------------------------------- tf.compat.v1.layers + Keras
def test_v1_layers_mixed_with_keras_bn():
    """Issue 10 finding 4: a v1 BN layer's updates are only in UPDATE_OPS; forgetting
    collection_updates() leaves it stale, and check_wiring finds it through the graph."""
    g = tf.Graph()
    with g.as_default():
        x, y = _ph(4), _ph(1)
        h = tf.compat.v1.layers.batch_normalization(x, training=True, name="v1_bn")
        model = keras.Sequential([keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn"),
                                  keras.layers.Dense(1)], name="head")
        out, updates = nw.training_call(model, h)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates + nw.collection_updates())
        forgot = nw.minimize_with_updates(_opt(), loss, updates)
        assert nw.check_wiring(train_op, [model]) == []
        problems = _problems(forgot, [model], "BN layer 'v1_bn' call 'v1_bn' normalizes with "
                             "batch statistics but its moving_mean is never updated")
        assert len(problems) == 2
        v1_vars = {v.op.name: v for v in tf.compat.v1.global_variables()}
        v1_layer = SimpleNamespace(moving_mean=v1_vars["v1_bn/moving_mean"],
                                   moving_variance=v1_vars["v1_bn/moving_variance"])
    tracks = [Track(v1_layer, [x]), Track(model.get_layer("bn"), [_bn_input(g, "head/bn")])]
    _train(g, train_op, tracks, [{x: X, y: Y} for X, Y in zip(_data(4), _targets())])


# ----------------------------------------------------------------------------- frozen BN
def _frozen_model():
    inp = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="frozen_bn")(inp)
    h = keras.layers.Dense(8, name="dense")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inp, keras.layers.Dense(1, name="out")(h), name="model")


def test_frozen_bn():
    """Issue 10 finding 6. A layer frozen after it was built (``trainable=False``, as when
    fine-tuning): no gamma/beta gradient, no statistics update, inference-mode normalization,
    through training_call and minimize_with_updates; TensorFlow's own minimize trains it."""
    g = tf.Graph()
    with g.as_default():
        model = _frozen_model()
        frozen = model.get_layer("frozen_bn")
        frozen.trainable = False
        x, y = _ph(4), _ph(1)
        out, updates = nw.training_call(model, x)
        assert len(updates) == 2 and all("model/bn/" in op.name for op in updates)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        tf_default = nw.with_updates(_opt().minimize(loss), updates)
        assert nw.check_wiring(train_op, [model]) == []
        problems = _problems(tf_default, [model], "BN layer 'frozen_bn' is frozen "
                             "(trainable=False) but this train op trains its gamma",
                             "trains its beta")
        assert len(problems) == 2
        dense = model.get_layer("dense")
    feeds = [{x: X, y: Y} for X, Y in zip(_data(4), _targets())]
    frozen_vars = [frozen.gamma, frozen.beta, frozen.moving_mean, frozen.moving_variance]
    with g.as_default():
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        start = sess.run(frozen_vars)
        for f in feeds:
            kernel, bias = sess.run([dense.kernel, dense.bias])  # pre-step weights
            _, hidden = sess.run([train_op, _bn_input(g, "model/bn")], f)
            gamma, beta, mean, var = start
            expected = ((f[x] - mean) / np.sqrt(var + EPS) * gamma + beta) @ kernel + bias
            np.testing.assert_allclose(hidden, expected, rtol=RTOL, atol=ATOL)  # inference mode
        for before, after in zip(start, sess.run(frozen_vars)):
            np.testing.assert_array_equal(after, before)
        assert np.abs(sess.run(model.get_layer("bn").moving_mean)).max() > 1e-2
        sess.run(tf_default, feeds[0])  # the discriminating case: TF's default trains gamma
        assert np.abs(sess.run(frozen.gamma) - start[0]).max() > 1e-3
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "model/bn")])], feeds)


def test_frozen_after_the_training_call_was_built():
    g = tf.Graph()
    with g.as_default():
        model = _frozen_model()
        x, y = _ph(4), _ph(1)
        out, updates = nw.training_call(model, x)
        train_op = nw.minimize_with_updates(_opt(), _mse(out, y), updates)
        model.get_layer("frozen_bn").trainable = False
        _problems(train_op, [model], "BN layer 'frozen_bn' is frozen (trainable=False) but its "
                  "call 'model/frozen_bn' was built in training mode")


def test_all_bn_frozen_has_nothing_to_update():
    g = tf.Graph()
    with g.as_default():
        model = _frozen_model()
        model.trainable = False  # freezes every layer (Keras 2)
        x = _ph(4)
        out, updates = nw.training_call(model, x)
        assert updates == [] and nw.collect_updates(model, x) == []


# ------------------------------------------------------------- training=None, learning phase
def test_training_none_with_learning_phase_set_in_the_graph():
    """``set_learning_phase(1)`` inside the graph: ``model(x)`` is a training-mode call."""
    g = tf.Graph()
    with g.as_default():
        keras.backend.set_learning_phase(1)
        model = keras.Sequential([keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn"),
                                  keras.layers.Dense(1)], name="seq")
        x, y = _ph(4), _ph(1)
        loss = _mse(model(x), y)
        train_op = nw.minimize_with_updates(_opt(), loss, nw.collect_updates(model, x))
        assert nw.check_wiring(train_op, [model]) == []
        assert len(_problems(_opt().minimize(loss), [model], "call 'seq/bn' normalizes with "
                             "batch statistics but")) == 2
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "seq/bn")])],
           [{x: X, y: Y} for X, Y in zip(_data(4), _targets())])


@pytest.mark.parametrize("shape", [(4,), (3, 3, 2)], ids=["unfused", "fused"])
def test_training_none_with_fed_learning_phase(shape):
    """``model(x)`` in a fresh graph follows the learning-phase placeholder: batch statistics
    when it is fed 1. Issue 10 finding 1: a naive minimize then left the statistics at 0/1 and
    check_wiring said nothing."""
    g = tf.Graph()
    with g.as_default():
        model = keras.Sequential([keras.layers.BatchNormalization(name="bn"),
                                  keras.layers.Flatten(), keras.layers.Dense(1)], name="seq")
        x, y = _ph(*shape), _ph(1)
        loss = _mse(model(x), y)
        phase = keras.backend.learning_phase()
        with pytest.raises(ValueError, match="tensor `training` flag 'keras_learning_phase:0'"
                           ".*does not carry into.*conditional=True"):
            nw.collect_updates(model, x)
        updates = nw.collect_updates(model, x, conditional=True)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        assert nw.check_wiring(train_op, [model]) == []
        problems = _problems(_opt().minimize(loss), [model],
                             "call 'seq/bn' normalizes with batch statistics whenever "
                             "'keras_learning_phase:0' is fed True but its moving_mean is never "
                             "updated", "does not carry into that graph")
        assert len(problems) == 2
    batch = 8 if len(shape) == 3 else BATCH
    feeds = [{x: X, y: Y, phase: True}
             for X, Y in zip(_data(*shape, batch=batch), _targets(batch=batch))]
    track = Track(model.get_layer("bn"), [x], fused=len(shape) == 3)
    _train(g, train_op, [track], feeds)
    with tf.compat.v1.Session(graph=g) as sess:  # fed 0 (or not fed): inference, no update
        sess.run(tf.compat.v1.global_variables_initializer())
        for feed in feeds:
            sess.run(train_op, {x: feed[x], y: feed[y]})
        mean, var = sess.run([model.get_layer("bn").moving_mean,
                              model.get_layer("bn").moving_variance])
    np.testing.assert_array_equal(mean, np.zeros_like(mean))
    np.testing.assert_array_equal(var, np.ones_like(var))


def test_set_learning_phase_before_a_new_graph_is_explained():
    """Issue 10 finding 7: set_learning_phase(1) made outside a graph does not carry into
    ``with tf.Graph().as_default()``; the errors say so (own process: the setting is global)."""
    code = "\n".join([
        "import warnings; warnings.simplefilter('ignore')",
        "import bnrl.networks as nw",
        "from bnrl.networks import keras, tf",
        "keras.backend.set_learning_phase(1)",
        "with tf.Graph().as_default():",
        "    model = keras.Sequential([keras.layers.BatchNormalization(input_shape=(3,))])",
        "    x = tf.compat.v1.placeholder(tf.float32, (None, 3))",
        "    loss = tf.reduce_mean(model(x))",
        "    try:",
        "        nw.collect_updates(model, x)",
        "    except ValueError as exc:",
        "        print('ERROR', exc)",
        "    naive = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)",
        "    for line in nw.check_wiring(naive, [model]):",
        "        print('PROBLEM', line)",
    ])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    problems = [line for line in lines if line.startswith("PROBLEM")]
    assert len(errors) == 1 and len(problems) == 2
    for line in errors + problems:
        assert "set_learning_phase() sets it only for the graph that is the default" in line
        assert "does not carry into that graph" in line


# ---------------------------------------------------------------------------- Dropout + BN
def test_dropout_before_bn():
    """Dropout feeds the BN layer a different random mask in every call; a second training-mode
    call's updates (e.g. from calling training_call twice) are not the ones the loss used."""
    g = tf.Graph()
    with g.as_default():
        model = keras.Sequential([keras.layers.Dense(8), keras.layers.Dropout(0.5),
                                  keras.layers.BatchNormalization(name="bn"),
                                  keras.layers.Dense(1)], name="drop")
        x, y = _ph(4), _ph(1)
        out, updates = nw.training_call(model, x)
        loss = _mse(out, y)
        train_op = nw.minimize_with_updates(_opt(), loss, updates)
        _, second = nw.training_call(model, x)
        miswired = nw.minimize_with_updates(_opt(), loss, second)
        assert nw.check_wiring(train_op, [model]) == []
        _problems(miswired, [model], "call 'drop/bn' normalizes with batch statistics but its "
                  "moving_mean is never updated", "updated by call 'drop_1/bn', but the loss uses "
                  "call drop/bn: the loss does not use that call's output")
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "drop/bn")])],
           [{x: X, y: Y} for X, Y in zip(_data(4), _targets())])


# ------------------------------------------------------------------ the build call (finding 2)
def test_updates_of_the_build_call_are_reported():
    """Issue 10 finding 2: ``collect_updates(m, m.inputs)`` returns the ops of the build call
    on Keras' own Input placeholder (layers built with training=True, as in the second seed)."""
    g = tf.Graph()
    with g.as_default():
        inp = keras.Input((4,))
        h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8)(inp), training=True)
        model = keras.Model(inp, keras.layers.Dense(1)(h), name="model")
        x, y = _ph(4), _ph(1)
        loss = _mse(model(x), y)  # training=True is baked into the layer call
        train_op = nw.minimize_with_updates(_opt(), loss, nw.collect_updates(model, x))
        build_call = nw.minimize_with_updates(_opt(), loss, nw.collect_updates(model, model.inputs))
        assert nw.check_wiring(train_op, [model]) == []
        problems = _problems(build_call, [model], "call 'model/bn' normalizes with batch "
                             "statistics but its moving_mean is never updated",
                             f"updated by call 'bn', but the loss uses call model/bn: it depends "
                             f"on placeholder {inp.op.name}")
        assert len(problems) == 4
    feeds = [{x: X, y: Y} for X, Y in zip(_data(4), _targets())]
    _train(g, train_op, [Track(model.get_layer("bn"), [_bn_input(g, "model/bn")])], feeds)


# ----------------------------------------------------------- nothing to collect (finding 7)
def test_collect_before_the_training_call_is_an_error():
    g = tf.Graph()
    with g.as_default():
        model = _mlp_bn()
        x = _ph(4, name="x")
        with pytest.raises(ValueError, match="has not been called on these inputs \\(x:0\\).*"
                           "call model\\(inputs, training=True\\) first"):
            nw.collect_updates(model, x)
        model(x, training=False)
        with pytest.raises(ValueError, match="in inference mode.*training_call"):
            nw.collect_updates(model, x)
        model(x, training=True)
        assert len(nw.collect_updates(model, x)) == 2


def test_training_call_takes_an_explicit_training_argument():
    g = tf.Graph()
    with g.as_default():
        model = _mlp_bn()
        x = _ph(4)
        _, updates = nw.training_call(model, x, training=True)
        assert len(updates) == 2
        n_ops = len(g.get_operations())
        _, none = nw.training_call(model, x, training=False)
        assert none == [] and not any(
            op.type.startswith("Assign") for op in g.get_operations()[n_ops:])
        flag = tf.compat.v1.placeholder(tf.bool, (), name="is_training")
        _, conditional = nw.training_call(model, x, training=flag)
        assert len(conditional) == 2
        with pytest.raises(ValueError, match="training=True, False or a boolean tensor, got None"):
            nw.training_call(model, x, training=None)
        # A custom model that never passes `training` on to its BN layer: nothing to collect.
        bn = keras.layers.BatchNormalization(name="ignored")

        class Inference(keras.Model):
            def __init__(self):
                super().__init__(name="inference_only")
                self.bn = bn

            def call(self, inputs, training=None):
                return self.bn(inputs, training=False)

        with pytest.raises(ValueError, match="inference mode"):
            nw.training_call(Inference(), x)


# ----------------------------------------------------------------------- the seeds' code
def _seed1_literal(fixed: bool):
    """The first seed's code (the Korean post) as written, TF 1.13 names mapped to
    tf.compat.v1: its ``net`` used before assignment read as ``v_input``, ``Relu()`` as
    ``ReLU()``, and ``model._make_predict_function()`` dropped (tf-keras 2.21 has none). The
    naive version calls the model without ``training=`` and minimizes; the fix is the author's:
    keep the ``model.updates`` whose name contains "model" and build ``minimize`` under
    ``tf.control_dependencies`` on them."""
    inputshape, outputshape = 6, 2
    g = tf.Graph()
    with g.as_default():
        v_input = keras.Input(batch_shape=(None, inputshape))
        net = keras.layers.BatchNormalization()(v_input)
        net = keras.layers.Dense(512)(net)
        net = keras.layers.ReLU()(net)
        net = keras.layers.BatchNormalization()(net)
        output = keras.layers.Dense(outputshape)(net)
        model = keras.Model(inputs=v_input, outputs=output)
        placeholder_input = tf.compat.v1.placeholder(tf.float32, shape=(None, inputshape))
        placeholder_output = tf.compat.v1.placeholder(tf.float32, shape=(None, outputshape))
        value_output = model([placeholder_input])
        loss = tf.reduce_mean(tf.square(placeholder_output - value_output))
        optimizer = tf.compat.v1.train.RMSPropOptimizer(0.001)
        if fixed:  # the author's fix: the model call's updates, as control dependencies
            update_ops = []
            for update_op in model.updates:
                if "model" in update_op.name:
                    update_ops.append(update_op)
            with tf.control_dependencies(update_ops):
                minimize = optimizer.minimize(loss)
        else:
            minimize = optimizer.minimize(loss)
    return g, model, placeholder_input, placeholder_output, minimize


@pytest.mark.parametrize("fixed", [False, True], ids=["naive", "fixed"])
def test_seed1_literal_code(fixed):
    g, model, x, y, minimize = _seed1_literal(fixed)
    problems = nw.check_wiring(minimize, [model])
    if not fixed:
        assert len(problems) == 4
        assert all("whenever 'keras_learning_phase:0' is fed True" in p for p in problems)
        return
    assert problems == []
    # The updates are the learning phase's conditional ones: Keras fit feeds it 1, so do we.
    phase = g.get_tensor_by_name("keras_learning_phase:0")
    bns = nw.bn_layers(model)
    tracks = [Track(bns[0], [_bn_input(g, f"model/{bns[0].name}")]),
              Track(bns[1], [_bn_input(g, f"model/{bns[1].name}")])]
    feeds = [{x: X, y: Y, phase: True} for X, Y in zip(_data(6), _targets(2))]
    _train(g, minimize, tracks, feeds)


def _seed2_literal(fixed: bool):
    """The second seed's model (the translated Q&A) as written, ``tf.keras`` as tf-keras;
    ``fixed`` adds the answer's per-op ``tf.add_to_collection(UPDATE_OPS, bn.updates[i])``. Its
    step fetches the collection and the output (the seed runs them in two calls; the check looks
    at both fetches together)."""
    g = tf.Graph()
    with g.as_default():
        input_shapes = [(3,)]
        hidden_layer_sizes = [16, 16]
        inputs = [keras.layers.Input(shape=input_shape) for input_shape in input_shapes]
        concatenated = keras.layers.Lambda(lambda x: tf.concat(x, axis=-1))(inputs)
        out = concatenated
        bns = []
        for units in hidden_layer_sizes:
            hidden = keras.layers.Dense(units, activation=None)(out)
            bn = keras.layers.BatchNormalization()
            batch_normed = bn(hidden, training=True)
            bns.append(bn)
            out = keras.layers.Activation("relu")(batch_normed)
        out = keras.layers.Dense(units=1, activation="linear")(out)
        model = keras.Model(inputs, out)
        if fixed:
            for bn in bns:
                tf.compat.v1.add_to_collection(UPDATE_OPS, bn.updates[0])
                tf.compat.v1.add_to_collection(UPDATE_OPS, bn.updates[1])
        update_ops = tf.compat.v1.get_collection(UPDATE_OPS)
    return g, model, inputs[0], out, update_ops, bns


@pytest.mark.parametrize("fixed", [False, True], ids=["naive", "fixed"])
def test_seed2_literal_code(fixed):
    g, model, x, out, update_ops, bns = _seed2_literal(fixed)
    problems = nw.check_wiring(update_ops + [out], [model])
    if not fixed:
        assert update_ops == [] and len(problems) == 4
        assert all("never updated" in p for p in problems)
        return
    assert problems == [] and len(update_ops) == 4
    data = np.random.RandomState(0).rand(100, 3)
    scopes = [op.name.split("/")[0] for op in update_ops[::2]]
    tracks = [Track(bn, [_bn_input(g, scope)]) for bn, scope in zip(bns, scopes)]
    with g.as_default():
        step = tf.group(*update_ops, out)
    _train(g, step, tracks, [{x: data}] * 10)
