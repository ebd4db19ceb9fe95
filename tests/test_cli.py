"""End-to-end tests of the command line (``run.py``): what a user of ``bnrl train/evaluate`` sees.

Pinned here: the exact TensorBoard scalar tags (README, "What TensorBoard shows"), the files of a
run directory, exit code 2 with exactly one stderr line for every kind of bad input, kill -9 and
``--resume`` giving one continuous run (metrics.csv, summary.json and TensorBoard), ``evaluate``
and its MP4 video, exit code 1 on a non-finite loss with the last good checkpoint kept, and
``--help``.

Runs use tiny networks and a few hundred steps. Training runs happen in this process
(``run.main``, TensorFlow imported once); subprocesses are used where the real stderr matters
(bad input, NaN loss) or a process must be killed. The bad-input subprocesses run concurrently.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO))
from bnrl import run  # noqa: E402

from _cli import main as _main  # noqa: E402
from _cli import one_line as _one_line  # noqa: E402
from _cli import train_quiet as _train_quiet  # noqa: E402

# Tiny settings: every run here takes seconds. xla=false: with a BN network the single updates
# are XLA-compiled by default, and the compile cost several times the 350 updates of the SAC BN
# run (and again in each resume of it); what is tested here (tags, run files, resume, bad input)
# does not depend on how the updates were compiled (issue 24 item 6).
TINY = ["--set", "hidden=[32,32]", "--set", "batch_size=32", "--set", "learning_starts=50",
        "--set", "buffer_size=5000", "--set", "xla=false"]
TINY_AC = TINY + ["--set", "actor_hidden=[32,32]"]
BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")
NAN_ENV = "_nan_env:BnrlNanRewardEnv-v0"


# ------------------------------------------------------------------------------------- helpers
def _env() -> dict:
    env = dict(os.environ)
    # run.py must quiet TensorFlow's C++ logging by itself; the in-process runs of this module
    # set this variable in os.environ, so it is removed for the subprocesses.
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
    return env


def _cli(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in a subprocess, from the repository root."""
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)




def _layout_tags(run_dir: Path) -> dict[str, list[list[str]]]:
    """The CUSTOM SCALARS layout a run wrote: category title -> the tags of each chart."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    event, = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {c.title: [list(chart.multiline.tag) for chart in c.chart] for c in layout.category}


def _scalars(run_dir: Path):
    """The EventAccumulator of a run (it honours SessionLog.START purges, like TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _raw_scalar_steps(run_dir: Path, tag: str) -> list[int]:
    """Steps of ``tag`` in all event files, without any purge (what is on disk)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("summary"):
                steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _csv_steps(path: Path) -> list[int]:
    try:
        return [int(r[0]) for r in _csv_rows(path)[1]]
    except (OSError, IndexError, ValueError):
        return []  # not written yet, or being replaced


def _checkpoint_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir()
                  if p.name.startswith("step-") and p.name[5:].isdigit())


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}



# ------------------------------------------------------------------------------------ fixtures
SAC_BN = ["--agent", "sac", "--env", "Pendulum-v1", "--steps", "400", "--seed", "0",
          "--critic-norm", "batch", "--log-every", "20", "--eval-every", "200",
          "--eval-episodes", "1", "--checkpoint-every", "200", *TINY_AC]


@pytest.fixture(scope="module")
def sac_bn_run(tmp_path_factory) -> Path:
    """SAC on Pendulum-v1 with a batch-normalized critic, 400 steps, scalars every 20 updates."""
    run_dir = tmp_path_factory.mktemp("sac_bn") / "run"
    _train_quiet([*SAC_BN, "--logdir", str(run_dir)])
    return run_dir


# ------------------------------------------------------------------- 1. TensorBoard scalar tags
def test_sac_batch_norm_critic_writes_the_exact_tags(sac_bn_run):
    acc = _scalars(sac_bn_run)
    tags = set(acc.Tags()["scalars"])
    required = {"bn_Q_gamma", "bn_Q_beta", "bn_Q_moving_mean", "bn_Q_moving_variance",
                "bn_Q_train_eval_gap", "eval/mean_return", "charts/episodic_return",
                "losses/critic_loss", "losses/actor_loss", "charts/updates_per_second",
                "charts/env_steps_per_second"}
    assert required <= tags, f"missing {sorted(required - tags)}"
    assert not any(t.startswith("bn_pi") for t in tags), "no actor BN was asked for"
    assert "bn_Q_greedy_agreement" not in tags  # a critic of (s, a) picks no action

    per_layer = [t for t in tags if t.startswith("bn/")]
    layers: dict[str, set[str]] = {}
    for tag in per_layer:
        match = re.fullmatch(r"bn/Q/([^/]+)/([^/]+)", tag)
        assert match, f"per-layer tag {tag!r} is not bn/Q/<layer>/<variable>"
        layers.setdefault(match.group(1), set()).add(match.group(2))
    assert layers, "no per-layer bn/Q/<layer>/<variable> tags"
    for layer, variables in layers.items():
        assert variables == set(BN_VARIABLES), (layer, variables)

    moving_mean = [e.value for e in acc.Scalars("bn_Q_moving_mean")]
    assert len(moving_mean) >= 5, moving_mean
    assert len(set(moving_mean)) > 1, f"BN moving mean never changed: {moving_mean}"
    assert all(math.isfinite(v) for v in moving_mean)


def test_no_normalization_writes_no_bn_tags(tmp_path):
    run_dir = tmp_path / "run"
    _train_quiet(["--agent", "sac", "--env", "Pendulum-v1", "--steps", "200", "--logdir",
                  str(run_dir), "--critic-norm", "none", "--log-every", "20", "--eval-every",
                  "200", "--eval-episodes", "1", *TINY_AC])
    tags = _scalars(run_dir).Tags()["scalars"]
    assert "losses/critic_loss" in tags and "eval/mean_return" in tags
    assert [t for t in tags if t.startswith("bn")] == []


def test_dqn_logs_q_loss_and_bn_q_tags(tmp_path):
    run_dir = tmp_path / "run"
    _train_quiet(["--agent", "dqn", "--env", "CartPole-v1", "--steps", "300", "--logdir",
                  str(run_dir), "--critic-norm", "batch", "--log-every", "20", "--eval-every",
                  "300", "--eval-episodes", "1", *TINY, "--set", "train_freq=1",
                  "--set", "gradient_steps=1", "--set", "exploration_steps=100"])
    tags = set(_scalars(run_dir).Tags()["scalars"])
    required = {"losses/q_loss", "bn_Q_gamma", "bn_Q_beta", "bn_Q_moving_mean",
                "bn_Q_moving_variance", "bn_Q_train_eval_gap", "bn_Q_greedy_agreement",
                "eval/mean_return", "charts/episodic_return", "charts/updates_per_second"}
    assert required <= tags, f"missing {sorted(required - tags)}"
    assert any(re.fullmatch(r"bn/Q/[^/]+/moving_mean", t) for t in tags), sorted(tags)
    agreement = [e.value for e in _scalars(run_dir).Scalars("bn_Q_greedy_agreement")]
    assert all(0 <= v <= 1 for v in agreement), agreement
    layout = _layout_tags(run_dir)
    assert ["^bn_Q_greedy_agreement$"] in layout["BN of the critic / Q-network (bn_Q_*)"]
    # Kept for the benchmark's bn_stats.png, one value per logged step.
    kept = json.loads((run_dir / "summary.json").read_text())["bn_stats"]
    assert kept["bn_Q_greedy_agreement"] == pytest.approx(agreement)
    assert len(kept["steps"]) == len(agreement)


def test_bn_history_aligns_a_scalar_first_logged_after_a_resume():
    """A run resumed from a checkpoint of a bnrl that did not log bn_Q_greedy_agreement keeps
    it aligned with the steps (NaN before); a scalar a run never logs is not kept."""
    from bnrl.training.loop import _keep_bn_history

    old = {"bn_Q_moving_mean": 1.0, "bn_Q_moving_variance": 2.0, "bn_Q_train_eval_gap": 0.5}
    history = {"steps": []}
    _keep_bn_history(history, old, 10)
    _keep_bn_history(history, {"losses/q_loss": 1.0}, 15)  # no BN scalars: nothing kept
    _keep_bn_history(history, dict(old, bn_Q_greedy_agreement=0.75), 20)
    assert history["steps"] == [10, 20]
    assert history["bn_Q_train_eval_gap"] == [0.5, 0.5]
    assert math.isnan(history["bn_Q_greedy_agreement"][0])
    assert history["bn_Q_greedy_agreement"][1] == 0.75
    critic = {"steps": []}
    _keep_bn_history(critic, old, 10)
    assert set(critic) == {"steps", *old}


@pytest.fixture(scope="module")
def td3_actor_bn_run(tmp_path_factory) -> Path:
    """TD3 with a batch-normalized actor only, scalars every 10 updates (policy_delay 2)."""
    run_dir = tmp_path_factory.mktemp("td3_actor_bn") / "run"
    _train_quiet(["--agent", "td3", "--env", "Pendulum-v1", "--steps", "200", "--logdir",
                  str(run_dir), "--critic-norm", "none", "--actor-norm", "batch",
                  "--log-every", "10", "--eval-every", "200", "--eval-episodes", "1", *TINY_AC])
    return run_dir


def test_actor_batch_norm_writes_bn_pi_tags(td3_actor_bn_run):
    tags = set(_scalars(td3_actor_bn_run).Tags()["scalars"])
    required = {f"bn_pi_{v}" for v in BN_VARIABLES} | {"losses/critic_loss", "eval/mean_return"}
    assert required <= tags, f"missing {sorted(required - tags)}"
    assert not any(t.startswith("bn_Q") or t.startswith("bn/Q/") for t in tags), sorted(tags)


def test_td3_logs_actor_loss(td3_actor_bn_run):
    assert "losses/actor_loss" in _scalars(td3_actor_bn_run).Tags()["scalars"]


# ------------------------------------------------------------------------------ 2. run files
def test_run_directory_files(sac_bn_run):
    import yaml

    config = yaml.safe_load((sac_bn_run / "config.yaml").read_text())
    assert (config["agent"], config["env"], config["seed"], config["steps"]) == (
        "sac", "Pendulum-v1", 0, 400)
    assert config["eval_every"] == 200 and config["log_every"] == 20
    agent_config = config["agent_config"]
    assert agent_config["critic_norm"] == "batch"
    assert agent_config["hidden"] == [32, 32] and agent_config["batch_size"] == 32
    assert "learning_rate" in agent_config  # resolved: defaults and preset included

    header, rows = _csv_rows(sac_bn_run / "metrics.csv")
    assert header == ["step", "eval_mean_return", "eval_std_return"]
    assert [int(r[0]) for r in rows] == [200, 400]
    assert all(len(r) == 3 and float(r[1]) == float(r[1]) for r in rows)

    assert _checkpoint_steps(sac_bn_run) == [200, 400]
    latest = sac_bn_run / "checkpoints" / "step-000000400"
    assert (latest / "model.index").is_file() and list(latest.glob("model.data-*"))
    assert not list((sac_bn_run / "checkpoints").glob(".tmp-*"))

    summary = json.loads((sac_bn_run / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["agent"] == "sac" and summary["resumes"] == 0
    assert summary["critic_norm"] == "batch"
    assert summary["eval_steps"] == [200, 400]
    assert summary["final_return"] == pytest.approx(float(rows[-1][1]))


# ------------------------------------------------------------------------- 3. bad input matrix
@dataclass
class Bad:
    id: str
    args: list[str]  # {d}: the case's own directory; {run}: a copy of a finished run
    needs: list[str]  # substrings of the one stderr line
    files: dict[str, str | bytes] = field(default_factory=dict)  # written into {d} first
    prepare: str | None = None  # what to do to the copied run's latest checkpoint
    in_subprocess: bool = True  # False: run.main in this process (same checks, cheaper)
    xfail: str | None = None


_QUICK = ["--steps", "30"]  # if a case wrongly starts training, it stops soon
# A "billion laughs" config: 9**6 strings once its aliases are expanded.
_ALIAS_BOMB = "train:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcde", "bcdef"))
_BENCH = ["benchmark", "--agent", "sac", "--env", "Pendulum-v1", "--variants", "none",
          "--seeds", "1", "--steps", "30"]
BAD = [
    # In a subprocess, where TensorFlow's C++ logging would show on the real stderr: one case
    # that fails at parsing (after TensorFlow's import) and the cases that fail after a graph
    # and session were built (restoring a checkpoint). The others fail before any graph exists,
    # where a subprocess shows nothing more than run.main in this process: they run there.
    Bad("agent-unknown", ["train", "--agent", "foo"], ["foo", "dqn", "ddpg", "td3", "sac",
                                                       "crossq"]),
    Bad("env-unknown", ["train", "--env", "NoSuchEnv-v9", *_QUICK],
        ["NoSuchEnv-v9", "Pendulum-v1", "module:EnvId"], in_subprocess=False),
    Bad("critic-norm-unknown", ["train", "--critic-norm", "foo"],
        ["foo", "none", "batch", "batch_renorm", "layer"], in_subprocess=False),
    Bad("set-unknown-key", ["train", "--set", "foo=1", *_QUICK], ["foo", "learning_rate"],
        in_subprocess=False),
    Bad("config-unknown-agent-key", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["foo", "learning_rate"], files={"c.yaml": "agent:\n  foo: 1\n"}, in_subprocess=False),
    Bad("dqn-on-pendulum", ["train", "--agent", "dqn", "--env", "Pendulum-v1", *_QUICK],
        ["dqn", "Pendulum-v1", "Discrete", "sac"], in_subprocess=False),
    Bad("sac-on-cartpole", ["train", "--agent", "sac", "--env", "CartPole-v1", *_QUICK],
        ["sac", "CartPole-v1", "Box", "dqn"], in_subprocess=False),
    Bad("steps-zero", ["train", "--steps", "0"], ["--steps", "0", "positive"], in_subprocess=False),
    Bad("steps-negative", ["train", "--steps", "-5"], ["--steps", "-5", "positive"],
        in_subprocess=False),
    Bad("steps-not-a-number", ["train", "--steps", "abc"], ["--steps", "abc", "positive"],
        in_subprocess=False),
    Bad("seeds-per-process-zero", ["benchmark", "--seeds-per-process", "0"],
        ["--seeds-per-process", "0", "positive"], in_subprocess=False),
    Bad("config-missing", ["train", "--config", "{d}/nope.yaml", *_QUICK],
        ["nope.yaml", "not found"], in_subprocess=False),
    Bad("config-malformed", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["c.yaml", "YAML"], files={"c.yaml": "train: [1, 2\nagent: {\n"}, in_subprocess=False),
    Bad("config-is-a-list", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["c.yaml", "mapping", "list"], files={"c.yaml": "- steps: 10\n- seed: 1\n"},
        in_subprocess=False),
    Bad("existing-run-dir", ["train", "--agent", "sac", "--env", "Pendulum-v1", "--steps",
                             "400", "--logdir", "{run}"], ["already exists", "--resume"],
        in_subprocess=False),
    Bad("actor-norm-with-dqn", ["train", "--agent", "dqn", "--env", "CartPole-v1",
                                "--actor-norm", "batch", *_QUICK], ["dqn", "actor"],
        in_subprocess=False),
    Bad("evaluate-missing-dir", ["evaluate", "--run", "{d}/nope", "--episodes", "1"],
        ["nope", "does not exist"], in_subprocess=False),
    Bad("evaluate-empty-dir", ["evaluate", "--run", "{d}", "--episodes", "1"],
        ["config.yaml"], in_subprocess=False),
    Bad("evaluate-garbled-data", ["evaluate", "--run", "{run}", "--episodes", "1"],
        ["step-000000400", "corrupt", "Checksum"], prepare="garble"),
    Bad("evaluate-missing-index", ["evaluate", "--run", "{run}", "--episodes", "1"],
        ["step-000000400", "model.index"], prepare="delete-index"),
    # In this process (run.main): more paths through the same error handling.
    Bad("actor-norm-unknown", ["train", "--actor-norm", "bn"], ["bn", "batch_renorm"],
        in_subprocess=False),
    Bad("seed-negative", ["train", "--seed", "-1"], ["--seed", "-1"], in_subprocess=False),
    Bad("eval-every-zero", ["train", "--eval-every", "0"], ["--eval-every", "0"],
        in_subprocess=False),
    Bad("eval-epsilon-continuous", ["train", "--eval-epsilon", "0.05", *_QUICK],
        ["eval_epsilon", "dqn", "pqn", "sac", "leave it at 0"], in_subprocess=False),
    Bad("eval-epsilon-out-of-range", ["train", "--agent", "dqn", "--env", "CartPole-v1",
                                      "--eval-epsilon", "1.5", *_QUICK],
        ["eval_epsilon", "[0, 1]", "1.5"], in_subprocess=False),
    Bad("evaluate-epsilon-continuous", ["evaluate", "--run", "{run}", "--episodes", "1",
                                        "--epsilon", "0.1"], ["--epsilon", "sac"],
        in_subprocess=False),
    Bad("set-no-equals", ["train", "--set", "=3"], ["KEY=VALUE", "=3"], in_subprocess=False),
    Bad("set-norm-unknown", ["train", "--set", "critic_norm=foo", *_QUICK],
        ["foo", "batch_renorm"], in_subprocess=False),
    Bad("set-out-of-range", ["train", "--set", "batch_size=-3", *_QUICK],
        ["batch_size", "-3"], in_subprocess=False),
    Bad("config-unknown-train-key", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["bar", "eval_every"], files={"c.yaml": "train:\n  bar: 1\n"}, in_subprocess=False),
    Bad("config-unknown-section", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["agents", "train", "agent"], files={"c.yaml": "agents:\n  sac: {}\n"},
        in_subprocess=False),
    Bad("config-bad-train-value", ["train", "--config", "{d}/c.yaml"],
        ["steps", "0"], files={"c.yaml": "train:\n  steps: 0\n"}, in_subprocess=False),
    Bad("resume-other-agent", ["train", "--agent", "td3", "--env", "Pendulum-v1", "--steps",
                               "400", "--logdir", "{run}", "--resume"],
        ["cannot resume", "sac", "td3"], in_subprocess=False),
    Bad("resume-not-a-run", ["train", "--logdir", "{d}", "--resume", *_QUICK],
        ["cannot resume", "config.yaml"], files={"notes.txt": "x"}, in_subprocess=False),
    Bad("evaluate-episodes-zero", ["evaluate", "--run", "{d}", "--episodes", "0"],
        ["--episodes", "0"], in_subprocess=False),
    Bad("evaluate-truncated-data", ["evaluate", "--run", "{run}", "--episodes", "1"],
        ["step-000000400", "corrupt", "Read less bytes"], prepare="truncate", in_subprocess=False),
    Bad("set-wrong-type", ["train", "--set", "batch_size=abc", *_QUICK], ["batch_size", "abc"],
        in_subprocess=False),
    Bad("set-wrong-hidden", ["train", "--set", "hidden=abc", *_QUICK], ["hidden", "abc"],
        in_subprocess=False),
    # Issue 11: every setting validated before anything is made (TensorFlow would abort in C++
    # on a negative thread count: a subprocess).
    Bad("set-threads-negative", ["train", "--set", "intra_op_threads=-5", *_QUICK],
        ["intra_op_threads", "[0, 1024]", "-5"], in_subprocess=False),
    Bad("set-learning-rate-negative", ["train", "--set", "learning_rate=-3e-4", *_QUICK],
        ["learning_rate", "> 0", "-0.0003"], in_subprocess=False),
    Bad("set-batch-over-buffer", ["train", "--set", "batch_size=512", "--set",
                                  "buffer_size=100", *_QUICK],
        ["batch_size (512)", "buffer_size (100)"], in_subprocess=False),
    Bad("set-buffer-beyond-memory", ["train", "--set", "buffer_size=1e11", *_QUICK],
        ["buffer_size 100000000000", "GiB", "lower buffer_size"], in_subprocess=False),
    Bad("seed-2-to-the-63", ["train", "--seed", str(2**63), *_QUICK],
        ["--seed", "4294967295", str(2**63)], in_subprocess=False),
    Bad("config-seed-string", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["seed", "integer", "'five'"], files={"c.yaml": "train: {seed: five}\n"},
        in_subprocess=False),
    Bad("config-steps-not-a-number", ["train", "--config", "{d}/c.yaml"],
        ["steps", "integer", "'abc'"], files={"c.yaml": "train:\n  steps: abc\n"},
        in_subprocess=False),
    Bad("config-steps-fraction", ["train", "--config", "{d}/c.yaml"], ["steps", "30.7"],
        files={"c.yaml": "train:\n  steps: 30.7\n"}, in_subprocess=False),
    Bad("config-not-utf8", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["c.yaml", "UTF-8", "0xff"], files={"c.yaml": b"train:\n  steps: \xff\xfe\n"},
        in_subprocess=False),
    Bad("config-alias-bomb", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["c.yaml", "line 3", "aliases"], files={"c.yaml": _ALIAS_BOMB}, in_subprocess=False),
    Bad("config-huge-value", ["train", "--config", "{d}/c.yaml", *_QUICK], ["hidden", "..."],
        files={"c.yaml": "agent:\n  hidden: " + "x" * 100_000 + "\n"}, in_subprocess=False),
    Bad("env-module-fails-at-import", ["train", "--env", "tests._import_failing_env:X-v0",
                                       *_QUICK],
        ["importing module 'tests._import_failing_env'", "RuntimeError", "broken"],
        in_subprocess=False),
    Bad("env-constructor-raises", ["train", "--env",
                                   "tests._failing_env:BnrlBrokenConstructor-v0", *_QUICK],
        ["BnrlBrokenConstructor-v0", "ValueError", "constructor fails"], in_subprocess=False),
    Bad("logdir-is-a-file", ["train", "--logdir", "{d}/f", *_QUICK], ["/f is a file", "--logdir"],
        files={"f": "x"}, in_subprocess=False),
    Bad("logdir-under-a-file", ["train", "--logdir", "{d}/f/run", *_QUICK],
        ["cannot create run directory", "Not a directory"], files={"f": "x"}, in_subprocess=False),
    Bad("without-replay-without-resume", ["train", "--without-replay", *_QUICK],
        ["--without-replay", "--resume"], in_subprocess=False),
    # Issue 25: no value dropped, no non-finite setting, no duplicate key.
    Bad("set-empty-value", ["train", "--set", "gamma=", *_QUICK],
        ["gamma cannot be empty or null", "a finite number"], in_subprocess=False),
    Bad("set-null-value", ["train", "--set", "tau=null", *_QUICK],
        ["tau cannot be empty or null"], in_subprocess=False),
    Bad("set-infinite-learning-rate", ["train", "--set", "learning_rate=.inf", *_QUICK],
        ["learning_rate must be a finite number", "inf"], in_subprocess=False),
    Bad("config-duplicate-key", ["train", "--config", "{d}/c.yaml", *_QUICK],
        ["c.yaml", "line 3", "duplicate key 'tau'"],
        files={"c.yaml": "agent:\n  tau: 0.01\n  tau: 0.02\n"}, in_subprocess=False),
    Bad("export-out-under-a-file", ["export", "--run", "{run}", "--out", "{d}/f/policy"],
        ["cannot export to --out", "is a file"], files={"f": "x"}, in_subprocess=False),
    # --resume compares the whole configuration and checks every part of the checkpoint.
    Bad("resume-other-critic-norm", ["train", *SAC_BN, "--critic-norm", "none", "--logdir",
                                     "{run}", "--resume"],
        ["cannot resume", "critic_norm (saved 'batch', given 'none')", "only steps"],
        in_subprocess=False),
    Bad("resume-other-set-and-seed", ["train", *SAC_BN, "--set", "tau=0.01", "--seed", "1",
                                      "--logdir", "{run}", "--resume"],
        ["seed (saved 0, given 1)", "tau (saved 0.005, given 0.01)"], in_subprocess=False),
    Bad("resume-steps-below-checkpoint", ["train", *SAC_BN, "--steps", "100", "--logdir",
                                          "{run}", "--resume"],
        ["--steps 100", "step 400"], in_subprocess=False),
    Bad("resume-missing-dir", ["train", "--logdir", "{d}/nope", "--resume", *_QUICK],
        ["cannot resume", "no such run directory"], in_subprocess=False),
    Bad("resume-missing-replay", ["train", *SAC_BN, "--steps", "600", "--logdir", "{run}",
                                  "--resume"],
        ["step-000000400", "no replay.npz", "--without-replay"], prepare="delete-replay",
        in_subprocess=False),
    Bad("resume-garbled-replay", ["train", *SAC_BN, "--steps", "600", "--logdir", "{run}",
                                  "--resume"],
        ["step-000000400", "replay.npz is unreadable", "--without-replay"],
        prepare="garble-replay", in_subprocess=False),
    Bad("resume-loop-json-missing-keys", ["train", *SAC_BN, "--steps", "600", "--logdir",
                                          "{run}", "--resume"],
        ["step-000000400", "loop.json", "eval_steps", "resets"], prepare="loop-missing-keys",
        in_subprocess=False),
    Bad("evaluate-video-of-env-without-render-mode", ["evaluate", "--run", "{run}",
                                                      "--episodes", "1", "--render-video"],
        ["BnrlToyEnv-v0", "cannot render 'rgb_array'", "needs an env that renders"],
        prepare="toy-env", in_subprocess=False),
    # The benchmark and report commands.
    Bad("benchmark-duplicate-variants", ["benchmark", "--variants", "none,none,batch"],
        ["--variants", "'none' given twice"], in_subprocess=False),
    Bad("benchmark-out-is-a-file", [*_BENCH, "--out", "{d}/f"], ["--out", "is a file"],
        files={"f": "x"}, in_subprocess=False),
    Bad("benchmark-corrupt-grid-json", [*_BENCH, "--out", "{d}/out"],
        ["grid.json", "not JSON", "move it away"], files={"out/grid.json": "{\"agents\": ["},
        in_subprocess=False),
    Bad("benchmark-grid-json-missing-keys", [*_BENCH, "--out", "{d}/out"],
        ["grid.json", "baseline, cells, seeds, variants", "move it away"],
        files={"out/grid.json": '{"agents": ["sac"], "variants": ["none"]}'}, in_subprocess=False),
    Bad("report-empty-runs", ["report", "{d}"], ["results.json", "no runs"],
        files={"results.json": '{"runs": []}'}, in_subprocess=False),
    Bad("report-malformed-run", ["report", "{d}"], ["results.json", "run 1", "seed"],
        files={"results.json": json.dumps({"runs": [
            {"agent": "sac", "env": "Pendulum-v1", "variant": "none", "seed": 0,
             "status": "ok"},
            {"agent": "sac", "env": "Pendulum-v1", "variant": "none", "seed": "0",
             "status": "ok"}]})}, in_subprocess=False),
]


def _logdir_digest(args: list[str]) -> dict[str, str] | None:
    """File digests of the --logdir of a train command (None when it does not exist)."""
    if args[0] != "train":
        return None
    logdir = Path(args[args.index("--logdir") + 1])
    return _tree_digest(logdir) if logdir.exists() else None


def _prepare(case: Bad, root: Path, finished_run: Path) -> list[str]:
    d = root / case.id
    d.mkdir()
    for name, content in case.files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            (d / name).write_text(content)
    run_copy = d / "run"
    if any("{run}" in a for a in case.args):
        shutil.copytree(finished_run, run_copy)
        ckpt = run_copy / "checkpoints" / "step-000000400"
        data = sorted(ckpt.glob("model.data-*"))[0]
        if case.prepare == "garble":
            raw = bytearray(data.read_bytes())
            raw[::7] = bytes(b ^ 0xFF for b in raw[::7])
            data.write_bytes(bytes(raw))
        elif case.prepare == "truncate":
            data.write_bytes(data.read_bytes()[:100])
        elif case.prepare == "delete-index":
            (ckpt / "model.index").unlink()
        elif case.prepare == "delete-replay":
            (ckpt / "replay.npz").unlink()
        elif case.prepare == "garble-replay":
            (ckpt / "replay.npz").write_bytes((ckpt / "replay.npz").read_bytes()[:300])
        elif case.prepare == "toy-env":  # a custom env whose constructor takes no render_mode
            config = run_copy / "config.yaml"
            config.write_text(config.read_text().replace(
                "env: Pendulum-v1", "env: tests._custom_env:BnrlToyEnv-v0"))
        elif case.prepare == "loop-missing-keys":
            state = json.loads((ckpt / "loop.json").read_text())
            del state["eval_steps"], state["resets"]
            (ckpt / "loop.json").write_text(json.dumps(state))
    args = [a.replace("{d}", str(d)).replace("{run}", str(run_copy)) for a in case.args]
    if args[0] == "train" and "--logdir" not in args:
        args += ["--logdir", str(d / "out")]
    return args


@pytest.fixture(scope="module")
def bad_input_results(sac_bn_run, tmp_path_factory):
    """Run the subprocess cases of BAD concurrently: {id: (args, digest before, result)}."""
    root = tmp_path_factory.mktemp("bad")
    prepared = {c.id: _prepare(c, root, sac_bn_run) for c in BAD if c.in_subprocess}
    before = {cid: _logdir_digest(args) for cid, args in prepared.items()}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {cid: pool.submit(_cli, args, 240) for cid, args in prepared.items()}
        done = {cid: f.result() for cid, f in futures.items()}
    return {cid: (prepared[cid], before[cid], done[cid]) for cid in prepared}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)]
                          if c.xfail else []) for c in BAD])
def test_bad_input_exits_2_with_one_line(case, request, sac_bn_run, tmp_path, capsys):
    if case.in_subprocess:
        args, before, result = request.getfixturevalue("bad_input_results")[case.id]
        code, stderr, stdout = result.returncode, result.stderr, result.stdout
    else:
        args = _prepare(case, tmp_path, sac_bn_run)
        before = _logdir_digest(args)
        code = _main(args)
        stdout, stderr = capsys.readouterr()
    line = _one_line(stderr)
    assert code == 2, (args, code, stderr, stdout[-2000:])
    for needed in case.needs:
        assert needed in line, f"{needed!r} not in {line!r}"
    assert len(line) <= 600, f"{len(line)} characters"
    if before is None:
        assert not _logdir_digest(args), "bad input must not create the run directory"
    else:  # an existing directory: nothing in it may change
        assert _logdir_digest(args) == before


# ------------------------------------------------------------------- 4. kill -9 and --resume
KILL_ARGS = ["--agent", "sac", "--env", "Pendulum-v1", "--steps", "1200", "--seed", "3",
             "--checkpoint-every", "200", "--eval-every", "100", "--eval-episodes", "1",
             "--log-every", "20", *TINY_AC]
EVAL_STEPS = list(range(100, 1201, 100))


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A run killed with SIGKILL after an eval that follows its latest checkpoint, resumed."""
    run_dir = tmp_path_factory.mktemp("kill") / "run"
    args = ["train", *KILL_ARGS, "--logdir", str(run_dir)]
    log = run_dir.parent / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        try:
            # Kill right after an eval between two checkpoints (eval every 100 steps, checkpoint
            # every 200): the killed run has then flushed scalars and a metrics.csv row newer
            # than the checkpoint it will be resumed from.
            while proc.poll() is None and time.time() < deadline:
                evals, ckpts = _csv_steps(run_dir / "metrics.csv"), _checkpoint_steps(run_dir)
                if ckpts and evals and evals[-1] > ckpts[-1] and evals[-1] % 200:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None and time.time() >= deadline:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed mid-way (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    killed = {"evals": _csv_steps(run_dir / "metrics.csv"),
              "checkpoints": _checkpoint_steps(run_dir)}
    assert killed["checkpoints"] and killed["evals"][-1] < 1200
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _main([*args, "--resume"])
    return run_dir, killed, code, out.getvalue()


def test_resume_after_kill_9_continues_one_run(resumed_run):
    run_dir, killed, code, output = resumed_run
    assert code == 0, output
    match = re.search(r"resumed .* from step (\d+)", output)
    assert match, output
    start = int(match.group(1))
    assert start == killed["checkpoints"][-1]
    assert killed["evals"][-1] > start  # the killed run got past its last checkpoint

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 1200 and summary["resumes"] == 1
    assert summary["eval_steps"] == EVAL_STEPS

    header, rows = _csv_rows(run_dir / "metrics.csv")
    assert header == ["step", "eval_mean_return", "eval_std_return"]
    assert [int(r[0]) for r in rows] == EVAL_STEPS  # unique, increasing, ends at 1200

    acc = _scalars(run_dir)
    evals = acc.Scalars("eval/mean_return")
    assert [e.step for e in evals] == EVAL_STEPS  # one continuous step axis, nothing lost
    for event, row in zip(evals, rows, strict=True):  # and the kept value is the final one
        assert event.value == pytest.approx(float(row[1]), rel=1e-5, abs=1e-3)
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), f"{tag}: steps not strictly increasing: {steps}"
    # The killed run's eval after its checkpoint is on disk, and TensorBoard drops it.
    raw = _raw_scalar_steps(run_dir, "eval/mean_return")
    assert sorted(raw) != EVAL_STEPS and set(raw) == set(EVAL_STEPS), raw

    assert _checkpoint_steps(run_dir)[-1] == 1200
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_resume_without_replay_continues_with_an_empty_buffer(sac_bn_run, tmp_path):
    """A checkpoint whose replay.npz is lost resumes only when asked to (the matrix pins the
    refusal), and then with an empty buffer; everything else continues."""
    import numpy as np

    run_dir = tmp_path / "run"
    shutil.copytree(sac_bn_run, run_dir)
    (run_dir / "checkpoints" / "step-000000400" / "replay.npz").unlink()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _main(["train", *SAC_BN, "--steps", "500", "--logdir", str(run_dir), "--resume",
                      "--without-replay"])
    assert code == 0, out.getvalue()
    assert "resumed" in out.getvalue() and "from step 400" in out.getvalue()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 500 and summary["eval_steps"] == [200, 400, 500]
    with np.load(run_dir / "checkpoints" / "step-000000500" / "replay.npz") as replay:
        assert int(replay["size"]) == 100  # only what the resumed run collected


def test_resume_with_a_damaged_metrics_csv_keeps_the_rows_that_parse(sac_bn_run, tmp_path,
                                                                     capsys):
    """bnrl writes metrics.csv atomically; bytes appended by something else (not UTF-8, a torn
    quote) cost the resume one warning line, never the run."""
    run_dir = tmp_path / "run"
    shutil.copytree(sac_bn_run, run_dir)
    with open(run_dir / "metrics.csv", "ab") as f:
        f.write(b'\xff\xfe not a row\n"unterminated,\n')
    code = _main(["train", *SAC_BN, "--steps", "500", "--logdir", str(run_dir), "--resume",
                  "--quiet"])
    assert code == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "metrics.csv" in line]
    assert len(warning) == 1 and "dropped 2 unreadable row(s)" in warning[0], warning
    with open(run_dir / "metrics.csv", newline="") as f:
        steps = [int(row[0]) for row in list(csv.reader(f))[1:]]
    assert steps == [200, 400, 500]


# --------------------------------------------------------------------------------- 5. evaluate
def test_evaluate_prints_mean_and_std(resumed_run, capsys):
    run_dir = resumed_run[0]
    assert _main(["evaluate", "--run", str(run_dir), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    # It names the checkpoint it evaluated (issue 28 item 7): the run's latest.
    latest = sorted((run_dir / "checkpoints").iterdir())[-1]
    step = int(latest.name.split("-")[-1])
    assert re.search(r"^mean return -?\d+\.\d+ \+- \d+\.\d+ over 2 episodes of "
                     + re.escape(f"{latest} (env step {step})") + "$", out, re.M), out


def test_evaluate_render_video_writes_mp4(sac_bn_run, tmp_path, capfd):
    pytest.importorskip("pygame", reason="Pendulum renders rgb_array frames with pygame")
    import imageio_ffmpeg

    run_dir = tmp_path / "run"
    shutil.copytree(sac_bn_run, run_dir)
    config = run_dir / "config.yaml"  # a 30-step episode keeps the video cheap
    text = config.read_text()
    assert "max_episode_steps: null" in text  # replaced below: a silent no-op otherwise
    config.write_text(text.replace("max_episode_steps: null", "max_episode_steps: 30"))
    code = _main(["evaluate", "--run", str(run_dir), "--episodes", "2", "--render-video"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert re.search(r"^mean return .* over 2 episodes of .*$", out, re.M), out
    video = run_dir / "eval.mp4"
    assert video.is_file() and f"video: {video}" in out
    assert video.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert 25 <= frames <= 31, frames  # the first episode only: its reset and 30 steps
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert err.strip() == "", f"stray stderr output while rendering: {err!r}"


# ---------------------------------------------------------------------- 6. non-finite loss
def test_nan_loss_exits_1_and_keeps_the_last_good_checkpoint(tmp_path):
    """With the env-boundary check off (``check_finite: false``; on, it names the NaN reward
    itself: tests/test_reliability_training.py), the NaN rewards reach the losses, whose check
    stops the run."""
    from _nan_env import NAN_AFTER

    run_dir = tmp_path / "run"
    unchecked = tmp_path / "unchecked.yaml"
    unchecked.write_text("train: {check_finite: false}\n")
    result = _cli(["train", "--agent", "sac", "--env", NAN_ENV, "--steps", "600",
                   "--checkpoint-every", "50", "--eval-every", "50", "--eval-episodes", "1",
                   "--config", str(unchecked), "--logdir", str(run_dir), "--quiet", *TINY_AC])
    line = _one_line(result.stderr)
    assert result.returncode == 1, result.stderr
    match = re.search(r"env step (\d+)", line)
    assert match, line
    nan_step = int(match.group(1))
    assert NAN_AFTER < nan_step < 600, line
    assert re.search(r"losses/\w+ is nan", line), line
    assert "checkpoint" in line

    ckpts = _checkpoint_steps(run_dir)
    # The checkpoint of the step that hit NaN is not written: the last one is before it.
    assert ckpts and ckpts[-1] == (nan_step - 1) // 50 * 50, (ckpts, line)
    latest = run_dir / "checkpoints" / f"step-{ckpts[-1]:09d}"
    assert (latest / "model.index").is_file()
    assert not (run_dir / "summary.json").exists()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the kept checkpoint loads and acts
        assert _main(["evaluate", "--run", str(run_dir), "--episodes", "1"]) == 0
    assert "mean return 0.00 +- 0.00 over 1 episodes" in out.getvalue()


# ------------------------------------------------------------------------- 7./8. help, script
def test_version_names_the_installed_package(capsys):
    import bnrl

    with pytest.raises(SystemExit) as exc:
        run.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"bnrl {bnrl.__version__}\n"


@pytest.mark.parametrize("origin, expected", [
    # pip's direct_url.json (PEP 610) of `pip install -e CLONE` and of `pip install CLONE`
    ({"url": "file://{clone}", "dir_info": {"editable": True}}, "pip install -e '{clone}[video]'"),
    ({"url": "file://{clone}", "dir_info": {}}, "pip install '{clone}[video]'"),
    (None, "pip install 'bnrl[video]'"),  # from an index: no direct_url.json
])
def test_install_hints_work_where_bnrl_came_from(origin, expected, tmp_path, monkeypatch):
    """Issue 28: 'bnrl[video]' does not install from a clone; the hint names the clone."""
    from importlib import metadata

    from bnrl.common import extras

    clone = tmp_path / "my clone"
    clone.mkdir()
    (clone / "pyproject.toml").write_text("[project]\nname = 'bnrl'\n")
    text = None if origin is None else json.dumps(origin).replace("{clone}", str(clone))

    class Distribution:
        def read_text(self, name):
            return text if name == "direct_url.json" else None

    monkeypatch.setattr(metadata, "distribution", lambda name: Distribution())
    monkeypatch.setattr(extras, "_CHECKOUT", tmp_path / "site-packages" / "bnrl")
    assert extras.install_hint("video") == expected.replace("{clone}", str(clone))


def test_install_hint_of_a_checkout_never_installed(tmp_path, monkeypatch):
    from importlib import metadata

    from bnrl.common import extras

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.setattr(metadata, "distribution", not_installed)
    monkeypatch.setattr(extras, "_CHECKOUT", tmp_path)
    assert extras.install_hint("ray") == f"pip install -e '{tmp_path}[ray]'"


def test_train_help_lists_every_flag_agent_and_norm(capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    flags = ["--agent", "--env", "--steps", "--seed", "--logdir", "--critic-norm",
             "--actor-norm", "--config", "--set", "--eval-every", "--eval-episodes",
             "--checkpoint-every", "--log-every", "--max-episode-steps", "--resume", "--quiet"]
    train_parser = run.build_parser()._subparsers._group_actions[0].choices["train"]
    flags += [o for a in train_parser._actions for o in a.option_strings if o.startswith("--")]
    for flag in flags:
        assert flag in text, flag
    for name in (*run.AGENTS, *run.NORMS):
        assert name in text, name
    assert set(run.AGENTS) == {"dqn", "ddpg", "td3", "sac", "crossq", "pqn"}
    assert set(run.NORMS) == {"none", "batch", "batch_renorm", "layer"}


def test_evaluate_help(capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(["evaluate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--run", "--episodes", "--render-video"):
        assert flag in text


def test_console_script_entry_point(capsys):
    with open(REPO / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["bnrl"] == "bnrl.run:main"
    with pytest.raises(SystemExit) as exc:
        run.main(["train", "--help"])
    assert exc.value.code == 0
    assert "usage: bnrl train" in capsys.readouterr().out
