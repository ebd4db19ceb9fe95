"""The multi-update path (``gradient_steps > 1``): K gradient steps in one ``sess.run``.

* ``update_many`` on K batches gives the updates of K ``update`` calls on the same batches: bit
  for bit with ``xla=false``, to float tolerance with XLA (the default), for SAC, TD3 and CrossQ
  with BN, across the policy delay and the Batch Renorm warm-up boundary;
* the exact BN facts hold on it: after one call of K steps, the critic's input BN layers hold the
  K-fold Keras EMA of exactly the observations fed (numpy), so each step updated each layer once;
* ``check_wiring`` looks inside the compiled functions: a second training-mode critic call is
  refused there too, a ``batch_statistics_call`` inside a function updates nothing;
* the training loop runs ``gradient_steps > 1`` through it.

Networks are tiny (one hidden layer) so that the XLA compiles stay short, and each agent is built
once (tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import bnrl.agents.sac
import bnrl.agents.td3
import bnrl.agents.update
from bnrl.networks import (
    Norm,
    batch_statistics_call,
    bn_layers,
    check_wiring,
    critic,
    tf,
    training_call,
)
from bnrl.networks.batchnorm import ancestors

from test_agent_bn import (
    ATOL,
    CLASSIC_BN,
    SMALL,
    _batch,
    _build,
    _expected_moving,
    _is_renorm,
    _layer_values,
    _patched_training_call,
    _shared,
    _snapshot,
    _variables,
)

K = 4
TINY = dict(SMALL, hidden=(16,), actor_hidden=(16,))
# Agent, config: BN in critic and actor; TD3 and CrossQ delay their actor (2, 3), CrossQ's Batch
# Renorm leaves its warm-up at update 3, inside the first round of K = 4.
CASES = {
    "sac": ("sac", dict(TINY, critic_norm="batch", actor_norm="batch", policy_delay=2)),
    "td3": ("td3", dict(TINY, critic_norm="batch", actor_norm="batch")),
    "crossq": ("crossq", dict(TINY, renorm_warmup=3)),
}


def _rounds(agent, rounds: int = 2) -> list[list[dict]]:
    rng = np.random.default_rng(4)
    return [[_batch(rng, agent) for _ in range(K)] for _ in range(rounds)]


@pytest.mark.parametrize("xla", [False, True], ids=["plain", "xla"])
@pytest.mark.parametrize("case", list(CASES))
def test_k_updates_in_one_run_equal_k_single_updates(agents, case, xla):
    name, config = CASES[case]
    single = _shared(agents, name, dict(config, xla_single_update=False))  # the plain graph
    many = _shared(agents, name, dict(config, gradient_steps=K, xla=xla))
    rounds = _rounds(single)
    expected, got = [], []
    for batches in rounds:
        expected += [single.update(b) for b in batches]
        got += many.update_many(batches)
    assert many.updates_done == single.updates_done == 2 * K
    assert many.sess.run(many.runner.num_updates) == 2 * K  # the graph counter moved by K per call
    variants = [single.schedule.phase(i) for i in range(2 * K)]
    assert len(set(variants)) == 2  # both kinds of step ran, in the schedule's order
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert set(g) == set(e), i  # each step reports its own variant's scalars
        for key in e:
            if xla:
                assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-5), (i, key)
            else:
                assert g[key] == e[key], (i, key)
    for var, a, b in zip(_variables(single), _snapshot(single), _snapshot(many), strict=True):
        if xla:
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5, err_msg=var.name)
        else:
            np.testing.assert_array_equal(b, a, err_msg=var.name)


@pytest.mark.parametrize("case", ["td3", "crossq"])
def test_k_steps_update_each_input_bn_layer_once_per_step(agents, case):
    """The critic's input BN layers after one call of K steps (XLA, the default): K Keras EMA
    steps of the biased moments of exactly the observations fed, obs alone (a separate pass)
    or concat([obs, next_obs]) (CrossQ's joint pass), to 1e-5; the actor's statistics moved."""
    name, config = CASES[case]
    # TD3 with the pre-remedy separate pass; CrossQ with its joint pass.
    plain = CLASSIC_BN if case == "td3" else {}
    agent = _shared(agents, name, dict(config, **plain, critic_input_norm=True, gradient_steps=K))
    assert agent.config.xla
    critic_model = agent.networks.critics[0]
    layers = [layer for layer in bn_layers(critic_model) if layer.name.endswith("_bn_in")]
    assert layers
    before = {layer.name: _layer_values(agent, layer) for layer in layers}
    actor_bn = bn_layers(agent.networks.actors[0])[0]
    actor_before = _layer_values(agent, actor_bn)
    (batches,) = _rounds(agent, 1)
    agent.update_many(batches)
    joint = agent.config.critic_batch == "joint"
    for layer in layers:
        values = dict(before[layer.name])
        for b in batches:
            fed = np.concatenate([b["obs"], b["next_obs"]]) if joint else b["obs"]
            mean, var = _expected_moving(values, fed, _is_renorm(layer))
            values.update(moving_mean=mean, moving_variance=var)
            if _is_renorm(layer):
                values["moving_stddev"] = np.sqrt(var + 1e-3)
        got_mean, got_var = agent.sess.run([layer.moving_mean, layer.moving_variance])
        np.testing.assert_allclose(got_mean, values["moving_mean"], atol=ATOL, err_msg=layer.name)
        np.testing.assert_allclose(got_var, values["moving_variance"], atol=ATOL,
                                   err_msg=layer.name)
    moved = agent.sess.run(actor_bn.moving_mean) - actor_before["moving_mean"]
    assert np.abs(moved).max() > 1e-5


@pytest.mark.parametrize("single_xla", [False, True])
def test_double_critic_call_is_refused_inside_the_functions(monkeypatch, single_xla):
    """A second training-mode critic call: refused in the multi-update loop (where every update
    op runs anyway) and in XLA-compiled single updates."""
    for module in (bnrl.agents.update, bnrl.agents.td3, bnrl.agents.sac):
        monkeypatch.setattr(module, "training_call", _patched_training_call("double_critic"))
    name, config = CASES["td3"]
    with pytest.raises(RuntimeError, match="miswired") as info:
        _build(name, dict(config, gradient_steps=K, xla_single_update=single_xla))
    compiled = [line for line in str(info.value).split(" | ") if "in function body" in line]
    # The loop, and with XLA single updates each variant too, found it inside the functions.
    assert any("train op 'multi-update loop' is miswired" in line for line in compiled)
    assert len(compiled) == (3 if single_xla else 1)
    for line in compiled:
        assert "updated 2 times" in line and "BN layer 'q" in line


def _function_case(second_call):
    """A critic trained in a tf.function with one training-mode call, then ``second_call``."""
    graph = tf.Graph()
    with graph.as_default():
        model = critic(3, 2, (8,), Norm("batch"), name="critic")
        obs = tf.compat.v1.placeholder(tf.float32, (None, 3))
        act = tf.compat.v1.placeholder(tf.float32, (None, 2))
        optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.1)

        def step(obs, act):
            q, _ = training_call(model, [obs, act])
            other = second_call(model, [obs * 2.0, act])
            loss = tf.reduce_mean(q) + tf.reduce_mean(other)
            with tf.control_dependencies([optimizer.minimize(loss)]):
                return tf.identity(loss)

        loss = tf.function(step, autograph=False)(obs, act)
        init = tf.compat.v1.global_variables_initializer()
    return graph, model, obs, act, loss, init


def test_batch_statistics_call_in_a_function_updates_nothing():
    """Inside a function every stateful op runs; batch_statistics_call there creates no writes
    at all: the moving statistics follow the first call's batch only, and the wiring is right.
    Two training-mode calls there update twice, and check_wiring says so."""
    rng = np.random.default_rng(0)
    s, a = rng.normal(2.0, 1.0, (16, 3)), rng.uniform(-1, 1, (16, 2))
    graph, model, obs, act, loss, init = _function_case(batch_statistics_call)
    layer = model.get_layer("q0_bn0")
    assert check_wiring(loss, [model]) == []
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        kernel = sess.run(model.get_layer("q0_dense0").kernel)
        sess.run(loss, {obs: s, act: a})
        got = sess.run(layer.moving_mean)
    h = np.concatenate([s, a], axis=1) @ kernel  # no bias: the Dense is followed by BN
    np.testing.assert_allclose(got, 0.01 * h.mean(0), atol=1e-5)

    graph, model, obs, act, loss, init = _function_case(
        lambda model, inputs: training_call(model, inputs)[0])
    problems = check_wiring(loss, [model])
    assert problems and all("updated 2 times" in p for p in problems)


def test_update_many_needs_the_loop(agents):
    name, config = CASES["sac"]
    agent = _shared(agents, name, dict(config, xla_single_update=False))  # gradient_steps = 1
    with pytest.raises(RuntimeError, match="gradient_steps > 1"):
        agent.update_many(_rounds(agent, 1)[0])


def test_training_loop_runs_rounds_through_the_loop(tmp_path, monkeypatch):
    """gradient_steps = 3: every round is one update_many call of 3 steps (2 when the round's
    last update is the logged one, run with its diagnostics), and the update count is exact."""
    from bnrl.training.config import RunConfig
    from bnrl.training.loop import train

    calls = []
    real = bnrl.agents.agent.Agent.update_many

    def spy(self, batches):
        calls.append(len(batches))
        return real(self, batches)

    monkeypatch.setattr(bnrl.agents.agent.Agent, "update_many", spy)
    config = RunConfig(agent="sac", env="Pendulum-v1", steps=60, eval_every=60, eval_episodes=1,
                       checkpoint_every=60, log_every=12,
                       agent_config=dict(hidden=(16,), actor_hidden=(16,), batch_size=8,
                                         learning_starts=30, train_freq=3, gradient_steps=3,
                                         critic_norm="batch"))
    config.validate()
    summary = train(config, tmp_path / "run", progress="none")
    rounds = (60 - 30) // 3 + 1  # env steps 30, 33, ..., 60
    assert summary["updates"] == 3 * rounds
    logged = sum(1 for n in calls if n == 2)
    assert calls.count(3) + logged == rounds and logged >= 2
    assert summary["bn_stats"] and len(summary["bn_stats"]["steps"]) == logged


def test_xla_single_update_matches_the_plain_graph(agents):
    """``xla_single_update``: each variant one XLA-compiled function, to float tolerance of the
    plain graph over updates of both variants (no Dense bias before BN makes that hold)."""
    name, config = CASES["td3"]
    plain = _shared(agents, name, dict(config, xla_single_update=False))
    # BN layers: single updates compiled by default (here those of the K-step agent above)
    compiled = _shared(agents, name, dict(config, gradient_steps=K))
    assert _compiled(compiled)
    for b in _rounds(plain, 1)[0]:
        expected, got = plain.update(b), compiled.update(b, log=True)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
        assert got["bn_Q_train_eval_gap"] >= 0
    for var, a, b in zip(_variables(plain), _snapshot(plain), _snapshot(compiled), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5, err_msg=var.name)


def _compiled(agent) -> bool:
    """Whether every train op runs one XLA-compiled call."""
    def xla_calls(op):
        return [a for a in ancestors([op]) if a.type == "StatefulPartitionedCall"
                and a.get_attr("_XlaMustCompile")]

    return all(len(xla_calls(op)) == 1 for op in agent.runner.train_ops.values())


@pytest.mark.parametrize("critic_norm,xla,expected", [
    ("batch", True, True), ("batch_renorm", True, True), ("layer", True, False),
    ("none", True, False), ("batch", False, False)])
def test_single_updates_are_compiled_by_default_exactly_with_bn_layers(agents, critic_norm, xla,
                                                                       expected):
    """``xla_single_update: null``: one XLA call op per variant when a network has BN layers
    (where it measured faster), the plain graph's grouped step otherwise."""
    name, config = CASES["td3"]
    agent = _shared(agents, name, dict(config, critic_norm=critic_norm, actor_norm="none",
                                       xla=xla))
    assert _compiled(agent) is expected
    forced = _shared(agents, name, dict(config, critic_norm="none", actor_norm="none",
                                        xla_single_update=True))
    assert _compiled(forced)


@pytest.mark.parametrize("observation,setting,expected", [
    ((10, 10, 4), None, False), ((10, 10, 4), True, True), ((6,), None, True)])
def test_single_updates_of_a_convolutional_bn_network_stay_plain_by_default(
        observation, setting, expected):
    """``xla_single_update: null`` leaves a BN Q-network with convolutions (MinAtar's grid) in
    the plain graph, where its update measured 1.1-1.4x faster; ``true`` still compiles it,
    and a dense BN Q-network is compiled as any BN network is."""
    import gymnasium as gym

    from bnrl.agents import make_agent

    space = (gym.spaces.Box(0, 1, observation, np.bool_) if len(observation) == 3
             else gym.spaces.Box(-1, 1, observation, np.float32))
    agent = make_agent("dqn", space, gym.spaces.Discrete(3),
                       dict(batch_size=8, buffer_size=64, learning_starts=0, hidden=(16,),
                            critic_norm="batch", xla_single_update=setting), seed=0)
    try:
        assert agent.algorithm.networks.convolutional is (len(observation) == 3)
        assert _compiled(agent) is expected
    finally:
        agent.close()


def test_xla_switch_is_a_config_setting():
    from bnrl.agents.config import config_from_dict
    from bnrl.agents.sac import SACConfig

    assert config_from_dict(SACConfig, {"xla": False}).xla is False
    assert SACConfig().xla and SACConfig().xla_single_update is None
    with pytest.raises(ValueError, match="xla must be true or false"):
        config_from_dict(SACConfig, {"xla": "off"})
    with pytest.raises(ValueError, match="xla_single_update=true needs xla=true"):
        config_from_dict(SACConfig, {"xla": False, "xla_single_update": True})
