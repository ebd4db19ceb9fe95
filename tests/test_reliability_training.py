"""Issue 25, the training side: no silent NaN, no value silently dropped, every output path checked
before work starts, every fault of an env in one line.

Pinned here: a NaN or infinite observation, reward or action stops a run at the env boundary
(``check_finite``, on by default) naming the step and the quantity, with the checkpoint it kept
said truthfully; ``agent.act`` gives the same answer on its graph and numpy paths for every
input, NaN observations included; every float setting of every agent must be finite (and within
float32) before anything is built; an empty or null value is refused unless null means the
default, where it overrides a config file like any value (and ``--help`` names those settings);
duplicate YAML keys are refused; an env that raises mid-run ends it in one line with the
``--resume`` advice; ``export`` and ``evaluate --render-video`` check where they write before any
work and leave nothing behind; a malformed ``bnrl_policy.json`` is refused naming the key; the
temporary directory of a killed export is removed by the next write to that place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bnrl import run
from bnrl.agents import AGENTS
from bnrl.common import files
from bnrl.common.errors import EnvFailed, NonFiniteValue, UserError
from bnrl.training import checkpoint, config, evaluation, export, loop

from _cli import one_line as _one_line
from _cli import run_captured as _main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "hidden=[32,32]", "--set", "actor_hidden=[32,32]", "--set", "batch_size=32",
        "--set", "learning_starts=50", "--set", "buffer_size=5000", "--eval-episodes", "1"]
NAN_OBS_ENV = "tests._nan_env:BnrlNanObsEnv-v0"
NAN_REWARD_ENV = "tests._nan_env:BnrlNanRewardEnv-v0"
FAILING_ENV = "tests._failing_env:BnrlFailing-v0"
# Before what is to be refused: if it is not, the run still ends soon.
QUICK = ["--steps", "30", "--quiet", *TINY]


def _hidden_temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------- non-finite values (kind 2)
def test_nan_observation_stops_the_run_at_its_step_and_keeps_the_checkpoint(tmp_path, capsys):
    from tests._nan_env import NAN_AFTER

    run_dir = tmp_path / "run"
    code, _, err = _main(["train", "--env", NAN_OBS_ENV, "--steps", "400", "--checkpoint-every",
                          "100", "--eval-every", "100", "--logdir", str(run_dir), "--quiet",
                          *TINY], capsys)
    line = _one_line(err)
    assert code == 1, err
    assert line == (f"bnrl: training stopped at env step {NAN_AFTER + 1}: environment "
                    f"'{NAN_OBS_ENV}' returned a non-finite observation (nan at index 0); "
                    f"{run_dir} keeps its checkpoint at step 100")
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-000000100"]
    assert not (run_dir / "summary.json").exists()
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["100"]  # no NaN evaluation was recorded
    assert all(math.isfinite(float(v)) for row in rows for v in row.split(",")), rows


def test_nan_reward_is_named_by_the_env_boundary(tmp_path, capsys):
    from tests._nan_env import NAN_AFTER

    run_dir = tmp_path / "run"
    code, _, err = _main(["train", "--env", NAN_REWARD_ENV, "--steps", "400",
                          "--checkpoint-every", "100", "--eval-every", "400", "--logdir",
                          str(run_dir), "--quiet", *TINY], capsys)
    assert code == 1
    assert _one_line(err) == (f"bnrl: training stopped at env step {NAN_AFTER + 1}: "
                              f"environment '{NAN_REWARD_ENV}' returned a non-finite reward "
                              f"(nan); {run_dir} keeps its checkpoint at step 100")


def test_a_run_stopped_before_its_first_checkpoint_says_it_has_none(tmp_path, capsys):
    from tests._nan_env import NAN_AFTER

    run_dir = tmp_path / "run"
    code, _, err = _main(["train", "--env", NAN_REWARD_ENV, "--steps", "400",
                          "--checkpoint-every", "300", "--eval-every", "400", "--logdir",
                          str(run_dir), "--quiet", *TINY], capsys)
    line = _one_line(err)
    assert code == 1
    assert f"env step {NAN_AFTER + 1}" in line and "reward (nan)" in line, line
    assert line.endswith(f"{run_dir} has no checkpoint yet"), line
    assert "kept" not in line and checkpoint.latest(run_dir) is None


def test_check_finite_false_turns_the_boundary_check_off_but_never_the_results(tmp_path):
    """With the check off, a NaN reward is trained on (the losses catch it, see test_cli); an
    evaluation return that is not finite is still never a result."""
    from bnrl.training.runs import make_run_env

    settings = config.resolve("sac", NAN_REWARD_ENV)
    settings.check_finite = False
    env = make_run_env(settings, 0)
    env.reset(seed=0)
    for _ in range(200):  # past NAN_AFTER: NaN rewards go through
        _, reward, *_ = env.step(np.zeros(1, np.float32))
    assert math.isnan(reward)

    class Zero:
        def act(self, obs, explore=False):
            return np.zeros(1, np.float32)

    with pytest.raises(NonFiniteValue, match="an evaluation episode returned nan"):
        evaluation.evaluate(Zero(), env, 1)
    env.close()


def test_check_finite_is_a_resumable_run_setting_outside_the_settings_hash():
    checked, unchecked = config.resolve("sac", "Pendulum-v1"), config.resolve("sac", "Pendulum-v1")
    unchecked.check_finite = False
    assert checked.check_finite is True
    assert config.changed_settings(checked, unchecked) == []
    assert "check_finite" in config.RESUMABLE


def test_the_xla_switches_are_resumable_and_outside_the_settings_hash():
    """``xla`` and ``xla_single_update`` change speed and float rounding only: a run resumes
    with other values, and a benchmark run made with them counts as the same settings."""
    import dataclasses

    from bnrl.compare.results import deciding_settings, settings_hash

    compiled, plain = config.resolve("sac", "Pendulum-v1"), config.resolve("sac", "Pendulum-v1")
    plain.agent_config = dataclasses.replace(plain.agent_config, xla=False,
                                             xla_single_update=False).resolved()
    assert compiled.agent_config.xla and compiled.agent_config.xla_single_update is None
    assert config.changed_settings(compiled, plain) == []
    assert (settings_hash(deciding_settings(compiled))
            == settings_hash(deciding_settings(plain)))
    other = config.resolve("sac", "Pendulum-v1")
    other.agent_config = dataclasses.replace(other.agent_config, tau=0.01).resolved()
    assert config.changed_settings(compiled, other) != []  # a deciding setting still counts


def test_env_boundary_names_a_non_finite_action_and_an_inf_observation():
    import gymnasium as gym

    from bnrl.agents import ACTION_SPACES
    from bnrl.envs import EnvBoundary, make_env

    env = EnvBoundary(make_env("Pendulum-v1", 0, agent="sac", agents=ACTION_SPACES),
                      "Pendulum-v1")
    env.reset()
    with pytest.raises(NonFiniteValue, match=r"^the agent's action for 'Pendulum-v1' is not "
                       r"finite \(nan\)$"):
        env.step(np.array([np.nan], np.float32))

    class InfObs(gym.Wrapper):
        def step(self, action):
            obs, *rest = self.env.step(action)
            obs = obs.copy()
            obs[2] = -np.inf
            return (obs, *rest)

    env = EnvBoundary(InfObs(make_env("Pendulum-v1", 0)), "Pendulum-v1")
    env.reset()
    with pytest.raises(NonFiniteValue, match=r"non-finite observation \(-inf at index 2\)"):
        env.step(np.zeros(1, np.float32))
    unchecked = EnvBoundary(InfObs(make_env("Pendulum-v1", 0)), "Pendulum-v1",
                            check_finite=False)
    unchecked.reset()
    assert unchecked.step(np.zeros(1, np.float32))[0][2] == -np.inf


@pytest.mark.filterwarnings("ignore:overflow encountered")  # numpy's, on 3e38 inputs
@pytest.mark.parametrize("name", ["dqn", "td3", "sac"])
def test_act_gives_the_same_answer_on_the_graph_and_numpy_paths_for_every_input(name, agents):
    """The first deterministic action after a weight change runs the graph, the later ones numpy
    (agents/agent.py): a NaN observation gave a number on the first call and NaN afterwards."""
    from gymnasium import spaces

    obs_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    act_space = spaces.Discrete(2) if name == "dqn" else spaces.Box(-1.0, 1.0, (1,), np.float32)
    settings = {"hidden": [8, 8], "buffer_size": 100, "batch_size": 4}
    if name != "dqn":
        settings["actor_hidden"] = [8, 8]
    agent = agents.get(name, obs_space, act_space, settings)
    for obs in ([np.nan, 0.0, 0.0], [0.0, np.inf, 0.0], [0.0, 0.0, -np.inf]):
        outcomes = []
        for _ in range(3):  # graph, then numpy twice
            try:
                outcomes.append(repr(agent.act(np.array(obs, np.float32), explore=False)))
            except NonFiniteValue as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1] == outcomes[2], outcomes
        assert "not finite" in outcomes[0], outcomes  # refused, never acted on
    # Finite observations whose pre-activations overflow float32 (inf - inf is NaN inside the
    # network): both paths still agree.
    for scale in (1e30, 3e38):
        obs = np.array([scale, -scale, scale], np.float32)
        agent.update(_random_batch(agent))  # the weights changed: the next act runs the graph
        first = agent.act(obs, explore=False)  # graph (weights changed)
        second = agent.act(obs, explore=False)  # numpy
        np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def _random_batch(agent) -> dict:
    rng = np.random.default_rng(0)
    n, obs_dim = 4, agent.obs_dim
    if agent.head.action_space == "discrete":
        action = rng.integers(0, agent.head.n, n)
    else:
        action = rng.uniform(-1, 1, (n, agent.head.action_dim)).astype(np.float32)
    return {"obs": rng.normal(size=(n, obs_dim)).astype(np.float32), "action": action,
            "reward": rng.normal(size=n).astype(np.float32),
            "next_obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "done": np.zeros(n, np.float32)}


def _float_fields():
    seen = []
    for name, algorithm in AGENTS.items():
        for f in dataclasses.fields(algorithm.config_class):
            if str(f.type).replace("| None", "").strip() == "float":
                seen.append((name, f.name))
    return seen


@pytest.mark.parametrize("agent, field", _float_fields())
def test_every_float_setting_of_every_agent_must_be_finite(agent, field):
    """``learning_rate=.inf``, ``init_alpha=.inf`` and ``bn_epsilon=.inf`` failed at step 100
    or trained to the end with exit 0; beyond float32's range a number is inf in the graph."""
    config_class = AGENTS[agent].config_class
    for bad in (float("inf"), float("-inf"), float("nan"), 1e39):
        with pytest.raises(UserError, match=rf"^{field} must be a finite number"):
            config.resolve(agent, "CartPole-v1" if agent == "dqn" else "Pendulum-v1", None,
                           None, {field: bad})
        with pytest.raises(ValueError, match=rf"^{field} must be a finite number"):
            config_class(**{field: bad}).resolved()  # a config built in Python too


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "1e39"])
def test_non_finite_settings_are_refused_before_anything_is_built(value, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr(loop, "check_run", lambda *a: pytest.fail("the env was made"))
    run_dir = tmp_path / "run"
    for key in ("learning_rate", "init_alpha", "bn_epsilon"):
        code, _, err = _main(["train", *QUICK, "--set", f"{key}={value}", "--logdir",
                              str(run_dir)], capsys)
        assert code == 2
        line = _one_line(err)
        assert f"{key} must be a finite number" in line, line
        assert not run_dir.exists()


# --------------------------------------------------------------------- no value dropped (kind 3)
@pytest.mark.parametrize("text", ["gamma=", "tau=null", "tau=~", "hidden=", "critic_norm=null",
                                  "xla="])
def test_an_empty_or_null_setting_without_null_meaning_is_refused(text, tmp_path, capsys):
    key = text.partition("=")[0]
    code, _, err = _main(["train", *QUICK, "--set", text, "--logdir", str(tmp_path / "run")],
                         capsys)
    assert code == 2
    line = _one_line(err)
    assert f"{key} cannot be empty or null" in line and "leave it out" in line, line
    assert not (tmp_path / "run").exists()


def test_a_variant_setting_left_empty_is_refused_by_the_shared_check():
    """``--variant 'x:gamma='`` parses its values with ``parse_setting`` and resolves them with
    ``resolve``, as ``--set`` does: the empty value is refused there, not dropped."""
    key, value = config.parse_setting("gamma=", "--variant 'x:gamma='")
    assert (key, value) == ("gamma", None)
    with pytest.raises(UserError, match="gamma cannot be empty or null"):
        config.resolve("sac", "Pendulum-v1", None, {"steps": 100}, {key: value})


def test_a_null_setting_overrides_the_config_file(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(run, "train", lambda config, *a, **k: seen.append(config) or {
        "steps": 1, "wall_time_s": 0.0, "final_return": None, "updates_per_second": 0.0})
    td3, sac = tmp_path / "td3.yaml", tmp_path / "sac.yaml"
    td3.write_text("train: {agent: td3}\nagent: {actor_learning_rate: 1e-4}\n")
    sac.write_text("agent: {target_entropy: -3.0, xla_single_update: true}\n")
    # (file, setting, the file's value, what null resolves to: each stays null in the resolved
    # config, decided where it is used)
    for user, key, given, default in ((td3, "actor_learning_rate", 1e-4, None),
                                      (sac, "target_entropy", -3.0, None),
                                      (sac, "xla_single_update", True, None)):
        assert run.main(["train", "--config", str(user), "--quiet"]) == 0
        assert getattr(seen[-1].agent_config, key) == given, key
        assert run.main(["train", "--config", str(user), "--set", f"{key}=null", "--quiet"]) == 0
        assert getattr(seen[-1].agent_config, key) == default, key


def test_help_names_every_setting_whose_null_means_the_default(capsys):
    from bnrl.agents.config import nullable_settings

    with pytest.raises(SystemExit):
        run.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("An empty or null value")
    sentence = text[start:text.index("Agent settings (--set", start)]
    nullable = set(nullable_settings(config.RunConfig))
    for algorithm in AGENTS.values():
        nullable |= set(nullable_settings(algorithm.config_class))
    assert nullable == {"actor_learning_rate", "target_entropy", "xla_single_update",
                        "max_episode_steps"}
    for name in nullable:
        assert f"{name} (" in sentence, (name, sentence)
    assert "check_finite" in text


@pytest.mark.parametrize("text, key, line", [
    ("agent:\n  gamma: 0.9\n  tau: 0.01\n  gamma: 0.99\n", "gamma", 4),
    ("train:\n  steps: 100\ntrain:\n  steps: 200\n", "train", 3),
    ("agent: {hidden: [8], hidden: [16]}\n", "hidden", 1),
])
def test_duplicate_yaml_keys_are_refused_naming_the_key_and_file(text, key, line, tmp_path,
                                                                 capsys):
    user = tmp_path / "dup.yaml"
    user.write_text(text)
    code, _, err = _main(["train", *QUICK, "--config", str(user), "--logdir",
                          str(tmp_path / "run")], capsys)
    assert code == 2
    assert _one_line(err) == (f"bnrl: error: malformed YAML in {user} at line {line}: duplicate "
                              f"key '{key}' (YAML 1.2 forbids duplicate keys: keep one)")
    with pytest.raises(UserError, match="duplicate key 'a'"):
        config.load_yaml("{a: 1, b: {c: 2}, a: 3}", "--set")
    assert config.load_yaml("{a: 1, b: {a: 2}}", "--set") == {"a": 1, "b": {"a": 2}}


def test_read_yaml_names_the_kind_of_file_and_its_format(tmp_path):
    listing = tmp_path / "v.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UserError, match=r"^variants file .*v.yaml must hold a mapping of name "
                       r"to settings, not a list$"):
        config.read_yaml(listing, "variants file", "a mapping of name to settings")


# --------------------------------------------------------------------- env faults (kind 4)
def test_an_env_raising_mid_run_ends_it_in_one_line_with_the_resume_advice(tmp_path, capsys,
                                                                        monkeypatch):
    from tests import _failing_env

    run_dir = tmp_path / "run"
    args = ["train", "--env", FAILING_ENV, "--seed", str(_failing_env.FAILING_SEED), "--steps",
            "200", "--checkpoint-every", "100", "--eval-every", "100", "--logdir", str(run_dir),
            "--quiet", *TINY]
    code, _, err = _main(args, capsys)
    assert code == 1
    assert _one_line(err) == (
        f"bnrl: training stopped at env step {_failing_env.FAIL_AFTER}: environment "
        f"'{FAILING_ENV}' raised RuntimeError in step(): {_failing_env.MESSAGE} at step "
        f"{_failing_env.FAIL_AFTER} (seed {_failing_env.FAILING_SEED}); {run_dir} keeps its "
        "checkpoint at step 100: continue with the same command and --resume")
    monkeypatch.setenv("BNRL_FAILING_ENV_OFF", "1")  # the env is fixed: the advice works
    code, out, err = _main([*args, "--resume"], capsys)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 200 and summary["resumes"] == 1


def test_an_env_raising_in_reset_is_one_line_too(tmp_path, capsys, monkeypatch):
    from tests import _failing_env

    def broken_reset(self, *, seed=None, options=None):
        raise OSError(5, "simulator socket closed")

    monkeypatch.setattr(_failing_env.FailingEnv, "reset", broken_reset)
    run_dir = tmp_path / "run"
    code, _, err = _main(["train", "--env", FAILING_ENV, "--steps", "100", "--logdir",
                          str(run_dir), "--quiet", *TINY], capsys)
    assert code == 1
    line = _one_line(err)
    assert line.startswith(f"bnrl: training stopped at the first reset (env step 0): environment "
                           f"'{FAILING_ENV}' raised OSError in reset(): simulator socket "
                           "closed"), line
    assert line.endswith(f"{run_dir} has no checkpoint yet: continue with the same command and "
                         "--resume"), line


def test_env_failed_is_the_cause_of_a_benchmark_traceback():
    """The env's own exception stays the cause, so a benchmark's error.txt shows where in the env
    it was raised."""
    from bnrl.envs import EnvBoundary
    from tests import _failing_env

    env = EnvBoundary(_failing_env.FailingEnv(), "x")
    env.reset(seed=_failing_env.FAILING_SEED)
    with pytest.raises(EnvFailed) as caught:
        for _ in range(_failing_env.FAIL_AFTER):
            env.step(np.zeros(1, np.float32))
    assert isinstance(caught.value.__cause__, RuntimeError)


# ------------------------------------------------------------- output paths, checked first (kind 4)
@pytest.fixture(scope="module")
def exported_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 100-step SAC run on Pendulum-v1 and its export."""
    root = tmp_path_factory.mktemp("exported")
    run_dir, out = root / "run", root / "policy"
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(["train", "--steps", "100", "--eval-every", "100", "--logdir",
                         str(run_dir), "--quiet", *TINY]) == 0
        assert run.main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    return run_dir, out


@contextlib.contextmanager
def _unwritable(path: Path, monkeypatch):
    """``path``, a directory nothing can be created in: a read-only tmpfs where this process may
    mount one, else one whose every attempt to make something inside reports EROFS."""
    path.mkdir()
    mounted = False
    with contextlib.suppress(OSError):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs",
                                  str(path)], capture_output=True).returncode == 0
    if not mounted:
        real_mkdtemp, real_mkdir = files.tempfile.mkdtemp, os.mkdir

        def refused(target):
            if Path(os.path.abspath(target)).parent == path:
                raise OSError(30, os.strerror(30), str(target))

        def mkdtemp(*args, dir=None, **kwargs):
            refused(Path(dir, "x"))
            return real_mkdtemp(*args, dir=dir, **kwargs)

        def mkdir(target, *args, **kwargs):
            refused(target)
            return real_mkdir(target, *args, **kwargs)

        monkeypatch.setattr(files.tempfile, "mkdtemp", mkdtemp)
        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _copy_into_read_only(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` on a tmpfs mounted read-only afterwards; False when this
    process may not mount."""
    target.mkdir()
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(target)],
                          capture_output=True).returncode != 0:
            return False
    except OSError:
        return False
    shutil.copytree(source, target, dirs_exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
    return True


@pytest.mark.parametrize("where", ["under-a-file", "read-only"])
def test_export_out_that_cannot_be_made_is_refused_before_building(where, exported_run, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setattr(export, "build_agent", lambda *a, **k: pytest.fail("built anyway"))
    if where == "under-a-file":
        (tmp_path / "f").write_text("x")
        out, reason = tmp_path / "f" / "sub" / "policy", f"{tmp_path / 'f'} is a file"
        context = contextlib.nullcontext()
    else:
        context = _unwritable(tmp_path / "ro", monkeypatch)
        out, reason = tmp_path / "ro" / "policy", "Read-only file system"
    with context:
        code, _, err = _main(["export", "--run", str(exported_run[0]), "--out", str(out)],
                             capsys)
        line = _one_line(err)
        assert code == 2
        assert f"cannot export to --out {out}" in line and reason in line, line
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["f"] if where == "under-a-file"
                                                          else ["ro"])


def test_a_failed_export_removes_the_parent_directories_it_made(exported_run, tmp_path,
                                                                monkeypatch):
    import tensorflow as tf

    def broken_save(module, directory, **kwargs):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError):
        run.main(["export", "--run", str(exported_run[0]), "--out",
                  str(tmp_path / "new" / "parents" / "policy")])
    assert list(tmp_path.iterdir()) == []


def _killed_writer(target: Path, hold: bool = False) -> subprocess.Popen:
    """A process writing ``target`` through ``files.atomic_directory`` that kills itself with
    SIGKILL mid-write (or, with ``hold``, stays in the middle of it until killed)."""
    import bnrl

    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from bnrl.common import files
        with files.atomic_directory({str(target)!r}) as tmp:
            (tmp / "saved_model.pb").write_bytes(b"half")
            print("writing", flush=True)
            if {hold!r}:
                time.sleep(600)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    # The folder this bnrl is imported from (not resolved: a checkout is often a symlink).
    environ = dict(os.environ, PYTHONPATH=str(Path(bnrl.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=environ, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_the_next_write_removes_what_a_killed_export_left(exported_run, tmp_path, capsys):
    out = tmp_path / "policy"
    killed = _killed_writer(out)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    live = _killed_writer(tmp_path / "other", hold=True)  # another place: never touched
    try:
        left = _hidden_temporaries(tmp_path)
        assert len(left) == 2 and left[0].startswith(".other.") and left[1].startswith(
            ".policy."), left
        code, _, err = _main(["export", "--run", str(exported_run[0]), "--out", str(out)],
                             capsys)
        assert code == 0, err
        assert (out / "saved_model.pb").stat().st_size > 4
        assert _hidden_temporaries(tmp_path) == [left[0]]
    finally:
        live.kill()
        live.wait(timeout=60)


def test_a_temporary_directory_a_live_process_holds_is_kept(tmp_path):
    target = tmp_path / "policy"
    live = _killed_writer(target, hold=True)
    try:
        held = _hidden_temporaries(tmp_path)
        with files.temporary_directory(target) as mine:
            assert sorted([*held, mine.name]) == _hidden_temporaries(tmp_path)
        assert _hidden_temporaries(tmp_path) == held
    finally:
        live.kill()
        live.wait(timeout=60)
    with files.temporary_directory(target):  # the holder is dead now: its directory goes
        assert len(_hidden_temporaries(tmp_path)) == 1
    assert _hidden_temporaries(tmp_path) == []


def test_check_creatable(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    assert files.check_creatable(tmp_path / "new" / "deeper" / "out") is None
    assert files.check_creatable(tmp_path / "f" / "out") == f"{tmp_path / 'f'} is a file, not a " \
                                                            "directory"
    with _unwritable(tmp_path / "ro", monkeypatch) as read_only:
        assert files.check_creatable(read_only / "a" / "b") == (
            f"cannot write in {read_only} (Read-only file system)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "ro"]  # the probes are gone


@pytest.mark.parametrize("key", ["agent", "env", "seed", "max_episode_steps", "action",
                                 "action.kind", "format"])
def test_an_export_whose_metadata_lacks_a_key_is_refused_naming_it(key, exported_run, tmp_path,
                                                                  capsys):
    policy = tmp_path / "policy"
    shutil.copytree(exported_run[1], policy)
    metadata_file = policy / export.POLICY_FILE
    metadata = json.loads(metadata_file.read_text())
    if key == "action.kind":
        del metadata["action"]["kind"]
    else:
        del metadata[key]
    metadata_file.write_text(json.dumps(metadata))
    code, _, err = _main(["evaluate", "--run", str(policy), "--episodes", "1"], capsys)
    line = _one_line(err)
    assert code == 2
    assert str(metadata_file) in line, line
    if key == "format":
        assert "is not a bnrl policy export (its format is None" in line, line
    elif key == "action.kind":
        assert "malformed action.kind" in line, line
    else:
        assert f"lacks the key(s) {key}:" in line, line


def test_an_export_with_a_malformed_value_is_refused(exported_run, tmp_path, capsys):
    policy = tmp_path / "policy"
    shutil.copytree(exported_run[1], policy)
    metadata = json.loads((policy / export.POLICY_FILE).read_text())
    metadata["seed"] = -1
    (policy / export.POLICY_FILE).write_text(json.dumps(metadata))
    code, _, err = _main(["evaluate", "--run", str(policy), "--episodes", "1"], capsys)
    assert code == 2
    line = _one_line(err)
    assert export.POLICY_FILE in line and "--seed must be in" in line, line
    (policy / export.POLICY_FILE).write_text("[1, 2]")
    code, _, err = _main(["evaluate", "--run", str(policy), "--episodes", "1"], capsys)
    assert code == 2 and "it holds a list" in _one_line(err)


def test_evaluate_video_in_a_read_only_export_is_refused_before_running(exported_run, tmp_path,
                                                                        monkeypatch, capsys):
    pytest.importorskip("moviepy")
    policy = tmp_path / "ro"
    if not _copy_into_read_only(exported_run[1], policy):
        shutil.rmtree(policy)
        shutil.copytree(exported_run[1], policy)
        real_mkdtemp = files.tempfile.mkdtemp

        def mkdtemp(*args, dir=None, **kwargs):
            if Path(dir) == policy:
                raise OSError(30, os.strerror(30), str(dir))
            return real_mkdtemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(files.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(evaluation, "make_run_env", lambda *a, **k: pytest.fail("ran anyway"))
    try:
        code, _, err = _main(["evaluate", "--run", str(policy), "--episodes", "1",
                              "--render-video"], capsys)
        line = _one_line(err)
        assert code == 2
        assert line == (f"bnrl: error: --render-video writes {policy / 'eval.mp4'}, but {policy} "
                        "is not writable (Read-only file system): copy the export directory to "
                        "a writable place and evaluate the copy")
    finally:
        subprocess.run(["umount", "-l", str(policy)], check=False, capture_output=True)


def test_a_policy_too_large_for_a_frozen_graph_is_refused_in_one_line(exported_run, tmp_path,
                                                                      monkeypatch, capsys):
    """A policy network of more than 2 GiB of weights (hidden=[23200,23200] for DQN) made
    ``export`` fail with TensorFlow's "Cannot create a tensor proto whose content is larger than
    2GB" and a 36-line traceback. The limit is lowered here: a 2 GiB network takes minutes."""
    monkeypatch.setattr(export, "GRAPH_LIMIT", 1000, raising=False)
    out = tmp_path / "policy"
    code, _, err = _main(["export", "--run", str(exported_run[0]), "--out", str(out)], capsys)
    assert code == 2
    line = _one_line(err)
    assert line.startswith(f"bnrl: error: cannot export {exported_run[0]}: its policy network "
                           "holds 0.00 GiB of weights"), line
    assert "at most 2 GiB" in line and "smaller hidden sizes" in line, line
    assert list(tmp_path.iterdir()) == []


def test_running_out_of_memory_mid_run_is_one_line(tmp_path, capsys, monkeypatch):
    """The first updates allocate what building did not (XLA's buffers): a network that fits
    when built can still run out of memory at its first update, which was a 99-line
    traceback."""
    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(loop, "run_round", out_of_memory)
    run_dir = tmp_path / "run"
    code, _, err = _main(["train", "--steps", "100", "--logdir", str(run_dir), "--quiet",
                          *TINY], capsys)
    assert code == 1
    assert _one_line(err) == ("bnrl: training stopped at env step 50: out of memory "
                              "(MemoryError): lower buffer_size or the network widths; "
                              f"{run_dir} has no checkpoint yet")
