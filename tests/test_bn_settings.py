"""The BN settings of every agent (critic_batch, target, bootstrap_mode, actor_loss_mode, Batch
Renorm warm-up and clipping), the update schedule, CrossQ as SAC with settings, and the refusals.

Statistics are pinned with numpy: the critic's state-input BN layer normalizes exactly the
observations fed, so its moving statistics must follow the Keras EMA of the biased moments of
exactly the rows of the one training-mode pass (``obs``, or ``concat([obs, next_obs])`` for a
joint pass), once per update, whatever other training-mode calls (targets, bootstraps, actor
loss) the update makes.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from bnrl.agents import AGENTS, SAC, Agent, CrossQ, CrossQConfig, SACConfig, make_agent
from bnrl.agents.config import CLASSIC_BN
from bnrl.agents.update import Schedule
from bnrl.networks import bn_layers, tf

MOMENTUM, EPS, ATOL, BATCH = 0.99, 1e-3, 1e-5, 16
BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
BOX_ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
DISCRETE_ACT = gym.spaces.Discrete(3)
# One hidden layer per network: the statistics pinned are the input layer's, and depth costs
# build and XLA compile time.
SMALL = dict(hidden=(32,), batch_size=BATCH, learning_starts=0, critic_norm="batch",
             critic_input_norm=True)
ACTOR = dict(actor_hidden=(16,), actor_norm="batch")


def _build(name: str, config: dict, seed: int = 0):
    return make_agent(name, BOX_OBS, DISCRETE_ACT if name == "dqn" else BOX_ACT, config, seed)


def _shared(agents, name: str, config: dict, seed: int = 0):
    """``_build(name, config, seed)`` from the module's ``agents`` cache (tests/conftest.py): in
    the state of a new build, built once per module. Not to be closed by the test."""
    return agents.get(name, BOX_OBS, DISCRETE_ACT if name == "dqn" else BOX_ACT, config, seed)


def _batch(rng, agent, n: int = BATCH) -> dict:
    obs = rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 1.0], (n, 3)).astype(np.float32)
    # next_obs with other statistics, so that obs-only and joint statistics differ visibly.
    next_obs = (rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 1.0], (n, 3)) * 1.5 - 0.7).astype(
        np.float32)
    action = (rng.integers(0, 3, n).astype(np.int64) if (agent.head.action_space == "discrete")
              else rng.uniform(-1, 1, (n, 2)).astype(np.float32))
    return dict(obs=obs, action=action, reward=rng.normal(size=n).astype(np.float32),
                next_obs=next_obs, done=np.zeros(n, np.float32))


def _ema(moving_mean, moving_var, rows):
    rows = rows.astype(np.float64)
    return (moving_mean * MOMENTUM + rows.mean(0) * (1 - MOMENTUM),
            moving_var * MOMENTUM + rows.var(0) * (1 - MOMENTUM))


def _input_layers(model):
    return [layer for layer in bn_layers(model) if layer.name.endswith("_bn_in")]


def _stats(agent, layers):
    return agent.sess.run([(layer.moving_mean, layer.moving_variance) for layer in layers])


# ------------------------------------------------------- exact statistics of each combination
# case -> (agent, settings, rows of the one training-mode pass)
STAT_CASES = {
    # Joint pass with a target network evaluated in training mode on the joint batch.
    "td3-joint-target-train": ("td3", dict(critic_batch="joint", target="polyak",
                                           bootstrap_mode="training", actor_loss_mode="training"),
                               "joint"),
    "dqn-joint-target-train": ("dqn", dict(critic_batch="joint", target="polyak",
                                           bootstrap_mode="training"), "joint"),
    "sac-joint-no-target": ("sac", dict(critic_batch="joint", target="none",
                                        bootstrap_mode="training", actor_loss_mode="training"),
                            "joint"),
    # Joint pass, target in inference mode; DQN's double-Q argmax in inference mode too.
    "dqn-joint-target-inference": ("dqn", dict(critic_batch="joint", target="polyak",
                                               bootstrap_mode="inference"), "joint"),
    # One pass on (s, a); extra training-mode calls on (s', a') and (s, pi(s)) update nothing.
    "td3-separate-target-train": ("td3", dict(critic_batch="separate", target="polyak",
                                              bootstrap_mode="training",
                                              actor_loss_mode="training"), "obs"),
    "td3-separate-no-target-train": ("td3", dict(critic_batch="separate", target="none",
                                                 bootstrap_mode="training",
                                                 actor_loss_mode="training"), "obs"),
    "sac-separate-no-target-inference": ("sac", dict(critic_batch="separate", target="none",
                                                     bootstrap_mode="inference"), "obs"),
    "dqn-separate-target-train": ("dqn", dict(critic_batch="separate", target="polyak",
                                              bootstrap_mode="training"), "obs"),
}


@pytest.mark.parametrize("case", list(STAT_CASES))
def test_statistics_move_once_per_update_from_the_training_pass_rows(case):
    """Per update: the online critic's input BN layers follow the EMA of exactly the rows of the
    one training-mode pass (2B rows for a joint pass), once; a target network's statistics
    (target_bn=frozen) stay at their initial 0 / 1 although it ran in training mode; no
    target network exists with target=none."""
    name, settings, rows = STAT_CASES[case]
    config = dict(SMALL, **settings)
    if name != "dqn":
        config.update(ACTOR)
    elif settings["target"] == "none":
        config["double_q"] = False
    if settings["target"] == "polyak":
        config.update(target_bn="frozen", tau=0.5)
        if name == "dqn":
            config["target_update_interval"] = 1
    agent = _build(name, config)
    online = _input_layers(agent.networks.critics[0])
    assert len(online) == (1 if name == "dqn" else 2)
    targets = [t for _, t in agent.networks.target_pairs]
    rng = np.random.default_rng(4)
    target_steps = 0
    for _ in range(3):
        batch = _batch(rng, agent)
        variant = agent.schedule.phase(agent.updates_done)
        target_steps += "target" in variant
        before = _stats(agent, online)
        agent.update(batch)
        fed = (np.concatenate([batch["obs"], batch["next_obs"]]) if rows == "joint"
               else batch["obs"])
        for layer, (mean, var), (got_mean, got_var) in zip(online, before, _stats(agent, online),
                                                           strict=True):
            exp_mean, exp_var = _ema(mean, var, fed)
            np.testing.assert_allclose(got_mean, exp_mean, atol=ATOL, err_msg=layer.name)
            np.testing.assert_allclose(got_var, exp_var, atol=ATOL, err_msg=layer.name)
            # The other candidate rows would give visibly other statistics.
            other = batch["obs"] if rows == "joint" else np.concatenate(
                [batch["obs"], batch["next_obs"]])
            assert np.abs(_ema(mean, var, other)[0] - exp_mean).max() > 100 * ATOL
    if settings["target"] == "none":
        assert targets == [] and agent.networks.target_pairs == []
        assert not [v for v in agent.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
                    if "target" in v.name]
        assert all("target" not in v for v in agent.schedule.phases())
    else:
        assert target_steps > 0 and targets
        for layer in [la for t in targets for la in bn_layers(t)]:
            mean, var = agent.sess.run([layer.moving_mean, layer.moving_variance])
            np.testing.assert_array_equal(mean, np.zeros_like(mean))
            np.testing.assert_array_equal(var, np.ones_like(var))
    agent.close()


def test_training_mode_bootstrap_uses_the_joint_batch_statistics():
    """DQN, joint pass, no target, bootstrap in training mode, gamma 1 and done 0: the loss is
    the Huber loss between Q(s, a) and r + max_a' Q(s', a'), both halves of ONE training-mode
    call on concat([s, s']) (batch statistics of the 2B rows), computed here with numpy."""
    config = dict(SMALL, hidden=(8,), critic_input_norm=False, critic_batch="joint",
                  target="none", bootstrap_mode="training", double_q=False, gamma=1.0)
    agent = _build("dqn", config)
    batch = _batch(np.random.default_rng(1), agent)
    dense, bn, out = (agent.algorithm.q.get_layer(n) for n in ("q_dense0", "q_bn0", "q_out"))
    assert dense.bias is None  # a Dense followed by BN has none
    k0, gamma, beta, k1, b1 = agent.sess.run([dense.kernel, bn.gamma, bn.beta, out.kernel,
                                              out.bias])
    x = np.concatenate([batch["obs"], batch["next_obs"]]).astype(np.float64) @ k0
    h = np.maximum((x - x.mean(0)) / np.sqrt(x.var(0) + EPS) * gamma + beta, 0.0)
    q_all = h @ k1 + b1
    q = q_all[:BATCH][np.arange(BATCH), batch["action"]]
    y = batch["reward"] + q_all[BATCH:].max(1)
    err = np.abs(y - q)
    expected = np.mean(np.where(err <= 1.0, 0.5 * err**2, err - 0.5))
    assert agent.update(batch)["losses/q_loss"] == pytest.approx(expected, rel=1e-5)
    agent.close()


def test_train_eval_gap_is_measured_on_the_training_pass_rows():
    """bn_Q_train_eval_gap after a joint-pass DQN step: mean |Q(batch statistics) - Q(moving
    statistics)| over the 2B rows of the joint pass (not over (s, a) alone), from the post-step
    weights, computed here with numpy; and bn_Q_greedy_agreement, the share of those rows whose
    argmax is the same with both."""
    config = dict(SMALL, hidden=(8,), critic_input_norm=False, critic_batch="joint",
                  target="polyak", bootstrap_mode="training")
    agent = _build("dqn", config)
    batch = _batch(np.random.default_rng(6), agent)
    logged = agent.update(batch, log=True)
    gap = logged["bn_Q_train_eval_gap"]
    dense, bn, out = (agent.algorithm.q.get_layer(n) for n in ("q_dense0", "q_bn0", "q_out"))
    assert dense.bias is None  # a Dense followed by BN has none
    k0, gamma, beta, mean, var, k1, b1 = agent.sess.run(
        [dense.kernel, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, out.kernel,
         out.bias])

    def q(obs, mu, sigma2):
        x = obs.astype(np.float64) @ k0
        return np.maximum((x - mu(x)) / np.sqrt(sigma2(x) + EPS) * gamma + beta, 0.0) @ k1 + b1

    rows = np.concatenate([batch["obs"], batch["next_obs"]])
    q_batch = q(rows, lambda x: x.mean(0), lambda x: x.var(0))
    q_moving = q(rows, lambda x: mean, lambda x: var)
    assert gap == pytest.approx(np.abs(q_batch - q_moving).mean(), rel=1e-4)
    obs_only = np.abs(q(batch["obs"], lambda x: x.mean(0), lambda x: x.var(0))
                      - q(batch["obs"], lambda x: mean, lambda x: var)).mean()
    assert abs(obs_only - gap) > 1e-3 * gap  # the (s, a) rows alone give another gap
    agreement = np.mean(q_batch.argmax(1) == q_moving.argmax(1))
    assert 0 < agreement < 1  # after one step the two modes pick some actions differently
    assert logged["bn_Q_greedy_agreement"] == pytest.approx(agreement)
    agent.close()


# -------------------------------------------------------------------------------- schedule
def test_schedule_steps_phases_and_completeness():
    td3 = Schedule(actor_every=2, target_every=2)
    assert [td3.phase(i) for i in range(4)] == ["critic", "critic+actor+target"] * 2
    assert list(td3.phases()) == ["critic", "critic+actor+target"]
    assert [td3.is_complete(i) for i in range(4)] == [False, True, False, True]
    crossq = Schedule(actor_every=3)
    assert [crossq.phase(i) for i in range(6)] == ["critic", "critic", "critic+actor"] * 2
    dqn = Schedule(target_every=3)
    assert dqn.phases() == {"critic": ("critic",), "critic+target": ("critic", "target")}
    assert all(dqn.is_complete(i) for i in range(6))  # no actor: every update logs all
    mixed = Schedule(actor_every=2, target_every=3)
    assert list(mixed.phases()) == ["critic", "critic+actor", "critic+target",
                                      "critic+actor+target"]
    assert mixed.steps_at(5) == ("critic", "actor", "target")


SCHEDULE_CASES = [("td3", dict(policy_delay=3), ["critic", "critic", "critic+actor+target"]),
                  ("sac", dict(policy_delay=2), ["critic", "critic+actor+target"]),
                  ("sac", dict(), ["critic+actor+target"]),
                  # A short Batch Renorm warm-up: test_crossq_is_sac_with_settings steps past it
                  # with this very agent.
                  ("crossq", dict(renorm_warmup=2), ["critic", "critic", "critic+actor"]),
                  ("dqn", dict(target_update_interval=2), ["critic", "critic+target"])]


def _schedule_config(name: str, settings: dict) -> dict:
    config = dict(hidden=(16,), batch_size=8, learning_starts=0, tau=0.5, **settings)
    if name != "dqn":
        config["actor_hidden"] = (16,)
    return config


@pytest.mark.parametrize("name,settings,expected", SCHEDULE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SCHEDULE_CASES)])
def test_agent_runs_the_steps_its_schedule_says(agents, name, settings, expected):
    """The train op of each phase exists and runs exactly its steps: the actor's weights
    move only on actor steps, the targets' only on target steps; only complete updates
    report the actor's losses."""
    agent = _shared(agents, name, _schedule_config(name, settings))
    assert list(agent.runner.train_ops) == list(dict.fromkeys(expected))
    rng = np.random.default_rng(0)
    actor = agent.networks.actors[0].trainable_weights if agent.networks.actors else []
    target = [w for _, t in agent.networks.target_pairs for w in t.trainable_weights]
    for i in range(2 * len(expected)):
        assert agent.schedule.phase(agent.updates_done) == expected[i % len(expected)]
        before = agent.sess.run(actor + target)
        out = agent.update(_batch(rng, agent, 8))
        after = agent.sess.run(actor + target)
        moved = [not np.array_equal(b, a) for b, a in zip(before, after, strict=True)]
        pieces = expected[i % len(expected)].split("+")
        for part, piece in ((moved[:len(actor)], "actor"), (moved[len(actor):], "target")):
            if part:  # every weight moves on the steps of its piece, none on the others
                assert set(part) == {piece in pieces}, (i, piece)
            else:
                assert piece not in pieces
        assert ("losses/actor_loss" in out) == ("actor" in pieces)
        assert agent.schedule.is_complete(i) == ("actor" in pieces or name == "dqn")


# ---------------------------------------------------------------------- defaults and CrossQ
@pytest.mark.parametrize("name", ["dqn", "ddpg", "td3", "sac"])
def test_auto_settings_change_nothing_without_batch_norm(name):
    """auto resolves to the pre-remedy behaviour for every critic without plain BN, and to the
    agent's bn_defaults with critic_norm=batch; explicit values win."""
    cls = AGENTS[name].config_class
    keys = [k for k in CLASSIC_BN if hasattr(cls(), k)]
    assert ("actor_loss_mode" in keys) == (name != "dqn")
    for norm in ("none", "layer", "batch_renorm"):
        config = cls(critic_norm=norm).resolved()
        assert {k: getattr(config, k) for k in keys} == {k: CLASSIC_BN[k] for k in keys}
    config = cls(critic_norm="batch").resolved()
    assert {k: getattr(config, k) for k in keys} == {k: cls.bn_defaults.get(k, CLASSIC_BN[k])
                                                     for k in keys}
    explicit = cls(critic_norm="batch", critic_batch="separate",
                   bootstrap_mode="training").resolved()
    assert (explicit.critic_batch, explicit.bootstrap_mode) == ("separate", "training")
    assert explicit.resolved() == explicit  # resolving is done once and for all


def test_crossq_is_sac_with_settings(agents):
    """CrossQ adds nothing to SAC but its name and config; SAC given CrossQ's settings takes
    bit-identical steps."""
    assert set(vars(CrossQ)) - {"__module__", "__doc__", "__firstlineno__",
                                "__static_attributes__"} == {"name", "config_class"}
    # The schedule test's CrossQ (Batch Renorm warm-up of 2 updates).
    settings = _schedule_config("crossq", dict(renorm_warmup=2))
    crossq = _shared(agents, "crossq", settings)
    sac = Agent(SAC, BOX_OBS, BOX_ACT, SACConfig(**dataclasses.asdict(CrossQConfig(**settings))),
                seed=0)
    rng = np.random.default_rng(3)
    for i in range(5):  # through both variants and past the Batch Renorm warm-up
        batch = _batch(rng, crossq)
        assert crossq.update(batch, log=i % 2 == 1) == sac.update(batch, log=i % 2 == 1)
    crossq_nets, sac_nets = crossq.algorithm, sac.algorithm
    for a, b in zip(crossq.sess.run(crossq_nets.critic.weights + crossq_nets.actor.weights),
                    sac.sess.run(sac_nets.critic.weights + sac_nets.actor.weights), strict=True):
        np.testing.assert_array_equal(a, b)
    assert crossq.networks.target_pairs == sac.networks.target_pairs == []
    sac.close()


@pytest.mark.parametrize("name", ["td3", "dqn"])
def test_batch_renorm_warmup_and_clipping_on_any_agent(name):
    """Batch Renorm is plain BN while r = 1, d = 0: during renorm_warmup updates (and for ever
    with rmax = 1, dmax = 0) an agent with batch_renorm in critic and actor takes the steps of
    the same agent with plain BN; after the warm-up its corrections make the steps differ.
    gamma = 0 and a training-mode actor-loss critic keep the moving statistics (which Batch
    Renorm tracks differently) out of the update."""
    base = dict(hidden=(16,), batch_size=BATCH, learning_starts=0, critic_input_norm=True,
                gamma=0.0, critic_batch="separate")
    if name != "dqn":
        base.update(actor_hidden=(16,), actor_loss_mode="training", policy_delay=1,
                    n_critics=1)
    plain, warm, clipped = (
        _build(name, dict(base, critic_norm=norm, actor_norm=norm, **extra) if name != "dqn"
               else dict(base, critic_norm=norm, **extra), seed=1)
        for norm, extra in (("batch", {}), ("batch_renorm", dict(renorm_warmup=2)),
                            ("batch_renorm", dict(renorm_rmax=1.0, renorm_dmax=0.0))))
    rng = np.random.default_rng(2)
    loss = "losses/q_loss" if name == "dqn" else "losses/critic_loss"
    for i in range(3):
        batch = _batch(rng, plain)
        a, b, c = (agent.update(batch)[loss] for agent in (plain, warm, clipped))
        assert c == pytest.approx(a, rel=1e-5, abs=1e-6)
        if i < 2:
            assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
        else:  # the corrections act from the third update on
            assert b != pytest.approx(a, rel=1e-3)
    for agent in (plain, warm, clipped):
        agent.close()


# ------------------------------------------------------------------------------- refusals
REFUSED = [
    ("td3", dict(critic_batch="joint", target="none", bootstrap_mode="inference"),
     "bootstrap_mode=training"),
    ("crossq", dict(bootstrap_mode="inference"), "bootstrap_mode=training"),
    ("dqn", dict(target="none"), "double_q"),
    ("sac", dict(target="none", target_bn="polyak"), "target_bn"),
    ("dqn", dict(actor_loss_mode="training"), "unknown config key"),
    ("td3", dict(critic_batch="both"), "unknown critic_batch 'both'"),
    ("sac", dict(target="soft"), "unknown target 'soft'"),
    ("ddpg", dict(bootstrap_mode="train"), "unknown bootstrap_mode"),
    ("sac", dict(actor_loss_mode="batch"), "unknown actor_loss_mode"),
    ("td3", dict(renorm_warmup=-1), "renorm_warmup"),
    ("sac", dict(renorm_rmax=0.5), "renorm_rmax"),
    ("dqn", dict(adam_beta1=1.0), "adam_beta1"),
    ("td3", dict(critic_norm_position="after"), "norm position"),
    ("sac", dict(policy_delay=0), "policy_delay"),
]


@pytest.mark.parametrize("name,settings,message", REFUSED,
                         ids=[f"{n}-{'-'.join(s)}" for n, s, _ in REFUSED])
def test_combinations_that_make_no_sense_are_refused(name, settings, message):
    with pytest.raises(ValueError, match=message) as info:
        _build(name, settings)
    assert "\n" not in str(info.value)


def test_train_help_lists_every_agent_setting():
    """``run.py train --help`` names every field of every agent's config."""
    from bnrl import run

    words = set(run.TRAIN_EPILOG.replace("(", " ").replace(")", " ").replace(",", " ").split())
    for name, cls in AGENTS.items():
        missing = [f.name for f in dataclasses.fields(cls.config_class) if f.name not in words]
        assert not missing, (name, missing)
