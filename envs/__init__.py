"""Environment construction for bnrl agents (see `envs.make`)."""

from bnrl.envs.make import (
    AGENT_ACTION_SPACES,
    EnvError,
    check_agent_env,
    env_action_bounds,
    make_env,
)

__all__ = ["AGENT_ACTION_SPACES", "EnvError", "check_agent_env", "env_action_bounds", "make_env"]
