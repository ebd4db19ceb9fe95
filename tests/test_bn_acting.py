"""benchmarks/bn_acting.py: the probe of a BN Q-network's checkpoint runs and refuses what it
cannot probe with one line and exit code 2."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import bnrl

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bn_acting.py"
TINY = {"hidden": [16], "batch_size": 16, "learning_starts": 50, "buffer_size": 2000,
        "xla": False}


@pytest.fixture(scope="module")
def bn_acting():
    spec = importlib.util.spec_from_file_location("bn_acting", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(agent, path, **settings):
    bnrl.train(agent, "CartPole-v1" if agent == "dqn" else "Pendulum-v1", steps=300,
               settings={**TINY, **settings}, logdir=path, eval_every=300, eval_episodes=1,
               checkpoint_every=150).close()
    return path


def test_the_probe_prints_each_bn_layer_and_three_agreements(bn_acting, tmp_path, capsys):
    run = _train("dqn", tmp_path / "dqn", critic_norm="batch")
    assert bn_acting.main([str(run), "--checkpoint", "150", "--batches", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[1:] if line.startswith("q_")]
    assert rows == ["q_bn0"]  # the one hidden layer's BN
    found = re.search(r"\(a\) two batches, training mode ([\d.]+); \(b\) training mode vs "
                      r"moving statistics ([\d.]+); \(c\) vs recalibrated statistics ([\d.]+)",
                      out)
    assert found and all(0 <= float(v) <= 1 for v in found.groups()), out
    # The buffer's generator as the checkpoint left it: the same figures again.
    assert bn_acting.main([str(run), "--checkpoint", "150", "--batches", "4"]) == 0
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("case, message", [
    ("sac", "is a sac run: the probe draws batches from a dqn run's replay buffer"),
    ("none", "has no BN layer"),
    ("step", "no checkpoint"),
])
def test_what_it_cannot_probe_is_one_line_and_exit_2(bn_acting, tmp_path, capsys, case,
                                                     message):
    if case == "sac":
        run = _train("sac", tmp_path / "sac", actor_hidden=[16])
    else:
        run = _train("dqn", tmp_path / "dqn", critic_norm="batch" if case == "step" else "none")
    args = [str(run), "--batches", "2"] + (["--checkpoint", "7"] if case == "step" else [])
    assert bn_acting.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
