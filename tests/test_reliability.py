"""Faults and settings that must never cost a run or pass silently (issue 11).

Pinned here: YAML 1.2 numbers wherever settings are read, a refused alias bomb in bounded time and
memory, preset < config file < flags for every key, whole-number float counts, a run that fails to
start leaving nothing behind (Ctrl-C, out of memory), a disk that fills up mid-run (a real tmpfs
when this process may mount one, else a writer that reports ENOSPC) or is read-only, the lock on a
run directory, and ``evaluate`` racing a run that prunes its checkpoints. Bad inputs with one error
line each are in the matrix of tests/test_cli.py.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from bnrl import run
from bnrl.agents import ACTION_SPACES
from bnrl.common import files
from bnrl.common.errors import UserError, error_line
from bnrl.training import checkpoint, config, evaluation, loop

from _cli import one_line as _one_line
from _cli import run_captured as _main

TINY = ["--set", "hidden=[32,32]", "--set", "actor_hidden=[32,32]", "--set", "batch_size=32",
        "--set", "learning_starts=50", "--set", "buffer_size=5000", "--eval-episodes", "1"]


def _temporaries(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.name.endswith(".tmp")
                  or p.name.startswith(".tmp-"))


# ----------------------------------------------------------------------- settings are read right
def test_error_line_is_the_reason_without_tensorflow_context():
    disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/ckpt")
    assert error_line(disk_full) == f"{os.strerror(errno.ENOSPC)} (/runs/x/ckpt)"
    # A graph-mode OpError's text: context lines first, the reason after them.
    op_error = RuntimeError("Graph execution error:\n\nDetected at node 'save/SaveV2' defined "
                            "at (most recent call last):\n  File \"loop.py\", line 3\n"
                            "/runs/x/ckpt.data; No space left on device\n"
                            "\t [[{{node save/SaveV2}}]]")
    assert error_line(op_error) == "/runs/x/ckpt.data; No space left on device"
    assert error_line(RuntimeError("Graph execution error:")) == "Graph execution error:"
    assert error_line(MemoryError()) == ""
    assert len(error_line(ValueError("x" * 5000))) == 200


def test_yaml_1_2_numbers_in_flags_config_files_and_presets(tmp_path, monkeypatch):
    assert run._setting("learning_rate=3e-4") == ("learning_rate", 3e-4)
    assert run._setting("buffer_size=1e6") == ("buffer_size", 1e6)
    user = tmp_path / "c.yaml"
    user.write_text("train: {steps: 2e3, eval_every: 1E3}\nagent: {tau: 5e-3, buffer_size: 1e5}\n")
    resolved = config.resolve("sac", "Pendulum-v1", user)
    assert (resolved.steps, resolved.eval_every) == (2000, 1000)
    assert type(resolved.steps) is int and type(resolved.eval_every) is int
    assert resolved.agent_config.tau == 5e-3
    assert resolved.agent_config.buffer_size == 100_000

    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "Pendulum-v1.yaml").write_text("agents:\n  sac: {learning_rate: 7e-4}\n")
    monkeypatch.setattr(config, "PRESET_DIR", presets)
    assert config.resolve("sac", "Pendulum-v1").agent_config.learning_rate == 7e-4


def test_yaml_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):  # 9**9 strings once expanded
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("train:\n" + "\n".join("  " + line for line in lines) + "\n")
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(UserError) as exc:
        config.resolve("sac", "Pendulum-v1", bomb)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(exc.value)
    assert "aliases" in message and "bomb.yaml" in message and "line 3" in message, message
    assert len(message) < 200
    assert elapsed < 2.0 and peak < 5 * 2**20, (elapsed, peak)


def test_train_keys_of_a_config_file_are_only_overridden_by_given_flags(tmp_path, monkeypatch,
                                                                        capsys):
    seen = []

    def fake_train(config, run_dir, **kwargs):
        seen.append((config, Path(run_dir)))
        return {"steps": config.steps, "wall_time_s": 0.0, "final_return": None,
                "updates_per_second": 0.0}

    monkeypatch.setattr(run, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    user = tmp_path / "c.yaml"
    user.write_text("train: {seed: 5, agent: td3, steps: 300, eval_every: 150}\n"
                    "agent: {critic_norm: batch}\n")
    assert _main(["train", "--config", str(user)], capsys)[0] == 0
    resolved, run_dir = seen[-1]
    assert (resolved.agent, resolved.seed, resolved.steps, resolved.eval_every) == (
        "td3", 5, 300, 150)
    assert resolved.agent_config.critic_norm == "batch"
    assert run_dir == Path("runs/td3-Pendulum-v1-batch-s5")
    assert resolved.agent_config.learning_starts == 1000  # the td3 preset applies

    assert _main(["train", "--config", str(user), "--seed", "7", "--agent", "sac", "--steps",
                  "400", "--critic-norm", "layer"], capsys)[0] == 0
    resolved, run_dir = seen[-1]
    assert (resolved.agent, resolved.seed, resolved.steps, resolved.eval_every) == (
        "sac", 7, 400, 150)
    assert resolved.agent_config.critic_norm == "layer"
    assert run_dir == Path("runs/sac-Pendulum-v1-layer-s7")


def test_whole_float_counts_are_integers_and_fractions_are_refused():
    assert config.resolve("sac", "Pendulum-v1", None, {"steps": 300.0}).steps == 300
    for bad in (30.7, float("nan"), float("inf"), "abc", True, [1]):
        with pytest.raises(UserError, match="steps must be an integer"):
            config.resolve("sac", "Pendulum-v1", None, {"steps": bad})
    with pytest.raises(UserError, match="batch_size must be an integer, got 3.5"):
        config.resolve("sac", "Pendulum-v1", None, None, {"batch_size": 3.5})


def test_learning_starts_beyond_the_run_is_warned(capsys, tmp_path):
    code, _, err = _main(["train", "--steps", "60", "--logdir", str(tmp_path / "a"), "--quiet",
                          *TINY, "--set", "learning_starts=60"], capsys)
    assert code == 0
    assert _one_line(err) == ("bnrl: warning: learning_starts (60) >= steps (60): the run acts "
                              "randomly and never takes a gradient step")


# ------------------------------------------------------------- a failed start leaves no trace
@pytest.mark.parametrize("fault", ["ctrl-c", "out-of-memory"])
def test_a_run_that_fails_to_start_removes_what_it_made(fault, tmp_path, monkeypatch, capsys):
    logdir = tmp_path / "new" / "parents" / "run"
    args = ["train", "--steps", "60", "--logdir", str(logdir), "--quiet", *TINY]
    real_build = loop.build_agent

    def failing_build(config, env, threads=None):
        assert (logdir / "config.yaml").is_file()  # the directory was made and written
        raise KeyboardInterrupt if fault == "ctrl-c" else MemoryError

    monkeypatch.setattr(loop, "build_agent", failing_build)
    code, _, err = _main(args, capsys)
    line = _one_line(err)
    if fault == "ctrl-c":
        assert code == 130
        assert line == ("bnrl: interrupted while starting; nothing was kept: run the same "
                        "command again")
    else:
        assert code == 2
        assert "not enough memory" in line and "buffer_size" in line
    assert not (tmp_path / "new").exists()  # the run directory and the parents it made

    if fault == "ctrl-c":
        monkeypatch.setattr(loop, "build_agent", real_build)
        code, out, err = _main(args, capsys)  # the same command now runs
        assert code == 0 and err == "", err  # (and warns about nothing)
        assert checkpoint.latest(logdir).name == "step-000000060"


def test_a_second_trainer_on_a_locked_run_directory_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    held = files.lock_directory(run_dir)
    try:
        code, _, err = _main(["train", "--steps", "30", "--logdir", str(run_dir), *TINY], capsys)
    finally:
        os.close(held)
    assert code == 2
    assert "is in use by another bnrl process" in _one_line(err)
    assert list(run_dir.iterdir()) == []


# ------------------------------------------------------------------------------- storage faults
@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    """A tiny tmpfs at ``path`` (root in a sandbox may mount one); None when not allowed."""
    path.mkdir(parents=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    except OSError:
        mounted = False
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def test_disk_full_mid_run_keeps_the_last_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    with _tmpfs(tmp_path / "mnt", "8m") as disk:
        real_save = checkpoint.save
        filled = []
        if disk is None:  # no mount allowed: every atomic write reports a full disk instead
            root = tmp_path / "disk"
            root.mkdir()
            real_create = files._create_temporary

            def create(path):
                if filled:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return real_create(path)

            monkeypatch.setattr(files, "_create_temporary", create)
        else:
            root = disk

        def save_then_fill(run_dir, step, *args, **kwargs):
            path = real_save(run_dir, step, *args, **kwargs)
            if step == 100 and not filled:
                filled.append(_fill(root) if disk is not None else True)
            return path

        monkeypatch.setattr(checkpoint, "save", save_then_fill)
        logdir = root / "run"
        # Scalars every 5 updates and no eval before the end: the first write to fail is
        # TensorBoard's (its writer thread's error must come out as the same one line).
        args = ["train", "--steps", "200", "--eval-every", "200", "--log-every", "5",
                "--checkpoint-every", "100", "--logdir", str(logdir), "--quiet", *TINY]
        code, _, err = _main(args, capsys)
        line = _one_line(err)
        assert code == 1, err
        assert "No space left on device" in line, line
        assert f"{logdir} keeps its checkpoint at step 100" in line
        assert "--resume" in line
        assert [p.name for p in checkpoint.list_checkpoints(logdir)] == ["step-000000100"]
        checkpoint.load_loop_state(logdir / "checkpoints" / "step-000000100")
        assert _temporaries(logdir) == []
        assert not (logdir / "summary.json").exists()

        if disk is not None:
            filled[0].unlink()
        filled.clear()
        code, out, err = _main([*args, "--resume"], capsys)
        assert code == 0, err
        summary = json.loads((logdir / "summary.json").read_text())
        assert summary["steps"] == 200 and summary["eval_steps"] == [200]
        assert _temporaries(logdir) == []


def test_full_or_read_only_disk_at_start_leaves_nothing(tmp_path, capsys):
    with _tmpfs(tmp_path / "full", "1m") as full, \
            _tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        if full is None or read_only is None:
            pytest.skip("cannot mount a tmpfs here")
        _fill(full)
        for root, reason in ((full, "No space left on device"),
                             (read_only, "Read-only file system")):
            logdir = root / "run"
            code, _, err = _main(["train", "--steps", "30", "--logdir", str(logdir), *TINY],
                                 capsys)
            assert code == 2
            line = _one_line(err)
            assert str(logdir) in line and reason in line, line
            assert not logdir.exists()


# --------------------------------------------------------------------- evaluate during training
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run.main(["train", "--steps", "200", "--eval-every", "100", "--checkpoint-every",
                         "100", "--logdir", str(run_dir), "--quiet", *TINY])
    assert code == 0
    return run_dir


def test_evaluate_moves_on_when_its_checkpoint_is_pruned(finished_run, tmp_path, monkeypatch,
                                                        capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    real_build = evaluation.build_agent

    def build_while_the_run_saves_and_prunes(*args, **kwargs):
        agent = real_build(*args, **kwargs)
        root = checkpoint.checkpoint_dir(run_dir)
        shutil.copytree(root / "step-000000200", root / ".tmp-300")
        os.replace(root / ".tmp-300", root / "step-000000300")
        for old in checkpoint.list_checkpoints(run_dir)[:-1]:  # keep_checkpoints 1
            checkpoint._prune(old)
        return agent

    monkeypatch.setattr(evaluation, "build_agent", build_while_the_run_saves_and_prunes)
    code, out, err = _main(["evaluate", "--run", str(run_dir), "--episodes", "1"], capsys)
    assert code == 0, err
    assert "mean return" in out
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-000000300"]


def test_a_pruned_checkpoint_is_read_as_the_newest(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    old, new = checkpoint.list_checkpoints(run_dir)
    checkpoint._prune(old)
    assert not old.exists() and not list(old.parent.glob(".tmp-*"))
    assert checkpoint.load_loop_state(old) == checkpoint.load_loop_state(new)
    shutil.rmtree(new)
    with pytest.raises(UserError, match="missing agent.json"):
        checkpoint.load_loop_state(old)


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """Every file of a checkpoint (TensorFlow's too) is on disk before its directory appears."""
    from bnrl.agents import make_agent
    from bnrl.envs import make_env

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        ("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))),
                                                     real_replace(a, b))[1])
    env = make_env("Pendulum-v1", 0, agent="sac", agents=ACTION_SPACES)
    agent = make_agent("sac", env.observation_space, env.action_space,
                       {"hidden": [8], "actor_hidden": [8], "buffer_size": 10, "batch_size": 4}, 0)
    run_dir = tmp_path / "run"
    final = checkpoint.save(run_dir, 7, agent, {"episodes": 0}, keep=3)
    agent.close()
    rename = events.index(("replace", str(final)))
    synced = {path for kind, path in events[:rename] if kind == "fsync"}
    parts = {str(final.with_name(".tmp-7") / p.name) for p in final.iterdir()}
    assert parts <= synced, parts - synced
    assert str(final.with_name(".tmp-7")) in synced
    assert ("fsync", str(final.parent)) in events[rename:]


def test_files_are_created_with_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "report.md", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
