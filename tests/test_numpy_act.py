"""Deterministic acting in numpy (``networks.inference``), as evaluation does it.

Pinned here: for BN, Batch Renorm and LayerNorm actors and a BN Q-network whose moving statistics
were moved far from 0/1 by training, the numpy action equals the session's inference-mode action
(1e-5, the argmax exactly) on 50 observations; the weights are copied out again after every
update and restore (the first action after a change is the session's, later ones numpy's); a
network with a layer the numpy pass lacks (the dueling head's Lambda) keeps acting through the
session; ``NumpyForward`` refuses such a layer at construction.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnrl.networks import Norm, bn_layers, q_network, tf
from bnrl.networks.inference import NumpyForward, Unsupported

from test_agent_bn import OBS_SCALE, OBS_SHIFT, SMALL, _batch, _build, _shared

# Two hidden layers in every network, so that the numpy pass chains layers. xla=false: the
# updates only move the statistics the actions are compared on, and their XLA compiles would
# cost more than everything else here (issue 24 item 6).
DEEP = dict(SMALL, hidden=(32, 32), xla=False)
ACTOR_DEEP = dict(actor_hidden=(32, 32))

CASES = {
    "sac-bn-actor": ("sac", dict(DEEP, **ACTOR_DEEP, critic_norm="batch", actor_norm="batch")),
    "td3-bn-actor": ("td3", dict(DEEP, **ACTOR_DEEP, critic_norm="batch", actor_norm="batch",
                                 actor_input_norm=True)),
    "crossq-renorm-actor": ("crossq", dict(DEEP, **ACTOR_DEEP)),
    "sac-layernorm-actor": ("sac", dict(DEEP, **ACTOR_DEEP, actor_norm="layer")),
    "dqn-bn-q": ("dqn", dict(DEEP, critic_norm="batch", critic_input_norm=True)),
}


def _session_action(agent, obs):
    """What ``act(obs, explore=False)`` computes through the session."""
    out = agent._act_fn(np.asarray(obs, np.float32).reshape(1, -1))
    return agent.head.act(out[0], explore=False, env_steps=agent.env_steps)


def _observations(agent, n, seed):
    rng = np.random.default_rng(seed)
    d = agent.obs_dim
    return rng.normal(OBS_SHIFT[:d], OBS_SCALE[:d], (n, d)).astype(np.float32)


def _train(agent, updates, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(updates):
        agent.update(_batch(rng, agent))


@pytest.mark.parametrize("case", list(CASES))
def test_numpy_action_equals_the_session_action(agents, case):
    name, config = CASES[case]
    agent = _shared(agents, name, config)
    assert agent._numpy_act is not None
    _train(agent, 30)
    model = (agent.networks.actors or agent.networks.critics)[0]
    for layer in bn_layers(model):  # training moved the statistics the action depends on
        mean, var = agent.sess.run([layer.moving_mean, layer.moving_variance])
        assert np.abs(mean).max() > 0.05 or np.abs(var - 1).max() > 0.05, layer.name
    obs = _observations(agent, 50, 1)
    expected = [_session_action(agent, o) for o in obs]
    first, second = agent.act(obs[0]), agent.act(obs[0])
    assert agent._numpy_acts_since_change == 2  # the second action ran in numpy
    got = [agent.act(o) for o in obs]
    if agent.head.action_space == "discrete":
        assert got == expected and first == second == expected[0]
        assert len(set(got)) > 1  # not a constant policy: the argmax is really compared
    else:
        np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=1e-5)
        np.testing.assert_allclose(second, first, atol=1e-5)


def test_weights_are_copied_again_after_updates_and_restore(agents, tmp_path):
    name, config = CASES["td3-bn-actor"]
    agent = _shared(agents, name, config)
    _train(agent, 5)
    agent.save(str(tmp_path / "ckpt"))
    obs = _observations(agent, 3, 2)
    agent.act(obs[0]), agent.act(obs[0])
    before = agent.act(obs[1])
    _train(agent, 5, seed=1)
    after = [agent.act(obs[1]) for _ in range(3)]  # session, then numpy from fresh weights
    assert np.abs(after[0] - before).max() > 1e-4  # the updates did change the action
    for a in after:
        np.testing.assert_allclose(a, _session_action(agent, obs[1]), atol=1e-5)
    agent.restore(str(tmp_path / "ckpt"))
    restored = [agent.act(obs[1]) for _ in range(3)]
    for a in restored:
        np.testing.assert_allclose(a, before, atol=1e-5)


def test_dueling_q_network_acts_through_the_session():
    agent = _build("dqn", dict(DEEP, critic_norm="batch", dueling=True))
    assert agent._numpy_act is None
    _train(agent, 3)
    obs = _observations(agent, 10, 3)
    assert [agent.act(o) for o in obs] == [_session_action(agent, o) for o in obs]
    agent.close()


def test_numpy_forward_computes_bn_inference_by_hand():
    """One BN layer with set statistics: ((x - mean) / sqrt(var + eps)) * gamma + beta, then the
    Dense; and a Lambda on the path is refused."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        model = q_network(2, 3, (4,), Norm("batch", input_norm=True), seed=0)
        sess.run(tf.compat.v1.global_variables_initializer())
        bn_in = model.get_layer("q_bn_in")
        stats = dict(gamma=[2.0, 0.5], beta=[1.0, -1.0], moving_mean=[3.0, -2.0],
                     moving_variance=[4.0, 0.25])
        for var in bn_in.weights:
            var.load(np.array(stats[var.name.split("/")[-1].split(":")[0]], np.float32), sess)
        x = np.array([[5.0, 1.0]], np.float32)
        normalized = ((x - [3.0, -2.0]) / np.sqrt(np.array([4.0, 0.25]) + 1e-3) * [2.0, 0.5]
                      + [1.0, -1.0])
        for output, expected in (("q_bn_in", normalized),
                                 (None, sess.run(model(x, training=False)))):
            forward = NumpyForward(model, output)
            forward.load(sess.run(forward.variables))
            np.testing.assert_allclose(forward(x), expected, rtol=1e-5, atol=1e-6)
        dueling = q_network(2, 3, (4,), Norm("none"), dueling=True, seed=0)
        with pytest.raises(Unsupported, match="Lambda"):
            NumpyForward(dueling)
