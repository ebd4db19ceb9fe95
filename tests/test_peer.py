"""``benchmark --peer sbx`` (issue 30 item 4): SBX's implementation of a variant's agent as one
more variant of the grid, at bnrl's resolved settings, every difference it cannot match listed,
evaluated as bnrl's runs are and reported from an ordinary result file.

The settings mapping is pure (no SBX needed); the one real SBX run skips without the sbx extra
(``.ci/run`` leaves it out: it brings torch and JAX, minutes of install).
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

import bnrl
from bnrl.compare import cli, results, workers
from bnrl.peers import sbx
from bnrl.training.config import resolve

from _cli import one_line, record_planned_runs, run_captured

_find_spec = importlib.util.find_spec


def _resolved(agent: str, **settings):
    """A resolved bnrl config of ``agent`` on Pendulum-v1 and its flat deciding settings."""
    config = resolve(agent, "Pendulum-v1", None, {"steps": 1000, "seed": 0}, settings)
    return config.agent_config, results.deciding_settings(config)


def _sbx_installed(monkeypatch, installed: bool) -> None:
    """Make the CLI find SBX installed or not, whatever this machine has."""
    def find_spec(name, *args):
        if name == sbx.MODULE:
            return object() if installed else None
        return _find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# ----------------------------------------------------------------------------- the mapping
def test_sac_settings_reach_sbx_field_by_field():
    c, settings = _resolved("sac", hidden=[64, 32], actor_hidden=[48], learning_rate=5e-4,
                            batch_size=128, buffer_size=5000, learning_starts=300, gamma=0.98,
                            tau=0.01, train_freq=2, gradient_steps=3, policy_delay=2,
                            n_critics=3, init_alpha=0.5, target_entropy=-2.0)
    kwargs, differences = sbx.arguments("sac", settings)
    # Exact equality: every argument is one of bnrl's settings, nothing else is passed.
    assert kwargs == {
        "learning_rate": c.learning_rate, "qf_learning_rate": c.learning_rate,
        "buffer_size": c.buffer_size, "learning_starts": c.learning_starts,
        "batch_size": c.batch_size, "gamma": c.gamma, "tau": c.tau,
        "train_freq": c.train_freq, "gradient_steps": c.gradient_steps,
        "policy_delay": c.policy_delay, "ent_coef": "auto_0.5", "target_entropy": -2.0,
        "policy_kwargs": {"net_arch": {"pi": [48], "qf": [64, 32]}, "n_critics": 3,
                          "optimizer_kwargs": {"b1": c.adam_beta1}}}
    assert (c.learning_rate, c.batch_size, c.gamma) == (5e-4, 128, 0.98)
    assert len(differences) == 2
    assert "Glorot uniform" in differences[0] and "[-20, 2]" in differences[1]
    # A fixed temperature is SBX's float ent_coef; the entropy target is then unused.
    kwargs, _ = sbx.arguments("sac", _resolved("sac", autotune_alpha=False, init_alpha=0.2)[1])
    assert kwargs["ent_coef"] == 0.2 and kwargs["target_entropy"] == "auto"


def test_a_layernorm_sac_critic_is_sbx_layer_norm_with_its_epsilon_listed():
    _, settings = _resolved("sac", critic_norm="layer")
    kwargs, differences = sbx.arguments("sac", settings)
    assert kwargs["policy_kwargs"]["layer_norm"] is True
    assert "LayerNorm epsilon 1e-6 (flax's; bnrl: bn_epsilon 0.001)" in differences


def test_crossq_batch_renorm_settings_reach_sbx_and_what_differs_is_listed():
    c, settings = _resolved("crossq", hidden=[32, 32], bn_momentum=0.9, renorm_warmup=500,
                            bn_epsilon=1e-5)
    kwargs, differences = sbx.arguments("crossq", settings)
    assert "tau" not in kwargs  # no target network
    assert (kwargs["learning_rate"], kwargs["policy_delay"]) == (c.learning_rate, 3)
    assert kwargs["policy_kwargs"] == {
        "net_arch": {"pi": list(c.actor_hidden), "qf": [32, 32]}, "n_critics": 2,
        "optimizer_kwargs": {"b1": 0.5}, "batch_norm": True, "batch_norm_actor": True,
        "batch_norm_momentum": 0.9, "renorm_warmup_steps": 500}
    text = "\n".join(differences)
    for expected in ("joint (state, action) input (bnrl: the state input only)",
                     "the actor's norm on its input and after each activation",
                     "it lasts 3 x renorm_warmup updates", "bn_epsilon 1e-05",
                     "the temperature's Adam beta1 0.9 (bnrl: adam_beta1 0.5"):
        assert expected in text, text
    assert "rmax" not in text  # CrossQ's 3 and 5 are SBX's


def test_crossq_with_plain_bn_is_sbx_batch_renorm_that_never_leaves_its_warm_up():
    _, settings = _resolved("crossq", critic_norm="batch", actor_norm="none")
    kwargs, differences = sbx.arguments("crossq", settings)
    policy = kwargs["policy_kwargs"]
    assert policy["renorm_warmup_steps"] == sbx.PLAIN_BN_WARMUP
    assert policy["batch_norm_actor"] is False
    assert not any("warm-up" in d or "actor's norm" in d for d in differences)


def test_td3_noise_and_learning_rates_reach_sbx():
    c, settings = _resolved("td3", actor_learning_rate=1e-4, action_noise_std=0.2,
                            target_policy_noise=0.3, target_noise_clip=0.4)
    kwargs, differences = sbx.arguments("td3", settings)
    assert (kwargs["learning_rate"], kwargs["qf_learning_rate"]) == (1e-4, c.learning_rate)
    assert kwargs["action_noise"] == {"normal": 0.2}
    assert (kwargs["target_policy_noise"], kwargs["target_noise_clip"]) == (0.3, 0.4)
    assert (kwargs["tau"], kwargs["policy_delay"]) == (c.tau, c.policy_delay)
    assert "ent_coef" not in kwargs and len(differences) == 1


@pytest.mark.parametrize("agent, settings, message", [
    ("sac", {"critic_norm": "batch"}, "critic_norm=batch: SBX's SAC and TD3 critics have no BN"),
    ("sac", {"network": "simba", "critic_norm": "layer"}, "network=simba"),
    ("crossq", {"target": "polyak"}, "target=polyak"),
    ("crossq", {"actor_norm": "layer"}, "actor_norm=layer"),
    ("td3", {"action_noise": "ou"}, "action_noise=ou"),
])
def test_settings_sbx_cannot_take_refuse_the_variant(agent, settings, message):
    with pytest.raises(sbx.Unmatched, match=message):
        sbx.arguments(agent, _resolved(agent, **settings)[1])


# ------------------------------------------------------------------------- the command line
def test_missing_sbx_is_one_line_naming_the_extra_and_exit_2(monkeypatch, capsys, tmp_path):
    _sbx_installed(monkeypatch, False)
    out = tmp_path / "out"
    code, _, err = run_captured(["benchmark", "--agent", "sac", "--env", "Pendulum-v1",
                                 "--variants", "none", "--peer", "sbx", "--out", out], capsys)
    assert code == 2
    line = one_line(err)
    assert "--peer sbx needs sbx" in line and "[sbx]" in line and "pip install" in line, line
    assert not out.exists()  # refused before anything runs


def test_an_agent_sbx_lacks_is_one_line_naming_those_it_has_and_exit_2(monkeypatch, capsys,
                                                                       tmp_path):
    _sbx_installed(monkeypatch, True)
    code, _, err = run_captured(["benchmark", "--agent", "dqn", "--env", "CartPole-v1",
                                 "--variants", "none", "--peer", "sbx", "--out",
                                 tmp_path / "out"], capsys)
    assert code == 2
    assert "SBX implements bnrl's sac, td3, crossq, not dqn" in one_line(err)


def test_peer_variants_follow_the_variants_sbx_can_run(monkeypatch, capsys, tmp_path):
    _sbx_installed(monkeypatch, True)
    seen = record_planned_runs(monkeypatch)
    code, _, err = run_captured(
        ["benchmark", "--agent", "sac", "--env", "Pendulum-v1", "--variants",
         "none,batch,crossq", "--peer", "sbx", "--seeds", "1", "--steps", "100", "--out",
         tmp_path / "out"], capsys)
    assert code == 0, err
    assert one_line(err).startswith("bnrl: warning: --peer sbx: no sbx run of variant 'batch' "
                                    "(sac/Pendulum-v1: critic_norm=batch")
    specs = {s.variant: s for s in seen["specs"]}
    assert list(specs) == ["none", "batch", "crossq", "sbx-none", "sbx-crossq"]
    assert (specs["sbx-crossq"].peer, specs["sbx-crossq"].run_agent) == ("sbx", "crossq")
    assert specs["none"].peer is None
    # The peer trains at its variant's resolved settings, under a settings hash of its own.
    for name in ("none", "crossq"):
        bnrl_run, peer_run = specs[name], specs[f"sbx-{name}"]
        assert results.resolve_spec(peer_run) == results.resolve_spec(bnrl_run)
        assert peer_run.settings_hash != bnrl_run.settings_hash
        assert peer_run.settings_hash == results.settings_hash(
            {**results.spec_settings(bnrl_run), "peer": "sbx"})


def test_a_tiny_sbx_run_writes_a_result_file_and_a_report_line(monkeypatch, capsys, tmp_path):
    """The real thing: SBX SAC with tiny nets for 300 steps in its own worker process, next to a
    bnrl variant whose run is faked (this test is about the peer)."""
    pytest.importorskip("sbx")

    def run_grid(specs, out, *args, **kwargs):
        records = []
        for spec in specs:
            if spec.peer:
                record = workers.run_one(spec)
            else:
                settings = results.spec_settings(spec)
                record = {**results.base_record(spec, "ok"), "eval_steps": [150, 300],
                          "eval_returns": [-1200.0, -1100.0], "final_return": -1100.0,
                          "steps": spec.steps, "bnrl_version": bnrl.__version__,
                          "settings": settings, "settings_hash": results.settings_hash(settings),
                          "variant_settings": dict(spec.settings)}
            results.write_result(record, out)
            records.append(record)
        return records

    monkeypatch.setattr(cli, "run_grid", run_grid)
    config = tmp_path / "config.yaml"
    config.write_text("train:\n  eval_episodes: 1\n")
    out = tmp_path / "out"
    code, _, err = run_captured(
        ["benchmark", "--agent", "sac", "--env", "Pendulum-v1", "--variant",
         "tiny:hidden=[16,16],actor_hidden=[16,16],learning_starts=100,batch_size=32",
         "--variants", "tiny", "--peer", "sbx", "--seeds", "1", "--steps", "300",
         "--eval-every", "150", "--config", config, "--workers", "1", "--out", out], capsys)
    assert code == 0, err
    record = json.loads((out / "results/sac/Pendulum-v1/sbx-tiny/seed0.json").read_text())
    assert record["status"] == "ok", record.get("error")
    # Evaluated where bnrl evaluates: every eval_every steps and at the end.
    assert record["eval_steps"] == [150, 300] and record["steps"] == 300
    assert all(math.isfinite(r) for r in record["eval_returns"])
    assert record["final_return"] == record["eval_returns"][-1]
    assert record["updates_per_second"] > 0 and record["wall_time_s"] > 0
    assert record["settings"]["peer"] == "sbx"
    assert record["settings_hash"] == results.settings_hash(record["settings"])
    assert record["peer_settings"]["policy_kwargs"]["net_arch"] == {"pi": [16, 16],
                                                                    "qf": [16, 16]}
    assert record["peer_versions"]["sbx-rl"].startswith("0.28")
    report = (out / "report.md").read_text()
    assert "| `sbx-tiny` | 1 / 1 |" in report
    assert ("- `sbx-tiny`: sbx's implementation (sbx-rl 0.28" in report
            and "differences from bnrl's settings: weights initialized by flax's" in report)


def test_an_sbx_run_goes_on_from_its_checkpoint(tmp_path):
    """A rerun of an SBX run with a larger budget (what ``--extend`` does; an interrupted run
    takes the same path from its last periodic checkpoint) loads SBX's model and replay buffer
    and keeps the evaluations made before."""
    pytest.importorskip("sbx")
    config = tmp_path / "config.yaml"
    config.write_text("train:\n  eval_episodes: 1\n  checkpoint_every: 100\n")
    run_dir = tmp_path / "run"

    def spec(steps):
        return results.RunSpec(
            agent="sac", env="Pendulum-v1", variant="sbx-tiny", seed=0, steps=steps,
            config_file=str(config), run_dir=str(run_dir), threads=1, eval_every=100,
            settings={"hidden": [16, 16], "actor_hidden": [16, 16], "learning_starts": 100,
                      "batch_size": 32, "peer": "sbx"})

    first = workers.run_one(spec(200))
    assert first["status"] == "ok", first.get("error")
    assert first["eval_steps"] == [100, 200] and first["resumes"] == 0
    # One checkpoint left, the last: the periodic one at 100 steps was removed after it.
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-0000000200"]
    state = json.loads((run_dir / "checkpoint-0000000200" / "state.json").read_text())
    assert state["eval_steps"] == [100, 200] and state["resumes"] == 0

    second = workers.run_one(spec(300))
    assert second["status"] == "ok", second.get("error")
    assert second["resumes"] == 1 and second["steps"] == 300
    assert second["eval_steps"] == [100, 200, 300]
    assert second["eval_returns"][:2] == first["eval_returns"]
    assert second["wall_time_s"] > first["wall_time_s"]
    assert json.loads((run_dir / "checkpoint-0000000300" / "state.json").read_text())[
        "eval_steps"] == [100, 200, 300]


def test_a_variant_may_not_set_peer_itself(capsys, tmp_path):
    code, _, err = run_captured(["benchmark", "--agent", "sac", "--env", "Pendulum-v1",
                                 "--variant", "mine:peer=sbx", "--out", tmp_path / "out"],
                                capsys)
    assert code == 2
    assert "sets peer: a peer library's runs are added with --peer" in one_line(err)
