"""``run.py tune``: Optuna studies of one variant, resumed after a kill, pruned on the evaluation
curve, written as a variants file that ``benchmark --variants-file`` takes (compare/tune.py).

Every study is tiny: DQN on CartPole-v1, 300 env steps a trial with an evaluation every 100,
small networks and XLA off, so a trial takes a few seconds. Skipped without Optuna (the
``tune`` extra; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="bnrl tune needs Optuna: pip install '.[tune]'")

from bnrl import run  # noqa: E402
from bnrl.common.errors import UserError  # noqa: E402
from bnrl.compare import results, tune  # noqa: E402
from bnrl.compare import variants as vs  # noqa: E402

from _cli import one_line, record_planned_runs, run_captured  # noqa: E402 - after the skip

REPO = Path(__file__).resolve().parent.parent
SPACE = """\
learning_rate: {type: float, low: 1e-4, high: 3e-3, log: true}
batch_size: {type: categorical, choices: [32, 64]}
net_arch: {type: categorical, choices: [[32, 32], [64]]}
learning_starts: 100
xla: false
"""
CONFIG = "train: {eval_episodes: 2, checkpoint_every: 300}\n"
COMPLETE = optuna.trial.TrialState.COMPLETE


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tune_files")
    (root / "space.yaml").write_text(SPACE)
    (root / "config.yaml").write_text(CONFIG)
    return {"space": root / "space.yaml", "config": root / "config.yaml"}


def _args(out: Path, files: dict, *extra, n_trials: int = 3) -> list[str]:
    return ["tune", "--agent", "dqn", "--env", "CartPole-v1", "--steps", "300",
            "--eval-every", "100", "--n-trials", str(n_trials), "--search-space",
            str(files["space"]), "--config", str(files["config"]), "--out", str(out), *extra]


def _study(out: Path, name: str = "dqn-CartPole-v1-none"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, files):
    """A study of 3 trials of variant none, run once for the module."""
    out = tmp_path_factory.mktemp("tune") / "none"
    return {"out": out, "rc": run.main(_args(out, files))}


def test_a_tiny_study_runs_its_trials_and_writes_the_best_as_a_variant(tiny_study):
    out = tiny_study["out"]
    assert tiny_study["rc"] == 0
    study = _study(out)
    trials = study.get_trials(states=(COMPLETE,))
    assert len(trials) == len(study.trials) == 3
    for trial in trials:
        # Every periodic evaluation (and the final one) reached the pruner.
        assert sorted(trial.intermediate_values) == [100, 200, 300]
        assert trial.value == trial.intermediate_values[300]
        assert trial.user_attrs["settings"]["xla"] is False
    # Trials are ordinary run directories, without their checkpoints (replay buffers).
    run_dir = out / "trials" / "0000" / "CartPole-v1"
    assert (run_dir / "summary.json").exists() and (run_dir / "metrics.csv").exists()
    assert not (run_dir / "checkpoints").exists()
    best = study.best_trial
    written = vs.read_variants_file(out / "variants.yaml")
    assert list(written) == ["none-tuned"]
    settings = written["none-tuned"].settings
    assert settings["critic_norm"] == "none"  # the variant's own settings come along
    assert settings["learning_rate"] == best.params["learning_rate"]
    assert settings["batch_size"] == best.params["batch_size"]
    assert settings["hidden"] == json.loads(best.params["net_arch"])
    assert (settings["learning_starts"], settings["xla"]) == (100, False)


def test_a_finished_study_runs_no_more_trials(tiny_study, files, capsys):
    code, out, err = run_captured(_args(tiny_study["out"], files), capsys)
    assert code == 0, err
    assert "3 of 3 trials finished" in out and "trial 3" not in out
    assert len(_study(tiny_study["out"]).trials) == 3


def test_a_killed_study_resumes_with_the_missing_trials(files, tmp_path, capsys):
    out = tmp_path / "killed"
    argv = _args(out, files, "--pruner", "none")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    seen = []
    try:
        deadline = time.time() + 180
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("[1/3]") or time.time() > deadline:
                break
        proc.send_signal(signal.SIGKILL)  # mid-way through the second trial
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert any(line.startswith("[1/3]") for line in seen), "".join(seen)
    before = len(_study(out).get_trials(states=(COMPLETE,)))
    assert before in (1, 2)
    code, stdout, err = run_captured(argv, capsys)
    assert code == 0, err
    assert f"{before} of 3 trials finished" in stdout
    study = _study(out)
    assert len(study.get_trials(states=(COMPLETE,))) == 3
    # The killed trial stays what it was (running, until its heartbeat's grace period ends):
    # no trial was run twice and none more than the study needed.
    states = [t.state for t in study.trials]
    assert states.count(COMPLETE) == 3 and len(states) <= 4
    assert (out / "variants.yaml").exists()


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_pruned_trial_stops_its_run_at_the_first_evaluation(files, tmp_path):
    args = run.build_parser().parse_args(_args(tmp_path, files))
    setup = tune.make_setup(args)
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    study.optimize(tune.Objective(optuna, setup, tmp_path, prune=True), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [100]  # reported, then pruned: no step 200
    run_dir = tmp_path / "trials" / "0000" / "CartPole-v1"
    assert not (run_dir / "summary.json").exists() and not (run_dir / "checkpoints").exists()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2  # header, step 100


def test_the_tuned_variants_file_feeds_a_benchmark(tiny_study, files, tmp_path, capsys,
                                                   monkeypatch):
    # A second study, of batch, adds its variant to the same file.
    shared = tmp_path / "tuned.yaml"
    shared.write_text((tiny_study["out"] / "variants.yaml").read_text())
    code, _, err = run_captured(_args(tmp_path / "batch", files, "--variant", "batch",
                                      "--variants-out", shared, n_trials=1), capsys)
    assert code == 0, err
    tuned = vs.read_variants_file(shared)
    assert list(tuned) == ["none-tuned", "batch-tuned"]
    assert tuned["batch-tuned"].settings["critic_norm"] == "batch"
    seen = record_planned_runs(monkeypatch)
    code, _, err = run_captured(["benchmark", "--agent", "dqn", "--env", "CartPole-v1",
                                 "--steps", "300", "--seeds", "1", "--config", files["config"],
                                 "--variants-file", shared, "--variants",
                                 "none-tuned,batch-tuned", "--out", tmp_path / "bench"], capsys)
    assert code == 0, err
    specs = seen["specs"]
    assert [s.variant for s in specs] == ["none-tuned", "batch-tuned"]
    for spec in specs:  # each variant runs at its own tuned settings
        config = results.resolve_spec(spec)
        assert config.agent_config.learning_rate == tuned[spec.variant].settings["learning_rate"]
        assert list(config.agent_config.hidden) == tuned[spec.variant].settings["hidden"]
    assert results.resolve_spec(specs[1]).agent_config.critic_norm == "batch"


@pytest.mark.parametrize("space, message", [
    ("learning_rate: {type: float, low: 1e-2, high: 1e-4}\n", "low 0.01 > high 0.0001"),
    ("learning_rate: {type: float, low: 0, high: 1e-2, log: true}\n", "log needs low > 0"),
    ("gamma: {type: categorical, choices: [high, low]}\n", "gamma must be a finite number"),
    ("batch_size: {type: categorical, choices: []}\n", "choices must be a non-empty list"),
    ("batch_size: {type: normal, mean: 64}\n", "type must be float, int or categorical"),
    ("warp_factor: {type: float, low: 1, high: 9}\n", "not a setting of dqn"),
    ("critic_norm: {type: categorical, choices: [none, layer]}\n", "the variant sets"),
    ("- learning_rate\n", "must hold a YAML mapping"),
    ("subsample_steps: 2\ngradient_steps: 4\n", "sets gradient_steps as subsample_steps does"),
    ("learning_rate: {type: float, low: 1e-4, high: [1]}\n", "needs numbers low and high"),
])
def test_a_bad_search_space_is_one_line_and_exit_2(space, message, files, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    argv = _args(tmp_path / "out", {**files, "space": path})
    code, out, err = run_captured(argv, capsys)
    assert code == 2
    line = one_line(err)
    assert line.startswith("bnrl: error: ") and message in line, line
    assert not (tmp_path / "out").exists()  # refused before anything was made


@pytest.mark.parametrize("url, message", [
    ("not a url", "cannot open the study storage not a url"),
    ("sqlite:////nonexistent-dir/deeper/study.db", "unable to open database file"),
    ("postgresql://bnrl:hunter2@127.0.0.1:9/db", "postgresql://bnrl:***@127.0.0.1:9/db"),
])
def test_a_bad_storage_is_one_line_and_exit_2(url, message, files, tmp_path, capsys):
    code, _, err = run_captured(_args(tmp_path / "out", files, "--storage", url), capsys)
    assert code == 2
    line = one_line(err)
    assert message in line and "hunter2" not in line, line


def test_another_command_on_the_same_study_is_refused(tiny_study, files, capsys):
    argv = [a if a != "300" else "400" for a in _args(tiny_study["out"], files)]
    code, _, err = run_captured(argv, capsys)
    assert code == 2
    assert "was made with other steps" in one_line(err)


@pytest.mark.parametrize("agent, env", [("dqn", "CartPole-v1"), ("sac", "Pendulum-v1"),
                                        ("td3", "Pendulum-v1"), ("ddpg", "Pendulum-v1"),
                                        ("crossq", "Pendulum-v1")])
def test_rl_zoo_spaces_map_to_settings_every_corner_resolves(agent, env):
    # make_setup resolves the settings of every end of the space (``_probe``).
    args = run.build_parser().parse_args(["tune", "--agent", agent, "--env", env])
    setup = tune.make_setup(args)
    assert set(setup.space) <= set(tune.DEFAULT_SPACES[agent])
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    settings = tune.settings_of(tune.sample(trial, setup.space), setup.base(env))
    setup.base(env, settings)  # a sampled point resolves too


def test_rl_zoo_parameters_become_bnrl_settings():
    args = run.build_parser().parse_args(["tune", "--agent", "dqn", "--env", "CartPole-v1",
                                          "--steps", "10000"])
    setup = tune.make_setup(args)
    base = setup.base("CartPole-v1")
    settings = tune.settings_of({"train_freq": 128, "subsample_steps": 4,
                                 "target_update_env_steps": 10_000, "net_arch": "medium",
                                 "exploration_fraction": 0.25}, base)
    # SB3 counts the target interval in env steps: 10k env steps are 2500 rounds of 32 updates
    # per 128 env steps... in gradient steps, 10000 * 32 / 128.
    assert settings == {"train_freq": 128, "gradient_steps": 32, "target_update_interval": 2500,
                        "hidden": [256, 256], "exploration_steps": 2500}
    sac = tune.make_setup(run.build_parser().parse_args(["tune", "--agent", "sac"]))
    assert tune.settings_of({"net_arch": "big", "train_freq": 64, "subsample_steps": 1},
                            sac.base("Pendulum-v1")) == {
        "train_freq": 64, "gradient_steps": 64, "hidden": [400, 300],
        "actor_hidden": [400, 300]}


def test_the_variants_setting_stays_out_of_the_default_space():
    args = run.build_parser().parse_args(["tune", "--variant",
                                          "cq:agent=crossq,hidden=[256,256]"])
    setup = tune.make_setup(args)
    assert setup.run_agent == "crossq" and "net_arch" not in setup.space


def test_an_agent_without_a_default_space_needs_a_file(capsys, tmp_path):
    code, _, err = run_captured(["tune", "--agent", "pqn", "--env", "CartPole-v1", "--out",
                                 tmp_path], capsys)
    assert code == 2 and "--search-space" in one_line(err)


def test_a_variant_tuned_over_a_suite_needs_one_value_per_setting():
    args = run.build_parser().parse_args(["tune", "--agent", "dqn", "--suite", "classic"])
    with pytest.raises(UserError, match="exploration_steps would differ between"):
        tune.make_setup(args)
    args = run.build_parser().parse_args(["tune", "--agent", "dqn", "--suite", "classic",
                                          "--steps", "1000"])
    setup = tune.make_setup(args)
    assert setup.envs == ["CartPole-v1", "Acrobot-v1"] and setup.scores is not None


def test_the_readme_tune_command_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Tune a variant with Optuna"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    first = block.replace("\\\n", " ").splitlines()[0]
    words = shlex.split(first, comments=True)
    assert words[:3] == ["python", "run.py", "tune"]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_captured(words[2:], capsys)
    assert code == 0, err
    assert "best: trial" in out
    written = list(tmp_path.glob("tune_out/*/variants.yaml"))
    assert len(written) == 1 and vs.read_variants_file(written[0])
