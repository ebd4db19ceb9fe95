"""Agents: DQN, DDPG, TD3, SAC, CrossQ, PQN, each an ``Algorithm`` run by the shared ``Agent``.

``AGENTS`` is the one registry of agents by name: the command line, the env checks, the
benchmark and the export all read it. Adding an agent is writing its algorithm file and adding
one line here. ``make_agent(name, observation_space, action_space, config, seed)`` builds one;
``config`` is the agent's dataclass or a dict of its fields (unknown keys and bad values are a
one-line ValueError).
"""

from bnrl.agents.agent import Agent
from bnrl.agents.algorithm import Algorithm, Networks
from bnrl.agents.config import AgentConfig, config_from_dict
from bnrl.agents.crossq import CrossQ, CrossQConfig
from bnrl.agents.dqn import DQN, DQNConfig
from bnrl.agents.pqn import PQN, PQNConfig
from bnrl.agents.replay import ReplayBuffer
from bnrl.agents.sac import SAC, SACConfig
from bnrl.agents.td3 import DDPG, TD3, DDPGConfig, TD3Config

AGENTS: dict[str, type[Algorithm]] = {a.name: a for a in (DQN, DDPG, TD3, SAC, CrossQ, PQN)}

ACTION_SPACES: dict[str, str] = {name: a.head_class.action_space for name, a in AGENTS.items()}
"""The action space each agent acts in: ``discrete`` or ``box`` (what ``envs`` checks)."""


def agent_class(name: str) -> type[Algorithm]:
    """The algorithm registered as ``name``; ValueError naming the accepted ones otherwise."""
    try:
        return AGENTS[name]
    except KeyError:
        raise ValueError(f"unknown agent '{name}': use one of {', '.join(AGENTS)}") from None


def make_agent(name: str, observation_space, action_space, config=None, seed: int = 0,
               frames: int = 1, n_envs: int = 1) -> Agent:
    """Build agent ``name``; ``config`` is its config dataclass, a dict of fields, or None;
    ``frames`` the env's frame stack (``envs.frame_stack``), ``n_envs`` the sub-envs of the
    vector env it trains on."""
    algorithm = agent_class(name)
    if config is None or isinstance(config, dict):
        config = config_from_dict(algorithm.config_class, config)
    return Agent(algorithm, observation_space, action_space, config, seed, frames, n_envs)


__all__ = ["ACTION_SPACES", "AGENTS", "Agent", "AgentConfig", "Algorithm", "CrossQ",
           "CrossQConfig", "DDPG", "DDPGConfig", "DQN", "DQNConfig", "Networks", "PQN",
           "PQNConfig", "ReplayBuffer", "SAC", "SACConfig", "TD3", "TD3Config", "agent_class",
           "config_from_dict", "make_agent"]
