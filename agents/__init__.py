"""Agents on the Session-based core: DQN, DDPG, TD3, SAC, CrossQ.

``make_agent(name, observation_space, action_space, config, seed)`` builds one by name; ``config``
is the agent's dataclass or a dict of its fields (unknown keys are a one-line ValueError).
"""

from bnrl.agents.core import Agent, AgentConfig, config_from_dict
from bnrl.agents.crossq import CrossQ, CrossQConfig
from bnrl.agents.dqn import DQN, DQNConfig
from bnrl.agents.replay import ReplayBuffer
from bnrl.agents.sac import SAC, SACConfig
from bnrl.agents.td3 import DDPG, TD3, DDPGConfig, TD3Config

AGENTS: dict[str, type[Agent]] = {"dqn": DQN, "ddpg": DDPG, "td3": TD3, "sac": SAC,
                                  "crossq": CrossQ}


def agent_class(name: str) -> type[Agent]:
    """The agent class registered as ``name``; ValueError naming the accepted ones otherwise."""
    try:
        return AGENTS[name]
    except KeyError:
        raise ValueError(f"unknown agent '{name}': use one of {', '.join(AGENTS)}") from None


def make_agent(name: str, observation_space, action_space, config=None, seed: int = 0) -> Agent:
    """Build agent ``name``; ``config`` is its config dataclass, a dict of fields, or None."""
    cls = agent_class(name)
    if config is None or isinstance(config, dict):
        config = config_from_dict(cls.config_class, config)
    return cls(observation_space, action_space, config, seed)


__all__ = ["AGENTS", "Agent", "AgentConfig", "CrossQ", "CrossQConfig", "DDPG", "DDPGConfig", "DQN",
           "DQNConfig", "ReplayBuffer", "SAC", "SACConfig", "TD3", "TD3Config", "agent_class",
           "config_from_dict", "make_agent"]
