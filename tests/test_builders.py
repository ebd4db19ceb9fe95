"""Network builders: shapes, where normalization goes, action placement, heads, training flag.

Expected numbers are computed with numpy from the weights read back from the session.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnrl.networks as nw
from bnrl.networks import keras, tf
from bnrl.networks.builders import CROSSQ_RENORM_CLIPPING, LOG_STD_MAX, LOG_STD_MIN

OBS, ACT, N_ACTIONS, BATCH = 5, 2, 4, 7
HIDDEN = (8, 6)
ATOL = 1e-5


def _bias(dense):
    """A Dense layer's bias; zeros for one followed by BN, which builders make without one."""
    return dense.bias if dense.use_bias else tf.zeros([dense.units])

def _placeholder(dim: int):
    return tf.compat.v1.placeholder(tf.float32, (None, dim))


def _run(g: tf.Graph, fetches, feed=None):
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        return sess.run(fetches, feed)


def _count(model, cls) -> int:
    return sum(isinstance(layer, cls) for layer in model.layers)


def _norm_names(model) -> list[str]:
    cls = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    return [layer.name for layer in model.layers if isinstance(layer, cls)]


def _batch(rng, dim: int, n: int = BATCH) -> np.ndarray:
    return rng.randn(n, dim) * 2.0 + 1.0


# ----------------------------------------------------------------------------------------------
# Output shapes
# ----------------------------------------------------------------------------------------------
BUILDERS = {
    "q_network": lambda norm: nw.q_network(OBS, N_ACTIONS, HIDDEN, norm),
    "q_network_dueling": lambda norm: nw.q_network(OBS, N_ACTIONS, HIDDEN, norm, dueling=True),
    "critic_a0_n1": lambda norm: nw.critic(OBS, ACT, HIDDEN, norm, action_at=0, n_critics=1),
    "critic_a0_n2": lambda norm: nw.critic(OBS, ACT, HIDDEN, norm, action_at=0, n_critics=2),
    "critic_a1_n1": lambda norm: nw.critic(OBS, ACT, HIDDEN, norm, action_at=1, n_critics=1),
    "critic_a1_n2": lambda norm: nw.critic(OBS, ACT, HIDDEN, norm, action_at=1, n_critics=2),
    "deterministic_actor": lambda norm: nw.deterministic_actor(OBS, ACT, HIDDEN, norm),
    "gaussian_actor": lambda norm: nw.gaussian_actor(OBS, ACT, HIDDEN, norm),
}
OUT_WIDTH = {
    "q_network": N_ACTIONS, "q_network_dueling": N_ACTIONS, "critic_a0_n1": 1, "critic_a0_n2": 2,
    "critic_a1_n1": 1, "critic_a1_n2": 2, "deterministic_actor": ACT, "gaussian_actor": 2 * ACT,
}
HEADS = {"critic_a0_n2": 2, "critic_a1_n2": 2}  # independent MLP bodies per model


def _inputs_for(builder: str, rng):
    """Placeholders and a feed for one call of the model."""
    s = _placeholder(OBS)
    feed = {s: _batch(rng, OBS)}
    if builder.startswith("critic"):
        a = _placeholder(ACT)
        feed[a] = rng.uniform(-1, 1, (BATCH, ACT))
        return [s, a], feed
    return s, feed


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_output_shapes(builder):
    rng = np.random.RandomState(0)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(0)
        model = BUILDERS[builder](nw.Norm("batch", input_norm=True))
        inputs, feed = _inputs_for(builder, rng)
        outs = [model(inputs, training=True), model(inputs, training=False)]
        for out in outs:
            assert out.shape.as_list() == [None, OUT_WIDTH[builder]]
        values = _run(g, outs, feed)
    for value in values:
        assert value.shape == (BATCH, OUT_WIDTH[builder]) and np.all(np.isfinite(value))
        if builder == "deterministic_actor":
            assert np.all(np.abs(value) <= 1.0)
        if builder == "gaussian_actor":
            log_std = value[:, ACT:]
            assert np.all(log_std >= LOG_STD_MIN) and np.all(log_std <= LOG_STD_MAX)


# ----------------------------------------------------------------------------------------------
# Where normalization goes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", nw.NORM_KINDS)
@pytest.mark.parametrize("input_norm", [False, True])
def test_norm_layers_present_as_asked(kind, input_norm):
    g = tf.Graph()
    with g.as_default():
        models = {b: build(nw.Norm(kind, input_norm=input_norm)) for b, build in BUILDERS.items()}
    for builder, model in models.items():
        heads = HEADS.get(builder, 1)
        expected = 0 if kind == "none" else heads * (len(HIDDEN) + int(input_norm))
        n_bn = _count(model, keras.layers.BatchNormalization)
        n_ln = _count(model, keras.layers.LayerNormalization)
        assert (n_bn, n_ln) == ((expected, 0) if kind in ("batch", "batch_renorm") else
                                (0, expected) if kind == "layer" else (0, 0)), builder
        assert len(nw.bn_layers(model)) == n_bn
        names = _norm_names(model)
        has_input_norm = any(name.endswith("_in") for name in names)
        assert has_input_norm == (input_norm and kind != "none"), builder
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.momentum == 0.99 and layer.epsilon == 1e-3
                if kind == "batch_renorm":
                    assert layer.renorm is True
                    assert layer.renorm_clipping == pytest.approx(
                        {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0})
                    assert layer.renorm_momentum == 0.99
                else:
                    assert layer.renorm is False


def test_input_norm_layer_sees_the_raw_state():
    g = tf.Graph()
    with g.as_default():
        actor = nw.deterministic_actor(OBS, ACT, HIDDEN, nw.Norm("batch", input_norm=True))
        critic = nw.critic(OBS, ACT, HIDDEN, nw.Norm("layer", input_norm=True), n_critics=2)
    assert actor.get_layer("pi_bn_in").input is actor.inputs[0]
    assert _norm_names(actor)[0] == "pi_bn_in"
    for k in range(2):
        assert critic.get_layer(f"q{k}_ln_in").input is critic.inputs[0]
    assert actor.get_layer("pi_dense0").input is actor.get_layer("pi_bn_in").output


def test_norm_settings_reach_the_layers():
    norm = nw.Norm("batch_renorm", momentum=0.9, epsilon=1e-5,
                   renorm_clipping={"rmax": 2.0, "rmin": 0.5, "dmax": 1.0})
    g = tf.Graph()
    with g.as_default():
        model = nw.q_network(OBS, N_ACTIONS, HIDDEN, norm)
        ln = nw.q_network(OBS, N_ACTIONS, HIDDEN, nw.Norm("layer", epsilon=1e-5), name="ln")
    for layer in nw.bn_layers(model):
        assert (layer.momentum, layer.epsilon, layer.renorm_momentum) == (0.9, 1e-5, 0.9)
        assert layer.renorm_clipping == {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}
    assert all(layer.epsilon == 1e-5 for layer in ln.layers
               if isinstance(layer, keras.layers.LayerNormalization))
    # The module default is CrossQ's clipping and is not shared between Norm instances.
    assert CROSSQ_RENORM_CLIPPING == {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}
    assert nw.Norm().renorm_clipping is not nw.Norm().renorm_clipping


@pytest.mark.parametrize("position", ["pre_activation", "post_activation"])
def test_norm_position(position):
    g = tf.Graph()
    with g.as_default():
        model = nw.q_network(OBS, N_ACTIONS, HIDDEN, nw.Norm("batch", position=position))
    for i in range(len(HIDDEN)):
        bn, act = model.get_layer(f"q_bn{i}"), model.get_layer(f"q_act{i}")
        dense = model.get_layer(f"q_dense{i}")
        if position == "pre_activation":  # Dense -> BN -> ReLU
            assert bn.input is dense.output and act.input is bn.output
        else:  # Dense -> ReLU -> BN
            assert act.input is dense.output and bn.input is act.output


@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_norm_after_action_false_normalizes_only_before_the_action(kind):
    tag = "bn" if kind == "batch" else "ln"
    g = tf.Graph()
    with g.as_default():
        ddpg = nw.critic(OBS, ACT, (8, 6, 4), nw.Norm(kind, input_norm=True), action_at=1,
                         norm_after_action=False, name="ddpg")
        at2 = nw.critic(OBS, ACT, (8, 6, 4), nw.Norm(kind), action_at=2,
                        norm_after_action=False, name="at2")
        at0 = nw.critic(OBS, ACT, (8, 6, 4), nw.Norm(kind), action_at=0,
                        norm_after_action=False, name="at0")
        everywhere = nw.critic(OBS, ACT, (8, 6, 4), nw.Norm(kind), action_at=1, name="all")
    # DDPG paper: BN on the state input and the layers before the action input only.
    assert _norm_names(ddpg) == [f"q0_{tag}_in", f"q0_{tag}0"]
    assert _norm_names(at2) == [f"q0_{tag}0", f"q0_{tag}1"]
    assert _norm_names(at0) == []
    assert _norm_names(everywhere) == [f"q0_{tag}0", f"q0_{tag}1", f"q0_{tag}2"]


# ----------------------------------------------------------------------------------------------
# Action placement
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_critics", [1, 2])
def test_action_placement(n_critics):
    g = tf.Graph()
    with g.as_default():
        at1 = nw.critic(OBS, ACT, HIDDEN, nw.Norm("batch"), action_at=1, n_critics=n_critics,
                        name="at1")
        at0 = nw.critic(OBS, ACT, HIDDEN, nw.Norm("batch"), action_at=0, n_critics=n_critics,
                        name="at0")
        at_end = nw.critic(OBS, ACT, HIDDEN, nw.Norm("none"), action_at=len(HIDDEN),
                           n_critics=n_critics, name="at_end")
        with pytest.raises(ValueError, match="action_at"):
            nw.critic(OBS, ACT, HIDDEN, action_at=len(HIDDEN) + 1)
        with pytest.raises(ValueError, match="action_at"):
            nw.critic(OBS, ACT, HIDDEN, action_at=-1)
    for k in range(n_critics):
        assert at1.get_layer(f"q{k}_dense0").kernel.shape.as_list() == [OBS, HIDDEN[0]]
        assert at1.get_layer(f"q{k}_dense1").kernel.shape.as_list() == [HIDDEN[0] + ACT,
                                                                        HIDDEN[1]]
        assert at0.get_layer(f"q{k}_dense0").kernel.shape.as_list() == [OBS + ACT, HIDDEN[0]]
        assert at0.get_layer(f"q{k}_dense1").kernel.shape.as_list() == [HIDDEN[0], HIDDEN[1]]
        assert at_end.get_layer(f"q{k}_dense0").kernel.shape.as_list() == [OBS, HIDDEN[0]]
        assert at_end.get_layer(f"q{k}_out").kernel.shape.as_list() == [HIDDEN[1] + ACT, 1]
        # The action really flows in there: the join layer's second input is the action Input.
        assert at1.get_layer(f"q{k}_join").input[1] is at1.inputs[1]


def test_critic_numpy_forward_with_action_at_second_layer():
    """Inference-mode output equals numpy: BN(moving 0/1) -> relu -> concat(action) -> ..."""
    rng = np.random.RandomState(1)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(1)
        model = nw.critic(OBS, ACT, HIDDEN, nw.Norm("batch"), action_at=1, n_critics=2)
        s, a = _placeholder(OBS), _placeholder(ACT)
        q = model([s, a], training=False)
        names = [f"q{k}_{n}" for k in range(2) for n in ("dense0", "dense1", "out")]
        weights = [[model.get_layer(n).kernel, _bias(model.get_layer(n))] for n in names]
        gammas = [[model.get_layer(f"q{k}_bn{i}").gamma, model.get_layer(f"q{k}_bn{i}").beta]
                  for k in range(2) for i in range(2)]
        S, A = _batch(rng, OBS), rng.uniform(-1, 1, (BATCH, ACT))
        got, w, gb = _run(g, [q, weights, gammas], {s: S, a: A})
    scale = 1.0 / np.sqrt(1.0 + 1e-3)  # moving mean 0, variance 1 at init
    for k in range(2):
        (k0, b0), (k1, b1), (ko, bo) = w[3 * k: 3 * k + 3]
        (g0, be0), (g1, be1) = gb[2 * k: 2 * k + 2]
        h = np.maximum((S @ k0 + b0) * scale * g0 + be0, 0)
        h = np.concatenate([h, A], axis=1)
        h = np.maximum((h @ k1 + b1) * scale * g1 + be1, 0)
        np.testing.assert_allclose(got[:, k], (h @ ko + bo)[:, 0], rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------------------------
# Dueling head
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["none", "batch"])
def test_dueling_head_centres_the_advantage(kind):
    rng = np.random.RandomState(2)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(2)
        model = nw.q_network(OBS, N_ACTIONS, HIDDEN, nw.Norm(kind), dueling=True)
        heads = keras.Model(model.inputs, [model.get_layer("q_value").output,
                                           model.get_layer("q_advantage").output])
        x = _placeholder(OBS)
        q = model(x, training=False)
        v, adv = heads(x, training=False)
        Q, V, A = _run(g, [q, v, adv], {x: _batch(rng, OBS)})
    assert V.shape == (BATCH, 1) and A.shape == (BATCH, N_ACTIONS)
    np.testing.assert_allclose(Q - Q.mean(1, keepdims=True), A - A.mean(1, keepdims=True),
                               rtol=0, atol=ATOL)
    np.testing.assert_allclose(Q.mean(1), V[:, 0], rtol=0, atol=ATOL)  # mean(Q - V) = 0
    np.testing.assert_allclose(Q, V + A - A.mean(1, keepdims=True), rtol=0, atol=ATOL)
    assert np.abs(A.mean(1)).max() > 1e-3  # the centring is not vacuous


def test_plain_q_network_has_no_dueling_layers():
    g = tf.Graph()
    with g.as_default():
        model = nw.q_network(OBS, N_ACTIONS, HIDDEN)
    names = {layer.name for layer in model.layers}
    assert "q_out" in names and not names & {"q_value", "q_advantage", "q_dueling"}


# ----------------------------------------------------------------------------------------------
# Squashed Gaussian
# ----------------------------------------------------------------------------------------------
def _squashed_log_prob_np(mean, log_std, noise):
    std = np.exp(log_std)
    pre = mean + std * noise
    gauss = -0.5 * ((pre - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    return np.tanh(pre), np.sum(gauss - np.log(1.0 - np.tanh(pre) ** 2), axis=-1)


def test_squashed_gaussian_log_prob_matches_numpy():
    rng = np.random.RandomState(3)
    n = 64
    mean = rng.randn(n, ACT) * 1.5
    log_std = rng.uniform(-2.0, 0.5, (n, ACT))
    noise = rng.randn(n, ACT)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(0)  # the in-graph noise below, drawn the same every run
        dist = _placeholder(2 * ACT)
        eps = _placeholder(ACT)
        action, log_prob, det = nw.squashed_gaussian(dist, eps)
        sampled = nw.squashed_gaussian(dist)  # in-graph noise
        assert log_prob.shape.as_list() == [None]
        got_action, got_lp, got_det, s_action, s_lp = _run(
            g, [action, log_prob, det, sampled[0], sampled[1]],
            {dist: np.concatenate([mean, log_std], 1), eps: noise})
    exp_action, exp_lp = _squashed_log_prob_np(mean, log_std, noise)
    np.testing.assert_allclose(got_action, exp_action, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_lp, exp_lp, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got_det, np.tanh(mean), rtol=0, atol=1e-6)
    assert np.all(np.abs(got_action) < 1.0)
    assert s_action.shape == (n, ACT) and s_lp.shape == (n,)
    # <= 1: TensorFlow's float32 tanh is exactly +-1 from |x| = 7.9 on, which a mean of 4 and a
    # std of 1.6 reach (an unseeded draw here once did); the log-probability stays finite there.
    assert np.all(np.abs(s_action) <= 1.0) and np.all(np.isfinite(s_lp))


def test_squashed_gaussian_on_actor_output():
    rng = np.random.RandomState(4)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(4)
        actor = nw.gaussian_actor(OBS, ACT, HIDDEN, nw.Norm("layer"))
        x, eps = _placeholder(OBS), _placeholder(ACT)
        dist = actor(x, training=False)
        action, log_prob, _ = nw.squashed_gaussian(dist, eps)
        noise = rng.randn(BATCH, ACT)
        D, got_a, got_lp = _run(g, [dist, action, log_prob], {x: _batch(rng, OBS), eps: noise})
    exp_a, exp_lp = _squashed_log_prob_np(D[:, :ACT], D[:, ACT:], noise)
    np.testing.assert_allclose(got_a, exp_a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_lp, exp_lp, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Norm validation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "group"}, "unknown normalization"),
    ({"kind": "Batch"}, "unknown normalization"),
    ({"kind": "batch", "position": "before"}, "unknown norm position"),
    ({"kind": "batch", "momentum": 1.0}, "momentum"),
    ({"kind": "batch", "momentum": -0.1}, "momentum"),
])
def test_norm_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nw.Norm(**kwargs)


def test_norm_accepts_every_kind():
    assert nw.NORM_KINDS == ("none", "batch", "batch_renorm", "layer")
    for kind in nw.NORM_KINDS:
        norm = nw.Norm(kind, momentum=0.0)
        assert norm.is_batch == (kind in ("batch", "batch_renorm"))
        assert norm.tag == ("ln" if kind == "layer" else "bn")


# ----------------------------------------------------------------------------------------------
# Training flag propagation
# ----------------------------------------------------------------------------------------------
def test_training_flag_reaches_every_bn_layer():
    """training=True normalizes with batch stats, training=False / omitted with moving stats."""
    rng = np.random.RandomState(5)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(5)
        model = nw.q_network(OBS, N_ACTIONS, HIDDEN, nw.Norm("batch", input_norm=True))
        x = _placeholder(OBS)
        q_train = model(x, training=True)
        q_infer = model(x, training=False)
        q_default = model(x)  # learning phase: inference in graph mode
        names = ["q_dense0", "q_dense1", "q_out"]
        weights = [[model.get_layer(n).kernel, _bias(model.get_layer(n))] for n in names]
        bns = [model.get_layer(n) for n in ("q_bn_in", "q_bn0", "q_bn1")]
        bn_params = [[bn.gamma, bn.beta] for bn in bns]
        X = _batch(rng, OBS, 16) * np.arange(1, OBS + 1)  # far from standardized
        got_train, got_infer, got_default, w, gb = _run(
            g, [q_train, q_infer, q_default, weights, bn_params], {x: X})
    (k0, b0), (k1, b1), (ko, bo) = w

    def forward(bn):
        h = bn(X, *gb[0])
        h = np.maximum(bn(h @ k0 + b0, *gb[1]), 0)
        h = np.maximum(bn(h @ k1 + b1, *gb[2]), 0)
        return h @ ko + bo

    def batch_bn(h, gamma, beta):
        return (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-3) * gamma + beta

    def moving_bn(h, gamma, beta):  # moving mean 0, variance 1 (never updated here)
        return h / np.sqrt(1.0 + 1e-3) * gamma + beta

    np.testing.assert_allclose(got_train, forward(batch_bn), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got_infer, forward(moving_bn), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got_default, got_infer, rtol=0, atol=ATOL)
    assert np.abs(got_train - got_infer).max() > 0.1


@pytest.mark.parametrize("builder", ["critic_a1_n2", "gaussian_actor", "q_network_dueling"])
def test_training_call_collects_every_bn_layer(builder):
    """model(x, training=True) puts every BN layer of every head in training mode."""
    rng = np.random.RandomState(6)
    g = tf.Graph()
    with g.as_default():
        model = BUILDERS[builder](nw.Norm("batch", input_norm=True))
        inputs, feed = _inputs_for(builder, rng)
        _, updates = nw.training_call(model, inputs)
        model(inputs, training=False)
        assert nw.collect_updates(model, inputs) == updates
        n_bn = len(nw.bn_layers(model))
        assert n_bn == HEADS.get(builder, 1) * (len(HIDDEN) + 1)
        assert len(updates) == 2 * n_bn
        written = {op.inputs[0].op for op in updates}
        variables = {v.handle.op for bn in nw.bn_layers(model)
                     for v in (bn.moving_mean, bn.moving_variance)}
        assert written == variables


def test_session_callable_is_made_on_its_first_call_and_kept(monkeypatch):
    """Making a TensorFlow callable prunes and optimizes the graph (0.3 s each in a 3-seed
    group), and an agent binds callables it may never call: ``session_callable`` makes its
    callable on the first call and reuses it, with the values ``sess.run`` gives."""
    g = tf.Graph()
    with g.as_default():
        x = _placeholder(2)
        doubled, total = 2.0 * x, tf.reduce_sum(x)
    made = []
    with tf.compat.v1.Session(graph=g) as sess:
        real = sess._make_callable_from_options
        monkeypatch.setattr(sess, "_make_callable_from_options",
                            lambda options: made.append(options) or real(options))
        call = nw.session_callable(sess, [doubled, total], [x])
        assert made == []
        for value in ([[1.0, 2.0]], [[3.0, -1.0], [0.5, 0.5]]):
            got = call(value)
            want = sess.run([doubled, total], {x: value})
            for got_value, want_value in zip(got, want, strict=True):
                np.testing.assert_array_equal(got_value, want_value)
        assert len(made) == 1
