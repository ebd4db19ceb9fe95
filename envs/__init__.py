"""Environment construction for bnrl agents (see `envs.make`)."""

from bnrl.envs.families import frame_stack
from bnrl.envs.make import EnvBoundary, EnvError, check_agent_env, env_action_bounds, make_env

__all__ = ["EnvBoundary", "EnvError", "check_agent_env", "env_action_bounds", "frame_stack",
           "make_env"]
