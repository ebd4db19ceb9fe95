"""Gymnasium's and TensorBoard's own tools: episode statistics, MP4 video, env checker, HPARAMS.

Pinned here: ``charts/episodic_return``/``length`` are exactly the episodes' reward sums and
lengths (checked against the rewards in the replay buffer); each run is a session of
TensorBoard's hparams plugin with its flattened settings and final metrics, read back from the
event files and through TensorBoard's own HPARAMS backend (a resumed run stays one session);
``--render-video`` fails with one line when moviepy is missing or the env cannot render and
works for an exported policy; a user's ``module:EnvId`` env goes through gymnasium's
``check_env`` once, its findings shown as one line each, also across benchmark worker processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO))
from bnrl.common.extras import install_hint  # noqa: E402
from bnrl.training.config import RESUMABLE  # noqa: E402
from bnrl.training.logger import SESSION_RUN  # noqa: E402

from _cli import main as _main  # noqa: E402
from _cli import one_line as _one_line  # noqa: E402
from _cli import train_quiet as _train  # noqa: E402

# xla=false: the SAC BN run would XLA-compile its single updates, which costs more than its
# training; episode statistics, video, the env checker and HPARAMS do not depend on it.
TINY_AC = ["--set", "hidden=[32,32]", "--set", "actor_hidden=[32,32]", "--set", "batch_size=32",
           "--set", "learning_starts=50", "--set", "buffer_size=5000", "--set", "xla=false"]
DTYPE_ENV = "_checked_env:BnrlDtypeEnv-v0"
UNSEEDED_ENV = "_checked_env:BnrlUnseededEnv-v0"
TOY_ENV = "_custom_env:BnrlToyEnv-v0"
CHECKED_VAR = "BNRL_CHECKED_ENVS"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Under one logdir: SAC (BN critic, 50-step episodes, 400 steps), TD3 (100 steps,
    resumed to 150) and TD3 again with the same settings (100 steps)."""
    root = tmp_path_factory.mktemp("gym_tools") / "logdir"
    sac, td3, again = root / "sac", root / "td3", root / "td3-again"
    _train(["--agent", "sac", "--env", "Pendulum-v1", "--critic-norm", "batch", "--steps", "400",
            "--max-episode-steps", "50", "--eval-every", "200", "--eval-episodes", "2",
            "--logdir", str(sac), *TINY_AC])
    td3_args = ["--agent", "td3", "--env", "Pendulum-v1", "--eval-every", "50",
                "--eval-episodes", "1", "--logdir", str(td3), *TINY_AC]
    _train([*td3_args, "--steps", "100"])
    _train([*td3_args, "--steps", "150", "--resume"])
    _train([*td3_args[:td3_args.index("--logdir") + 1], str(again), *TINY_AC, "--steps", "100"])
    return {"root": root, "sac": sac, "td3": td3, "td3-again": again}


def _events(run_dir: Path):
    """The events as written (the non-legacy loader turns simple_value into tensors)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        yield from LegacyEventFileLoader(str(path)).Load()


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, v.simple_value) for e in _events(run_dir) if e.HasField("summary")
            for v in e.summary.value if v.tag == tag]


def _plugin_values(run_dir: Path, tag: str) -> list:
    from tensorboard.plugins.hparams import plugin_data_pb2

    parse = plugin_data_pb2.HParamsPluginData.FromString
    return [(e.step, parse(v.metadata.plugin_data.content))
            for e in _events(run_dir) if e.HasField("summary") for v in e.summary.value
            if v.tag == tag]


# ------------------------------------------------------------------------ episode statistics
def test_episode_statistics_are_the_episodes_rewards(runs):
    from bnrl.training import checkpoint

    replay = np.load(checkpoint.latest(runs["sac"]) / "replay.npz")
    rewards = replay["reward"][:400].astype(np.float64)
    expected = rewards.reshape(8, 50).sum(axis=1)
    returns = _scalars(runs["sac"], "charts/episodic_return")
    lengths = _scalars(runs["sac"], "charts/episodic_length")
    assert [s for s, _ in returns] == list(range(50, 401, 50))
    np.testing.assert_allclose([v for _, v in returns], expected, rtol=1e-5)
    assert lengths == [(s, 50.0) for s in range(50, 401, 50)]


# --------------------------------------------------------------------------------- HPARAMS
def _flat(config: dict) -> dict:
    flat = {k: v for k, v in config.items() if k != "agent_config"}
    flat.update({f"agent_config.{k}": v for k, v in config["agent_config"].items()})
    return flat


def test_run_writes_its_settings_and_final_metrics_for_hparams(runs):
    from tensorboard.plugins.hparams import api_pb2

    run_dir = runs["sac"]
    session = run_dir / SESSION_RUN  # the session's own TensorBoard run
    (start_step, start), = _plugin_values(session, "_hparams_/session_start_info")
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in
               start.session_start_info.hparams.items()}
    config = _flat(yaml.safe_load((run_dir / "config.yaml").read_text()))
    # What a resume may change is not an hparam: TensorBoard would show its first value.
    config = {k: v for k, v in config.items() if k not in RESUMABLE}
    assert set(hparams) == set(config) and "steps" not in hparams
    for name, value in config.items():
        if value is None or isinstance(value, list):
            assert hparams[name] == str(value), name  # lists and None as strings
        else:
            assert hparams[name] == value, name
    assert hparams["agent"] == "sac" and hparams["agent_config.critic_norm"] == "batch"
    assert hparams["agent_config.hidden"] == "[32, 32]"
    assert start_step == 0 and start.session_start_info.group_name == str(run_dir)

    (end_step, end), = _plugin_values(session, "_hparams_/session_end_info")
    assert end.session_end_info.status == api_pb2.STATUS_SUCCESS and end_step == 400
    summary = json.loads((run_dir / "summary.json").read_text())
    final = {tag: _scalars(session, tag) for tag in
             ("final/eval_mean_return", "final/env_steps", "final/updates",
              "final/updates_per_second", "final/wall_time_s")}
    assert all(len(v) == 1 and v[0][0] == 400 for v in final.values()), final
    assert final["final/eval_mean_return"][0][1] == pytest.approx(summary["final_return"],
                                                                  rel=1e-6)
    assert final["final/updates"][0][1] == summary["updates"]
    assert final["final/env_steps"][0][1] == 400
    assert final["final/updates_per_second"][0][1] == pytest.approx(
        summary["updates_per_second"], rel=1e-6)


def test_tensorboard_hparams_table_compares_the_runs(runs):
    from tensorboard import context as tb_context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import (
        api_pb2,
        backend_context,
        get_experiment,
        list_session_groups,
    )

    root = str(runs["root"])
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(root)
    mux.Reload()
    context = backend_context.Context(base_plugin.TBContext(
        logdir=root, multiplexer=mux,
        data_provider=data_provider.MultiplexerDataProvider(mux, root)))
    request = tb_context.RequestContext()
    experiment = get_experiment.Handler(request, context, "",
                                        api_pb2.GetExperimentRequest()).run()
    names = {h.name for h in experiment.hparam_infos}
    # The union of both agents' settings: init_alpha is SAC's, policy_delay TD3's.
    assert {"agent", "seed", "agent_config.init_alpha", "agent_config.policy_delay"} <= names
    # The runs' final results, and nothing else: not the 16 per-layer BN tags, the losses or
    # the curves of the training scalars (issue 28).
    metrics = [(m.name.tag, m.name.group) for m in experiment.metric_infos]
    assert metrics == [(tag, "") for tag in ("final/env_steps", "final/eval_mean_return",
                                             "final/updates", "final/updates_per_second",
                                             "final/wall_time_s")]
    assert _scalars(runs["sac"], "bn/Q/q0_bn0/beta")  # which the run did write

    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE,
                api_pb2.STATUS_RUNNING]
    groups = list_session_groups.Handler(request, context, "", api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10, allowed_statuses=statuses,
        aggregation_type=api_pb2.AGGREGATION_AVG)).run().session_groups
    # One row per run, named after its directory: the two TD3 runs with the same settings are
    # two rows, not one showing a value that is neither's (issue 28).
    by_run = {g.name: g for g in groups}
    assert sorted(by_run) == sorted(str(runs[name]) for name in ("sac", "td3", "td3-again"))
    for name in ("sac", "td3", "td3-again"):
        group = by_run[str(runs[name])]
        assert len(group.sessions) == 1  # the resumed TD3 run is still one session
        assert group.sessions[0].status == api_pb2.STATUS_SUCCESS
        summary = json.loads((runs[name] / "summary.json").read_text())
        values = {m.name.tag: m.value for m in group.metric_values}
        assert values["final/eval_mean_return"] == pytest.approx(summary["final_return"],
                                                                 rel=1e-6)
        # After --resume --steps 150 the row shows 150, the run's steps: a metric, not the
        # first session's hparam.
        assert values["final/env_steps"] == {"td3": 150}.get(name, summary["steps"])


def test_custom_scalars_layout_puts_the_bn_diagnostics_on_one_page(runs):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    def layout(run_dir):
        # One per (re)start of the run, all alike (TensorBoard merges them by category title).
        layouts = [layout_pb2.Layout.FromString(v.tensor.string_val[0])
                   for e in _events(run_dir) if e.HasField("summary")
                   for v in e.summary.value if v.tag == metadata.CONFIG_SUMMARY_TAG]
        assert layouts and all(other == layouts[0] for other in layouts)
        return {c.title: [list(chart.multiline.tag) for chart in c.chart]
                for c in layouts[0].category}

    sac = layout(runs["sac"])  # BN critic: its diagnostics under their exact tag names
    assert sac["BN of the critic / Q-network (bn_Q_*)"] == [
        ["^bn_Q_train_eval_gap$"], ["^bn_Q_moving_mean$", "^bn_Q_moving_variance$"],
        ["^bn_Q_gamma$", "^bn_Q_beta$"]]
    assert ["^eval/mean_return$"] in sac["training"]
    # Every tag of the layout is one the run wrote.
    written = {v.tag for e in _events(runs["sac"]) if e.HasField("summary")
               for v in e.summary.value}
    for charts in sac.values():
        for chart in charts:
            assert any(re.match(tag, w) for tag in chart for w in written), chart
    assert list(layout(runs["td3"])) == ["training"]  # no BN, no BN page


# ------------------------------------------------------------------------------------- video
def test_render_video_without_moviepy_exits_2(runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import moviepy now raises ImportError
    code = _main(["evaluate", "--run", str(runs["sac"]), "--episodes", "1", "--render-video"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    assert "moviepy" in line and install_hint("video") in line
    assert not (runs["sac"] / "eval.mp4").exists()


def test_env_that_cannot_render_exits_2(tmp_path, monkeypatch, capsys):
    from bnrl.envs import EnvError, make_env

    monkeypatch.syspath_prepend(str(TESTS))
    with pytest.raises(EnvError, match="cannot render 'rgb_array' frames"):
        make_env(TOY_ENV, render_mode="rgb_array")
    run_dir = tmp_path / "toy"
    _train(["--agent", "td3", "--env", TOY_ENV, "--steps", "60", "--eval-every", "60",
            "--eval-episodes", "1", "--logdir", str(run_dir), *TINY_AC])
    capsys.readouterr()
    code = _main(["evaluate", "--run", str(run_dir), "--episodes", "1", "--render-video"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    assert TOY_ENV in line and "cannot render 'rgb_array'" in line and "render modes: none" in line
    assert not (run_dir / "eval.mp4").exists()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_render_video_of_an_exported_policy(runs, tmp_path, capfd):
    pytest.importorskip("pygame", reason="Pendulum renders rgb_array frames with pygame")
    import imageio_ffmpeg

    policy = tmp_path / "policy"
    with contextlib.redirect_stdout(io.StringIO()):
        assert _main(["export", "--run", str(runs["sac"]), "--out", str(policy)]) == 0
    capfd.readouterr()
    code = _main(["evaluate", "--run", str(policy), "--episodes", "1", "--render-video"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert err == "", err
    assert f"video: {policy / 'eval.mp4'}" in out
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(policy / "eval.mp4"))
    assert 45 <= frames <= 51, frames  # one 50-step episode


# ------------------------------------------------------------------------------- env checker
@pytest.fixture
def fresh_check(monkeypatch):
    """This process has checked no env yet (restored afterwards); tests/ is importable."""
    monkeypatch.setenv(CHECKED_VAR, "")
    monkeypatch.syspath_prepend(str(TESTS))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "bnrl.envs.make" and r.levelno == logging.WARNING]


def test_env_checker_warns_once_in_one_line_each(fresh_check, caplog):
    from bnrl.agents import ACTION_SPACES
    from bnrl.envs import make_env

    caplog.set_level(logging.WARNING)
    for _ in range(3):
        env = make_env(DTYPE_ENV, seed=0, agent="sac", agents=ACTION_SPACES)
        env.reset()
        env.step(env.action_space.sample())
        env.close()
    assert _warnings(caplog) == [
        f"bnrl: warning: environment '{DTYPE_ENV}': The obs returned by the `step()` method was "
        "expecting numpy array dtype to be float32, actual type: float64",
        f"bnrl: warning: environment '{DTYPE_ENV}': The obs returned by the `step()` method is "
        "not within the observation space."]
    assert DTYPE_ENV in os.environ[CHECKED_VAR].split(",")


def test_env_checker_failure_is_one_warning_and_the_env_still_works(fresh_check, caplog):
    from bnrl.agents import ACTION_SPACES
    from bnrl.envs import make_env

    caplog.set_level(logging.WARNING)
    env = make_env(UNSEEDED_ENV, seed=0, agent="td3", agents=ACTION_SPACES)
    env.reset()
    env.close()
    (message,) = _warnings(caplog)
    assert message.startswith(f"bnrl: warning: environment '{UNSEEDED_ENV}': fails gymnasium's "
                              "env checker: ")
    assert "non-deterministic" in message and "\n" not in message and "\x1b" not in message


def test_env_checker_skips_registered_ids_and_irrelevant_advice(fresh_check, caplog):
    from bnrl.envs import make_env

    caplog.set_level(logging.WARNING)
    make_env("Pendulum-v1", seed=0).close()
    assert os.environ[CHECKED_VAR] == ""  # gymnasium's own envs are not re-checked
    # The toy env's [0, 10] actions draw the checker's "use a symmetric space" advice, which
    # make_env's own rescaling to [-1, 1] answers: not shown.
    make_env(TOY_ENV, seed=0).close()
    assert _warnings(caplog) == [] and os.environ[CHECKED_VAR] == TOY_ENV


def _child_warnings(environ: dict) -> list[str]:
    code = f"from bnrl.envs import make_env; make_env({DTYPE_ENV!r}, 0).close()"
    proc = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()


def test_worker_processes_do_not_repeat_the_warnings(fresh_check):
    from bnrl.envs import make_env

    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    environ.pop(CHECKED_VAR, None)
    assert len(_child_warnings(environ)) == 2  # a process of its own checks and warns
    make_env(DTYPE_ENV, 0).close()  # as the benchmark's parent does before starting workers
    environ[CHECKED_VAR] = os.environ[CHECKED_VAR]  # what a spawned worker inherits
    assert _child_warnings(environ) == []


def test_train_shows_the_checker_findings_once(tmp_path):
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    for name in (CHECKED_VAR, "TF_CPP_MIN_LOG_LEVEL"):
        environ.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "run.py", "train", "--agent", "sac", "--env", DTYPE_ENV, "--steps",
         "60", "--eval-every", "30", "--eval-episodes", "1", "--logdir", str(tmp_path / "run"),
         "--quiet", *TINY_AC], cwd=REPO, env=environ, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and all(re.fullmatch(
        rf"bnrl: warning: environment '{re.escape(DTYPE_ENV)}': The obs returned by the "
        r"`step\(\)` method .*", line) for line in lines), proc.stderr
