"""``bnrl export`` of an image policy: a uint8 observation signature, BN (conv layers included)
frozen in inference mode, and ``evaluate`` on the export.

A DQN with a BN Q-network (MinAtar encoder) trained for 400 steps on MinAtar Breakout, exported;
on 100 observations the env really produces, the export's actions equal the restored agent's and
its Q-values the graph's; a batch of 1 gives the rows of a batch of 100; ``evaluate`` on the export
prints what it prints for the run. Skipped without the ``minatar`` extra.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from _cli import assert_export_evaluates_like_its_run, main, train_quiet
from _rollouts import random_observations

pytest.importorskip("minatar")

from bnrl.networks import bn_layers, tf  # noqa: E402
from bnrl.training import checkpoint  # noqa: E402
from bnrl.training.runs import build_agent, make_run_env, open_run  # noqa: E402

TRAIN = ["--agent", "dqn", "--env", "MinAtar/Breakout-v1", "--critic-norm", "batch", "--steps",
         "400", "--set", "learning_starts=100", "--set", "buffer_size=1000", "--set",
         "exploration_steps=200", "--set", "batch_size=16", "--eval-every", "400",
         "--eval-episodes", "1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(run_dir, export_dir, restored agent) of the trained, exported run."""
    root = tmp_path_factory.mktemp("pixel-export")
    run_dir, out = root / "run", root / "policy"
    train_quiet([*TRAIN, "--logdir", str(run_dir)])
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    config, ckpt = open_run(run_dir)
    env = make_run_env(config, 0)
    agent = build_agent(config, env)
    env.close()
    checkpoint.restore_agent(agent, ckpt)
    yield run_dir, out, agent
    agent.close()


def _observations(run_dir, n: int = 100) -> np.ndarray:
    env = make_run_env(open_run(run_dir)[0], 123)
    rows = random_observations(env, n)
    env.close()
    return rows.astype(np.uint8)  # MinAtar's booleans, as the export takes them


def _signature(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures["serving_default"]


def test_the_signature_takes_uint8_images(exported):
    _, export_dir, _ = exported
    spec = _signature(export_dir).structured_input_signature[1]["observation"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 10, 10, 4]
    metadata = json.loads((export_dir / "bnrl_policy.json").read_text())
    assert metadata["observation"] == {"shape": [10, 10, 4], "dtype": "uint8"}
    assert metadata["signature"]["inputs"] == {"observation": "uint8 [batch, 10, 10, 4]"}


def test_the_export_acts_like_the_agent(exported):
    run_dir, export_dir, agent = exported
    layers = bn_layers(agent.networks.policy)
    assert "q_bn_conv0" in [layer.name for layer in layers]
    variances = agent.sess.run([layer.moving_variance for layer in layers])
    assert min(np.abs(v - 1.0).max() for v in variances) > 1e-2  # the statistics have moved
    obs = _observations(run_dir)
    out = {k: v.numpy() for k, v in _signature(export_dir)(observation=tf.constant(obs)).items()}
    assert out["action"].dtype == np.int64
    np.testing.assert_array_equal(out["action"], [agent.act(o) for o in obs])
    q = agent.sess.run(agent.act_output, {agent.obs_ph: obs})
    np.testing.assert_allclose(out["q_values"], q, atol=1e-5, rtol=0)
    assert np.ptp(q) > 0
    # BN frozen: a batch of one gives its row of the batch. 1e-5, as against the graph above:
    # oneDNN picks its convolution kernel by batch size, and a different kernel sums in another
    # order (1.07e-6 seen on an AMD EPYC). A batch of one normalized by its own statistics
    # instead of the moving ones (the statistics moved, above) would be far outside it.
    for i in (0, 37, 99):
        single = _signature(export_dir)(observation=tf.constant(obs[i:i + 1]))
        np.testing.assert_allclose(single["q_values"].numpy()[0], out["q_values"][i], atol=1e-5)


def test_evaluate_runs_the_image_export_like_its_run(exported, capsys):
    run_dir, export_dir, _ = exported
    lines = []
    for target in (run_dir, export_dir):
        assert main(["evaluate", "--run", str(target), "--episodes", "2"]) == 0
        lines.append(capsys.readouterr().out.strip())
    assert_export_evaluates_like_its_run(lines, run_dir, export_dir)
