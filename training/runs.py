"""What a run is made of before it trains: its env, its agent, its saved settings.

``make_run_env`` and ``build_agent`` make a run's env and agent from its ``RunConfig``;
``check_run`` checks what can be checked before anything is written; ``open_run`` reads a run
directory's settings and latest checkpoint. The training loop, evaluation and export use them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

from bnrl.agents import ACTION_SPACES, agent_class, make_agent
from bnrl.agents.group import AgentGroup
from bnrl.common.errors import UserError, error_line
from bnrl.common.seeding import derive_seed
from bnrl.envs import EnvBoundary, EnvError, frame_stack, make_env, training_env, vector_env
from bnrl.training import checkpoint
from bnrl.training.config import RunConfig, from_dict, read_yaml


def make_run_env(config: RunConfig, seed: int, render_mode: str | None = None,
                 training: bool = False):
    """The env of a run behind its ``EnvBoundary`` (what the env raises is one ``EnvFailed``;
    non-finite values are refused unless ``config.check_finite`` is off); any failure to make it
    (unknown id, a module that fails to import, a constructor that raises, observations the
    agent's networks cannot take) is a one-line UserError. ``training``: the env the agent
    trains on (Atari: with episodic life and reward clipping), not an evaluation env."""
    try:
        env = make_env(config.env, seed, agent=config.agent, agents=ACTION_SPACES,
                       max_episode_steps=config.max_episode_steps, render_mode=render_mode,
                       training=training)
        try:  # the networks can take its observations (shape, encoder), before anything is built
            agent_class(config.agent).observation(env.observation_space, config.agent_config,
                                                  frame_stack(config.env))
        except ValueError as exc:
            env.close()
            raise UserError(f"{config.env}: {exc}") from None
        return EnvBoundary(env, config.env, check_finite=config.check_finite)
    except EnvError as exc:
        raise UserError(str(exc)) from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's env module can raise anything
        module = config.env.partition(":")[0] if ":" in config.env else None
        if module and module not in sys.modules:  # a failed import leaves nothing there
            where = f"importing module {module!r} for {config.env!r} failed"
        else:
            mode = f" with render_mode={render_mode!r}" if render_mode else ""
            where = f"making environment {config.env!r}{mode} failed"
        raise UserError(f"{where}: {type(exc).__name__}: {error_line(exc)}") from None


def make_train_envs(config: RunConfig):
    """The vector env a run trains on: ``config.n_envs`` training sub-envs (``envs.vector``),
    sub-env ``i`` made with seed ``derive_seed(config.seed, i, n_envs)`` (the run's seed itself
    with one sub-env). Made after ``check_run`` has made one such env, so its failures were
    reported there."""
    make_one = functools.partial(training_env, config.env, config.agent,
                                 ACTION_SPACES[config.agent], config.max_episode_steps,
                                 config.check_finite)
    n = config.n_envs
    return vector_env(make_one, [derive_seed(config.seed, i, n) for i in range(n)],
                      config.vector_env)


def check_run(config: RunConfig) -> None:
    """What can be checked before a run writes anything: its env can be made, and its replay
    buffer fits in this machine's memory (a too big one is a MemoryError at start-up, or worse,
    the OOM killer hours later). One-line UserErrors."""
    env = make_run_env(config, config.seed)
    try:
        algorithm = agent_class(config.agent)
        observation = algorithm.observation(env.observation_space, config.agent_config,
                                            frame_stack(config.env))
        needed, what, kind, remedy = algorithm.store_memory(
            config.agent_config, observation, env.action_space, config.n_envs)
    finally:
        env.close()
    memory = _memory_bytes()
    if memory is not None and needed > memory:
        raise UserError(f"{what} needs {needed / 2**30:.1f} GiB of {kind} memory on "
                        f"{config.env}, more than the {memory / 2**30:.1f} GiB of this machine: "
                        f"{remedy}")


def _memory_bytes() -> int | None:
    """Physical memory, or the container's limit when lower; None when unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = ""
    return min(total, int(limit)) if limit.isdigit() else total


def build_agent(config: RunConfig, env, threads: int | None = None):
    """The run's agent for ``env`` (one env, or a sub-env's spaces: ``single_observation_space``
    of a vector env), for ``config.n_envs`` sub-envs; ``threads`` caps TensorFlow's intra-op pool
    (benchmarks)."""
    observation_space, action_space, agent_config = _agent_settings(config, env, threads)
    return make_agent(config.agent, observation_space, action_space, agent_config,
                      config.seed, frame_stack(config.env), config.n_envs)


def build_group(configs, env, threads: int | None = None) -> AgentGroup:
    """The agents of runs that differ only in their seed, as one ``AgentGroup`` (member ``i``
    is ``build_agent(configs[i], env, threads)`` as it would be alone)."""
    observation_space, action_space, agent_config = _agent_settings(configs[0], env, threads)
    return AgentGroup(agent_class(configs[0].agent), observation_space, action_space,
                      agent_config, [c.seed for c in configs], frame_stack(configs[0].env),
                      configs[0].n_envs)


def _agent_settings(config: RunConfig, env, threads: int | None):
    agent_config = config.agent_config
    if threads is not None:
        agent_config = dataclasses.replace(
            agent_config, intra_op_threads=threads,
            inter_op_threads=min(agent_config.inter_op_threads or threads, threads))
    # A vector env's spaces are batched; its agent acts in one sub-env's.
    observation_space = getattr(env, "single_observation_space", env.observation_space)
    action_space = getattr(env, "single_action_space", env.action_space)
    return observation_space, action_space, agent_config


def open_run(run_dir) -> tuple[RunConfig, Path]:
    """The settings and latest complete checkpoint of a run (UserError when there are none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a bnrl run (no config.yaml); pass the --logdir of a "
                        "train run")
    config = from_dict(read_yaml(run_dir / "config.yaml"))
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise UserError(f"{run_dir} has no complete checkpoint yet")
    checkpoint.load_loop_state(ckpt)
    return config, ckpt
