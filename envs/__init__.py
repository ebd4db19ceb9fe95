"""Environment construction for bnrl agents (see `envs.make`)."""

from bnrl.envs.make import EnvError, check_agent_env, env_action_bounds, make_env

__all__ = ["EnvError", "check_agent_env", "env_action_bounds", "make_env"]
