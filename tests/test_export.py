"""``bnrl export``: a SavedModel of the acting policy, BN frozen in inference mode.

Pinned here: on 100 observations the export's action equals ``agent.act(obs, explore=False)`` of
the restored checkpoint (1e-5) for every agent, BN actors (TD3, DDPG, SAC, CrossQ) and a BN
Q-network (DQN, Q-values too) included, after enough training that the moving statistics are far
from their initial 0/1; a batch of 1 and a batch of 100 give the same rows (and the same check
does catch a training-mode export); ``env_action`` is what bnrl's env wrapper sends to the env;
the export loads in a fresh process where bnrl and tf-keras cannot be imported; ``evaluate`` runs
an export with the same result as its run; bad input exits 2 with one line; the write is atomic.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bnrl import run  # noqa: E402

from _cli import assert_export_evaluates_like_its_run, train_quiet  # noqa: E402
from _cli import main as _main  # noqa: E402
from _cli import one_line as _one_line  # noqa: E402
from _rollouts import random_observations  # noqa: E402

# xla=false: XLA's compiles cost more than the 250 updates (about half this module's time); what
# is tested here, the export against the agent, does not depend on how the updates were compiled.
TINY = ["--set", "hidden=[32,32]", "--set", "xla=false", "--set", "batch_size=32", "--set",
        "learning_starts=50", "--set", "buffer_size=5000", "--eval-every", "300",
        "--eval-episodes", "1", "--steps", "300"]
TINY_AC = TINY + ["--set", "actor_hidden=[32,32]"]
TOY_ENV = "_custom_env:BnrlToyEnv-v0"  # actions in [0, 10]; the observation is the last action

# id: (train arguments, the models whose BN statistics must have moved)
RUNS = {
    "td3-bn-actor": (["--agent", "td3", "--env", TOY_ENV, "--actor-norm", "batch",
                      "--critic-norm", "batch", *TINY_AC], ["actor"]),
    "ddpg-bn-actor": (["--agent", "ddpg", "--env", "Pendulum-v1", "--actor-norm", "batch",
                       "--set", "actor_input_norm=true", *TINY_AC], ["actor"]),
    "sac-bn-actor": (["--agent", "sac", "--env", "Pendulum-v1", "--actor-norm", "batch",
                      *TINY_AC], ["actor"]),
    "crossq": (["--agent", "crossq", "--env", "Pendulum-v1", *TINY_AC], ["actor"]),
    "dqn-bn-q": (["--agent", "dqn", "--env", "CartPole-v1", "--critic-norm", "batch",
                  "--set", "train_freq=1", "--set", "gradient_steps=1", "--set",
                  "exploration_steps=100", *TINY], ["q"]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each RUNS entry trained for 300 steps and exported: {id: (run_dir, export_dir)}."""
    root = tmp_path_factory.mktemp("export")
    result = {}
    for name, (args, _) in RUNS.items():
        run_dir, out = root / name / "run", root / name / "policy"
        train_quiet([*args, "--logdir", str(run_dir)])
        with contextlib.redirect_stdout(io.StringIO()):
            assert _main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
        result[name] = (run_dir, out)
    return result


def _env(run_dir: Path):
    """The run's env (seed 123)."""
    from bnrl.training.runs import make_run_env, open_run

    return make_run_env(open_run(run_dir)[0], 123)


@pytest.fixture(scope="module")
def restored(exported):
    """``restored(id)``: the agent of that run restored from the run's latest checkpoint. Built
    once per run; every call restores the checkpoint again (what a new build gives)."""
    from bnrl.training import checkpoint
    from bnrl.training.runs import build_agent, open_run

    agents = {}

    def get(name: str):
        config, ckpt = open_run(exported[name][0])
        if name not in agents:
            env = _env(exported[name][0])
            agents[name] = build_agent(config, env)
            env.close()
        checkpoint.restore_agent(agents[name], ckpt)
        return agents[name]

    yield get
    for agent in agents.values():
        agent.close()


def _observations(env, n: int = 100) -> np.ndarray:
    """``n`` observations the env really produces, under random actions."""
    return random_observations(env, n).astype(np.float32)


def _serve(export_dir: Path):
    import tensorflow as tf

    signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]

    def call(obs: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in signature(observation=tf.constant(obs)).items()}

    return call


def _moving_statistics(agent, model_attr: str) -> list[np.ndarray]:
    from bnrl.networks import bn_layers

    layers = bn_layers(getattr(agent.algorithm, model_attr))
    assert layers, f"{model_attr} has no BN layer"
    return agent.sess.run([v for layer in layers
                           for v in (layer.moving_mean, layer.moving_variance)])


@pytest.mark.parametrize("name", list(RUNS))
def test_export_acts_like_the_agent(exported, restored, name):
    run_dir, export_dir = exported[name]
    agent, env = restored(name), _env(run_dir)
    try:
        for model in RUNS[name][1]:
            stats = _moving_statistics(agent, model)
            means, variances = stats[0::2], stats[1::2]
            # After ~250 updates at momentum 0.99 the statistics have left 0 and 1 for good
            # (a layer fed by a normalized input can keep a mean near 0: its variance moves).
            assert max(np.abs(m).max() for m in means) > 1e-2, means
            assert min(np.abs(v - 1.0).max() for v in variances) > 1e-2, variances
        obs = _observations(env)
        expected = np.array([agent.act(o, explore=False) for o in obs])
        out = _serve(export_dir)(obs)
        if agent.head.action_space == "discrete":
            assert out["action"].dtype == np.int64
            np.testing.assert_array_equal(out["action"], expected)
            q = agent.sess.run(agent.act_output, {agent.obs_ph: obs})
            np.testing.assert_allclose(out["q_values"], q, atol=1e-5, rtol=0)
            assert len(set(expected.tolist())) > 1 or np.ptp(q) > 0
        else:
            np.testing.assert_allclose(out["action"], expected, atol=1e-5, rtol=0)
            assert np.ptp(expected) > 1e-3, "a constant policy would prove nothing"
    finally:
        env.close()


@pytest.mark.parametrize("name", list(RUNS))
def test_batch_of_one_gives_the_same_rows_as_batch_of_100(exported, name):
    serve = _serve(exported[name][1])
    env = _env(exported[name][0])
    obs = _observations(env)
    env.close()
    batch = serve(obs)
    for i in (0, 1, 37, 99):
        single = serve(obs[i:i + 1])
        for key, value in batch.items():
            np.testing.assert_allclose(single[key][0], value[i], atol=1e-6, rtol=0)


def test_the_batch_check_catches_a_training_mode_export():
    """The check above fails for a BN actor frozen in training mode (the classic bug)."""
    from bnrl.networks import Norm, deterministic_actor, keras, new_graph_session, tf
    from bnrl.training.export import frozen_function

    rng = np.random.default_rng(0)
    obs = rng.normal(2.0, 3.0, (100, 4)).astype(np.float32)
    with tf.Graph().as_default() as graph:
        actor = deterministic_actor(4, 2, (16,), Norm("batch"), seed=1)
        x = tf.compat.v1.placeholder(tf.float32, [None, 4])
        outputs = {"inference": actor(x, training=False), "training": actor(x, training=True)}
        sess = new_graph_session(graph)
        sess.run(tf.compat.v1.global_variables_initializer())
        for layer in actor.layers:  # moving statistics far from 0/1, as after training
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.load(rng.normal(size=16).astype(np.float32), sess)
                layer.moving_variance.load(rng.uniform(2, 3, 16).astype(np.float32), sess)
        fn = frozen_function(sess, graph, x, outputs)
    batch = {k: v.numpy() for k, v in fn(tf.constant(obs)).items()}
    single = {k: v.numpy() for k, v in fn(tf.constant(obs[:1])).items()}
    np.testing.assert_allclose(single["inference"][0], batch["inference"][0], atol=1e-6)
    assert np.abs(single["training"][0] - batch["training"][0]).max() > 1e-2
    expected = sess.run(outputs["inference"], {x: obs})
    np.testing.assert_allclose(batch["inference"], expected, atol=1e-6)


@pytest.mark.parametrize("name", ["td3-bn-actor", "sac-bn-actor"])
def test_env_action_is_what_the_env_wrapper_sends(exported, name):
    from bnrl.agents import ACTION_SPACES
    from bnrl.envs import make_env

    run_dir, export_dir = exported[name]
    meta = json.loads((export_dir / "bnrl_policy.json").read_text())
    env = make_env(meta["env"], seed=0, agent=meta["agent"], agents=ACTION_SPACES)
    received = []
    raw = env.unwrapped
    raw_step = raw.step
    raw.step = lambda a: (received.append(np.array(a, np.float64)), raw_step(a))[1]
    obs = _observations(env, 20)
    out = _serve(export_dir)(obs)
    received.clear()
    env.reset()
    for action in out["action"]:
        env.step(action)
    env.close()
    np.testing.assert_allclose(out["env_action"], np.array(received), atol=1e-5, rtol=1e-6)
    low, high = np.array(meta["action"]["env_low"]), np.array(meta["action"]["env_high"])
    assert np.all(out["env_action"] >= low - 1e-6) and np.all(out["env_action"] <= high + 1e-6)


def test_metadata_describes_the_policy(exported):
    export_dir = exported["td3-bn-actor"][1]
    meta = json.loads((export_dir / "bnrl_policy.json").read_text())
    assert (meta["format"], meta["agent"], meta["env"]) == ("bnrl-policy", "td3", TOY_ENV)
    assert meta["observation"] == {"shape": [2], "dtype": "float32"}
    assert meta["action"]["kind"] == "box" and meta["action"]["shape"] == [1]
    assert (meta["action"]["low"], meta["action"]["high"]) == ([-1.0], [1.0])
    assert (meta["action"]["env_low"], meta["action"]["env_high"]) == ([0.0], [10.0])
    assert meta["checkpoint"] == "step-000000300" and meta["env_steps"] == 300
    assert meta["actor_norm"] == "batch"
    assert set(meta["signature"]["outputs"]) == {"action", "env_action"}
    dqn = json.loads((exported["dqn-bn-q"][1] / "bnrl_policy.json").read_text())
    assert dqn["action"] == {"kind": "discrete", "n": 2}
    assert set(dqn["signature"]["outputs"]) == {"action", "q_values"}
    assert not [p for p in export_dir.parent.iterdir() if p.name.endswith(".tmp")]


_LOADER = textwrap.dedent("""
    import json, sys

    class Blocker:  # bnrl and tf-keras are installed here: make them unimportable
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("bnrl", "tf_keras"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
            return None

    sys.meta_path.insert(0, Blocker())
    import numpy as np
    import tensorflow as tf

    policy = tf.saved_model.load(sys.argv[1])
    signature = policy.signatures["serving_default"]
    obs = np.load(sys.argv[2])
    out = {k: v.numpy().tolist() for k, v in signature(observation=tf.constant(obs)).items()}
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("bnrl", "tf_keras"))
    inputs = {k: [str(v.dtype.name), v.shape.as_list()]
              for k, v in signature.structured_input_signature[1].items()}
    print(json.dumps({"out": out, "loaded": loaded, "inputs": inputs,
                      "metadata": json.loads(policy.metadata().numpy())}))
""")


@pytest.mark.parametrize("name", ["sac-bn-actor", "dqn-bn-q"])
def test_export_loads_in_a_fresh_process_without_bnrl(exported, restored, name, tmp_path):
    run_dir, export_dir = exported[name]
    agent, env = restored(name), _env(run_dir)
    obs = _observations(env)
    expected = np.array([agent.act(o, explore=False) for o in obs])
    env.close()
    np.save(tmp_path / "obs.npy", obs)
    script = tmp_path / "load.py"
    script.write_text(_LOADER)
    # What a user without bnrl has: no PYTHONPATH to the checkout, no TF_USE_LEGACY_KERAS
    # (bnrl sets it, and TensorFlow then looks for tf-keras).
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, str(script), str(export_dir), str(tmp_path / "obs.npy")],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["inputs"] == {"observation": ["float32", [None, obs.shape[1]]]}
    assert result["metadata"]["agent"] == name.split("-")[0]
    np.testing.assert_allclose(np.array(result["out"]["action"]), expected, atol=1e-5, rtol=0)


def test_evaluate_runs_an_export_like_its_run(exported, capsys):
    run_dir, export_dir = exported["sac-bn-actor"]
    lines = []
    for target in (run_dir, export_dir):
        assert _main(["evaluate", "--run", str(target), "--episodes", "2"]) == 0
        lines.append(capsys.readouterr().out.strip())
    assert_export_evaluates_like_its_run(lines, run_dir, export_dir)


def test_export_command_line_is_quiet_and_refuses_an_existing_out(exported, tmp_path, capsys):
    run_dir = exported["td3-bn-actor"][0]
    out = tmp_path / "nested" / "policy"
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    environ.pop("TF_CPP_MIN_LOG_LEVEL", None)  # run.py must quiet TensorFlow by itself
    proc = subprocess.run([sys.executable, "run.py", "export", "--run", str(run_dir), "--out",
                           str(out)], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == f"exported td3 on {TOY_ENV} (step-000000300) to {out}"
    assert (out / "saved_model.pb").is_file() and (out / "bnrl_policy.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["policy"]  # no temporary left
    before = sorted(p.name for p in out.rglob("*"))
    # The refusal in this process: the subprocess above pinned what only a real process shows
    # (no TensorFlow output on stderr); a second one would add only its TensorFlow import.
    capsys.readouterr()
    assert _main(["export", "--run", str(run_dir), "--out", str(out)]) == 2
    assert "already exists" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.parametrize("case, needs", [
    ("missing", ["does not exist"]),
    ("empty", ["not a bnrl run", "config.yaml"]),
    ("no-checkpoint", ["no complete checkpoint"]),
])
def test_export_bad_run_exits_2_with_one_line(exported, tmp_path, capsys, case, needs):
    run_dir = tmp_path / "run"
    if case != "missing":
        run_dir.mkdir()
    if case == "no-checkpoint":
        source = exported["td3-bn-actor"][0]
        (run_dir / "config.yaml").write_text((source / "config.yaml").read_text())
    out = tmp_path / "out"
    code = _main(["export", "--run", str(run_dir), "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    for needed in needs:
        assert needed in line, line
    assert not out.exists()


def test_failed_export_leaves_nothing(exported, tmp_path, monkeypatch, capsys):
    import tensorflow as tf

    def broken_save(*args, **kwargs):
        Path(args[1], "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    out = tmp_path / "policy"
    with pytest.raises(OSError, match="disk full"):
        _main(["export", "--run", str(exported["td3-bn-actor"][0]), "--out", str(out)])
    assert list(tmp_path.iterdir()) == []


def test_every_agent_has_an_export_head():
    """Every registered agent's policy head writes the export's outputs and signature."""
    from bnrl.agents import AGENTS
    from bnrl.agents.policy import PolicyHead

    for algorithm in AGENTS.values():
        head = algorithm.head_class
        assert head.serving is not PolicyHead.serving, algorithm.name
        assert head.signature is not PolicyHead.signature, algorithm.name


def test_export_help_documents_the_signature(capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(["export", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needed in ("--run", "--out", "serving_default", "observation", "env_action", "q_values",
                   "inference mode", "bnrl_policy.json"):
        assert needed in text, needed


def test_readme_export_example_runs_without_bnrl(exported, tmp_path):
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Export a policy"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    export_dir = exported["sac-bn-actor"][1]
    assert "policies/sac-bn" in block
    blocker = _LOADER[:_LOADER.index("import numpy")]
    script = tmp_path / "readme.py"
    script.write_text(blocker + block.replace("policies/sac-bn", str(export_dir))
                      + "print(out['env_action'].shape, sorted(out))\n")
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1, 1) ['action', 'env_action']"
