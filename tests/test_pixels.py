"""Image observations through DQN: uint8 storage, conv encoders with BN, n-step and double-Q
targets, pinned with numbers computed here with numpy.

* observations of a uint8 or bool space are stored and fed as uint8 and turned into float32 by
  the Q-network's first layer (Atari /255, MinAtar 0/1); acting, replay, checkpoints and the numpy
  acting path (which runs MLPs on images and falls back to the graph for convolutions) agree;
* the conv encoders have the papers' shapes (Mnih et al. 2015; Young & Tian 2019);
* a conv BN layer (Keras' fused kernel) follows the EMA of its batch moments with the
  Bessel-corrected variance (n / (n - 1), n = rows * height * width; docs/keras-batchnorm.md,
  section 8), a dense BN layer after it the biased one; the joint pass moves them once per step
  from all 2B rows;
* the TD target (n-step returns, double Q, joint pass, training-mode bootstrap) and the loss equal
  a numpy forward pass of the MinAtar Q-network;
* ``check_wiring``, the seed-2 diagnostics and the target networks' ``target_bn`` policy cover
  the conv BN layers; Batch Renorm and LayerNorm train on conv layers too;
* n-step windows stop at episode ends and at the newest transition; K updates in one call equal
  K single ones with n-step returns; a replay file from before ``episode_end`` still loads.

The networks are MinAtar's (10x10 grids, one 16-filter convolution) with a batch of 8, so the
numpy forward pass stays a few lines and the file fast. Agents are built without XLA so that the
TD target tensor of the plain graph can be fetched.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from bnrl.agents import make_agent
from bnrl.agents.replay import ReplayBuffer
from bnrl.networks import (
    Norm,
    Observation,
    check_wiring,
    keras,
    pick_encoder,
    q_network,
    tf,
    training_call,
    with_updates,
)

EPS = 1e-3  # the agents' default bn_epsilon
BATCH, N_ACTIONS = 8, 3
GRID = gym.spaces.Box(0, 1, (10, 10, 4), np.bool_)  # MinAtar's observation space
FRAMES = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)  # an Atari frame stack
ACTIONS = gym.spaces.Discrete(N_ACTIONS)
SMALL = dict(batch_size=BATCH, learning_starts=0, buffer_size=200, xla=False)
SEPARATE = dict(critic_batch="separate", target="polyak", bootstrap_mode="inference")


def _grids(rng, n: int) -> np.ndarray:
    """MinAtar-like boolean grids; channel densities differ so that each channel's moments do."""
    return rng.random((n, 10, 10, 4)) < np.array([0.1, 0.3, 0.5, 0.7])


def _batch(rng, n: int = BATCH, discount: bool = False) -> dict:
    batch = dict(obs=_grids(rng, n).astype(np.uint8), action=rng.integers(0, N_ACTIONS, n),
                 reward=rng.normal(size=n).astype(np.float32),
                 next_obs=_grids(rng, n).astype(np.uint8),
                 done=(rng.random(n) < 0.3).astype(np.float32))
    if discount:
        batch["discount"] = (0.99 ** rng.integers(1, 4, n)).astype(np.float32)
    return batch


def _values(agent, tensors):
    return agent.sess.run(list(tensors))


# ----------------------------------------------------------------------------- 1. observations
def test_observation_of_a_space():
    assert Observation.from_space(GRID) == Observation((10, 10, 4), "uint8", 1.0)
    assert Observation.from_space(FRAMES) == Observation((84, 84, 4), "uint8", 1.0 / 255.0)
    vector = gym.spaces.Box(-1.0, 1.0, (5,), np.float64)
    assert Observation.from_space(vector) == Observation((5,), "float32", 1.0)


def test_replay_stores_images_as_uint8():
    buffer = ReplayBuffer(10, (10, 10, 4), (), np.int64, seed=0, obs_dtype=np.uint8)
    rng = np.random.default_rng(0)
    grids = _grids(rng, 3)
    for i in range(3):
        buffer.add(grids[i], i, 1.0, grids[(i + 1) % 3], False)
    assert buffer._obs.dtype == np.uint8 and buffer._obs.nbytes == 10 * 400
    batch = buffer.sample(5)
    assert batch["obs"].dtype == np.uint8 and batch["next_obs"].dtype == np.uint8
    stored = buffer.transitions()["obs"]
    np.testing.assert_array_equal(stored, grids.astype(np.uint8))


def test_uint8_frames_are_scaled_in_the_graph():
    """The same network on uint8 frames equals it on float32 frames / 255 (same weights)."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 84, 84, 4), dtype=np.uint8)
    with tf.Graph().as_default():
        as_uint8 = q_network(Observation.from_space(FRAMES), N_ACTIONS, seed=3)
        as_float = q_network(Observation((84, 84, 4)), N_ACTIONS, seed=3)
        x8 = tf.compat.v1.placeholder(tf.uint8, [None, 84, 84, 4])
        xf = tf.compat.v1.placeholder(tf.float32, [None, 84, 84, 4])
        out8, outf = as_uint8(x8, training=False), as_float(xf, training=False)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run([b.assign(a) for a, b in zip(as_uint8.weights, as_float.weights)])
            q8, qf = sess.run([out8, outf], {x8: frames,
                                            xf: frames.astype(np.float32) * np.float32(1 / 255)})
    np.testing.assert_array_equal(q8, qf)


@pytest.mark.parametrize("encoder,numpy_path", [("minatar", False), ("mlp", True)])
def test_acting_on_grids_graph_and_numpy_paths_agree(agents, encoder, numpy_path):
    """A convolutional Q-network has no numpy acting path (``Unsupported``: the graph acts); an
    MLP on images has one. Either way the action is the argmax of the graph's Q-values."""
    agent = agents.get("dqn", GRID, ACTIONS, dict(SMALL, encoder=encoder, hidden=(32,),
                                                  critic_norm="batch"))
    assert (agent._numpy_act is not None) == numpy_path
    rng = np.random.default_rng(2)
    agent.update(_batch(rng))  # BN statistics away from 0 / 1
    for grid in _grids(rng, 5):
        q = agent.sess.run(agent.act_output, {agent.obs_ph: grid[None].astype(np.uint8)})[0]
        actions = [agent.act(grid) for _ in range(3)]  # the numpy path acts from the second
        assert actions == [int(np.argmax(q))] * 3


def test_image_agent_checkpoint_round_trip(agents, tmp_path):
    agent = agents.get("dqn", GRID, ACTIONS, dict(SMALL, critic_norm="batch"))
    rng = np.random.default_rng(3)
    grids = _grids(rng, 12)
    for i in range(11):
        agent.observe(grids[i], i % N_ACTIONS, 1.0, grids[i + 1], i == 5, i == 8)
    agent.train_step()
    agent.save(str(tmp_path / "ckpt"))
    q = agent.sess.run(agent.act_output, {agent.obs_ph: grids[:3].astype(np.uint8)})
    other = make_agent("dqn", GRID, ACTIONS, dict(SMALL, critic_norm="batch"), seed=7)
    try:
        other.restore(str(tmp_path / "ckpt"))
        np.testing.assert_array_equal(
            other.sess.run(other.act_output, {other.obs_ph: grids[:3].astype(np.uint8)}), q)
        stored = other.buffer.transitions()
        assert stored["obs"].dtype == np.uint8
        np.testing.assert_array_equal(stored["obs"], grids[:11].astype(np.uint8))
        np.testing.assert_array_equal(stored["episode_end"], np.isin(np.arange(11), [5, 8]))
    finally:
        other.close()


def test_vector_only_agents_refuse_images():
    with pytest.raises(ValueError, match="takes vector observations only.*use dqn"):
        make_agent("sac", GRID, gym.spaces.Box(-1.0, 1.0, (2,), np.float32))


# ---------------------------------------------------------------------------------- 2. encoders
def _conv_shapes(model) -> list:
    return [tuple(layer.output_shape[1:]) for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)]


def test_encoders_have_the_papers_shapes():
    with tf.Graph().as_default():
        nature = q_network(Observation.from_space(FRAMES), 6)
        minatar = q_network(Observation.from_space(GRID), N_ACTIONS)
        flat = q_network(Observation.from_space(GRID), N_ACTIONS, hidden=(32,), encoder="mlp")
    # Mnih et al. 2015: 32 8x8/4, 64 4x4/2, 64 3x3/1, 512 units.
    assert _conv_shapes(nature) == [(20, 20, 32), (9, 9, 64), (7, 7, 64), (512,), (6,)]
    # Young & Tian 2019: 16 3x3/1, 128 units.
    assert _conv_shapes(minatar) == [(8, 8, 16), (128,), (N_ACTIONS,)]
    assert _conv_shapes(flat) == [(32,), (N_ACTIONS,)]


@pytest.mark.parametrize("shape,setting,expected", [
    ((84, 84, 4), "auto", "nature"), ((10, 10, 4), "auto", "minatar"), ((4,), "auto", "mlp"),
    ((84, 84, 4), "minatar", "minatar"), ((10, 10, 4), "mlp", "mlp"),
    ((10, 10, 4), "nature", "at least 36x36"), ((4,), "minatar", "is convolutional"),
    ((4,), "resnet", "unknown encoder")])
def test_pick_encoder(shape, setting, expected):
    obs = Observation(shape, "uint8" if len(shape) == 3 else "float32")
    if expected in ("nature", "minatar", "mlp"):
        assert pick_encoder(obs, setting) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            pick_encoder(obs, setting)


def test_check_wiring_covers_conv_bn_layers():
    with tf.Graph().as_default():
        model = q_network(Observation.from_space(GRID), N_ACTIONS, norm=Norm("batch"))
        x = tf.compat.v1.placeholder(tf.uint8, [None, 10, 10, 4])
        optimizer = tf.compat.v1.train.AdamOptimizer(1e-3)
        naive = optimizer.minimize(tf.reduce_mean(model(x, training=True)))
        problems = check_wiring(naive, [model])
        assert any("q_bn_conv0" in p for p in problems)
        assert any("q_bn0" in p for p in problems)
        out, updates = training_call(model, x)
        fixed = with_updates(optimizer.minimize(tf.reduce_mean(out)), updates)
        assert check_wiring(fixed, [model]) == []


# ------------------------------------------------------------ numpy forward of the MinAtar net
def _conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Valid 3x3 stride-1 convolution, channels last."""
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))  # (B, 8, 8, C, 3, 3)
    return np.einsum("bhwcij,ijcf->bhwf", windows, kernel)


def _bn_values(agent, layer) -> dict:
    names = ("moving_mean", "moving_variance", "gamma", "beta")
    return dict(zip(names, _values(agent, [getattr(layer, n) for n in names]), strict=True))


def _normalize(x, v: dict, batch: bool) -> np.ndarray:
    axes = tuple(range(x.ndim - 1))
    if batch:  # the training-mode output: biased batch moments, fused or not
        mean, var = x.mean(axes), x.var(axes)
    else:
        mean, var = v["moving_mean"], v["moving_variance"]
    return (x - mean) / np.sqrt(var + EPS) * v["gamma"] + v["beta"]


def _minatar_q(agent, model, obs: np.ndarray, batch: bool, record: dict | None = None):
    """Q-values of the MinAtar Q-network (BN pre-activation after the conv and the dense layer)
    in numpy; ``batch``: BN on the batch moments of ``obs`` (training mode), else the moving
    statistics. ``record`` receives each BN layer's input, by layer name."""
    record = {} if record is None else record
    names = {layer.name for layer in model.layers}

    def layer(x, weights: str, norm: str):
        w = _values(agent, model.get_layer(weights).weights)  # kernel (and bias without BN)
        x = (_conv(x, w[0]) if w[0].ndim == 4 else x @ w[0]) + (w[1] if len(w) > 1 else 0.0)
        if norm not in names:
            return np.maximum(x, 0.0)
        record[norm] = x
        return np.maximum(_normalize(x, _bn_values(agent, model.get_layer(norm)), batch), 0.0)

    h = layer(obs.astype(np.float64), "q_conv0", "q_bn_conv0")
    h = layer(h.reshape(len(h), -1), "q_dense0", "q_bn0")
    w_out, b_out = _values(agent, model.get_layer("q_out").weights)
    return h @ w_out + b_out


# ------------------------------------------------------------------- 3. conv BN, exactly
@pytest.mark.parametrize("joint", [False, True], ids=["separate", "joint"])
def test_conv_bn_moving_statistics_follow_the_numpy_ema(agents, joint):
    """k = 3 updates: the fused conv BN layer's moving mean / variance follow the Keras EMA of
    the batch moments of its input with the variance Bessel-corrected (n = rows * 8 * 8), the
    dense BN layer after it the biased variance; with the joint pass the rows are
    ``concat([obs, next_obs])``, 2B of them, and each statistic moves once per update."""
    # Momentum 0.5, not the default 0.99: the batch term then dominates the EMA, so that the
    # Bessel factor (1 + 1/511 here) is far above the float32 tolerance.
    config = dict(SMALL, critic_norm="batch", bn_momentum=0.5, **({} if joint else SEPARATE))
    agent = agents.get("dqn", GRID, ACTIONS, config)
    momentum = agent.config.bn_momentum
    assert agent.config.critic_batch == ("joint" if joint else "separate")
    q = agent.networks.policy
    conv_bn = q.get_layer("q_bn_conv0")
    assert conv_bn.fused and not q.get_layer("q_bn0").fused  # Keras' fused kernel on 4-D only
    rng = np.random.default_rng(4)
    for _ in range(3):
        batch = _batch(rng)
        rows = np.concatenate([batch["obs"], batch["next_obs"]]) if joint else batch["obs"]
        inputs = {}
        _minatar_q(agent, q, rows, batch=True, record=inputs)  # weights before the step
        before = {name: _bn_values(agent, q.get_layer(name)) for name in inputs}
        agent.update(batch)
        for name, x in inputs.items():
            axes = tuple(range(x.ndim - 1))
            n = int(np.prod([x.shape[a] for a in axes]))
            assert n == (2 * BATCH if joint else BATCH) * (64 if name == "q_bn_conv0" else 1)
            variance = x.var(axes, ddof=1 if name == "q_bn_conv0" else 0)
            after = _bn_values(agent, q.get_layer(name))
            np.testing.assert_allclose(
                after["moving_mean"],
                before[name]["moving_mean"] * momentum + x.mean(axes) * (1 - momentum),
                rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                after["moving_variance"],
                before[name]["moving_variance"] * momentum + variance * (1 - momentum),
                rtol=1e-5, atol=1e-6)


def test_conv_bn_diagnostics_are_the_post_step_norms(agents):
    agent = agents.get("dqn", GRID, ACTIONS, dict(SMALL, critic_norm="batch"))
    scalars = agent.update(_batch(np.random.default_rng(5)), log=True)
    layer = agent.networks.policy.get_layer("q_bn_conv0")
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        value = _values(agent, [getattr(layer, name)])[0]
        np.testing.assert_allclose(scalars[f"bn/Q/q_bn_conv0/{name}"], np.linalg.norm(value),
                                   rtol=1e-5)
    assert "bn_Q_train_eval_gap" in scalars


# --------------------------------------------------------- 4. TD target: n-step, double Q
TD_CASES = {
    # the BN defaults: joint pass, target network in training mode on the joint batch, double Q
    "joint-training-double-nstep-mse": dict(critic_norm="batch", n_steps=3, loss="mse"),
    "separate-inference-max-nstep-huber": dict(critic_norm="batch", **SEPARATE, double_q=False,
                                               n_steps=3),
    "plain-double-onestep": dict(critic_norm="none"),
}


def _huber(error: np.ndarray) -> np.ndarray:
    a = np.abs(error)
    return np.where(a <= 1.0, 0.5 * error**2, a - 0.5)


@pytest.mark.parametrize("case", list(TD_CASES))
def test_td_target_and_loss_equal_numpy(agents, case):
    """y = R + discount * (1 - done) * Q_target(s', a*) with a* the argmax of the online network
    (double Q) or of the target itself, every Q from the numpy forward pass in the BN mode the
    settings give; the loss of the step is the mean Huber / squared error of y - Q(s, a)."""
    config = dict(SMALL, **TD_CASES[case])
    agent = agents.get("dqn", GRID, ACTIONS, config)
    c = agent.config
    q_net, target = agent.networks.target_pairs[0]
    rng = np.random.default_rng(6)
    agent.update(_batch(rng, discount=c.n_steps > 1))  # BN statistics and target away from init
    batch = _batch(rng, discount=c.n_steps > 1)
    assert ("discount" in batch) == ("discount" in agent.runner.batch.names())

    joint = c.critic_batch == "joint"
    both = np.concatenate([batch["obs"], batch["next_obs"]])
    if joint:
        q_all = _minatar_q(agent, q_net, both, batch=True)
        q, q_next_online = q_all[:BATCH], q_all[BATCH:]
        q_next = _minatar_q(agent, target, both, batch=True)[BATCH:]
    else:
        q = _minatar_q(agent, q_net, batch["obs"], batch=True)
        training = c.bootstrap_mode == "training"
        q_next_online = _minatar_q(agent, q_net, batch["next_obs"], batch=training)
        q_next = _minatar_q(agent, target, batch["next_obs"], batch=training)
    best = np.argmax(q_next_online if c.double_q else q_next, axis=1)
    discount = batch.get("discount", c.gamma)
    y = batch["reward"] + discount * (1.0 - batch["done"]) * q_next[np.arange(BATCH), best]

    update = agent.runner.updates[agent.schedule.phase(agent.updates_done)]
    feed = {ph: batch[key] for ph, key in zip(agent.runner.batch.tensors(),
                                              agent.runner.batch.names())}
    np.testing.assert_allclose(agent.sess.run(update.td_target, feed), y, rtol=1e-4, atol=1e-4)

    error = y - q[np.arange(BATCH), batch["action"]]
    loss = np.mean(np.square(error) if c.loss == "mse" else _huber(error))
    np.testing.assert_allclose(agent.update(batch)["losses/q_loss"], loss, rtol=1e-4, atol=1e-5)


def _n_step_reference(rewards, terminated, ends, newest, i, n, gamma):
    """The n-step window of stored transition ``i``, by walking it one step at a time."""
    total, k, j = 0.0, 0, i
    while True:
        total += gamma**k * rewards[j]
        k += 1
        if ends[j] or j == newest or k == n:
            return total, j, terminated[j], gamma**k
        j = (j + 1) % len(rewards)


@pytest.mark.parametrize("added", [9, 23], ids=["filling", "wrapped"])
def test_n_step_samples_stop_at_episode_ends_and_the_newest(added):
    """SB3 2.7's n-step returns: windows stop at terminations, truncations and the newest stored
    transition (also across the ring's wrap-around), ``done`` is the last step's termination and
    ``discount`` gamma^m; n_steps = 1 draws the same indices and returns the stored rows."""
    capacity, n, gamma = 10, 3, 0.9
    buffer = ReplayBuffer(capacity, (2,), (), np.int64, seed=0)
    rng = np.random.default_rng(8)
    rewards = rng.normal(size=added).astype(np.float32)
    terminated = np.isin(np.arange(added), [4, 17])
    truncated = np.isin(np.arange(added), [7, 12, 20])
    for t in range(added):
        buffer.add([t, 0], t % 3, rewards[t], [t + 1, 0], terminated[t], truncated[t])
    stored = buffer.transitions()
    order = stored["obs"][:, 0].astype(int)  # the step t of each stored row, oldest first
    slot = {t: t % capacity for t in order}
    ring = np.zeros(capacity, np.float32), np.zeros(capacity, bool), np.zeros(capacity, bool)
    for t in order:
        ring[0][slot[t]], ring[1][slot[t]] = rewards[t], terminated[t]
        ring[2][slot[t]] = terminated[t] or truncated[t]
    newest = slot[order[-1]]

    state = buffer._rng.bit_generator.state
    samples = buffer.sample(64, n_steps=n, gamma=gamma)
    buffer._rng.bit_generator.state = state
    plain = buffer.sample(64)
    np.testing.assert_array_equal(plain["obs"], samples["obs"])
    assert "discount" not in plain
    for row in range(64):
        t = int(samples["obs"][row, 0])
        total, last, done, discount = _n_step_reference(*ring, newest, slot[t], n, gamma)
        last_t = t + (last - slot[t]) % capacity
        assert samples["next_obs"][row, 0] == last_t + 1
        np.testing.assert_allclose(samples["reward"][row], total, rtol=1e-6)
        assert samples["done"][row] == float(done)
        np.testing.assert_allclose(samples["discount"][row], discount, rtol=1e-6)
    # the windows of this sequence do stop early somewhere and run the full n elsewhere
    assert {1, 2, 3} <= {round(np.log(d) / np.log(gamma)) for d in samples["discount"]}


def test_n_step_updates_in_one_call_equal_single_updates(agents):
    """The multi-update loop feeds the n-step discount too: K = 2 updates in one call (no XLA)
    equal two single updates bit for bit, conv BN statistics included."""
    config = dict(SMALL, critic_norm="batch", n_steps=3, gradient_steps=2)
    rng = np.random.default_rng(9)
    batches = [_batch(rng, discount=True) for _ in range(2)]
    results = []
    for many in (True, False):
        agent = agents.get("dqn", GRID, ACTIONS, config)  # as built, both times
        if many:
            agent.update_many(batches)
        else:
            for batch in batches:
                agent.update(batch)
        results.append(_values(agent, agent.networks.policy.weights))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["batch_renorm", "layer"])
def test_other_norms_on_conv_layers(agents, kind):
    """Batch Renorm (not fused: Keras' renorm has no fused kernel) and LayerNorm (over the
    channels of each pixel, as PQN's flax LayerNorm) sit after the conv and dense layers, and an
    update trains with them; Batch Renorm's statistics move once per update like BN's."""
    agent = agents.get("dqn", GRID, ACTIONS, dict(SMALL, critic_norm=kind))
    q = agent.networks.policy
    tag = "ln" if kind == "layer" else "bn"
    assert {f"q_{tag}_conv0", f"q_{tag}0"} <= {layer.name for layer in q.layers}
    before = _values(agent, q.weights)
    scalars = agent.update(_batch(np.random.default_rng(10)))
    assert np.isfinite(scalars["losses/q_loss"])
    changed = [not np.array_equal(a, b) for a, b in zip(before, _values(agent, q.weights))]
    assert all(changed), [w.name for w, c in zip(q.weights, changed) if not c]


def test_a_version_1_replay_file_still_loads(tmp_path):
    """Checkpoints written before n-step returns have no ``episode_end``: they load, with the
    episode ends known where an episode terminated."""
    buffer = ReplayBuffer(4, (2,), (), np.int64, seed=0)
    for t in range(3):
        buffer.add([t, 0], 0, 1.0, [t + 1, 0], t == 1, t == 2)
    path = tmp_path / "replay.npz"
    # Version 1's layout: obs beside next_obs, in slot order (here the age order: not full).
    old = {key: value for key, value in buffer.transitions().items() if key != "episode_end"}
    old.update(format_version=np.asarray(1), capacity=np.asarray(4), pos=np.asarray(3),
               size=np.asarray(3),
               rng_state=np.asarray(json.dumps(buffer._rng.bit_generator.state)))
    with open(path, "wb") as f:
        np.savez(f, **old)
    restored = ReplayBuffer(4, (2,), (), np.int64, seed=5)
    restored.load(path)
    np.testing.assert_array_equal(restored.transitions()["episode_end"], [False, True, False])
    np.testing.assert_array_equal(restored.transitions()["obs"], buffer.transitions()["obs"])


@pytest.mark.parametrize("policy", ["copy", "frozen"])
def test_target_network_follows_target_bn_on_conv_layers(agents, policy):
    """A target sync after every update with tau = 0.5: the conv and dense weights are
    polyak-averaged, the conv BN layer's moving statistics copied (``copy``) or left at their
    initial 0 / 1 (``frozen``)."""
    config = dict(SMALL, critic_norm="batch", **SEPARATE, tau=0.5, target_update_interval=1,
                  target_bn=policy)
    agent = agents.get("dqn", GRID, ACTIONS, config)
    online, target = agent.networks.target_pairs[0]
    kernel = (online.get_layer("q_conv0").kernel, target.get_layer("q_conv0").kernel)
    old_target = _values(agent, [kernel[1]])[0]
    agent.update(_batch(np.random.default_rng(11)))
    new_online, new_target = _values(agent, kernel)
    np.testing.assert_allclose(new_target, 0.5 * old_target + 0.5 * new_online, rtol=1e-6,
                               atol=1e-7)
    stats = [_bn_values(agent, model.get_layer("q_bn_conv0")) for model in (online, target)]
    for name in ("moving_mean", "moving_variance"):
        if policy == "copy":
            np.testing.assert_array_equal(stats[1][name], stats[0][name])
        else:
            np.testing.assert_array_equal(stats[1][name], float(name == "moving_variance"))
    assert np.abs(stats[0]["moving_mean"]).max() > 1e-3  # the online statistics did move
