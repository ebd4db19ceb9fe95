"""BN moving statistics in hand-built Session loops: the two seeds' claims, pinned with numbers.

Every expected value is computed here with numpy (the Keras EMA
``moving <- moving * momentum + batch_stat * (1 - momentum)``, biased batch variance) from the
batches fed and the weights read back from the session. Every graph is built inside its own
``tf.Graph().as_default()`` and run in a ``tf.compat.v1.Session(graph=g)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnrl.networks as nw
from bnrl.networks import keras, tf
from bnrl.networks.backend import KerasVersionError, require_keras2

UPDATE_OPS = tf.compat.v1.GraphKeys.UPDATE_OPS
MOMENTUM = 0.99  # Keras default, used by every BN layer below
EPS = 1e-3  # Keras default epsilon
ATOL = 1e-5
REPO = Path(__file__).resolve().parents[1]


def _bias(dense):
    """A Dense layer's bias; zeros for one followed by BN, which builders make without one."""
    return dense.bias if dense.use_bias else tf.zeros([dense.units])

def _placeholder(dim: int, name: str | None = None):
    return tf.compat.v1.placeholder(tf.float32, (None, dim), name=name)


def _ema(moving: np.ndarray, batch_stat: np.ndarray, momentum: float = MOMENTUM) -> np.ndarray:
    return moving * momentum + batch_stat * (1.0 - momentum)


def _bn_train_np(h: np.ndarray, gamma, beta, eps: float = EPS) -> np.ndarray:
    """Training-mode BN: normalize with the batch's own (biased) statistics."""
    return (h - h.mean(0)) / np.sqrt(h.var(0) + eps) * gamma + beta


def _bn_infer_np(h: np.ndarray, mean, var, gamma, beta, eps: float = EPS) -> np.ndarray:
    return (h - mean) / np.sqrt(var + eps) * gamma + beta


def _relu(h: np.ndarray) -> np.ndarray:
    return np.maximum(h, 0.0)


# ----------------------------------------------------------------------------------------------
# Seed 1 (Korean post): Input -> BN -> Dense(512) -> ReLU -> BN -> Dense, custom MSE + RMSProp.
# ----------------------------------------------------------------------------------------------
IN_DIM, OUT_DIM, UNITS = 6, 2, 512
N_STEPS = 5


def _seed1_model() -> keras.Model:
    v_input = keras.Input(batch_shape=(None, IN_DIM))
    net = keras.layers.BatchNormalization(name="bn_in")(v_input)
    net = keras.layers.Dense(UNITS, name="fc")(net)
    net = keras.layers.ReLU(name="relu")(net)
    net = keras.layers.BatchNormalization(name="bn_hidden")(net)
    output = keras.layers.Dense(OUT_DIM, name="out")(net)
    return keras.Model(inputs=v_input, outputs=output, name="model")


def _seed1_batches(n: int = N_STEPS, seed: int = 1):
    """Batches far from standardized, so that the EMA moves visibly away from 0 / 1."""
    rng = np.random.RandomState(seed)
    scale = np.array([0.5, 1.0, 2.0, 3.0, 0.2, 1.5])
    shift = np.array([1.0, -2.0, 0.5, 3.0, 0.0, -1.0])
    return [
        (rng.randn(32, IN_DIM) * scale + shift, rng.randn(32, OUT_DIM)) for _ in range(n)
    ]


def _seed1_graph(wiring: str):
    """The seed's graph; ``wiring`` picks how (or whether) the BN updates join the train op."""
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(1)
        model = _seed1_model()
        placeholder_input = _placeholder(IN_DIM, "x")
        placeholder_output = _placeholder(OUT_DIM, "y")
        if wiring == "training_call":
            value_output, updates = nw.training_call(model, placeholder_input)
        else:
            value_output = model(placeholder_input, training=True)
            updates = None
        loss = tf.reduce_mean(tf.square(placeholder_output - value_output))
        # A learning rate large enough that pre-step and post-step activations give visibly
        # different batch statistics (checked in the test), so the test can tell them apart.
        optimizer = tf.compat.v1.train.RMSPropOptimizer(0.05)
        if wiring == "naive":
            train_op = optimizer.minimize(loss)
        elif wiring == "minimize_with_updates":
            train_op = nw.minimize_with_updates(
                optimizer, loss, nw.collect_updates(model, placeholder_input)
            )
        elif wiring == "with_updates":
            train_op = nw.with_updates(
                optimizer.minimize(loss), nw.collect_updates(model, placeholder_input)
            )
        elif wiring == "training_call":
            train_op = nw.minimize_with_updates(optimizer, loss, updates)
        else:  # pragma: no cover - test bug
            raise AssertionError(wiring)
        n_call_updates = len(model.get_updates_for(placeholder_input))
        # The second BN's input in *this* training call (same forward pass as the train step).
        call_scope = value_output.op.name.split("/")[0]
        hidden_in = g.get_tensor_by_name(f"{call_scope}/relu/Relu:0")
        # The same activations computed by a helper model (run separately, before the step).
        helper = keras.Model(model.inputs, model.get_layer("bn_hidden").input)
        helper_out = helper(placeholder_input, training=True)
        init = tf.compat.v1.global_variables_initializer()
    return dict(
        graph=g, model=model, x=placeholder_input, y=placeholder_output, train_op=train_op,
        hidden_in=hidden_in, helper_out=helper_out, init=init, value_output=value_output,
        loss=loss, n_call_updates=n_call_updates,
    )


def _moving(sess, layer):
    return sess.run([layer.moving_mean, layer.moving_variance])


def test_seed1_naive_minimize_leaves_moving_stats_at_init():
    """1a: TensorFlow's behaviour: optimizer.minimize(loss) never touches the moving stats."""
    t = _seed1_graph("naive")
    g, model = t["graph"], t["model"]
    with g.as_default():
        assert tf.compat.v1.get_collection(UPDATE_OPS) == []
        # The update ops exist (bound to the call) but nothing the optimizer sees runs them.
        assert t["n_call_updates"] == 4
    kernel = model.get_layer("fc").kernel
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(t["init"])
        k0 = sess.run(kernel)
        for X, Y in _seed1_batches():
            sess.run(t["train_op"], {t["x"]: X, t["y"]: Y})
        assert not np.allclose(sess.run(kernel), k0), "the optimizer did train"
        for name, width in (("bn_in", IN_DIM), ("bn_hidden", UNITS)):
            mean, var = _moving(sess, model.get_layer(name))
            np.testing.assert_array_equal(mean, np.zeros(width, np.float32))
            np.testing.assert_array_equal(var, np.ones(width, np.float32))


@pytest.mark.parametrize("wiring", ["minimize_with_updates", "with_updates", "training_call"])
def test_seed1_fix_follows_numpy_ema_every_step(wiring):
    """1b/1c: with bnrl's wiring each BN layer's moving stats are the EMA of the fed batches."""
    t = _seed1_graph(wiring)
    g, model = t["graph"], t["model"]
    bn_in, bn_hidden = model.get_layer("bn_in"), model.get_layer("bn_hidden")
    with g.as_default():
        assert tf.compat.v1.get_collection(UPDATE_OPS) == []
    mean_in, var_in = np.zeros(IN_DIM), np.ones(IN_DIM)
    mean_h, var_h = np.zeros(UNITS), np.ones(UNITS)
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(t["init"])
        for X, Y in _seed1_batches():
            feed = {t["x"]: X, t["y"]: Y}
            pre_step = sess.run(t["helper_out"], feed)  # pre-step weights, no update run
            _, H = sess.run([t["train_op"], t["hidden_in"]], feed)
            post_step = sess.run(t["helper_out"], feed)
            # The fetched BN input is the forward pass of that sess.run: pre-step weights.
            np.testing.assert_allclose(H, pre_step, rtol=0, atol=1e-6)
            # ... and the step changed the weights enough that post-step statistics would
            # give a different EMA (so the comparison below discriminates).
            assert np.abs((post_step.mean(0) - H.mean(0)) * (1 - MOMENTUM)).max() > 5 * ATOL

            mean_in, var_in = _ema(mean_in, X.mean(0)), _ema(var_in, X.var(0))
            mean_h, var_h = _ema(mean_h, H.mean(0)), _ema(var_h, H.var(0))
            got = _moving(sess, bn_in) + _moving(sess, bn_hidden)
            for value, expected in zip(got, (mean_in, var_in, mean_h, var_h)):
                np.testing.assert_allclose(value, expected, rtol=0, atol=ATOL)
    # The stats really moved away from their initial values.
    assert np.abs(mean_in).max() > 0.1 and np.abs(var_in - 1).max() > 0.05
    assert np.abs(var_h - 1).max() > 0.01


# ----------------------------------------------------------------------------------------------
# Seed 2 (Chinese Q&A): Dense(16) -> BN(training=True) -> ReLU, twice, then Dense(1).
# ----------------------------------------------------------------------------------------------
SEED2_DATA = np.random.RandomState(0).rand(100, 3)
N_SEED2_STEPS = 10
DIAG_KEYS = ("bn_Q_gamma", "bn_Q_beta", "bn_Q_moving_mean", "bn_Q_moving_variance")


def _seed2_model() -> keras.Model:
    inputs = [keras.Input(shape=(3,))]
    concatenated = keras.layers.Lambda(lambda x: tf.concat(x, axis=-1))(inputs)
    out = concatenated
    for units in (16, 16):
        hidden = keras.layers.Dense(units, activation=None)(out)
        batch_normed = keras.layers.BatchNormalization()(hidden, training=True)
        out = keras.layers.Activation("relu")(batch_normed)
    out = keras.layers.Dense(units=1, activation="linear")(out)
    return keras.Model(inputs, out)


def _seed2_graph(feed_on: str):
    """``feed_on``: "keras_input" feeds the model's own Input (the seed), "placeholder" calls
    the model on a new placeholder."""
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(2)
        model = _seed2_model()
        if feed_on == "keras_input":
            x, out = model.inputs[0], model.outputs[0]
        else:
            x = _placeholder(3, "x")
            out = model(x)  # BN layers were built with training=True: training mode anyway
        diag = nw.bn_diagnostics([model], "Q")
        init = tf.compat.v1.global_variables_initializer()
    return g, model, x, out, diag, init


def _seed2_numpy_stats(sess, model, X):
    """Per BN layer, the (biased) batch mean and variance of its input, from session weights."""
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    bns = nw.bn_layers(model)
    assert len(dense) == 3 and len(bns) == 2
    stats, h_in = [], X
    for d, bn in zip(dense[:2], bns):
        kernel, bias, gamma, beta = sess.run([d.kernel, d.bias, bn.gamma, bn.beta])
        h = h_in @ kernel + bias
        stats.append((h.mean(0), h.var(0)))
        h_in = _relu(_bn_train_np(h, gamma, beta))
    return stats


def test_seed2_diagnostics_start_values():
    """2a: gamma 4.0 (L2 norm of 16 ones), beta 0, moving_mean 0, moving_variance 4.0."""
    g, model, x, out, diag, init = _seed2_graph("keras_input")
    assert set(DIAG_KEYS) <= set(diag)
    assert {f"bn/Q/{layer.name}/moving_mean" for layer in nw.bn_layers(model)} <= set(diag)
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        values = sess.run({k: diag[k] for k in DIAG_KEYS})
    expected = {"bn_Q_gamma": np.sqrt(16), "bn_Q_beta": 0.0, "bn_Q_moving_mean": 0.0,
                "bn_Q_moving_variance": np.sqrt(16)}
    for key in DIAG_KEYS:
        assert values[key] == pytest.approx(expected[key], abs=1e-6), key


def test_seed2_without_wiring_diagnostics_never_move():
    """2b: the seed's printed output: UPDATE_OPS empty, 10 forward passes, nothing moves."""
    g, model, x, out, diag, init = _seed2_graph("keras_input")
    with g.as_default():
        update_ops = tf.compat.v1.get_collection(UPDATE_OPS)
    assert update_ops == []
    # The forward pass does use batch statistics: the check flags both layers.
    with g.as_default():
        problems = nw.check_wiring(out, [model])
    assert len(problems) == 4 and all("never updated" in p for p in problems)
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        for _ in range(N_SEED2_STEPS):
            sess.run(update_ops, {x: SEED2_DATA})
            sess.run(out, {x: SEED2_DATA})
            values = sess.run({k: diag[k] for k in DIAG_KEYS})
            assert values == {"bn_Q_gamma": 4.0, "bn_Q_beta": 0.0, "bn_Q_moving_mean": 0.0,
                              "bn_Q_moving_variance": 4.0}


@pytest.mark.parametrize("feed_on", ["keras_input", "placeholder"])
def test_seed2_collected_updates_follow_numpy_ema(feed_on):
    """2c: with collect_updates run each step the diagnostics follow the numpy EMA."""
    g, model, x, out, diag, init = _seed2_graph(feed_on)
    with g.as_default():
        updates = nw.collect_updates(model, x)
        assert tf.compat.v1.get_collection(UPDATE_OPS) == []
    assert len(updates) == 4
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        stats = _seed2_numpy_stats(sess, model, SEED2_DATA)  # no optimizer: weights fixed
        moving = [(np.zeros(16), np.ones(16)) for _ in stats]
        history = []
        for _ in range(N_SEED2_STEPS):
            sess.run(updates, {x: SEED2_DATA})
            sess.run(out, {x: SEED2_DATA})
            values = sess.run({k: diag[k] for k in DIAG_KEYS})
            moving = [(_ema(m, bm), _ema(v, bv)) for (m, v), (bm, bv) in zip(moving, stats)]
            expected_mean = np.mean([np.linalg.norm(m) for m, _ in moving])
            expected_var = np.mean([np.linalg.norm(v) for _, v in moving])
            assert values["bn_Q_gamma"] == pytest.approx(4.0, abs=1e-6)
            assert values["bn_Q_beta"] == pytest.approx(0.0, abs=1e-6)
            assert values["bn_Q_moving_mean"] == pytest.approx(expected_mean, abs=ATOL)
            assert values["bn_Q_moving_variance"] == pytest.approx(expected_var, abs=ATOL)
            history.append((values["bn_Q_moving_mean"], values["bn_Q_moving_variance"]))
    means, variances = np.array(history).T
    # The seed's expected shape: moving_mean rising from 0, moving_variance falling from 4.0.
    assert means[0] > 0 and np.all(np.diff(means) > 0)
    assert variances[0] < 4.0 and np.all(np.diff(variances) < 0)


@pytest.mark.filterwarnings("ignore:`tf.layers:UserWarning")
def test_seed2_tf_layers_batch_normalization_and_nested_collection():
    """2d: tf.compat.v1.layers BN fills UPDATE_OPS; the seed's nested add_to_collection is
    flattened by collection_updates, and running it updates both layers' moving stats."""
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(3)
        x = _placeholder(3, "x")
        hidden = tf.compat.v1.layers.dense(x, 16, name="hidden")
        tf.compat.v1.layers.batch_normalization(hidden, training=True, name="tf_bn")
        raw = tf.compat.v1.get_collection(UPDATE_OPS)
        assert len(raw) == 2 and all(isinstance(op, tf.Operation) for op in raw)
        assert nw.collection_updates(g) == raw

        keras_bn = keras.layers.BatchNormalization(name="keras_bn")
        keras_bn(hidden, training=True)
        # The seed's suggestion: add the *list* bn.updates as one collection item.
        tf.compat.v1.add_to_collection(UPDATE_OPS, keras_bn.updates)
        nested = tf.compat.v1.get_collection(UPDATE_OPS)
        assert any(isinstance(item, list) for item in nested), "the seed's [[something]]"
        flat = nw.collection_updates(g)
        assert all(isinstance(op, tf.Operation) for op in flat)
        assert len(flat) == 4 == len(set(flat))
        assert set(flat) == set(raw) | {op for op in keras_bn.updates}
        tf_vars = {v.name: v for v in tf.compat.v1.global_variables()}
        tf_moving = [tf_vars["tf_bn/moving_mean:0"], tf_vars["tf_bn/moving_variance:0"]]
        kernel, bias = tf_vars["hidden/kernel:0"], tf_vars["hidden/bias:0"]
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        W, b = sess.run([kernel, bias])
        H = SEED2_DATA @ W + b
        mean, var = np.zeros(16), np.ones(16)
        for _ in range(3):
            sess.run(flat, {x: SEED2_DATA})
            mean, var = _ema(mean, H.mean(0)), _ema(var, H.var(0))
            for moving in (tf_moving, [keras_bn.moving_mean, keras_bn.moving_variance]):
                got_mean, got_var = sess.run(moving)
                np.testing.assert_allclose(got_mean, mean, rtol=0, atol=ATOL)
                np.testing.assert_allclose(got_var, var, rtol=0, atol=ATOL)
    assert np.abs(mean).max() > 0.01


def test_seed_wiring_check_flags_naive_and_accepts_fixed():
    """2e: check_wiring on the seed-1 graph: naive op flagged per layer/statistic, fix clean."""
    naive = _seed1_graph("naive")
    model = naive["model"]
    with naive["graph"].as_default():
        problems = nw.check_wiring(naive["train_op"], [model])
        assert len(problems) == 4
        for layer in ("bn_in", "bn_hidden"):
            for stat in ("moving_mean", "moving_variance"):
                assert any(f"'{layer}'" in p and stat in p and "never updated" in p
                           for p in problems)
        with pytest.raises(nw.WiringError, match="never updated"):
            nw.check_wiring(naive["train_op"], [model], raise_error=True)

    for wiring in ("minimize_with_updates", "training_call"):
        fixed = _seed1_graph(wiring)
        with fixed["graph"].as_default():
            assert nw.check_wiring(fixed["train_op"], [fixed["model"]]) == []
            assert nw.check_wiring(fixed["train_op"], [fixed["model"]], raise_error=True) == []


# ----------------------------------------------------------------------------------------------
# 3. A critic called twice in training mode, on (s, a) and (s', a').
# ----------------------------------------------------------------------------------------------
OBS, ACT = 3, 2


def _critic_batches(n: int, seed: int = 4):
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        s = rng.randn(24, OBS) * np.array([1.0, 2.0, 0.5]) + np.array([1.0, -1.0, 2.0])
        a = rng.uniform(-1, 1, (24, ACT))
        # The second call sees very different data, so a leaked update would show.
        out.append((s, a, s * 3.0 + 5.0, -a))
    return out


def test_critic_training_call_updates_each_statistic_once():
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(5)
        model = nw.critic(OBS, ACT, (8, 8), nw.Norm("batch", input_norm=True))
        s, a, s2, a2 = _placeholder(OBS), _placeholder(ACT), _placeholder(OBS), _placeholder(ACT)
        q, updates = nw.training_call(model, [s, a])
        model([s2, a2], training=True)  # the (s', a') call, also in training mode
        step = nw.with_updates(tf.no_op(), updates)
        assert len(updates) == 6  # 3 BN layers x (mean, variance)
        assert nw.check_wiring(step, [model]) == []
        # Running the updates of both calls is what check_wiring must catch.
        both = tf.group(*model.get_updates_for([s, a]), *model.get_updates_for([s2, a2]))
        problems = nw.check_wiring(both, [model])
        assert len(problems) == 6 and all("updated 2 times" in p for p in problems)
        with pytest.raises(nw.WiringError, match="updated 2 times"):
            nw.check_wiring(both, [model], raise_error=True)
        layers = [model.get_layer(n) for n in ("q0_bn_in", "q0_bn0", "q0_bn1")]
        dense = [model.get_layer(n) for n in ("q0_dense0", "q0_dense1")]
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        params = sess.run([[d.kernel, _bias(d)] for d in dense]
                          + [[bn.gamma, bn.beta] for bn in layers])
        (k0, b0), (k1, b1), (g_in, be_in), (g0, be0), (g1, be1) = params
        moving = [(np.zeros(w), np.ones(w)) for w in (OBS, 8, 8)]
        for S, A, S2, A2 in _critic_batches(4):
            sess.run(step, {s: S, a: A, s2: S2, a2: A2})
            # numpy forward of the (s, a) call in training mode (weights fixed: no optimizer)
            h0 = np.concatenate([_bn_train_np(S, g_in, be_in), A], axis=1) @ k0 + b0
            h1 = _relu(_bn_train_np(h0, g0, be0)) @ k1 + b1
            moving = [(_ema(m, x.mean(0)), _ema(v, x.var(0)))
                      for (m, v), x in zip(moving, (S, h0, h1))]
            for bn, (m, v) in zip(layers, moving):
                got_m, got_v = _moving(sess, bn)
                np.testing.assert_allclose(got_m, m, rtol=0, atol=ATOL, err_msg=bn.name)
                np.testing.assert_allclose(got_v, v, rtol=0, atol=ATOL, err_msg=bn.name)


def test_critic_collect_updates_refuses_ambiguous_calls():
    g = tf.Graph()
    with g.as_default():
        model = nw.critic(OBS, ACT, (8, 8), nw.Norm("batch", input_norm=True))
        s, a, a2 = _placeholder(OBS), _placeholder(ACT), _placeholder(ACT)
        model([s, a], training=True)
        model([s, a2], training=True)  # shares s: q0_bn_in's two updates both hang off s
        with pytest.raises(ValueError, match="more than once"):
            nw.collect_updates(model, [s, a])
        # training_call stays exact even after another training call on the shared s.
        n_ops = len(g.get_operations())
        _, updates = nw.training_call(model, [s, a])
        created = set(g.get_operations()[n_ops:])
        assert len(updates) == 6 and set(updates) <= created
        assert nw.check_wiring(nw.with_updates(tf.no_op(), updates), [model]) == []

    g = tf.Graph()
    with g.as_default():
        model = nw.critic(OBS, ACT, (8, 8), nw.Norm("batch", input_norm=True))
        s, a, a2 = _placeholder(OBS), _placeholder(ACT), _placeholder(ACT)
        model([s, a], training=True)
        n_ops = len(g.get_operations())
        model([s, a2], training=False)  # e.g. the actor loss: inference mode, no updates
        inference_ops = set(g.get_operations()[n_ops:])
        updates = nw.collect_updates(model, [s, a])
        assert len(updates) == 6 and not set(updates) & inference_ops
        step = nw.with_updates(tf.no_op(), updates)
        assert nw.check_wiring(step, [model]) == []


# ----------------------------------------------------------------------------------------------
# 4. Inference mode uses the moving statistics and creates no updates.
# ----------------------------------------------------------------------------------------------
def test_inference_call_uses_moving_stats_and_changes_nothing():
    t = _seed1_graph("training_call")
    g, model = t["graph"], t["model"]
    with g.as_default():
        x_inf = _placeholder(IN_DIM, "x_inf")
        n_ops = len(g.get_operations())
        out_inf = model(x_inf, training=False)
        created = set(g.get_operations()[n_ops:])
        assert model.get_updates_for(x_inf) == []
        # Nothing to collect from an inference call: an error saying what to do (issue 10).
        with pytest.raises(ValueError, match="inference mode.*training=True"):
            nw.collect_updates(model, x_inf)
        assert not any(op.type in ("AssignSubVariableOp", "AssignVariableOp") for op in created)
    bns = [model.get_layer("bn_in"), model.get_layer("bn_hidden")]
    fc, out = model.get_layer("fc"), model.get_layer("out")
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(t["init"])
        for X, Y in _seed1_batches(3):  # non-trivial moving stats, gamma and beta
            sess.run(t["train_op"], {t["x"]: X, t["y"]: Y})
        stats = [sess.run([bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta]) for bn in bns]
        assert np.abs(stats[0][0]).max() > 0.01 and np.abs(stats[1][1] - 1).max() > 0.01
        assert np.abs(stats[0][2] - 1).max() > 1e-3  # gamma trained too
        W1, b1, W2, b2 = sess.run([fc.kernel, fc.bias, out.kernel, out.bias])
        X = np.random.RandomState(6).randn(16, IN_DIM) * 2 + 1
        got = sess.run(out_inf, {x_inf: X})
        got_row = sess.run(out_inf, {x_inf: X[:1]})
        for _ in range(3):
            sess.run(out_inf, {x_inf: X})
        after = [sess.run([bn.moving_mean, bn.moving_variance]) for bn in bns]
    h = _relu(_bn_infer_np(X, *stats[0]) @ W1 + b1)
    expected = _bn_infer_np(h, *stats[1]) @ W2 + b2
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got_row, expected[:1], rtol=0, atol=ATOL)  # batch-independent
    for (m, v, _, _), (m_after, v_after) in zip(stats, after):
        np.testing.assert_array_equal(m_after, m)
        np.testing.assert_array_equal(v_after, v)


# ----------------------------------------------------------------------------------------------
# 5. bn_diagnostics
# ----------------------------------------------------------------------------------------------
def test_bn_diagnostics_after_train_op_reads_post_step_values():
    t = _seed1_graph("training_call")
    g, model = t["graph"], t["model"]
    with g.as_default():
        diag = nw.bn_diagnostics([model], "Q", after=t["train_op"])
        init = tf.compat.v1.global_variables_initializer()
    bns = nw.bn_layers(model)
    assert [bn.name for bn in bns] == ["bn_in", "bn_hidden"]
    X, Y = _seed1_batches(1)[0]
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        values = sess.run(diag, {t["x"]: X, t["y"]: Y})  # runs the train op once
        state = [sess.run([getattr(bn, n) for n in ("gamma", "beta", "moving_mean",
                                                    "moving_variance")]) for bn in bns]
    for bn, arrays in zip(bns, state):
        for name, arr in zip(("gamma", "beta", "moving_mean", "moving_variance"), arrays):
            assert values[f"bn/Q/{bn.name}/{name}"] == pytest.approx(np.linalg.norm(arr),
                                                                       rel=1e-6, abs=1e-6)
    for i, name in enumerate(("gamma", "beta", "moving_mean", "moving_variance")):
        expected = np.mean([np.linalg.norm(arrays[i]) for arrays in state])
        assert values[f"bn_Q_{name}"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # Post-step: the first layer's moving mean is one EMA step of X's mean from 0.
    assert values["bn/Q/bn_in/moving_mean"] == pytest.approx(
        np.linalg.norm(_ema(np.zeros(IN_DIM), X.mean(0))), abs=ATOL)
    assert values["bn_Q_moving_mean"] > 0.01  # pre-step it was 0.0


def test_bn_diagnostics_empty_without_bn():
    g = tf.Graph()
    with g.as_default():
        plain = nw.q_network(3, 2, (8,), nw.Norm("none"))
        layer_norm = nw.critic(3, 2, (8,), nw.Norm("layer", input_norm=True))
        assert nw.bn_diagnostics([plain], "Q") == {}
        assert nw.bn_diagnostics([plain, layer_norm], "pi") == {}
        bn = nw.q_network(3, 2, (8,), nw.Norm("batch"), name="bn_q")
        assert set(DIAG_KEYS) <= set(nw.bn_diagnostics([plain, bn], "Q"))


# ----------------------------------------------------------------------------------------------
# 6. Keras 3 guard and import order.
# ----------------------------------------------------------------------------------------------
def test_require_keras2_rejects_keras3_layer():
    import keras as keras3  # the installed Keras 3 package; tf_keras is unaffected by it

    assert keras3.__version__.startswith("3.")
    layer = keras3.layers.Dense(2)
    with pytest.raises(KerasVersionError, match="TF_USE_LEGACY_KERAS"):
        require_keras2(layer)
    with pytest.raises(KerasVersionError, match="TF_USE_LEGACY_KERAS"):
        nw.bn_layers(layer)
    # A Keras 2 object passes; anything else is a TypeError, not a Keras-version complaint.
    require_keras2(keras.layers.Dense(2))
    with pytest.raises(TypeError):
        require_keras2(object())


def test_require_keras2_rejects_any_keras_src_module():
    # Without relying on the keras 3 package: the guard keys on the class's module name.
    Fake = type("Dense", (), {"__module__": "keras.src.layers"})
    with pytest.raises(KerasVersionError, match="TF_USE_LEGACY_KERAS"):
        require_keras2(Fake(), "layer")


def test_importing_networks_after_tensorflow_gives_tf_keras():
    code = "\n".join([
        "import tensorflow as tf",
        "import numpy as np",
        "from bnrl import networks",
        "g = tf.Graph()",
        "with g.as_default():",
        "    x = tf.compat.v1.placeholder(tf.float32, (None, 3))",
        "    m = tf.keras.Sequential([tf.keras.layers.BatchNormalization(input_shape=(3,))])",
        "    y = m(x, training=True)",
        "    assert isinstance(m, networks.keras.Model)",
        "    ups = networks.collect_updates(m, x)",
        "    with tf.compat.v1.Session(graph=g) as s:",
        "        s.run(tf.compat.v1.global_variables_initializer())",
        "        s.run(ups, {x: np.full((4, 3), 2.0)})",
        "        mm = s.run(m.layers[0].moving_mean)",
        "print('KERAS', tf.keras.__name__, networks.keras.__version__)",
        "print('MEAN', float(mm[0]))",
    ])
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    name, version = lines["KERAS"].split()
    assert name.startswith("tf_keras") and version.startswith("2.")
    assert float(lines["MEAN"]) == pytest.approx(0.02, abs=1e-6)  # 0.99 * 0 + 0.01 * 2


# ----------------------------------------------------------------------------------------------
# Edge cases found while writing these tests.
# ----------------------------------------------------------------------------------------------
def test_check_wiring_flags_naive_batch_renorm():
    g = tf.Graph()
    with g.as_default():
        model = nw.q_network(3, 2, (8,), nw.Norm("batch_renorm"))
        x = _placeholder(3)
        loss = tf.reduce_mean(tf.square(model(x, training=True)))
        naive = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        assert len(nw.check_wiring(naive, [model])) == 2
        _, updates = nw.training_call(model, x)
        fixed = nw.minimize_with_updates(tf.compat.v1.train.GradientDescentOptimizer(0.1),
                                         tf.reduce_mean(tf.square(_)), updates)
        assert nw.check_wiring(fixed, [model]) == []


def test_tensor_training_flag_is_refused_clearly():
    # A tensor flag turns the updates into cond outputs that name no variable; bnrl refuses
    # them with a clear message instead of guessing.
    g = tf.Graph()
    with g.as_default():
        model = nw.q_network(3, 2, (8,), nw.Norm("batch"))
        x = _placeholder(3)
        flag = tf.compat.v1.placeholder_with_default(True, ())
        model(x, training=flag)
        with pytest.raises(ValueError, match="tensor `training` flag"):
            nw.collect_updates(model, x)


def test_check_wiring_outside_graph_context():
    g = tf.Graph()
    with g.as_default():
        model = nw.q_network(3, 2, (8,), nw.Norm("batch"))
        x = _placeholder(3)
        out = model(x, training=True)
    assert len(nw.check_wiring(out, [model])) == 2  # called after leaving the graph context
