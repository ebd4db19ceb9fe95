"""The ``bn_modes`` presets (issue 27): what each resolves to, the refusals, and, end to end, the BN
mode each use of the networks actually runs in under a preset, pinned with numpy.

The switches themselves are tested one by one in tests/test_bn_settings.py and
tests/test_agent_bn.py; here a preset must (1) resolve to exactly its switch values, refusing a
switch set to another value, and (2) make every use run in its mode in one real update: the critic's
TD estimate, the bootstrap critic, the actor sampling next actions, the critic inside the actor
loss, the actor inside the actor loss, and acting. A use in training mode normalizes with the batch
statistics of its own rows and, unless it is the one update pass of its network, writes no moving
statistics; a use in inference mode normalizes with the moving statistics. Every expected number is
recomputed here from the layer weights, and the other mode would give visibly other numbers.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from bnrl.agents import AGENTS, make_agent
from bnrl.agents.config import BN_MODES, BN_SETTINGS
from bnrl.compare import variants as vs
from bnrl.compare.results import RunSpec, resolve_spec

MOMENTUM, EPS, BATCH = 0.99, 1e-3, 16
BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
BOX_ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
DISCRETE_ACT = gym.spaces.Discrete(3)
MODE_SWITCHES = ("bootstrap_mode", "actor_loss_mode", "next_action_mode")


def _build(name: str, config: dict, seed: int = 0):
    return make_agent(name, BOX_OBS, DISCRETE_ACT if name == "dqn" else BOX_ACT, config, seed)


# --------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("name", ["dqn", "ddpg", "td3", "sac", "crossq"])
@pytest.mark.parametrize("norm", ["batch", "batch_renorm", "none"])
def test_a_preset_resolves_to_its_switch_values_and_nothing_else(name, norm):
    """Each preset sets the mode switches the agent has to the preset's values (DQN has only
    bootstrap_mode) and leaves every other setting as without it; ``auto`` changes nothing."""
    cls = AGENTS[name].config_class
    plain = cls(critic_norm=norm).resolved()
    for preset, modes in BN_MODES.items():
        if name == "crossq" and preset == "naive":
            continue  # refused: CrossQ's own bootstrap_mode is training (below)
        config = cls(critic_norm=norm, bn_modes=preset).resolved()
        assert config.bn_modes == preset
        for switch in MODE_SWITCHES:
            if not hasattr(plain, switch):
                assert switch != "bootstrap_mode"
                continue
            expected = modes.get(switch, getattr(plain, switch))
            assert getattr(config, switch) == expected, (preset, switch)
        others = {f.name for f in dataclasses.fields(cls)} - {"bn_modes", *MODE_SWITCHES}
        assert {k: getattr(config, k) for k in others} == {k: getattr(plain, k) for k in others}
        assert config.resolved() == config  # resolving is done once and for all
    assert {k: getattr(cls(critic_norm=norm, bn_modes="auto").resolved(), k)
            for k in BN_SETTINGS if hasattr(plain, k)} == {
                k: getattr(plain, k) for k in BN_SETTINGS if hasattr(plain, k)}


def test_ma_bn_is_the_studys_mode_per_use():
    """Mode-Aware BN (Wang et al. 2025; its code's update_mode TTETT): bootstrap critic T,
    critic in the actor loss E, actor sampling next actions T. The TD estimate (always the one
    training-mode pass) and acting (always inference) have no switch."""
    assert BN_MODES["ma_bn"] == {"bootstrap_mode": "training", "actor_loss_mode": "inference",
                                 "next_action_mode": "training"}
    assert set(BN_MODES["naive"].values()) == {"inference"} and BN_MODES["auto"] == {}
    sac = AGENTS["sac"].config_class(critic_norm="batch", bn_modes="ma_bn").resolved()
    # A BN critic's other auto settings are kept: the joint pass with a target network.
    assert (sac.critic_batch, sac.target) == ("joint", "polyak")


REFUSED = [
    ("sac", dict(bn_modes="ma_bn", bootstrap_mode="inference"),
     "bn_modes=ma_bn sets bootstrap_mode=training, but bootstrap_mode=inference is set too"),
    ("td3", dict(bn_modes="ma_bn", next_action_mode="inference"),
     "bn_modes=ma_bn sets next_action_mode=training, but next_action_mode=inference"),
    ("ddpg", dict(bn_modes="naive", actor_loss_mode="training"),
     "bn_modes=naive sets actor_loss_mode=inference, but actor_loss_mode=training"),
    ("dqn", dict(bn_modes="naive", bootstrap_mode="training"),
     "bn_modes=naive sets bootstrap_mode=inference"),
    # CrossQ's own default (bootstrap from its joint training-mode pass) conflicts too.
    ("crossq", dict(bn_modes="naive"), "explicitly or by the agent's defaults"),
    ("sac", dict(bn_modes="mabn"), "unknown bn_modes 'mabn': use auto, ma_bn, naive"),
    ("sac", dict(next_action_mode="batch"), "unknown next_action_mode 'batch'"),
    ("dqn", dict(next_action_mode="training"), "unknown config key"),
    ("pqn", dict(bn_modes="ma_bn"), "pqn computes its Q\\(lambda\\) targets in inference mode"),
]


@pytest.mark.parametrize("name,settings,message", REFUSED,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in s.items())}"
                              for n, s, _ in REFUSED])
def test_a_switch_that_contradicts_the_preset_is_refused_in_one_line(name, settings, message):
    from bnrl.agents import config_from_dict

    with pytest.raises(ValueError, match=message) as info:
        config_from_dict(AGENTS[name].config_class, dict(critic_norm="batch", **settings)
                         if name != "pqn" else settings)
    assert "\n" not in str(info.value)


def test_a_switch_that_agrees_with_the_preset_is_accepted():
    cls = AGENTS["td3"].config_class
    config = cls(critic_norm="batch", bn_modes="ma_bn", bootstrap_mode="training",
                 next_action_mode="training").resolved()
    assert config == cls(critic_norm="batch", bn_modes="ma_bn").resolved()
    # The paper preset of DDPG states the classic modes, so naive agrees with it.
    ddpg = AGENTS["ddpg"].config_class
    assert ddpg.paper(bn_modes="naive").resolved().next_action_mode == "inference"


@pytest.mark.parametrize("variant,actor_norm", [("ma_bn", "none"), ("ma_bn_actor", "batch")])
def test_the_ma_bn_variants_resolve_to_the_preset(variant, actor_norm):
    settings = vs.builtin_variants()[variant].settings
    spec = RunSpec("sac", "Pendulum-v1", variant, 0, 1000, None, "", 1, settings=dict(settings))
    agent = resolve_spec(spec).agent_config
    assert (agent.critic_norm, agent.actor_norm, agent.bn_modes) == ("batch", actor_norm, "ma_bn")
    assert {k: getattr(agent, k) for k in MODE_SWITCHES} == BN_MODES["ma_bn"]
    if variant == "ma_bn":  # every agent takes it (DQN: bootstrap_mode only)
        spec = RunSpec("dqn", "CartPole-v1", variant, 0, 1000, None, "", 1,
                       settings=dict(settings))
        assert resolve_spec(spec).agent_config.bootstrap_mode == "training"


# ----------------------------------------------------------------- numpy of the tiny networks
def _net(agent, model, prefix: str, out: str) -> dict:
    """The weights of a one-hidden-layer MLP (Dense without bias -> BN -> ReLU -> ``out``)."""
    dense, bn, head = (model.get_layer(n) for n in (f"{prefix}_dense0", f"{prefix}_bn0", out))
    assert not dense.use_bias  # a Dense followed by BN has none
    names = ("k0", "gamma", "beta", "mean", "var", "k1", "b1")
    return dict(zip(names, agent.sess.run([dense.kernel, bn.gamma, bn.beta, bn.moving_mean,
                                           bn.moving_variance, head.kernel, head.bias]),
                    strict=True))


def _pre(x, net) -> np.ndarray:
    """The BN layer's input: the Dense output on the rows ``x``."""
    return x.astype(np.float64) @ net["k0"]


def _forward(x, net, mode: str) -> np.ndarray:
    """The MLP on the rows ``x`` with BN in ``mode``: the batch statistics of exactly these rows
    (``training``) or the layer's moving statistics (``inference``)."""
    h = _pre(x, net)
    mu, var = (h.mean(0), h.var(0)) if mode == "training" else (net["mean"], net["var"])
    h = np.maximum((h - mu) / np.sqrt(var + EPS) * net["gamma"] + net["beta"], 0.0)
    return h @ net["k1"] + net["b1"]


def _ema(net, rows) -> tuple:
    """The BN layer's moving statistics after one Keras update on the Dense output of ``rows``."""
    h = _pre(rows, net)
    return (net["mean"] * MOMENTUM + h.mean(0) * (1 - MOMENTUM),
            net["var"] * MOMENTUM + h.var(0) * (1 - MOMENTUM))


def _batch(rng) -> dict:
    obs = rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 1.0], (BATCH, 3)).astype(np.float32)
    next_obs = (rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 1.0], (BATCH, 3)) * 1.5 - 0.7).astype(
        np.float32)
    return dict(obs=obs, action=rng.uniform(-1, 1, (BATCH, 2)).astype(np.float32),
                reward=rng.normal(size=BATCH).astype(np.float32), next_obs=next_obs,
                done=(rng.uniform(size=BATCH) < 0.25).astype(np.float32))


def _other(mode: str) -> str:
    return "inference" if mode == "training" else "training"


def _far(a, b) -> bool:
    return abs(float(a) - float(b)) > 1e-2 * max(abs(float(b)), 1e-3)


# DDPG (one critic, no target policy smoothing, actor step every update): every number of its
# update is a deterministic function of the batch and the weights. Targets frozen at their
# initial BN statistics (target_bn=frozen), so any write by their training-mode passes shows.
DDPG = dict(hidden=(8,), actor_hidden=(8,), batch_size=BATCH, learning_starts=0, gamma=0.9,
            critic_norm="batch", actor_norm="batch", target_bn="frozen", tau=0.5, xla=False)


@pytest.mark.parametrize("preset", ["ma_bn", "naive", "auto"])
def test_every_use_runs_in_the_presets_mode(agents, preset):
    """One DDPG update under the preset, with a BN critic and a BN actor (joint critic pass and
    polyak targets: the auto settings of a BN critic), recomputed with numpy:

    * TD estimate: the critic's one training-mode pass over ``concat([s, s'])``: Q from the
      batch statistics of the 2B rows, and the moving statistics move by the EMA of exactly them;
    * next actions: the target actor on ``s'`` in ``next_action_mode`` (training: batch
      statistics of ``s'``), its statistics unwritten;
    * bootstrap: the target critic in ``bootstrap_mode`` (training: batch statistics of the joint
      rows), its statistics unwritten;
    * actor loss: the actor in training mode on ``s`` (its moving statistics move by the EMA of
      exactly ``s``, not ``s'``) and the new critic in ``actor_loss_mode``;
    * acting: the actor in inference mode.
    """
    agent = agents.get("ddpg", BOX_OBS, BOX_ACT, dict(DDPG, bn_modes=preset))
    c = agent.config
    modes = {k: getattr(c, k) for k in MODE_SWITCHES}
    if preset != "auto":
        assert modes == BN_MODES[preset]
    else:
        assert modes == {"bootstrap_mode": "training", "actor_loss_mode": "inference",
                         "next_action_mode": "inference"}
    assert (c.critic_batch, c.target, agent.schedule.phase(0)) == (
        "joint", "polyak", "critic+actor+target")
    alg = agent.algorithm
    critic0 = _net(agent, alg.critic, "q0", "q0_out")
    target_critic0 = _net(agent, alg.target_critic, "q0", "q0_out")
    actor0 = _net(agent, alg.actor, "pi", "pi_out")
    target_actor0 = _net(agent, alg.target_actor, "pi", "pi_out")
    b = _batch(np.random.default_rng(11))

    out = agent.update(b)

    # TD target: next actions, then the bootstrap critic on them.
    def next_action(mode):
        return np.tanh(_forward(b["next_obs"], target_actor0, mode))

    def bootstrap(mode, a_next):
        rows = np.concatenate([np.concatenate([b["obs"], b["action"]], 1),
                               np.concatenate([b["next_obs"], a_next], 1)])
        if mode == "training":  # the batch statistics of the joint rows, as the trained Q's
            return _forward(rows, target_critic0, "training")[BATCH:, 0]
        return _forward(rows[BATCH:], target_critic0, "inference")[:, 0]

    def critic_loss(next_mode, boot_mode):
        a_next = next_action(next_mode)
        joint = np.concatenate([np.concatenate([b["obs"], b["action"]], 1),
                                np.concatenate([b["next_obs"], a_next], 1)])
        q = _forward(joint, critic0, "training")[:BATCH, 0]
        y = b["reward"] + c.gamma * (1 - b["done"]) * bootstrap(boot_mode, a_next)
        return np.mean((q - y) ** 2), q.mean(), joint

    loss, q_mean, joint = critic_loss(c.next_action_mode, c.bootstrap_mode)
    assert out["losses/critic_loss"] == pytest.approx(loss, rel=1e-4)
    assert out["losses/q_values"] == pytest.approx(q_mean, rel=1e-4, abs=1e-6)
    # Either use in the other mode would give another loss.
    assert _far(critic_loss(_other(c.next_action_mode), c.bootstrap_mode)[0], loss)
    assert _far(critic_loss(c.next_action_mode, _other(c.bootstrap_mode))[0], loss)

    # The critic's moving statistics: one EMA step on exactly the joint rows.
    critic1 = _net(agent, alg.critic, "q0", "q0_out")
    mean, var = _ema(critic0, joint)
    np.testing.assert_allclose(critic1["mean"], mean, atol=1e-5)
    np.testing.assert_allclose(critic1["var"], var, atol=1e-5)
    assert np.abs(_ema(critic0, joint[:BATCH])[0] - mean).max() > 1e-3

    # Actor loss: the actor in training mode on s (pre-step weights), the critic after its step
    # (weights and moving statistics) in actor_loss_mode.
    def actor_loss(mode):
        pi = np.tanh(_forward(b["obs"], actor0, "training"))
        return -np.mean(_forward(np.concatenate([b["obs"], pi], 1), critic1, mode))

    assert out["losses/actor_loss"] == pytest.approx(actor_loss(c.actor_loss_mode), rel=1e-4)
    assert _far(actor_loss(_other(c.actor_loss_mode)), actor_loss(c.actor_loss_mode))

    # The actor's moving statistics: one EMA step on exactly s (the actor-loss pass), none from
    # the next-action pass on s' (a training-mode next-action pass writes nothing).
    actor1 = _net(agent, alg.actor, "pi", "pi_out")
    mean, var = _ema(actor0, b["obs"])
    np.testing.assert_allclose(actor1["mean"], mean, atol=1e-5)
    np.testing.assert_allclose(actor1["var"], var, atol=1e-5)
    both = np.concatenate([b["obs"], b["next_obs"]])
    assert np.abs(_ema(actor0, both)[0] - mean).max() > 1e-3
    # Targets (frozen statistics) ran in their modes and wrote nothing.
    for before, model, prefix, head in ((target_critic0, alg.target_critic, "q0", "q0_out"),
                                        (target_actor0, alg.target_actor, "pi", "pi_out")):
        after = _net(agent, model, prefix, head)
        np.testing.assert_array_equal(after["mean"], before["mean"])
        np.testing.assert_array_equal(after["var"], before["var"])

    # Acting: the actor in inference mode (moving statistics), whatever the preset.
    obs = np.random.default_rng(12).normal([1.0, -2.0, 0.5], [0.5, 2.0, 1.0], (4, 3))
    acted = np.stack([agent.act(o.astype(np.float32), explore=False) for o in obs])
    np.testing.assert_allclose(acted, np.tanh(_forward(obs, actor1, "inference")), atol=1e-5)
    assert np.abs(np.tanh(_forward(obs, actor1, "training")) - acted).max() > 1e-3


def test_a_training_mode_next_action_pass_updates_no_statistics_without_a_target(agents):
    """SAC without target networks under ma_bn: the online actor samples the next actions in
    training mode at every update, yet its moving statistics move only on actor steps (every
    second update here), by the EMA of exactly ``s``; the critic's by the EMA of the joint rows at
    every update."""
    config = dict(hidden=(8,), actor_hidden=(8,), batch_size=BATCH, learning_starts=0,
                  critic_norm="batch", actor_norm="batch", critic_batch="joint", target="none",
                  policy_delay=2, bn_modes="ma_bn", xla=False)
    agent = agents.get("sac", BOX_OBS, BOX_ACT, config)
    assert agent.config.next_action_mode == "training" and agent.networks.target_pairs == []
    rng = np.random.default_rng(13)
    for i in range(2):
        assert agent.schedule.phase(i) == ("critic" if i == 0 else "critic+actor")
        actor0 = _net(agent, agent.algorithm.actor, "pi", "pi_mean")
        critic0 = _net(agent, agent.algorithm.critic, "q0", "q0_out")
        b = _batch(rng)
        agent.update(b)
        actor1 = _net(agent, agent.algorithm.actor, "pi", "pi_mean")
        critic1 = _net(agent, agent.algorithm.critic, "q0", "q0_out")
        # The critic's pass saw the next actions too, which depend on the actor's mode: its
        # input rows are not recomputed here (SAC samples); its first rows are the batch's.
        assert not np.array_equal(critic1["mean"], critic0["mean"])
        if i == 0:  # no actor step: the next-action pass in training mode wrote nothing
            np.testing.assert_array_equal(actor1["mean"], actor0["mean"])
            np.testing.assert_array_equal(actor1["var"], actor0["var"])
        else:
            mean, var = _ema(actor0, b["obs"])
            np.testing.assert_allclose(actor1["mean"], mean, atol=1e-5)
            np.testing.assert_allclose(actor1["var"], var, atol=1e-5)
            assert np.abs(_ema(actor0, b["next_obs"])[0] - mean).max() > 1e-3


@pytest.mark.parametrize("name", ["td3", "sac", "crossq"])
def test_ma_bn_builds_wires_and_trains_every_actor_critic_agent(name):
    """ma_bn on each actor-critic agent, with and without BN in the actor: the agent passes its
    wiring check at construction and its updates are finite."""
    config = dict(hidden=(8,), actor_hidden=(8,), batch_size=BATCH, learning_starts=0,
                  bn_modes="ma_bn", xla=False)
    if name != "crossq":
        config["critic_norm"] = "batch"
    rng = np.random.default_rng(14)
    for actor_norm in ("none", "batch"):
        agent = _build(name, dict(config, actor_norm=actor_norm))
        assert agent.config.next_action_mode == "training"
        for _ in range(2):
            out = agent.update(_batch(rng))
            assert all(np.isfinite(v) for v in out.values())
        agent.close()


@pytest.mark.parametrize("name,target", [("sac", "none"), ("td3", "polyak")])
def test_ma_bn_steps_have_no_unordered_variable_access(name, target):
    """Under ma_bn, with BN in the actor: every read of a variable the step writes is ordered
    before or after that write (tests/test_agents.py's check), the training-mode next-action
    pass included."""
    from tests.test_agents import _unordered_accesses

    agent = _build(name, dict(hidden=(8,), actor_hidden=(8,), batch_size=BATCH, learning_starts=0,
                              critic_norm="batch", actor_norm="batch", target=target,
                              bn_modes="ma_bn", xla=False))
    for variant, op in agent.runner.train_ops.items():
        fetches = [op, *agent.runner.scalars[variant].values(),
                   *agent.runner.diagnostics[variant].values()]
        assert _unordered_accesses(fetches) == [], variant
    agent.close()
