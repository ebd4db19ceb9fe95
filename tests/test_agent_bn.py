"""BN semantics of every agent, pinned with numbers computed here with numpy.

For each agent (DQN, DDPG, TD3, SAC, CrossQ with Batch Renorm and with plain BN):

* every ``update`` moves each BN layer's moving statistics exactly once, with the Keras EMA
  ``moving <- moving * momentum + batch_stat * (1 - momentum)`` of the biased batch moments of the
  tensors that update fed (for CrossQ: the *joint* batch ``concat([obs, next_obs])``);
* acting and evaluating change no variable at all, and use the moving statistics;
* target networks polyak their weights and copy / freeze / polyak their BN statistics;
* the graph is finalized and never grows;
* ``check_wiring`` passes for every variant, and a miswired agent is refused at construction;
* ``log=True`` returns the seed's diagnostics with post-step values, and none without BN.

Networks are tiny (one hidden layer of 32 units; CrossQ's critic 64) and each agent is built
once (tests/conftest.py), so that the file stays fast.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import bnrl.agents.sac
import bnrl.agents.td3
import bnrl.agents.update
from bnrl.agents import make_agent
from bnrl.networks import bn_layers, check_wiring, tf
from bnrl.networks import training_call as real_training_call

MOMENTUM = 0.99  # the agents' default bn_momentum (Keras convention)
EPS = 1e-3  # the agents' default bn_epsilon
ATOL = 1e-5
BATCH = 16
OBS_DIM, ACT_DIM, N_ACTIONS = 3, 2, 3
# Observations far from standardized, so that the EMA visibly leaves 0 / 1.
OBS_SHIFT = np.array([1.0, -2.0, 0.5, 3.0])
OBS_SCALE = np.array([0.5, 2.0, 1.0, 0.3])

BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
DQN_OBS = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM + 1,), np.float32)
BOX_ACT = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
DISCRETE_ACT = gym.spaces.Discrete(N_ACTIONS)

SMALL = dict(hidden=(32,), batch_size=BATCH, learning_starts=0)
ACTOR_SMALL = dict(actor_hidden=(32,))
# The pre-remedy BN settings (one training-mode pass on (s, a), targets and actor-loss critic in
# inference mode), which the "auto" defaults no longer pick with critic_norm=batch.
CLASSIC_BN = dict(critic_batch="separate", target="polyak", bootstrap_mode="inference")
ACTOR_PLAIN = dict(CLASSIC_BN, actor_loss_mode="inference")
# case id -> (agent name, config). Every critic normalizes its state input too, so that the
# input BN layer's batch statistics are exactly those of the observations fed. Targets move with
# tau = 0.5 (DQN's every 2 updates), as the target network tests check them: their "copy" cases
# are these agents.
BN_CASES = {
    "dqn": ("dqn", dict(SMALL, **CLASSIC_BN, tau=0.5, target_update_interval=2,
                        critic_norm="batch", critic_input_norm=True)),
    "ddpg": ("ddpg", dict(SMALL, **ACTOR_SMALL, **ACTOR_PLAIN, tau=0.5, critic_norm="batch",
                          critic_input_norm=True, actor_norm="batch")),
    "td3": ("td3", dict(SMALL, **ACTOR_SMALL, **ACTOR_PLAIN, tau=0.5, critic_norm="batch",
                        critic_input_norm=True, actor_norm="batch")),
    "sac": ("sac", dict(SMALL, **ACTOR_SMALL, **ACTOR_PLAIN, tau=0.5, critic_norm="batch",
                        critic_input_norm=True, actor_norm="batch")),
    # TD3's defaults with a BN critic (joint pass, target critic in training mode).
    "td3-defaults": ("td3", dict(SMALL, **ACTOR_SMALL, critic_norm="batch",
                                 critic_input_norm=True, actor_norm="batch")),
    # CrossQ's defaults: Batch Renorm in critic and actor, critic input norm on.
    "crossq-renorm": ("crossq", dict(SMALL, **ACTOR_SMALL, hidden=(64,))),
    "crossq-batch": ("crossq", dict(SMALL, **ACTOR_SMALL, hidden=(64,), critic_norm="batch",
                                    actor_norm="batch")),
}


def _runs(variant: str, piece: str) -> bool:
    """Whether a train-op variant (pieces joined by '+') runs ``piece``."""
    return piece in variant.split("+")


def _spaces(name: str):
    return (DQN_OBS, DISCRETE_ACT) if name == "dqn" else (BOX_OBS, BOX_ACT)


def _build(name: str, config: dict, seed: int = 0):
    obs_space, act_space = _spaces(name)
    return make_agent(name, obs_space, act_space, config, seed)


def _shared(agents, name: str, config: dict, seed: int = 0):
    """``_build(name, config, seed)`` from the module's ``agents`` cache (tests/conftest.py): in
    the state of a new build, built once per module. Not to be closed by the test."""
    obs_space, act_space = _spaces(name)
    return agents.get(name, obs_space, act_space, config, seed)


def _batch(rng: np.random.Generator, agent, n: int = BATCH, done=None) -> dict:
    d = agent.obs_dim
    obs = rng.normal(OBS_SHIFT[:d], OBS_SCALE[:d], (n, d)).astype(np.float32)
    # next_obs with other statistics than obs: the joint CrossQ batch must differ from either.
    next_obs = (rng.normal(OBS_SHIFT[:d], OBS_SCALE[:d], (n, d)) * 1.5 - 0.7).astype(np.float32)
    if agent.head.action_space == "discrete":
        action = rng.integers(0, agent.head.n, n).astype(np.int64)
    else:
        action = rng.uniform(-1.0, 1.0, (n, agent.head.action_dim)).astype(np.float32)
    return dict(obs=obs, action=action, reward=rng.normal(size=n).astype(np.float32),
                next_obs=next_obs,
                done=np.zeros(n, np.float32) if done is None else np.asarray(done, np.float32))


def _run(agent, tensors):
    return agent.sess.run(list(tensors))


def _layer(model, name):
    return model.get_layer(name)


def _is_renorm(layer) -> bool:
    return bool(getattr(layer, "renorm", False))


def _expected_moving(layer_values: dict, x: np.ndarray, renorm: bool) -> tuple:
    """(moving_mean, moving_variance) after one Keras BN update on the batch ``x``."""
    x = x.astype(np.float64)
    mean, var = x.mean(0), x.var(0)  # biased variance, as tf.nn.moments
    new_mean = layer_values["moving_mean"] * MOMENTUM + mean * (1 - MOMENTUM)
    if not renorm:
        return new_mean, layer_values["moving_variance"] * MOMENTUM + var * (1 - MOMENTUM)
    # Keras renorm tracks moving_stddev with the EMA of sqrt(var + eps) and derives the variance.
    std = layer_values["moving_stddev"] * MOMENTUM + np.sqrt(var + EPS) * (1 - MOMENTUM)
    return new_mean, np.maximum(std * std - EPS, 0.0)


def _layer_values(agent, layer) -> dict:
    names = ["moving_mean", "moving_variance", "gamma", "beta"]
    if _is_renorm(layer):
        names.append("moving_stddev")
    return dict(zip(names, _run(agent, [getattr(layer, n) for n in names]), strict=True))


def _dense_values(agent, dense) -> tuple:
    """(kernel, bias) of a Dense layer; bias 0 for one followed by BN (builders give it none)."""
    kernel = _run(agent, [dense.kernel])[0]
    bias = _run(agent, [dense.bias])[0] if dense.use_bias else np.zeros(kernel.shape[1])
    return kernel, bias


def _bn_train(x, gamma, beta):
    x = x.astype(np.float64)
    return (x - x.mean(0)) / np.sqrt(x.var(0) + EPS) * gamma + beta


def _variables(agent):
    return agent.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)


def _snapshot(agent) -> list[np.ndarray]:
    return _run(agent, _variables(agent))


@pytest.fixture(params=list(BN_CASES))
def bn_agent(request, agents):
    """The case's agent as built (built once, shared by the tests below)."""
    name, config = BN_CASES[request.param]
    return _shared(agents, name, config)


# ------------------------------------------------------------------------- 1. EMA, once per step
def test_moving_statistics_move_once_per_update(bn_agent):
    """k = 3 updates: the state-input BN layer of every critic head follows the EMA of the
    biased moments of exactly the observations fed (the joint obs/next_obs batch of a joint
    critic pass: CrossQ, BN defaults), the first hidden BN layer the EMA of its
    pre-activations, and the actor's first BN layer moves only on the steps that train the
    actor."""
    agent = bn_agent
    critic = agent.networks.critics[0]
    joint = agent.config.critic_batch == "joint"
    input_layers = [layer for layer in bn_layers(critic) if layer.name.endswith("_bn_in")]
    n_heads = getattr(agent.config, "n_critics", 1)
    assert len(input_layers) == n_heads  # q_bn_in (DQN) or q0_bn_in, q1_bn_in
    if agent.name == "dqn":
        assert [layer.name for layer in input_layers] == ["q_bn_in"]
    rng = np.random.default_rng(11)
    batches = [_batch(rng, agent) for _ in range(3)]
    variants = []
    for batch in batches:
        variant = agent.schedule.phase(agent.updates_done)
        variants.append(variant)
        before = {layer.name: _layer_values(agent, layer) for layer in bn_layers(critic)}
        first = "q" if agent.name == "dqn" else "q0"
        k0, b0 = _dense_values(agent, _layer(critic, f"{first}_dense0"))
        actor_bn = actor_before = None
        if agent.networks.actors:
            actor = agent.networks.actors[0]
            actor_bn = _layer(actor, "pi_bn0")
            actor_before = _layer_values(agent, actor_bn)
            ka, ba = _dense_values(agent, _layer(actor, "pi_dense0"))
        updates_before = agent.updates_done

        agent.update(batch)

        assert agent.updates_done == updates_before + 1
        fed = np.concatenate([batch["obs"], batch["next_obs"]]) if joint else batch["obs"]
        for layer in input_layers:
            renorm = _is_renorm(layer)
            exp_mean, exp_var = _expected_moving(before[layer.name], fed, renorm)
            got_mean, got_var = _run(agent, [layer.moving_mean, layer.moving_variance])
            np.testing.assert_allclose(got_mean, exp_mean, atol=ATOL, err_msg=layer.name)
            np.testing.assert_allclose(got_var, exp_var, atol=ATOL, err_msg=layer.name)
            if joint:
                # The joint batch, not obs alone: its statistics differ by far more than ATOL.
                obs_only, _ = _expected_moving(before[layer.name], batch["obs"], renorm)
                assert np.abs(obs_only - exp_mean).max() > 100 * ATOL
        # Every critic BN layer moved (the input layer and every hidden layer).
        # (After a normalized input the next pre-activations have mean ~ bias, so look at both.)
        for layer in bn_layers(critic):
            got_mean, got_var = _run(agent, [layer.moving_mean, layer.moving_variance])
            moved = max(np.abs(got_mean - before[layer.name]["moving_mean"]).max(),
                        np.abs(got_var - before[layer.name]["moving_variance"]).max())
            assert moved > 1e-5, layer.name

        if not joint:
            # First hidden BN layer: pre-activations of this step's forward pass (pre-step weights)
            # on the training-mode-normalized input.
            bn_in = before[input_layers[0].name]
            x = _bn_train(batch["obs"], bn_in["gamma"], bn_in["beta"])
            if agent.head.action_space != "discrete":
                x = np.concatenate([x, batch["action"]], axis=1)
            h = x @ k0.astype(np.float64) + b0
            hidden = _layer(critic, f"{first}_bn0")
            exp_mean, exp_var = _expected_moving(before[hidden.name], h, False)
            got_mean, got_var = _run(agent, [hidden.moving_mean, hidden.moving_variance])
            np.testing.assert_allclose(got_mean, exp_mean, atol=ATOL)
            np.testing.assert_allclose(got_var, exp_var, atol=ATOL)

        if actor_bn is not None:
            got_mean, got_var = _run(agent, [actor_bn.moving_mean, actor_bn.moving_variance])
            if _runs(variant, "actor"):
                h = batch["obs"].astype(np.float64) @ ka + ba
                exp_mean, exp_var = _expected_moving(actor_before, h, _is_renorm(actor_bn))
            else:  # a critic-only step must not touch the actor's statistics
                exp_mean, exp_var = actor_before["moving_mean"], actor_before["moving_variance"]
            np.testing.assert_allclose(got_mean, exp_mean, atol=ATOL)
            np.testing.assert_allclose(got_var, exp_var, atol=ATOL)
    if agent.name in ("td3", "crossq"):
        # both kinds of step were exercised
        assert {_runs(v, "actor") for v in variants} == {True, False}


# ------------------------------------------------------------------ 2. acting changes nothing
def _numpy_forward(agent, model, obs: np.ndarray, prefix: str, n_hidden: int, input_norm: bool,
                   post_activation: bool = False) -> np.ndarray:
    """Inference-mode MLP body (moving statistics) computed with numpy from the weights."""

    def bn(x, layer):
        v = _layer_values(agent, layer)
        return (x - v["moving_mean"]) / np.sqrt(v["moving_variance"] + EPS) * v["gamma"] + v["beta"]

    x = obs.astype(np.float64)
    if input_norm:
        x = bn(x, _layer(model, f"{prefix}_bn_in"))
    for i in range(n_hidden):
        dense = _layer(model, f"{prefix}_dense{i}")
        kernel, bias = _dense_values(agent, dense)
        x = x @ kernel + bias
        if not post_activation:
            x = bn(x, _layer(model, f"{prefix}_bn{i}"))
        x = np.maximum(x, 0.0)
        if post_activation:
            x = bn(x, _layer(model, f"{prefix}_bn{i}"))
    return x


def test_acting_and_evaluating_leave_all_variables_unchanged(bn_agent):
    agent = bn_agent
    rng = np.random.default_rng(5)
    for _ in range(2):  # make the moving statistics non-trivial first
        agent.update(_batch(rng, agent))
    assert agent.env_steps >= agent.config.learning_starts  # explore=True uses the network
    before = _snapshot(agent)
    obs = rng.normal(OBS_SHIFT[: agent.obs_dim], OBS_SCALE[: agent.obs_dim], (6, agent.obs_dim))
    greedy = [agent.act(o, explore=False) for o in obs]
    for o in obs:
        agent.act(o, explore=True)
    # "Evaluating": repeated greedy acting, as an evaluation loop does.
    again = [agent.act(o, explore=False) for o in obs]
    after = _snapshot(agent)
    for var, b, a in zip(_variables(agent), before, after, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"{var.name} changed while acting")
    # The same actions again; to float tolerance only, since the first action after an update
    # is the session's and later ones numpy's (tests/test_numpy_act.py).
    for g, a in zip(greedy, again, strict=True):
        np.testing.assert_allclose(g, a, atol=1e-6)

    # Acting is inference mode: the moving statistics, not the (size-1) batch's.
    if agent.head.action_space == "discrete":
        body = _numpy_forward(agent, agent.algorithm.q, obs, "q", len(agent.config.hidden), True)
        out = _layer(agent.algorithm.q, "q_out")
        kernel, bias = _run(agent, [out.kernel, out.bias])
        q = body @ kernel + bias
        np.testing.assert_array_equal(greedy, q.argmax(1))
    else:
        actor = agent.networks.actors[0]
        body = _numpy_forward(agent, actor, obs, "pi", len(agent.config.actor_hidden), False)
        head = _layer(actor, "pi_mean" if agent.name in ("sac", "crossq") else "pi_out")
        kernel, bias = _run(agent, [head.kernel, head.bias])
        np.testing.assert_allclose(np.stack(greedy), np.tanh(body @ kernel + bias), atol=ATOL)


# ---------------------------------------------------------------------------- 3. target networks
# The policy code is shared (agents.update.target_update_ops); which variants update targets and
# which pairs exist is per agent: "copy" for every agent with targets, the others for DQN / TD3.
TARGET_CASES = [("dqn", "copy"), ("ddpg", "copy"), ("td3", "copy"), ("sac", "copy"),
                ("td3", "frozen"), ("dqn", "polyak"), ("td3", "polyak")]


@pytest.mark.parametrize("name,policy", TARGET_CASES, ids=[f"{n}-{p}" for n, p in TARGET_CASES])
def test_target_networks_follow_target_bn_policy(agents, name, policy):
    """With tau = 0.5: trainable target weights become 0.5 * old + 0.5 * new online; BN statistics
    are copied (``copy``), kept at their init 0 / 1 (``frozen``) or polyak-averaged (``polyak``)
    on the steps that update targets, and nothing changes on the other steps."""
    config = dict(BN_CASES[name][1], target_bn=policy, tau=0.5)
    if name == "dqn":
        config["target_update_interval"] = 2  # steps alternate train, sync
    agent = _shared(agents, name, config)  # with "copy": the bn_agent of its case
    tau = 0.5
    rng = np.random.default_rng(3)
    pairs = agent.networks.target_pairs
    assert pairs and [o.name for o, _ in pairs] == (
        ["q_network"] if name == "dqn" else
        ["critic", "actor"] if name in ("ddpg", "td3") else ["critic"])
    checked_stat = checked_weight = False
    variants = []
    for _ in range(4):
        variant = agent.schedule.phase(agent.updates_done)
        variants.append(variant)
        targets_before = {t.name: _run(agent, t.weights) for _, t in pairs}
        agent.update(_batch(rng, agent))
        for online, target in pairs:
            trainable = {v.ref() for v in online.trainable_weights}
            new_online = _run(agent, online.weights)
            new_target = _run(agent, target.weights)
            for src, old_t, new_o, new_t in zip(online.weights, targets_before[target.name],
                                                new_online, new_target, strict=True):
                what = f"{variant}: {src.name}"
                if not _runs(variant, "target"):
                    np.testing.assert_array_equal(new_t, old_t, err_msg=what)
                elif src.ref() in trainable:
                    np.testing.assert_allclose(new_t, (1 - tau) * old_t + tau * new_o,
                                               atol=1e-6, err_msg=what)
                    checked_weight = checked_weight or not np.allclose(new_t, old_t)
                elif policy == "copy":
                    np.testing.assert_array_equal(new_t, new_o, err_msg=what)
                    checked_stat = checked_stat or not np.allclose(new_t, old_t)
                elif policy == "frozen":
                    np.testing.assert_array_equal(new_t, old_t, err_msg=what)
                else:
                    np.testing.assert_allclose(new_t, (1 - tau) * old_t + tau * new_o,
                                               atol=1e-6, err_msg=what)
                    checked_stat = checked_stat or not np.allclose(new_t, old_t)
    assert any(_runs(v, "target") for v in variants)
    if name in ("dqn", "td3"):  # also steps that leave the target alone
        assert not all(_runs(v, "target") for v in variants)
    assert checked_weight
    assert checked_stat == (policy != "frozen")
    target_bn = [layer for _, t in pairs for layer in bn_layers(t)]
    assert target_bn
    for layer in target_bn:
        mean, var = _run(agent, [layer.moving_mean, layer.moving_variance])
        if policy == "frozen":  # still the initializers' values
            np.testing.assert_array_equal(mean, np.zeros_like(mean))
            np.testing.assert_array_equal(var, np.ones_like(var))
        else:
            assert np.abs(mean).max() > 0


def test_target_networks_exist_except_for_crossq(bn_agent):
    agent = bn_agent
    targets = [t for _, t in agent.networks.target_pairs]
    if agent.config.target == "none":
        assert targets == []
    else:
        assert targets
        # Each target's BN layers mirror the online network's.
        for online, target in agent.networks.target_pairs:
            assert [la.name for la in bn_layers(target)] == [la.name for la in bn_layers(online)]
    # Every moving mean in the graph belongs to a known model: no hidden (target) copies.
    models = agent.networks.critics + agent.networks.actors + targets
    n_bn = sum(len(bn_layers(m)) for m in models)
    assert len([v for v in _variables(agent) if v.name.endswith("moving_mean:0")]) == n_bn


# ------------------------------------------------------------------- 4. the graph never grows
def test_graph_is_finalized_and_does_not_grow(bn_agent):
    agent = bn_agent
    assert agent.graph.finalized
    n_ops = len(agent.graph.get_operations())
    rng = np.random.default_rng(7)
    for _ in range(2 * BATCH):
        b = _batch(rng, agent, n=1)
        agent.observe(b["obs"][0], b["action"][0], b["reward"][0], b["next_obs"][0], False)
    for log in (False, True):
        for _ in range(5):
            agent.train_step(log=log)
        assert len(agent.graph.get_operations()) == n_ops
    agent.act(b["obs"][0], explore=True)
    assert len(agent.graph.get_operations()) == n_ops
    with pytest.raises(RuntimeError, match="finalized"), agent.graph.as_default():
        tf.constant(1.0)


# ---------------------------------------------------------------------------- 5. wiring check
def test_every_variant_is_wired(bn_agent):
    agent = bn_agent
    models = agent.networks.critics + agent.networks.actors
    assert [layer for m in models for layer in bn_layers(m)]
    for variant, op in agent.runner.train_ops.items():
        assert check_wiring(op, models) == [], variant


def test_check_wiring_outside_the_graph_context():
    """check_wiring reads Keras' layer.updates, which tf-keras checks differently outside a
    graph context (it used to die with "'Graph' object has no attribute
    'is_control_flow_graph'"); it works both inside and after leaving the graph's context."""
    from bnrl.networks import q_network, with_updates
    from bnrl.networks.builders import Norm

    graph = tf.Graph()
    with graph.as_default():
        model = q_network(3, 2, (8,), Norm("batch"))
        x = tf.compat.v1.placeholder(tf.float32, (None, 3))
        q, updates = real_training_call(model, x)
        stale = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_mean(q))
        op = with_updates(stale, updates)
        assert check_wiring(op, [model]) == []  # fine inside the graph's context
        inside = check_wiring(stale, [model])
    assert check_wiring(op, [model]) == []  # the same calls after leaving it
    assert check_wiring(stale, [model]) == inside
    assert len(inside) == 2 and all("never updated" in p for p in inside)


def _patched_training_call(mode: str):
    """A ``training_call`` that miswires the critic's (or the actor's) BN updates."""

    def call(model, inputs, **kwargs):
        outputs, updates = real_training_call(model, inputs, **kwargs)
        is_critic = model.name in ("critic", "q_network")
        if mode == "drop_critic" and is_critic or mode == "drop_actor" and model.name == "actor":
            return outputs, []
        if mode == "double_critic" and is_critic:
            # The classic bug: a second training-mode call whose updates are run too.
            _, more = real_training_call(model, inputs, **kwargs)
            return outputs, updates + more
        return outputs, updates

    return call


MISWIRED = [("dqn", "drop_critic"), ("td3", "drop_critic"), ("sac", "drop_critic"),
            ("crossq-batch", "drop_critic"), ("sac", "drop_actor"), ("td3", "double_critic"),
            # Batch Renorm's update ops consume renorm's own identity of the batch moments, which
            # the forward pass never computes: once missed by check_wiring.
            ("crossq-renorm", "drop_critic"), ("crossq-renorm", "drop_actor")]


@pytest.mark.parametrize("case,mode", MISWIRED)
def test_miswired_agent_is_refused(case, mode, monkeypatch):
    for module in (bnrl.agents.update, bnrl.agents.td3, bnrl.agents.sac):
        monkeypatch.setattr(module, "training_call", _patched_training_call(mode))
    name, config = BN_CASES[case]
    expected = "never updated" if mode.startswith("drop") else "updated 2 times"
    layer = "pi_bn" if mode == "drop_actor" else "q"
    if mode.startswith("drop"):
        # Only the plain graph can drop updates: inside a compiled update (the default with BN
        # layers) automatic control dependencies run every update op created.
        config = dict(config, xla_single_update=False)
    with pytest.raises(RuntimeError, match="miswired") as info:
        _build(name, config)
    assert expected in str(info.value)
    assert f"BN layer '{layer}" in str(info.value)


# ------------------------------------------------------------------------------ 6. diagnostics
STATS = ("gamma", "beta", "moving_mean", "moving_variance")


def _expected_diagnostics(agent, models, prefix) -> dict:
    layers = [layer for m in models for layer in bn_layers(m)]
    if not layers:
        return {}
    out, per_stat = {}, {s: [] for s in STATS}
    for layer in layers:
        for stat, value in zip(STATS, _run(agent, [getattr(layer, s) for s in STATS]),
                               strict=True):
            norm = float(np.linalg.norm(value.astype(np.float64)))
            out[f"bn/{prefix}/{layer.name}/{stat}"] = norm
            per_stat[stat].append(norm)
    for stat, norms in per_stat.items():
        out[f"bn_{prefix}_{stat}"] = float(np.mean(norms))
    return out


def test_log_returns_post_step_diagnostics(bn_agent):
    agent = bn_agent
    rng = np.random.default_rng(9)
    seen = set()
    for i in range(4):
        n = agent.updates_done
        if i % 2:  # shifts the logged steps' phase, so that every variant gets logged
            plain_keys = set(agent.update(_batch(rng, agent)))
            assert plain_keys and not [k for k in plain_keys if k.startswith("bn")]
        seen.add(agent.schedule.phase(agent.updates_done))
        out = agent.update(_batch(rng, agent), log=True)
        assert agent.updates_done == n + 1 + i % 2  # logging does not take another step
        expected = _expected_diagnostics(agent, agent.networks.critics, "Q")
        expected.update(_expected_diagnostics(agent, agent.networks.actors, "pi"))
        got_keys = {k for k in out if k.startswith("bn")}
        greedy = {"bn_Q_greedy_agreement"} if agent.name == "dqn" else set()
        assert got_keys == set(expected) | {"bn_Q_train_eval_gap"} | greedy
        for key in ("bn_Q_gamma", "bn_Q_beta", "bn_Q_moving_mean", "bn_Q_moving_variance"):
            assert key in out
        if agent.networks.actors:
            assert {"bn_pi_gamma", "bn_pi_moving_mean"} <= got_keys
        # The post-step values read from the session right after that step.
        for key, value in expected.items():
            assert out[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert np.isfinite(out["bn_Q_train_eval_gap"]) and out["bn_Q_train_eval_gap"] >= 0
        assert expected["bn_Q_moving_mean"] > 0  # moved from its init
    # Every variant these updates can use (DDPG runs all pieces on every step).
    n = agent.updates_done
    assert seen == {agent.schedule.phase(i) for i in range(n, n + 6)}


NO_BN_CASES = {
    "dqn-none": ("dqn", dict(SMALL, critic_norm="none")),
    "crossq-none": ("crossq", dict(SMALL, **ACTOR_SMALL, critic_norm="none", actor_norm="none",
                                   critic_input_norm=False)),
    # LayerNorm is no BN: no bn_* scalars either.
    "sac-layer": ("sac", dict(SMALL, **ACTOR_SMALL, critic_norm="layer", actor_norm="none")),
    # BN only in the actor: its scalars, none of the critic's (and no train/eval gap).
    "ddpg-actor-only": ("ddpg", dict(SMALL, **ACTOR_SMALL, critic_norm="none",
                                     actor_norm="batch")),
}


@pytest.mark.parametrize("case", list(NO_BN_CASES))
def test_no_bn_scalars_without_bn(case):
    name, config = NO_BN_CASES[case]
    agent = _build(name, config)
    rng = np.random.default_rng(1)
    keys = set()
    for _ in range(3):
        keys |= set(agent.update(_batch(rng, agent), log=True))
    bn_keys = {k for k in keys if k.startswith("bn")}
    if case == "ddpg-actor-only":
        expected = _expected_diagnostics(agent, agent.networks.actors, "pi")
        assert bn_keys == set(expected)
        assert not [k for k in keys if k.startswith(("bn_Q", "bn/Q"))]
    else:
        assert bn_keys == set()
    assert "losses/critic_loss" in keys or "losses/q_loss" in keys
    agent.close()
