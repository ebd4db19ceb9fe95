"""The Python API of issue 28: ``bnrl.train`` with callbacks, the ``Run`` it returns,
``bnrl.evaluate``, progress output, and a quiet TensorFlow import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bnrl
from bnrl.common.errors import UserError
from bnrl.training import train as train_loop
from bnrl.training.config import resolve

# Tiny DQN on CartPole: a few seconds per run, and the update step is reached (learning_starts).
TINY = {"hidden": [16], "batch_size": 16, "learning_starts": 50, "buffer_size": 2000,
        "xla": False}
QUICK = dict(eval_every=100, eval_episodes=1, checkpoint_every=100)


class Recorder(bnrl.Callback):
    """Records every event; asks to stop at evaluation ``stop_at`` (an env step)."""

    def __init__(self, stop_at=None, stop_on_checkpoint=None):
        self.evaluations, self.checkpoints = [], []
        self.stop_at, self.stop_on_checkpoint = stop_at, stop_on_checkpoint

    def on_evaluation(self, evaluation, agent):
        # The live agent acts: the callback can run its own checks.
        assert agent.act(np.zeros(4, np.float32), explore=False) in (0, 1)
        self.evaluations.append(evaluation)
        return evaluation.step != self.stop_at

    def on_checkpoint(self, step, path):
        self.checkpoints.append((step, path.name))
        return None if step != self.stop_on_checkpoint else False


def test_a_callback_stops_the_run_at_an_evaluation_and_resume_continues(tmp_path):
    recorder, bystander = Recorder(stop_at=200), Recorder()
    run = bnrl.train("dqn", "CartPole-v1", steps=500, settings=TINY, logdir=tmp_path / "run",
                     callbacks=[recorder, bystander], **QUICK)
    assert [e.step for e in recorder.evaluations] == [100, 200]
    # Every callback sees every event, also after one asked to stop.
    assert bystander.evaluations == recorder.evaluations
    # The step it stopped at is checkpointed, and the summary says who stopped it.
    assert recorder.checkpoints == [(100, "step-000000100"), (200, "step-000000200")]
    assert run.checkpoint.name == "step-000000200"
    assert run.summary["stopped_by"] == "Recorder" and run.summary["steps"] == 200
    assert run.eval_steps == [100, 200]
    assert run.eval_returns == [e.mean_return for e in recorder.evaluations]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == run.summary
    assert repr(run).startswith(f"Run('{tmp_path / 'run'}': dqn on CartPole-v1, seed 0, 200 "
                                "steps, final return ")
    run.close()
    assert (tmp_path / "run").is_dir()  # a logdir of the user's is kept

    resumed = bnrl.train("dqn", "CartPole-v1", steps=500, settings=TINY,
                         logdir=tmp_path / "run", resume=True, **QUICK)
    assert resumed.eval_steps == [100, 200, 300, 400, 500]
    assert resumed.summary["stopped_by"] is None and resumed.summary["steps"] == 500
    resumed.close()


def test_a_callback_stops_the_run_at_a_checkpoint(tmp_path):
    recorder = Recorder(stop_on_checkpoint=100)
    run = bnrl.train("dqn", "CartPole-v1", steps=500, settings=TINY, logdir=tmp_path / "run",
                     callbacks=[recorder], **QUICK)
    assert recorder.checkpoints == [(100, "step-000000100")]
    assert run.summary["stopped_by"] == "Recorder" and run.eval_steps == [100]
    run.close()


def test_stop_on_return_and_on_no_improvement():
    def feed(callback, returns):
        return [callback.on_evaluation(bnrl.Evaluation(100 * i, r, 0.0), None)
                for i, r in enumerate(returns, 1)]

    assert feed(bnrl.StopOnReturn(20.0), [10.0, 19.9, 20.0]) == [True, True, False]
    # patience 2: a third evaluation without a new best stops, ties are not improvements;
    # the first min_evaluations do not count.
    assert feed(bnrl.StopOnNoImprovement(2), [5, 7, 7, 6]) == [True, True, True, False]
    assert feed(bnrl.StopOnNoImprovement(1, min_evaluations=2), [5, 4, 3]) == [True, True, False]
    with pytest.raises(ValueError, match="patience >= 1"):
        bnrl.StopOnNoImprovement(0)


def test_the_run_evaluates_exports_and_gives_its_agent_and_a_temporary_logdir_goes(tmp_path):
    run = bnrl.train("dqn", "CartPole-v1", steps=200, settings=TINY, **QUICK)
    directory = run.dir
    assert directory.is_dir() and run.summary["steps"] == 200
    result = run.evaluate(episodes=2, seed=7)
    assert result.checkpoint == f"{run.checkpoint} (env step 200)"
    assert result == bnrl.evaluate(directory, episodes=2, seed=7)  # the same episodes
    # The restored agent is the trained one: its greedy actions are the export's.
    exported = run.export(tmp_path / "policy")
    assert exported["checkpoint"] == "step-000000200"
    from bnrl.training.export import ExportedPolicy

    policy = ExportedPolicy(tmp_path / "policy")
    obs = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    assert [run.agent.act(o, explore=False) for o in obs] == [policy.act(o) for o in obs]
    assert bnrl.evaluate(tmp_path / "policy", episodes=2, seed=7).mean == result.mean
    run.close()
    assert not directory.exists()


def test_an_epsilon_greedy_run_evaluates_with_its_epsilon_and_so_does_evaluate(tmp_path):
    """``eval_epsilon`` reaches the loop's evaluations and ``evaluate``'s default. At 1 every
    action is drawn from the evaluation's generator, so the returns are computed here by
    replaying the eval env and those draws, the policy never consulted."""
    from bnrl.envs.evaluate import EVAL_SEED_OFFSET, evaluate
    from bnrl.training.runs import make_run_env

    run = bnrl.train("dqn", "CartPole-v1", steps=200, settings=TINY, eval_epsilon=1.0, **QUICK)
    eval_seed = run.config.seed + EVAL_SEED_OFFSET
    env = make_run_env(run.config, eval_seed)
    env.reset(seed=eval_seed)  # the loop's first reset; later episodes continue the env
    assert run.eval_returns == [evaluate(None, env, 1, 1.0, (eval_seed, step))[0]
                                for step in (100, 200)]
    env = make_run_env(run.config, 7)
    random_play = evaluate(None, env, 3, 1.0, 7)
    assert run.evaluate(episodes=3, seed=7)[:2] == random_play
    greedy = run.evaluate(episodes=3, seed=7, epsilon=0.0)[:2]
    assert greedy != random_play and greedy == bnrl.evaluate(run.dir, 3, seed=7, epsilon=0)[:2]
    run.close()


def test_bad_api_input_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="callbacks must be bnrl.Callback objects, not function"):
        bnrl.train("dqn", "CartPole-v1", callbacks=[lambda *a: None])
    with pytest.raises(UserError, match="resume=True needs the logdir"):
        bnrl.train("dqn", "CartPole-v1", resume=True)
    with pytest.raises(UserError, match="unknown"):
        bnrl.train("dqn", "CartPole-v1", settings={"no_such_setting": 1})
    with pytest.raises(UserError, match="does not exist"):
        bnrl.Run(tmp_path / "missing")


def test_plain_progress_ends_on_the_final_evaluation(tmp_path, capsys):
    """Issue 28: the bar showed the last periodic evaluation, not the final one. In a log
    (not a terminal) progress is plain lines without control characters."""
    config = resolve("dqn", "CartPole-v1", None, dict(steps=250, eval_every=100,
                                                      eval_episodes=1), TINY)
    summary = train_loop(config, tmp_path / "run", progress="plain")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "eval=" in line]
    assert [line.split()[2] for line in lines] == ["100/250", "200/250", "250/250"]
    assert lines[-1].endswith(f"eval={summary['final_return']:.1f}")
    assert not any(ord(c) < 32 for c in out.replace("\n", ""))


def _stderr_of_import(level: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    code = ("from bnrl.networks import tf\n"
            "with tf.Graph().as_default() as g:\n"
            "    tf.compat.v1.Session(graph=g).run(tf.constant(1.0))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_importing_bnrl_keeps_tensorflow_start_up_lines_out_unless_asked():
    """Issue 28: on a CPU machine TensorFlow prints CUDA-probing lines at import and at the
    first session; bnrl hides them unless TF_CPP_MIN_LOG_LEVEL asks for them."""
    assert _stderr_of_import(None) == ""
    # A user's level below 3 is respected: TensorFlow's own lines come through.
    assert _stderr_of_import("0").strip()
