"""SimBa networks (Lee et al. 2024, arXiv 2410.09754; issue 27 item 1): ``network=simba`` and
``actor_network=simba``.

Pinned with numpy: the running observation statistics are numpy's mean and variance of exactly
the observations the agent acted on while exploring (random warm-up included, one row per
sub-env of a vector step), never of evaluation acts or training batches; they come back from a
checkpoint; a residual block's output is the numpy computation from its weights (LayerNorm, and
BN in inference mode, in the blocks); an exported SimBa policy equals the numpy forward pass with
the stored statistics, which its calls never change. The combinations that make no sense are
refused in one line, and SAC with SimBa actor and critic trains on Pendulum from the command line.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bnrl.agents import make_agent  # noqa: E402
from bnrl.networks import Norm, RunningObsNorm, Simba, keras, simba_body, tf  # noqa: E402

from _cli import main as _main  # noqa: E402
from _cli import one_line, run_captured, train_quiet  # noqa: E402

BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
BOX_ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
# Tiny bodies, no XLA: what is pinned does not depend on width or compilation.
SIMBA = dict(network="simba", critic_norm="layer", simba_width=8, simba_blocks=2, batch_size=8,
             learning_starts=5, xla=False)
SIMBA_AC = dict(SIMBA, actor_network="simba", actor_norm="layer", actor_simba_width=4)


def _stats(agent) -> tuple[np.ndarray, np.ndarray, float]:
    norm = agent.algorithm.obs_norm
    mean, var, count = agent.sess.run([norm.mean, norm.var, norm.count])
    return mean, var, float(count)


def _observations(rng, n: int, rows: int = 1) -> np.ndarray:
    # Far from mean 0 / variance 1, so that statistics that did not move would show.
    return (rng.normal([3.0, -1.0, 0.5], [2.0, 0.1, 5.0], (n, rows, 3))).astype(np.float32)


def _feed(agent, observations) -> None:
    """Act on each observation while exploring and store the transition, as the loop does."""
    for obs in observations:
        single = agent.n_envs == 1
        action = agent.act(obs[0], explore=True) if single else agent.act_batch(obs, True)
        if single:
            agent.observe(obs[0], action, 0.0, obs[0], False)
        else:
            zeros = np.zeros(agent.n_envs, bool)
            agent.observe_batch(obs, action, np.zeros(agent.n_envs), obs, zeros, zeros)


def _batch(agent, rng, n: int = 8) -> dict:
    obs = _observations(rng, n)[:, 0] * 10.0  # statistics nothing like those acted on
    return dict(obs=obs, action=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                reward=np.ones(n, np.float32), next_obs=obs + 1.0, done=np.zeros(n, np.float32))


def _fed_statistics(agent, fed):
    """Act on ``fed`` (exploring) and check the running statistics are exactly numpy's moments
    of its 12 rows; returns them."""
    _feed(agent, fed)
    mean, var, count = _stats(agent)
    rows = fed.reshape(-1, 3).astype(np.float64)
    assert count == 12
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, rows.var(0), rtol=1e-12)
    return mean, var, count


def test_statistics_are_numpys_moments_of_the_observations_acted_on():
    rng = np.random.default_rng(0)
    agent = make_agent("sac", BOX_OBS, BOX_ACT, SIMBA_AC)
    try:
        mean, var, count = _stats(agent)
        np.testing.assert_array_equal(mean, 0.0)  # the identity before any observation
        np.testing.assert_array_equal(var, 1.0)
        assert count == 0
        fed = _observations(rng, 12)  # 5 random warm-up acts, then 7 from the policy
        mean, var, count = _fed_statistics(agent, fed)
        # Neither evaluation acts nor training batches move them.
        for obs in _observations(rng, 3):
            agent.act(obs[0], explore=False)
        agent.train_step()
        agent.update(_batch(agent, rng))
        for got, expected in zip(_stats(agent), (mean, var, count), strict=True):
            np.testing.assert_array_equal(got, expected)
    finally:
        agent.close()


def test_a_vector_step_merges_one_row_per_sub_env():
    rng = np.random.default_rng(1)
    agent = make_agent("dqn", BOX_OBS, gym.spaces.Discrete(3), dict(SIMBA, learning_starts=6),
                       n_envs=3)
    try:
        fed = _observations(rng, 4, rows=3)  # 2 warm-up vector steps (6 env steps), 2 greedy
        _fed_statistics(agent, fed)
    finally:
        agent.close()


def test_acting_normalizes_with_the_statistics_after_the_update():
    """An exploring act updates, then normalizes (the authors' ObservationNormalizer and
    VecNormalize do): its output is the evaluation output of the updated agent."""
    rng = np.random.default_rng(2)
    agent = make_agent("dqn", BOX_OBS, gym.spaces.Discrete(3), dict(SIMBA, learning_starts=0))
    try:
        _feed(agent, _observations(rng, 3))
        obs = _observations(rng, 1)[0]
        explored = agent._explore_fn(obs)
        np.testing.assert_array_equal(explored, agent._act_fn(obs))
        assert _stats(agent)[2] == 4
    finally:
        agent.close()


def test_statistics_are_checkpointed_and_restored(tmp_path):
    rng = np.random.default_rng(3)
    agent = make_agent("sac", BOX_OBS, BOX_ACT, SIMBA_AC)
    other = make_agent("sac", BOX_OBS, BOX_ACT, SIMBA_AC)
    try:
        _feed(agent, _observations(rng, 9))
        agent.save(str(tmp_path / "ckpt"))
        other.restore(str(tmp_path / "ckpt"))
        for got, expected in zip(_stats(other), _stats(agent), strict=True):
            np.testing.assert_array_equal(got, expected)
        obs = _observations(rng, 1)[0, 0]
        np.testing.assert_array_equal(other.act(obs), agent.act(obs))
    finally:
        agent.close()
        other.close()


@pytest.mark.parametrize("name, critic_batch", [("dqn", "joint"), ("sac", "separate")])
def test_bn_in_the_blocks_updates_from_exactly_the_training_pass(name, critic_batch):
    """``critic_norm=batch`` in a SimBa body: the first block's BN moving statistics move once
    per update, by the Keras EMA of the biased moments of its input on exactly the rows of the
    critic's one training-mode pass (``concat([obs, next_obs])`` for DQN's joint pass, ``(obs,
    action)`` for SAC's separate one), its input computed in numpy: the embedding of the
    observations normalized by the running statistics of the acted-on ones."""
    rng = np.random.default_rng(7)
    discrete = name == "dqn"
    settings = dict(SIMBA, critic_norm="batch", critic_batch=critic_batch, target="polyak",
                    bootstrap_mode="training" if critic_batch == "joint" else "inference")
    agent = make_agent(name, BOX_OBS, gym.spaces.Discrete(3) if discrete else BOX_ACT, settings)
    try:
        _feed(agent, _observations(rng, 7))
        critic = agent.algorithm.q if discrete else agent.algorithm.critic
        prefix = "q" if discrete else "q0"
        bn = critic.get_layer(f"{prefix}_block0_bn")
        weights = {layer.name: agent.sess.run(layer.weights) for layer in critic.layers}
        batch = _batch(agent, rng)
        if discrete:
            batch["action"] = rng.integers(0, 3, len(batch["obs"]))
        mean, var, _ = weights["obs_rsnorm"]
        normed = [(batch[k].astype(np.float64) - mean) / np.sqrt(var + RunningObsNorm.EPSILON)
                  for k in ("obs", "next_obs")]
        rows = (np.concatenate(normed) if critic_batch == "joint"
                else np.concatenate([normed[0], batch["action"]], axis=1))
        (kernel,) = weights[f"{prefix}_embed"]  # no bias before BN
        h = rows @ kernel
        moving = agent.sess.run([bn.moving_mean, bn.moving_variance])
        agent.update(batch)
        got = agent.sess.run([bn.moving_mean, bn.moving_variance])
        np.testing.assert_allclose(got[0], 0.99 * moving[0] + 0.01 * h.mean(0), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(got[1], 0.99 * moving[1] + 0.01 * h.var(0), rtol=1e-4,
                                   atol=1e-6)
    finally:
        agent.close()


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


def simba_numpy(x, weights: dict, prefix: str, blocks: int, kind: str = "layer",
                eps: float = 1e-3, action=None) -> np.ndarray:
    """SimBa's body from its weights (``weights[layer name]``), in float64: RSNorm -> [concat
    action] -> embedding -> blocks of (norm -> Dense(4w) -> ReLU -> Dense(w) -> + skip) ->
    norm. ``kind``: ``layer``, or ``batch`` (inference mode: moving statistics)."""

    def norm(h, name):
        w = weights[name]
        if kind == "layer":
            return _layer_norm(h, w[0], w[1], eps)
        gamma, beta, moving_mean, moving_var = w
        return (h - moving_mean) / np.sqrt(moving_var + eps) * gamma + beta

    def dense(h, name):
        w = weights[name]
        return h @ w[0] + (w[1] if len(w) > 1 else 0.0)

    tag = "ln" if kind == "layer" else "bn"
    mean, var, _ = weights["obs_rsnorm"]
    h = (x.astype(np.float64) - mean) / np.sqrt(var + RunningObsNorm.EPSILON)
    if action is not None:
        h = np.concatenate([h, action], axis=-1)
    h = dense(h, f"{prefix}_embed")
    for i in range(blocks):
        block = f"{prefix}_block{i}"
        inner = np.maximum(dense(norm(h, f"{block}_{tag}"), f"{block}_dense0"), 0.0)
        h = h + dense(inner, f"{block}_dense1")
    return norm(h, f"{prefix}_{tag}_out")


@pytest.mark.parametrize("kind", ["layer", "batch"])
def test_residual_blocks_compute_what_numpy_computes_from_their_weights(kind):
    rng = np.random.default_rng(4)
    with tf.Graph().as_default():
        inputs = keras.Input((3,))
        arch = Simba(width=5, blocks=2, obs_norm=RunningObsNorm(name="obs_rsnorm"))
        out = simba_body(arch.obs_norm(inputs), arch, Norm(kind), "q", seeds=None)
        model = keras.Model(inputs, out)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            # Every weight random (LN/BN scales and shifts, BN moving statistics, the running
            # statistics too): nothing is at an initial value that would hide a term.
            for layer in model.layers:
                for v in layer.weights:
                    value = rng.uniform(0.5, 2.0, v.shape) if "var" in v.name else rng.normal(
                        size=v.shape)
                    sess.run(v.assign(value.astype(v.dtype.as_numpy_dtype)))
            weights = {layer.name: sess.run(layer.weights) for layer in model.layers}
            x = rng.normal(size=(6, 3)).astype(np.float32)
            got = sess.run(model(x, training=False))
    assert {"q_block0_dense0", "q_block1_add", f"q_{'ln' if kind == 'layer' else 'bn'}_out"} <= (
        set(weights))
    assert weights["q_block0_dense0"][0].shape == (5, 20)  # the inverted bottleneck, 4 x width
    # BN kinds write no bias into the residual stream (every reader of it is a BN layer).
    assert len(weights["q_embed"]) == (2 if kind == "layer" else 1)
    expected = simba_numpy(x, weights, "q", 2, kind)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_an_image_q_network_puts_simba_after_its_convolutions_without_rsnorm():
    """Pixels keep their fixed scale (/255, MinAtar's 0/1): the SimBa body replaces the conv
    encoder's dense layer, and no running statistics are made."""
    agent = make_agent("dqn", gym.spaces.Box(0, 1, (10, 10, 4), bool), gym.spaces.Discrete(3),
                       dict(SIMBA, simba_blocks=1))
    try:
        names = [layer.name for layer in agent.networks.policy.layers]
        assert names.index("q_flatten") < names.index("q_embed") < names.index("q_block0_ln")
        assert "q_dense0" not in names and agent.algorithm.obs_norm is None
        assert agent.obs_stats_update is None
        obs = np.random.default_rng(6).integers(0, 2, (10, 10, 4)).astype(bool)
        assert 0 <= agent.act(obs, explore=True) < 3
    finally:
        agent.close()


@pytest.mark.parametrize("agent, variant, expected", [
    ("sac", "simba", ("simba", "layer", "mlp")),
    ("pqn", "simba", ("simba", "layer", None)),
    ("td3", "simba_ac", ("simba", "layer", "simba")),
])
def test_the_simba_variants_resolve_to_simba_bodies(agent, variant, expected):
    from bnrl.compare import variants
    from bnrl.compare.results import RunSpec, resolve_spec

    settings = dict(variants.builtin_variants()[variant].settings)
    config = resolve_spec(RunSpec(agent, "Pendulum-v1" if agent != "pqn" else "CartPole-v1",
                                  variant, 0, 1000, None, "", 1, settings=settings)).agent_config
    assert (config.network, config.critic_norm,
            getattr(config, "actor_network", None)) == expected


@pytest.mark.parametrize("name, settings, message", [
    ("sac", dict(network="simba"), "network=simba normalizes inside its residual blocks: "
     "critic_norm must be layer, batch, batch_renorm"),
    ("sac", dict(SIMBA, actor_network="simba"), "actor_network=simba normalizes inside its "
     "residual blocks: actor_norm must be layer, batch, batch_renorm"),
    ("dqn", dict(network="resnet"), "unknown network 'resnet': use one of mlp, simba"),
    ("sac", dict(SIMBA, simba_blocks=0), "simba_blocks must be >= 1"),
    ("crossq", dict(network="simba"), "critic_norm_position must be pre_activation"),
    ("ddpg", dict(SIMBA, action_at=1), "action_at must be 0 and norm_after_action true"),
])
def test_combinations_that_make_no_sense_are_refused(name, settings, message):
    with pytest.raises(ValueError, match=message) as info:
        make_agent(name, BOX_OBS, gym.spaces.Discrete(3) if name == "dqn" else BOX_ACT, settings)
    assert "\n" not in str(info.value)


def test_the_command_line_refuses_simba_without_a_norm_in_one_line(capsys, tmp_path):
    code, _, err = run_captured(["train", "--agent", "td3", "--env", "Pendulum-v1", "--set",
                                 "network=simba", "--logdir", tmp_path / "run"], capsys)
    assert code == 2
    assert "critic_norm must be layer, batch, batch_renorm" in one_line(err)


def test_sac_with_simba_trains_on_pendulum_and_its_export_freezes_the_statistics(tmp_path):
    """300 env steps from the command line (50 random), export, and the exported policy equals
    numpy's forward pass with the checkpoint's statistics, call after call."""
    from bnrl.training import checkpoint
    from bnrl.training.runs import build_agent, make_run_env, open_run

    run_dir, out = tmp_path / "run", tmp_path / "policy"
    settings = ["network=simba", "actor_network=simba", "simba_width=16", "simba_blocks=1",
                "actor_simba_width=8", "xla=false", "batch_size=32", "learning_starts=50",
                "buffer_size=1000"]
    train_quiet(["--agent", "sac", "--env", "Pendulum-v1", "--critic-norm", "layer",
                 "--actor-norm", "layer", "--steps", "300", "--eval-every", "300",
                 "--eval-episodes", "1", "--logdir", str(run_dir),
                 *[a for s in settings for a in ("--set", s)]])
    with contextlib.redirect_stdout(io.StringIO()):
        assert _main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    config, ckpt = open_run(run_dir)
    env = make_run_env(config, 0)
    agent = build_agent(config, env)
    try:
        checkpoint.restore_agent(agent, ckpt)
        assert agent.updates_done > 0
        meta = json.loads((out / "bnrl_policy.json").read_text())
        assert meta["network"] == "simba"
        assert "running mean and variance of the 300 observations" in (
            meta["observation_normalization"])
        mean, var, count = _stats(agent)
        # Every observation the run acted on, once; not the 200 of its final evaluation.
        assert count == 300
        # Pendulum's (cos, sin, angular velocity): the statistics moved far from 0 and 1.
        assert np.abs(var - 1.0).max() > 0.5
        actor = agent.algorithm.actor
        weights = {layer.name: agent.sess.run(layer.weights) for layer in actor.layers}
        rng = np.random.default_rng(5)
        obs = np.stack([rng.uniform(-1, 1, 100), rng.uniform(-1, 1, 100),
                        rng.uniform(-8, 8, 100)], axis=1).astype(np.float32)
        body = simba_numpy(obs, weights, "pi", 1, eps=config.agent_config.bn_epsilon)
        kernel, bias = weights["pi_mean"]
        expected = np.tanh(body @ kernel + bias)

        serve = tf.saved_model.load(str(out)).signatures["serving_default"]
        for _ in range(3):  # the export never updates what it normalizes with
            got = serve(observation=tf.constant(obs))["action"].numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
            one = serve(observation=tf.constant(obs[:1]))["action"].numpy()
            np.testing.assert_allclose(one, expected[:1], rtol=1e-4, atol=1e-5)
        assert agent._numpy_act is not None  # evaluation's numpy path runs RSNorm too
        for _ in range(2):  # the graph's action, then the numpy path's
            np.testing.assert_allclose(agent.act(obs[0]), expected[0], rtol=1e-4, atol=1e-5)
        for got, stored in zip(_stats(agent), (mean, var, count), strict=True):
            np.testing.assert_array_equal(got, stored)
    finally:
        agent.close()
        env.close()
