"""The training loop: act, observe, update, evaluate, log, checkpoint, resume.

``train(config, run_dir)`` is what ``run.py train`` and every benchmark worker call. Everything a
run writes lives in its directory: ``config.yaml`` (resolved settings), TensorBoard events,
``metrics.csv`` (eval returns), ``checkpoints/`` and, at the end, ``summary.json``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from bnrl.common.errors import (
    EnvFailed,
    NonFiniteValue,
    RunFailed,
    StorageError,
    UserError,
    error_line,
)
from bnrl.common.files import atomic_write, lock_directory, make_dirs, remove_empty
from bnrl.common.seeding import derive_seed
from bnrl.envs.evaluate import EVAL_SEED_OFFSET
from bnrl.networks import Norm
from bnrl.training import checkpoint
from bnrl.training.cadence import Cadence, run_group_round, run_round
from bnrl.training.callbacks import Evaluation, stopping
from bnrl.training.config import RESUMABLE, RunConfig, changed_settings, from_dict, read_yaml
from bnrl.training.evaluation import evaluate
from bnrl.training.logger import ScalarLogger, flatten_settings
from bnrl.training.runs import (
    build_agent,
    build_group,
    check_run,
    make_run_env,
    make_train_envs,
)

# Scalars kept in summary.json for the benchmark's bn_stats.png (the greedy agreement: DQN and PQN
# only, so it is kept only by runs that log it).
_BN_HISTORY = ("bn_Q_moving_mean", "bn_Q_moving_variance", "bn_Q_train_eval_gap",
               "bn_Q_greedy_agreement")


class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise, nothing when quiet."""

    def __init__(self, total: int, initial: int, mode: str, label: str):
        self.mode = mode if mode != "auto" else ("bar" if sys.stderr.isatty() else "plain")
        self.total, self.label, self._last_line = total, label, time.time()
        self._bar = None
        if self.mode == "bar":
            self._bar = tqdm(total=total, initial=initial, desc=label, unit="step",
                             dynamic_ncols=True)

    def update(self, step: int, n: int = 1, **info) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if info:
                self._bar.set_postfix(info, refresh=False)
        elif self.mode == "plain" and (info or time.time() - self._last_line > 30):
            self._last_line = time.time()
            extra = " ".join(f"{k}={v}" for k, v in info.items())
            print(f"[{self.label}] step {step}/{self.total} {extra}".rstrip(), flush=True)

    def write(self, message: str) -> None:
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class RunDirectory:
    """A run directory held by one ``train`` call.

    It is locked (``files.lock_directory``) while the run trains, so that a second trainer on
    the same directory (the same command twice, a re-run while an orphaned benchmark worker
    still trains) fails at once instead of interleaving checkpoints.
    """

    path: Path
    lock: int | None
    created: list[Path]
    """Directories this call created, deepest first (empty for a resumed run)."""
    new: bool
    """A new run (its directory was empty), not a resumed one."""

    def discard(self) -> None:
        """Remove what a new run made when it failed to start, so that the same command can be
        run again; a resumed run's directory is left as it was."""
        if not self.new:
            return
        if self.created and self.created[0] == self.path:
            shutil.rmtree(self.path, ignore_errors=True)
            remove_empty(self.created[1:])
            return
        for part in self.path.iterdir():  # it was empty when this run locked it
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)

    def release(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def prepare_run_dir(run_dir, config: RunConfig, resume: bool) -> RunDirectory:
    """Create and lock a new run directory (writing ``config.yaml``), or lock an existing one and
    check that ``config`` may continue it (``--resume``).

    A resumed run must have the saved settings except those in ``config.RESUMABLE``, and may not
    end before its latest checkpoint. Nothing is changed on any error (one-line UserError).
    The caller releases the returned directory.
    """
    run_dir = Path(run_dir)
    if resume:
        if not run_dir.is_dir():
            raise UserError(f"cannot resume {run_dir}: no such run directory")
        created = []
    else:
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run directory {run_dir} is a file: choose another --logdir")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise UserError(f"run directory {run_dir} already exists: pass --resume to continue "
                            "it or choose another --logdir")
        created = _make_dirs(run_dir)
    try:
        lock = lock_directory(run_dir)
    except BlockingIOError:
        remove_empty(created)
        raise UserError(f"run directory {run_dir} is in use by another bnrl process (a training "
                        "run or benchmark worker): wait for it to end or choose another "
                        "--logdir") from None
    held = RunDirectory(run_dir, lock, created, new=False)
    try:
        if resume:
            _check_resume(run_dir, config)
        elif any(run_dir.iterdir()):  # filled meanwhile by another process
            raise UserError(f"run directory {run_dir} already exists: pass --resume to continue "
                            "it or choose another --logdir")
        else:
            held.new = True
            _write_config(run_dir, config)
    except BaseException:
        held.discard()
        held.release()
        raise
    return held


def _make_dirs(run_dir: Path) -> list[Path]:
    """``mkdir -p run_dir``; returns the directories it created, deepest first."""
    try:
        return make_dirs(run_dir)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir}: {exc.strerror}") from None


def _write_config(run_dir: Path, config: RunConfig) -> None:
    try:
        atomic_write(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    except OSError as exc:
        raise UserError(f"cannot write in run directory {run_dir}: {exc.strerror}") from None


def _check_resume(run_dir: Path, config: RunConfig) -> None:
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise UserError(f"cannot resume {run_dir}: no config.yaml there (not a bnrl run)")
    saved = from_dict(read_yaml(saved_file), str(saved_file))
    if (saved.agent, saved.env) != (config.agent, config.env):
        raise UserError(
            f"cannot resume {run_dir}: it is {saved.agent} on {saved.env} seed {saved.seed}, "
            f"not {config.agent} on {config.env} seed {config.seed}")
    changed = changed_settings(saved, config)
    if changed:
        shown = "; ".join(changed[:4]) + (f"; {len(changed) - 4} more" if changed[4:] else "")
        may = ", ".join(key.removeprefix("agent_config.") for key in RESUMABLE)
        raise UserError(f"cannot resume {run_dir} with other settings: {shown}. A resumed run "
                        f"keeps its settings; only {may} may change")
    newest = checkpoint.latest(run_dir)
    if newest is not None and config.steps < checkpoint.step_of(newest):
        raise UserError(f"cannot resume {run_dir} with --steps {config.steps}: its latest "
                        f"checkpoint is at step {checkpoint.step_of(newest)}; pass --steps >= "
                        f"{checkpoint.step_of(newest)}")


def train(config: RunConfig, run_dir, resume: bool = False, progress: str = "auto",
          threads: int | None = None, replay: bool = True, warn=None, callbacks=()) -> dict:
    """Train one agent on one env, as described by ``config``, in ``run_dir``.

    Args:
      config: resolved run configuration.
      run_dir: the run directory (must not exist, or be empty, unless ``resume``).
      resume: continue from the latest complete checkpoint of ``run_dir``; ``config`` must equal
        the saved one except for ``config.RESUMABLE``.
      progress: ``auto`` (bar on a terminal, lines otherwise), ``bar``, ``plain`` or ``none``.
      threads: TensorFlow threads for this run (benchmark workers share the cores).
      replay: when resuming, load the checkpoint's replay buffer, which must be intact; False
        continues with an empty buffer.
      warn: called with each of ``config.warnings()`` once every check has passed, and with
        what a resume had to drop (unreadable rows of ``metrics.csv``).
      callbacks: ``callbacks.Callback`` objects called at each evaluation and checkpoint; one
        returning False stops the run there (checkpointed, summary written, ``stopped_by``).

    Returns:
      The run summary (also written to ``summary.json``).

    Raises:
      UserError: bad input (one line, for the command line). Nothing is written before the whole
        configuration is checked; a new run that fails to start removes what it made.
      NonFiniteValue: an observation, reward or action (``config.check_finite``), a loss or an
        evaluation return was NaN or infinite: one line naming the step and the value; the last
        good checkpoint is kept.
      EnvFailed: the environment raised: one line naming the env, the step and its error, and
        how to continue from the last checkpoint.
      StorageError: a file could not be written; the run resumes from its last checkpoint.
      KeyboardInterrupt: with a message saying what was kept and how to continue.
    """
    hook = threading.excepthook
    threading.excepthook = _quiet_event_writer_thread(hook)
    try:
        run = _Run(config, run_dir, resume, progress, threads, replay, warn, callbacks)
        try:
            run.reset()
            while run.going():
                run.step(run.agent.act_batch(run.checked_obs(), explore=True))
                k, log = run.due()
                if k:
                    t0 = time.perf_counter()
                    run.updated(*run_round(run.agent, k, log), time.perf_counter() - t0)
                run.after_step()
            return run.finish()
        except BaseException as exc:
            failure = run.failure(exc)
            if failure is exc:
                raise
            raise failure  # noqa: B904 - its cause is set as the one line's (_caused)
        finally:
            run.close()
    finally:
        threading.excepthook = hook


def train_group(configs: Sequence[RunConfig], run_dirs: Sequence,
                resume: bool | Sequence[bool] = False,
                progress: str = "none", threads: int | None = None, replay: bool = True,
                warn=None) -> list:
    """Train runs that differ only in their seed together: one graph and session for their
    agents (``agents.group.AgentGroup``), one ``sess.run`` per step for all their acts and
    one per update (per round with ``gradient_steps > 1``). Issue 29.

    Each run is what ``train(configs[i], run_dirs[i], ...)`` would make of it: the same
    directory, ``config.yaml``, ``metrics.csv``, TensorBoard events, checkpoints (its own,
    written atomically) and ``summary.json``, with the same numbers (bit for bit with
    ``xla=false``). Runs resumed from checkpoints at different steps step the ones behind
    first until they are level. ``resume``: one for all runs, or one per run.

    Returns:
      Per run, its summary, or the exception that stopped it (worded as ``train`` raises it,
      one line for a fault of the run): one run's failure (env error, non-finite loss, a
      directory in use) stops that run only.

    Raises:
      UserError: the runs differ in more than their seed, or their env cannot be made.
      KeyboardInterrupt: naming what every run kept.
    """
    if not configs or len(configs) != len(run_dirs):
        raise ValueError("train_group needs one run directory per config")
    base = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
    for config in configs[1:]:
        if {k: v for k, v in config.to_dict().items() if k != "seed"} != base:
            raise UserError(f"runs trained together must differ only in their seed: "
                            f"{configs[0].agent} on {configs[0].env} seed {configs[0].seed} and "
                            f"seed {config.seed} differ in {changed_settings(configs[0], config)}")
    check_run(configs[0])
    env = make_run_env(configs[0], configs[0].seed)
    try:
        group = build_group(configs, env, threads)
    finally:
        env.close()
    results: list = [None] * len(configs)
    runs: dict[int, _Run] = {}
    hook = threading.excepthook
    threading.excepthook = _quiet_event_writer_thread(hook)

    def guarded(i: int, step, *args):
        """``step(*args)`` of run ``i``; a failure (but Ctrl-C) ends that run only."""
        try:
            return step(*args)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - every run's failure is its own
            run = runs.pop(i, None)
            results[i] = run.failure(exc) if run is not None else exc
            if run is not None:
                run.close()
            return None

    try:
        resumes = [resume] * len(configs) if isinstance(resume, bool) else list(resume)
        for i, (config, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
            run = guarded(i, _Run, config, run_dir, resumes[i], progress, threads, replay, warn,
                          (), group.members[i])
            if run is not None:
                runs[i] = run
                guarded(i, run.reset)
        while True:
            going = [i for i, run in runs.items() if run.going()]
            if not going:
                break
            low = min(runs[i].env_steps for i in going)
            behind = [i for i in going if runs[i].env_steps == low]
            obs = {i: guarded(i, runs[i].checked_obs) for i in behind}
            behind = [i for i in behind if i in runs]
            actions = group.act_batch([obs[i] for i in behind], explore=True, members=behind)
            for i, action in zip(behind, actions, strict=True):
                guarded(i, runs[i].step, action)
            behind = [i for i in behind if i in runs]
            rounds: dict = {}
            for i in behind:
                rounds.setdefault(runs[i].due(), []).append(i)
            for (k, log), members in rounds.items():
                if not k:
                    continue
                t0 = time.perf_counter()
                done = run_group_round(group, members, k, log)
                seconds = (time.perf_counter() - t0) / len(members)
                for i, (scalars, logged) in zip(members, done, strict=True):
                    guarded(i, runs[i].updated, scalars, logged, seconds)
            for i in [i for i in behind if i in runs]:
                guarded(i, runs[i].after_step)
        for i in list(runs):
            results[i] = guarded(i, runs[i].finish)
    except KeyboardInterrupt:
        kept = "; ".join(str(runs[i].failure(KeyboardInterrupt())) for i in runs)
        raise KeyboardInterrupt(kept or "interrupted") from None
    finally:
        for run in runs.values():
            run.close()
        group.close()
        threading.excepthook = hook
    return results


class _Run:
    """One run as the loop steps it: its directory, envs, agent, loop state, logger and bar.

    ``train`` steps one; ``train_group`` steps the seeds of a group together, their agents
    updated and acting in one ``sess.run`` (``agents.group``), each run writing what it would
    alone. Made by ``__init__`` (checked, directory locked, started or restored); then
    ``reset``, and per vector step ``checked_obs`` / ``step`` / ``due`` / ``updated`` /
    ``after_step`` while ``going``; ``finish`` writes the summary; ``failure`` words what a
    step raised as the run's one line; ``close`` always.
    """

    def __init__(self, config: RunConfig, run_dir, resume: bool, progress: str,
                 threads: int | None, replay: bool, warn, callbacks, member=None):
        self.config, self.callbacks, self.run_dir = config, callbacks, Path(run_dir)
        self.closed, self.owns_agent = False, member is None
        check_run(config)  # a bad env or a too big replay fails before anything is written
        self.held = held = prepare_run_dir(self.run_dir, config, resume)
        for message in config.warnings() if warn is not None else ():
            warn(message)
        try:
            (self.env, self.eval_env, self.agent, self.state, ckpt,
             self.logger) = _start(config, held, threads, replay, member)
        except BaseException as exc:
            held.discard()
            held.release()
            raise _start_failure(exc, held) from None
        if self.logger.unreadable_rows and warn is not None:
            warn(f"dropped {self.logger.unreadable_rows} unreadable row(s) of "
                 f"{self.run_dir / 'metrics.csv'}; the evaluations that parse are kept")
        self.env_steps = step = self.agent.env_steps
        self.bar = Progress(config.steps, step, progress,
                            f"{config.agent}/{config.env}/s{config.seed}")
        if ckpt is not None:
            self.bar.write(f"resumed {self.run_dir} from step {step} ({ckpt.name})")
        elif resume:
            self.bar.write(f"no complete checkpoint in {self.run_dir}: starting from step 0")
        state = self.state
        self.started = time.time() - state["wall_time_s"]
        self.since_log = {"time": time.time(), "step": step, "updates": self.agent.updates_done}
        self.train_time = state["train_time_s"]
        self.last_eval = state["eval_returns"][-1] if state["eval_returns"] else None
        self.stopped_by = None
        self.n = config.n_envs
        self.cadence = Cadence.of(self.agent.config, config.log_every, self.n)

    def reset(self) -> None:
        """A fresh episode on every (re)start; the seed moves on so a resumed run explores
        anew. Sub-env i of n resets with derive_seed(base, i, n): base itself for one."""
        config, n, resets = self.config, self.n, self.state["resets"]
        # Each env call is its own try block (free while nothing is raised), so that a fault
        # the env boundary reports (envs.EnvBoundary) names the step it happened at.
        try:
            base = config.seed + 1_000_003 * resets
            self.obs, _ = self.env.reset(seed=[derive_seed(base, i, n) for i in range(n)])
            self.eval_env.reset(seed=config.seed + EVAL_SEED_OFFSET + 1_000_003 * resets)
        except RunFailed as exc:
            raise _stopped(exc, f"at the first reset (env step {self.env_steps})") from exc

    def going(self) -> bool:
        return self.env_steps < self.config.steps and self.stopped_by is None

    def checked_obs(self) -> np.ndarray:
        """The observations to act on, refused when not finite (even with the env check
        off)."""
        try:
            return self.agent.checked_batch(self.obs)
        except RunFailed as exc:
            raise _stopped(exc, _steps_text(self.env_steps, self.n)) from exc

    def step(self, action: np.ndarray) -> None:
        """One vector step of the env on ``action``, observed by the agent and logged."""
        step, n = self.env_steps, self.n
        try:
            next_obs, reward, terminated, truncated, info = self.env.step(action)
        except RunFailed as exc:
            raise _stopped(exc, _steps_text(step, n)) from exc
        ended = np.flatnonzero(terminated | truncated)
        if len(ended):  # their next_obs is the next episode's first: store the last one
            next_obs_stored = next_obs.copy()
            for i in ended:
                next_obs_stored[i] = info["final_obs"][i]
        else:
            next_obs_stored = next_obs
        self.agent.observe_batch(self.obs, action, reward, next_obs_stored, terminated,
                                 truncated)
        self.env_steps = step = step + n
        for i in ended:
            self.state["episodes"] += 1
            _log_episode(self.logger, info["final_info"], i, step)
        self.obs = next_obs

    def due(self) -> tuple[int, bool]:
        """Gradient steps due now, and whether the round's last one is logged."""
        k = self.cadence.updates_due(self.env_steps, len(self.agent.buffer))
        if not k:
            return 0, False
        return k, self.cadence.log_round(self.agent.updates_done, k, self.agent.schedule)

    def updated(self, scalars: list[dict], logged: dict | None, seconds: float) -> None:
        """A round's scalars (``run_round``): checked finite, the logged update logged."""
        for values in scalars:
            _check_finite(values, self.env_steps)
        if logged is not None:
            _log_update(self.logger, logged, self.env_steps, self.state, self.since_log,
                        self.agent)
        self.train_time += seconds

    def after_step(self) -> None:
        """Evaluation, progress and checkpoint due after the vector step."""
        config, state, step, n = self.config, self.state, self.env_steps, self.n
        evaluated = _reached(step, n, config.eval_every) or step >= config.steps
        if evaluated:
            try:
                mean, std = evaluate(self.agent, self.eval_env, config.eval_episodes,
                                     config.eval_epsilon,
                                     action_seed=(config.seed + EVAL_SEED_OFFSET, step))
            except RunFailed as exc:
                raise _stopped(exc, f"in the evaluation at env step {step}") from exc
            self.logger.eval_return(step, mean, std)
            state["eval_steps"].append(step)
            state["eval_returns"].append(mean)
            self.last_eval = mean
            self.stopped_by = stopping(self.callbacks, "on_evaluation",
                                       Evaluation(step, mean, std), self.agent)
        self.bar.update(step, n, **({"eval": f"{self.last_eval:.1f}"} if evaluated else {}))
        if (_reached(step, n, config.checkpoint_every) or step >= config.steps
                or self.stopped_by is not None):
            state["wall_time_s"] = time.time() - self.started
            state["train_time_s"] = self.train_time
            self.logger.flush()  # events up to a checkpoint survive a kill -9 after it
            path = checkpoint.save(self.run_dir, step, self.agent, state,
                                   config.keep_checkpoints)
            stopped_here = stopping(self.callbacks, "on_checkpoint", step, path)
            self.stopped_by = self.stopped_by or stopped_here

    def finish(self) -> dict:
        """The run's summary, written to ``summary.json``."""
        step = self.env_steps
        if self.stopped_by is not None:
            self.bar.write(f"stopped by {self.stopped_by} at env step {step}")
        summary = _summary(self.config, self.agent, self.state, time.time() - self.started,
                           self.train_time, step, self.stopped_by)
        self.logger.session_end(_final_metrics(summary), step)
        self.logger.close()
        atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        return summary

    def failure(self, exc: BaseException) -> BaseException:
        """What ``exc``, raised by a step of this run, becomes: one line naming the step and
        what the run keeps, or ``exc`` itself (a bug keeps its traceback)."""
        run_dir, step = self.run_dir, self.env_steps
        if isinstance(exc, KeyboardInterrupt):
            return _caused(KeyboardInterrupt(f"interrupted at env step {step}; "
                                             f"{_kept(run_dir)}"), None)
        if isinstance(exc, EnvFailed):  # the env may work again (a flaky simulator, a fix)
            return _caused(EnvFailed(f"{exc}; {_kept(run_dir)}"), exc)
        if isinstance(exc, NonFiniteValue):  # the same run resumed would meet the same values
            return _caused(NonFiniteValue(f"{exc}; {_kept(run_dir, advice=False)}"), exc)
        if isinstance(exc, Exception):
            # First: TensorFlow reports a full disk as ResourceExhaustedError too.
            if _is_write_failure(exc, run_dir):
                return _caused(StorageError(f"{_write_failure(exc)}; {_kept(run_dir)}"), None)
            if _is_out_of_memory(exc):  # the first updates allocate what building did not (XLA)
                return _caused(RunFailed(
                    f"training stopped at env step {step}: out of memory "
                    f"({error_line(exc) or 'MemoryError'}): lower buffer_size or the network "
                    f"widths; {_kept(run_dir, advice=False)}"), exc)
        return exc

    def close(self) -> None:
        """Close the bar, logger, envs and agent (a group member's session is the group's) and
        release the directory."""
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        _close_quietly(self.logger, self.env, self.eval_env,
                       *((self.agent,) if self.owns_agent else ()))
        self.held.release()


def _caused(exc: BaseException, cause: BaseException | None) -> BaseException:
    """``exc`` as ``raise exc from cause`` raises it."""
    exc.__cause__, exc.__suppress_context__ = cause, True
    return exc


def _start(config: RunConfig, held: RunDirectory, threads: int | None, replay: bool,
           member=None):
    """Envs, agent (restored when resuming), loop state and logger of a run; whatever was made
    is closed again when a later part fails. ``member``: the run's agent, made by its group
    (``agents.group``), instead of one of its own."""
    run_dir, resume, made = held.path, not held.new, []
    try:
        # Episode returns and lengths are counted per sub-env by gymnasium's own wrapper.
        env = make_train_envs(config)
        made.append(env)
        eval_env = make_run_env(config, config.seed + EVAL_SEED_OFFSET)
        made.append(eval_env)
        agent = build_agent(config, env, threads) if member is None else member
        if member is None:
            made.append(agent)
        state = {"episodes": 0, "resets": 0, "eval_steps": [], "eval_returns": [],
                 "bn_history": {"steps": []}, "wall_time_s": 0.0, "train_time_s": 0.0}
        ckpt = checkpoint.latest(run_dir) if resume else None
        if ckpt is not None:
            ckpt = checkpoint.restore_agent(agent, ckpt, replay=replay)
            state = checkpoint.load_loop_state(ckpt)
            state["resets"] += 1
        if resume:  # only now: a resume that fails to start leaves the run as it was
            _write_config(run_dir, config)
        logger = ScalarLogger(run_dir, resume_step=agent.env_steps if resume else None)
        settings = flatten_settings(config.to_dict())
        ac = config.agent_config
        logger.session_start(
            {k: v for k, v in settings.items() if k not in RESUMABLE}, trial=str(run_dir),
            bn_networks={prefix: name for prefix, name, kind in (
                ("Q", "critic / Q-network", ac.critic_norm),
                ("pi", "actor", getattr(ac, "actor_norm", "none"))) if Norm(kind).is_batch},
            greedy=agent.head.action_space == "discrete")
    except BaseException:
        _close_quietly(*reversed(made))
        raise
    return env, eval_env, agent, state, ckpt, logger


def _start_failure(exc: BaseException, held: RunDirectory) -> BaseException:
    """The one-line error for a run that failed to start (its directory is already back as it
    was)."""
    kept = "nothing was kept" if held.new else f"{held.path} is unchanged"
    if isinstance(exc, KeyboardInterrupt):
        return KeyboardInterrupt(f"interrupted while starting; {kept}: run the same command "
                                 "again")
    if _is_write_failure(exc, held.path):
        return StorageError(f"{_write_failure(exc)}; {kept}")
    if _is_out_of_memory(exc):
        reason = error_line(exc) or "out of memory"
        return UserError(f"not enough memory to build the run ({reason}); {kept}: lower "
                         "buffer_size or the network widths")
    return exc


def _is_out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, or TensorFlow's (an allocation of a tensor or of XLA's buffers)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError"


# TensorBoard's event writer, whose background thread does the writing.
_EVENT_WRITER = "tensorboard.summary.writer"


# Errors of writing a file, whatever file it is; other OSErrors count when they name a run file
# (an env's own OSError is the env's bug and keeps its traceback).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def _is_write_failure(exc: BaseException, run_dir: Path) -> bool:
    """A file of the run could not be written: a StorageError, an OSError of writing, or an
    error of TensorBoard's event writer (TensorFlow's file system reports ENOSPC as an
    OpError)."""
    if isinstance(exc, StorageError):
        return True
    if isinstance(exc, OSError):
        name = os.path.abspath(str(exc.filename or ""))
        return exc.errno in _WRITE_ERRNOS or name.startswith(os.path.abspath(run_dir) + os.sep)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(_EVENT_WRITER):
            return True
        tb = tb.tb_next
    return False


def _write_failure(exc: BaseException) -> str:
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot write {exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"cannot write the TensorBoard events: {error_line(exc)}"


def _quiet_event_writer_thread(previous):
    """A ``threading.excepthook`` that skips the traceback of TensorBoard's writer thread: the
    writer raises the same error again in the training thread at its next call, where it becomes
    a one-line StorageError."""

    def hook(args):
        if not type(args.thread).__module__.startswith(_EVENT_WRITER):
            previous(args)

    return hook


def _kept(run_dir: Path, advice: bool = True) -> str:
    """What an interrupted or failed run keeps (truthfully: a run stopped before its first
    checkpoint has none), and, with ``advice``, how to continue it."""
    newest = checkpoint.latest(run_dir)
    kept = (f"{run_dir} keeps its checkpoint at step {checkpoint.step_of(newest)}"
            if newest is not None else f"{run_dir} has no checkpoint yet")
    return f"{kept}: continue with the same command and --resume" if advice else kept


def _stopped(exc: RunFailed, where: str) -> RunFailed:
    """A fault reported by the env boundary, with the step it happened at."""
    return type(exc)(f"training stopped {where}: {exc}")


def _close_quietly(*parts) -> None:
    """Close envs/agent/logger on the way out of a failure without hiding that failure."""
    for part in parts:
        with contextlib.suppress(Exception):
            part.close()


def _reached(step: int, n: int, every: int) -> bool:
    """The vector step that brought the run from ``step - n`` to ``step`` env steps reached a
    multiple of ``every`` (with one env: ``step % every == 0``)."""
    return step // every > (step - n) // every


def _steps_text(step: int, n: int) -> str:
    """Where a vector step failed: the env step it would have made, or the n of them."""
    return f"at env step {step + 1}" if n == 1 else f"at env steps {step + 1}-{step + n}"


def _log_episode(logger, final_info: dict, i: int, step: int) -> None:
    """Sub-env ``i``'s ended episode, from its last step's info (``RecordEpisodeStatistics``;
    Atari also reports the whole game when this episode, a life, was its last)."""
    logger.scalars({"charts/episodic_return": float(final_info["episode"]["r"][i]),
                    "charts/episodic_length": int(final_info["episode"]["l"][i])}, step)
    game = final_info.get("game")
    if game is not None and final_info["_game"][i]:
        logger.scalars({"charts/game_return": float(game["r"][i]),
                        "charts/game_length": int(game["l"][i])}, step)


def _check_finite(scalars: dict, step: int) -> None:
    for name, value in scalars.items():
        if not math.isfinite(value):
            raise NonFiniteValue(f"training stopped at env step {step}: {name} is {value} "
                                 "(lower the learning rate or check the rewards)")


def _log_update(logger, scalars: dict, step: int, state: dict, since_log: dict, agent) -> None:
    now, updates = time.time(), agent.updates_done
    elapsed = max(now - since_log["time"], 1e-9)
    scalars = dict(scalars)
    scalars["charts/updates_per_second"] = (updates - since_log["updates"]) / elapsed
    scalars["charts/env_steps_per_second"] = (step - since_log["step"]) / elapsed
    since_log.update(time=now, step=step, updates=updates)
    logger.scalars(scalars, step)
    _keep_bn_history(state["bn_history"], scalars, step)


def _keep_bn_history(history: dict, scalars: dict, step: int) -> None:
    """Append a logged step's ``_BN_HISTORY`` scalars to ``history`` (``steps`` and one list
    per scalar a run logs, each aligned with ``steps``)."""
    if "bn_Q_moving_mean" not in scalars:
        return
    history["steps"].append(step)
    for name in _BN_HISTORY:
        if name in scalars or name in history:
            # NaN before its first point in a run resumed from a checkpoint of a bnrl that did
            # not log it yet.
            kept = history.setdefault(name, [float("nan")] * (len(history["steps"]) - 1))
            kept.append(scalars.get(name, float("nan")))


def _summary(config: RunConfig, agent, state: dict, wall: float, train_time: float, step: int,
             stopped_by: str | None) -> dict:
    bn = state["bn_history"] if len(state["bn_history"]["steps"]) else {}
    return {
        "agent": config.agent, "env": config.env, "seed": config.seed,
        "critic_norm": agent.config.critic_norm, "steps": step, "stopped_by": stopped_by,
        "eval_steps": state["eval_steps"], "eval_returns": state["eval_returns"],
        "final_return": state["eval_returns"][-1] if state["eval_returns"] else None,
        "wall_time_s": wall, "updates": agent.updates_done, "resumes": state["resets"],
        "updates_per_second": agent.updates_done / train_time if train_time > 0 else 0.0,
        "bn_stats": bn,
    }


def _final_metrics(summary: dict) -> dict[str, float]:
    """The run's end results, shown as metrics in TensorBoard's HPARAMS table."""
    metrics = {"final/eval_mean_return": summary["final_return"],
               "final/env_steps": summary["steps"],
               "final/updates_per_second": summary["updates_per_second"],
               "final/updates": summary["updates"], "final/wall_time_s": summary["wall_time_s"]}
    return {name: value for name, value in metrics.items() if value is not None}
