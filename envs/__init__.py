"""Environment construction for bnrl agents (see `envs.make`; vector envs in `envs.vector`)."""

from bnrl.envs.families import frame_stack
from bnrl.envs.make import EnvBoundary, EnvError, check_agent_env, env_action_bounds, make_env
from bnrl.envs.vector import VECTOR_MODES, training_env, vector_env

__all__ = ["VECTOR_MODES", "EnvBoundary", "EnvError", "check_agent_env", "env_action_bounds",
           "frame_stack", "make_env", "training_env", "vector_env"]
