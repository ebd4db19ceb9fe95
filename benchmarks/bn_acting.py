"""Does a BN Q-network act on the Q-function it learns? A probe of one DQN checkpoint.

    python benchmarks/bn_acting.py RUN_DIR [--checkpoint STEP] [--batches 30]

A Q-network with BN is trained on batch statistics and acts on moving statistics (the EMA of
the batch statistics its updates saw). On replay batches of the checkpoint's own buffer (each
the joint batch of ``s`` and ``s'`` the update normalizes over, 2 x ``batch_size`` rows), this
prints:

* per BN layer, how far the moving statistics are from the batch statistics the network has
  now: |mean over batches of the batch mean - moving mean| / moving sd (median and max over
  units), the batch-to-batch sd of the batch mean in the same unit (the noise of one batch), and
  the ratio of the mean batch variance to the moving variance;
* the share of states whose greedy action is the same (a) in two different batches, training
  mode (the noise floor of batch statistics), (b) in training mode and with the moving
  statistics (what ``bn_Q_greedy_agreement`` logs while training), and (c) in training mode and
  with the moving statistics replaced by the mean batch statistics measured above
  ("recalibrated"): (b) far below (c) means the moving statistics are stale, not the batch
  statistics noisy.

The run's checkpoint must hold its replay buffer (training runs keep it); the batches are drawn
by the buffer's generator as the checkpoint left it, so a checkpoint always gives the same
figures. Read-only: nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

import numpy as np  # noqa: E402

from bnrl.common.errors import UserError  # noqa: E402
from bnrl.networks import tf  # noqa: E402
from bnrl.networks.backend import keras  # noqa: E402
from bnrl.networks.batchnorm import batch_statistics_call  # noqa: E402
from bnrl.training import checkpoint  # noqa: E402
from bnrl.training.runs import build_agent, make_run_env, open_run  # noqa: E402


def probe(run_dir: Path, step: int | None, batches: int) -> list[str]:
    config, latest = open_run(run_dir)
    path = latest if step is None else checkpoint.checkpoint_dir(run_dir) / f"step-{step:09d}"
    if config.agent != "dqn":
        raise UserError(f"{run_dir} is a {config.agent} run: the probe draws batches from a "
                        "dqn run's replay buffer (pqn keeps none; other agents act with no "
                        "argmax)")
    if not path.is_dir():
        raise UserError(f"no checkpoint {path}: use one of "
                        f"{[checkpoint.step_of(p) for p in checkpoint.list_checkpoints(run_dir)]}")
    env = make_run_env(config, config.seed + 20_000)
    agent = build_agent(config, env)
    try:
        checkpoint.restore_agent(agent, path, replay=True)
        return _measure(agent, batches)
    finally:
        agent.close()
        env.close()


def _measure(agent, batches: int) -> list[str]:
    q = agent.algorithm.networks.critics[0]
    bns = [layer for layer in q.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        raise UserError("the run's Q-network has no BN layer: nothing to probe")
    # The agent finalizes its graph once built; the probe only adds read-only calls and the
    # assignments of (c), after the restore.
    agent.graph._unsafe_unfinalize()
    with agent.graph.as_default():
        obs = tf.compat.v1.placeholder(agent.obs_ph.dtype, agent.obs_ph.shape)
        layer_inputs = keras.Model(q.inputs, [layer.get_input_at(0) for layer in bns])(
            obs, training=True)
        q_batch, q_moving = batch_statistics_call(q, obs), q(obs, training=False)
        moving = [(layer.moving_mean, layer.moving_variance) for layer in bns]
        new = [(tf.compat.v1.placeholder(tf.float32, m.shape),
                tf.compat.v1.placeholder(tf.float32, v.shape)) for m, v in moving]
        recalibrate = [var.assign(value) for pair, values in zip(moving, new)
                       for var, value in zip(pair, values)]
    size = agent.config.batch_size

    def joint(b):
        return np.concatenate([b["obs"], b["next_obs"]])

    def draw():
        return agent.buffer.sample(size)

    stats = [agent.sess.run(layer_inputs, {obs: joint(draw())}) for _ in range(batches)]
    lines = [f"{'BN layer':16s} {'units':>5s}  moving vs batch mean (median / max, in sd)"
             "  batch noise (median sd)  var ratio"]
    means, variances = [], []
    for k, (layer, (mean, var)) in enumerate(zip(bns, agent.sess.run(moving))):
        axes = tuple(range(stats[0][k].ndim - 1))
        bm = np.array([s[k].mean(axes) for s in stats])
        bv = np.array([s[k].var(axes) for s in stats])
        sd = np.sqrt(var + layer.epsilon)
        shift = np.abs(bm.mean(0) - mean) / sd
        lines.append(f"{layer.name:16s} {mean.size:5d}  {np.median(shift):10.3f} / "
                     f"{shift.max():6.2f}{np.median(bm.std(0) / sd):26.3f}"
                     f"{np.median(bv.mean(0) / var):11.3f}")
        means.append(bm.mean(0))
        variances.append(bv.mean(0))

    def agreement():
        floor, acting = [], []
        for _ in range(batches):
            first, second = draw(), draw()
            half = size // 2  # the same states beside other rows in a second batch
            other = joint(second)
            other[:half] = first["obs"][:half]
            a = agent.sess.run(q_batch, {obs: joint(first)})[:half].argmax(1)
            b = agent.sess.run(q_batch, {obs: other})[:half].argmax(1)
            m = agent.sess.run(q_moving, {obs: first["obs"][:half]}).argmax(1)
            floor.append(np.mean(a == b))
            acting.append(np.mean(a == m))
        return float(np.mean(floor)), float(np.mean(acting))

    floor, acting = agreement()
    agent.sess.run(recalibrate, {p: v for pair, values in zip(new, zip(means, variances))
                                 for p, v in zip(pair, values)})
    recalibrated = agreement()[1]
    n = agent.head.n
    lines += ["", f"greedy agreement over {batches} batches ({n} actions, chance "
              f"{1 / n:.2f}): (a) two batches, training mode {floor:.3f}; (b) training mode "
              f"vs moving statistics {acting:.3f}; (c) vs recalibrated statistics "
              f"{recalibrated:.3f}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", type=int, help="env step of the checkpoint (default: "
                        "the latest)")
    parser.add_argument("--batches", type=int, default=30, help="replay batches per measure")
    args = parser.parse_args(argv)
    try:
        if args.batches < 2:
            raise UserError(f"--batches must be at least 2, got {args.batches}")
        print("\n".join(probe(args.run_dir, args.checkpoint, args.batches)))
    except UserError as exc:
        print(f"bn_acting.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
