"""compare.variants: named variants, --variant parsing, selection and duplicate refusal."""

from __future__ import annotations

import pytest

from bnrl.common.errors import UserError
from bnrl.compare import variants as vs
from bnrl.compare.results import RunSpec, resolve_spec


def test_builtins_include_the_norms_and_crossq():
    builtins = vs.builtin_variants()
    for norm in ("none", "batch", "batch_renorm", "layer"):
        assert builtins[norm].settings == {"critic_norm": norm}
    assert builtins["crossq"].agent("sac") == "crossq"
    assert builtins["batch"].agent("td3") == "td3"


def test_naive_bn_variant_resolves_to_the_naive_settings():
    naive = vs.builtin_variants()["batch_naive"]
    spec = RunSpec("sac", "Pendulum-v1", naive.name, 0, 1000, None, "", 1,
                   settings=dict(naive.settings))
    agent = resolve_spec(spec).agent_config
    assert (agent.critic_norm, agent.critic_batch, agent.bootstrap_mode,
            agent.actor_loss_mode) == ("batch", "separate", "inference", "inference")
    # `batch` is the remedy: its auto settings resolve to a joint pass, training-mode target.
    spec = RunSpec("sac", "Pendulum-v1", "batch", 0, 1000, None, "", 1,
                   settings=dict(vs.builtin_variants()["batch"].settings))
    agent = resolve_spec(spec).agent_config
    assert (agent.critic_batch, agent.bootstrap_mode) == ("joint", "training")


def test_parse_variant_keeps_lists_together():
    v = vs.parse_variant("wide-bn:critic_norm=batch,hidden=[64,64],bn_momentum=0.9")
    assert v.name == "wide-bn"
    assert v.settings == {"critic_norm": "batch", "hidden": [64, 64], "bn_momentum": 0.9}
    assert v.agent_settings() == v.settings


@pytest.mark.parametrize("text, message", [
    ("nocolon", "expected NAME:key=value"),
    (":critic_norm=batch", "expected NAME:key=value"),
    ("x:critic_norm", "'critic_norm' is not key=value"),
    ("bad/name:critic_norm=batch", "bad variant name 'bad/name'"),
    ("x:gamma=0.9,gamma=0.99", "gamma is given twice"),
])
def test_parse_variant_errors(text, message):
    with pytest.raises(UserError, match=message):
        vs.parse_variant(text)


def test_select_orders_names_and_picks_the_baseline():
    defined = vs.builtin_variants()
    chosen, baseline = vs.select(["none", "batch", "crossq"], defined, None)
    assert [v.name for v in chosen] == ["none", "batch", "crossq"] and baseline == "none"
    _, baseline = vs.select(["none", "batch"], defined, "batch")
    assert baseline == "batch"


def test_select_refuses_duplicates_unknowns_and_a_foreign_baseline():
    defined = vs.builtin_variants()
    with pytest.raises(UserError, match="'none' is listed twice"):
        vs.select(["none", "none"], defined, None)
    defined["bn2"] = vs.parse_variant("bn2:critic_norm=batch")
    with pytest.raises(UserError, match="'batch' and 'bn2' have the same settings"):
        vs.select(["batch", "bn2"], defined, None)
    with pytest.raises(UserError, match="unknown variant 'joint'"):
        vs.select(["none", "joint"], defined, None)
    with pytest.raises(UserError, match="--baseline 'layer' is not one of"):
        vs.select(["none", "batch"], defined, "layer")


def test_variants_file(tmp_path):
    path = tmp_path / "variants.yaml"
    path.write_text("copy: {critic_norm: batch, target_bn: copy}\n"
                    "polyak: {critic_norm: batch, target_bn: polyak}\n")
    found = vs.read_variants_file(path)
    assert found["polyak"].settings == {"critic_norm": "batch", "target_bn": "polyak"}
    path.write_text("broken: [1, 2]\n")
    with pytest.raises(UserError, match="must be a mapping of settings"):
        vs.read_variants_file(path)
