"""Export a trained policy as a TensorFlow SavedModel that needs neither bnrl nor Keras to run.

``bnrl export --run RUN --out DIR`` (``export_policy``) loads the latest checkpoint of a run and
writes the *acting* path of the agent, the exact ops ``agent.act(obs, explore=False)`` runs, as a
SavedModel:

* every variable the policy reads, BN moving mean and variance included, becomes a constant of
  the graph: the policy is frozen in inference mode. Exporting a BN network in training mode (a
  batch of one then normalizes to zero) is the classic deployment bug; here a batch of 1 and a
  batch of 100 give the same per-row actions, which the tests check;
* the serving signature ``serving_default`` takes ``observation`` as the agent stores it: float32
  ``[batch, obs_dim]`` for vectors, uint8 ``[batch, height, width, channels]`` for images (Atari
  frames 0-255, MinAtar's 0/1 grids; the policy converts them to float32 itself) and returns,
  for continuous agents, ``action`` in [-1, 1] (the scale bnrl agents act in) and
  ``env_action``, the same action rescaled linearly to the environment's bounds as bnrl's env
  wrapper does (``low + (action + 1) / 2 * (high - low)``); for DQN ``action`` (int64, the greedy
  index) and ``q_values``. SAC and CrossQ act with ``tanh(mean)``; DDPG and TD3 with the actor;
* ``bnrl_policy.json`` beside ``saved_model.pb`` (and ``metadata()`` on the loaded model) says
  which agent, env, checkpoint and spaces the policy belongs to.

    import numpy as np, tensorflow as tf
    policy = tf.saved_model.load("exported/pendulum")
    out = policy.signatures["serving_default"](observation=tf.constant(obs[None], tf.float32))
    env.step(out["env_action"].numpy()[0])       # a plain gymnasium env: environment scale

``bnrl evaluate --run DIR`` recognises an export by its ``bnrl_policy.json`` and runs it on the
env it was trained on (``ExportedPolicy``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import bnrl
from bnrl.agents import AGENTS
from bnrl.common.errors import NonFiniteValue, UserError, error_line, one_line
from bnrl.common.files import (
    atomic_directory,
    atomic_write,
    check_creatable,
    make_dirs,
    remove_empty,
)
from bnrl.envs import env_action_bounds
from bnrl.networks import RunningObsNorm, tf
from bnrl.training import checkpoint
from bnrl.training.config import RunConfig
from bnrl.training.runs import build_agent, make_run_env, open_run

GRAPH_LIMIT = 2**31 - 2**26
"""Bytes of weights an export can freeze: protobuf caps a GraphDef, and each constant in it, at
2 GiB (less a margin for the graph's other nodes); TensorFlow's error beyond it is a traceback."""
POLICY_FILE = "bnrl_policy.json"
FORMAT = "bnrl-policy"
FORMAT_VERSION = 1

def export_policy(run_dir, out_dir) -> dict:
    """Write the latest checkpoint's policy of ``run_dir`` as a SavedModel in ``out_dir``.

    Args:
      run_dir: a run directory written by ``bnrl train``.
      out_dir: the export directory; it must not exist (an export is never overwritten).

    Returns:
      The export's metadata (also in ``out_dir/bnrl_policy.json``).

    Raises:
      UserError: not a run, no complete checkpoint, or an ``out_dir`` that exists or cannot be
        made (one line, before anything is built).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        raise UserError(f"--out {out_dir} already exists: choose a new directory (an export "
                        "never overwrites anything)")
    # Checked before the seconds of building: a place the export cannot be written to is known
    # now, and the building would be lost.
    problem = check_creatable(out_dir)
    if problem is not None:
        raise UserError(f"cannot export to --out {out_dir}: {problem}; choose another --out")
    config, ckpt = open_run(run_dir)
    env = make_run_env(config, config.seed)
    agent = build_agent(config, env)
    try:
        checkpoint.restore_agent(agent, ckpt)
        _check_freezable(agent, run_dir)
        bounds = env_action_bounds(env) if agent.head.action_space == "box" else None
        metadata = _metadata(config, agent, bounds, ckpt)
        module = PolicyModule(agent, bounds, metadata)
        _save_atomically(module, metadata, out_dir)
    finally:
        agent.close()
        env.close()
    return metadata


def _check_freezable(agent, run_dir) -> None:
    """UserError when the policy's weights exceed what a frozen graph can hold (GRAPH_LIMIT)."""
    size = sum(int(np.prod(v.shape)) * v.dtype.size for v in agent.networks.policy.weights)
    if size > GRAPH_LIMIT:
        raise UserError(f"cannot export {run_dir}: its policy network holds "
                        f"{size / 2**30:.2f} GiB of weights, and an export freezes them into a "
                        "TensorFlow graph, which holds at most 2 GiB: export a run with smaller "
                        "hidden sizes")


def frozen_function(sess, graph, inputs: tf.Tensor, outputs: dict):
    """A TF2 function computing ``outputs`` from ``inputs`` with every variable a constant.

    Only the ops the outputs depend on are kept (``convert_variables_to_constants`` prunes the
    graph to them), so training ops, optimizer slots and update ops never reach the export.

    Args:
      sess: the session holding the variables' values.
      graph: the graph of ``inputs`` and ``outputs``.
      inputs: the placeholder fed with observations.
      outputs: ``{name: tensor}`` to compute.

    Returns:
      A concrete function ``f(observations) -> {name: tensor}``.
    """
    names = sorted(outputs)
    graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, graph.as_graph_def(), sorted({outputs[n].op.name for n in names}))

    def import_frozen():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_frozen, [])
    element = wrapped.graph.as_graph_element
    return wrapped.prune(element(inputs.name), {n: element(outputs[n].name) for n in names})


class PolicyModule(tf.Module):
    """The exported policy: a frozen acting graph and the head that turns it into actions.

    Args:
      agent: a (restored) bnrl agent.
      env_bounds: ``(low, high)`` of the env's own action space for Box actions, else None.
      metadata: what ``metadata()`` returns, as JSON.
    """

    def __init__(self, agent, env_bounds, metadata: dict):
        super().__init__(name="bnrl_policy")
        self._head, self._env_bounds = agent.head, env_bounds
        self._frozen = frozen_function(agent.sess, agent.graph, agent.obs_ph,
                                       {"raw": agent.act_output})
        self._metadata = json.dumps(metadata, sort_keys=True)
        obs = agent.observation
        spec = tf.TensorSpec([None, *obs.shape], tf.as_dtype(obs.dtype), name="observation")
        self.action = tf.function(self._action, input_signature=[spec])
        self.metadata = tf.function(self._metadata_fn, input_signature=[])

    def _action(self, observation):
        return self._head.serving(self._frozen(observation)["raw"], self._env_bounds)

    def _metadata_fn(self):
        return tf.constant(self._metadata)


def _metadata(config: RunConfig, agent, env_bounds, ckpt: Path) -> dict:
    obs = agent.observation
    shape = ", ".join(str(d) for d in obs.shape)
    action, outputs = agent.head.signature(env_bounds)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "agent": config.agent, "env": config.env, "seed": config.seed,
        "max_episode_steps": config.max_episode_steps,
        "checkpoint": ckpt.name, "env_steps": agent.env_steps, "updates": agent.updates_done,
        "critic_norm": agent.config.critic_norm,
        "actor_norm": getattr(agent.config, "actor_norm", None),
        "network": getattr(agent.config, "actor_network", agent.config.network),
        "observation_normalization": _observation_normalization(agent),
        "observation": {"shape": list(obs.shape), "dtype": obs.dtype},
        "action": action,
        "signature": {"name": "serving_default",
                      "inputs": {"observation": f"{obs.dtype} [batch, {shape}]"},
                      "outputs": outputs},
        "batch_norm": "inference mode: moving statistics are constants of the graph",
        "bnrl_version": bnrl.__version__, "tensorflow_version": tf.__version__,
    }


def _observation_normalization(agent) -> str | None:
    """How the policy normalizes observations before its layers: SimBa's running statistics
    (``networks.RunningObsNorm``), frozen like every variable it reads; None when it does not."""
    layers = [layer for layer in agent.networks.policy.layers
              if isinstance(layer, RunningObsNorm)]
    if not layers:
        return None
    count = int(agent.sess.run(layers[0].count))
    return (f"running mean and variance of the {count} observations acted on in training "
            "(SimBa's RSNorm): constants of the graph")


def _save_atomically(module: PolicyModule, metadata: dict, out_dir: Path) -> None:
    """Write the SavedModel into a temporary directory beside ``out_dir``, then rename it; a
    failed write leaves nothing (not the parent directories it made either)."""
    try:
        created = make_dirs(out_dir.parent)
    except OSError as exc:
        raise UserError(f"cannot export to --out {out_dir}: {error_line(exc)}") from None
    try:
        with atomic_directory(out_dir) as tmp:
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.action})
            atomic_write(tmp / POLICY_FILE, json.dumps(metadata, indent=1) + "\n")
    except BaseException:
        remove_empty(created)
        raise


# The keys of bnrl_policy.json that evaluate reads, and their JSON types.
_READ_KEYS = {"format": (str,), "agent": (str,), "env": (str,), "seed": (int,),
              "max_episode_steps": (int, type(None)), "action": (dict,)}


def read_metadata(path: Path) -> dict:
    """An export's ``bnrl_policy.json``, with every key ``evaluate`` reads there and of its type;
    a one-line UserError naming the file and the key otherwise."""
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {error_line(exc)}") from None
    except ValueError:
        raise UserError(f"{path} is not JSON: not a readable bnrl policy export") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = (f"its format is {one_line(repr(metadata.get('format')), 60)}"
                 if isinstance(metadata, dict) else f"it holds a {type(metadata).__name__}")
        raise UserError(f"{path} is not a bnrl policy export ({found}; expected format "
                        f"{FORMAT!r})")
    missing = [key for key in _READ_KEYS if key not in metadata]
    if missing:
        raise UserError(f"{path} lacks the key(s) {', '.join(missing)}: an incomplete bnrl "
                        "policy export; export the run again")
    wrong = [key for key, kinds in _READ_KEYS.items()
             if not isinstance(metadata[key], kinds) or isinstance(metadata[key], bool)]
    if "action" not in wrong and metadata["action"].get("kind") not in ("discrete", "box"):
        wrong.append("action.kind")
    if wrong:
        raise UserError(f"{path} has a malformed {', '.join(wrong)}: not a readable bnrl policy "
                        "export; export the run again")
    return metadata


def is_export(directory) -> bool:
    """Whether ``directory`` holds a policy written by ``export_policy``."""
    return (Path(directory) / POLICY_FILE).is_file()


class ExportedPolicy:
    """An exported policy loaded with ``tf.saved_model.load``, acting like ``agent.act``.

    Args:
      directory: an export directory (see ``is_export``).
    """

    def __init__(self, directory):
        directory = Path(directory)
        self.metadata = read_metadata(directory / POLICY_FILE)
        self._config = self._checked_run_config(directory / POLICY_FILE)
        try:
            model = tf.saved_model.load(str(directory))
            serve = model.signatures["serving_default"]
        except (OSError, ValueError, KeyError, tf.errors.OpError) as exc:
            raise UserError(f"{directory} is not a readable bnrl policy export: "
                            f"{error_line(exc)}") from None
        self._model = model  # keeps the signature's captured constants alive
        self._serve = serve
        self.discrete = self.metadata["action"]["kind"] == "discrete"
        # Exports of bnrl before image observations had float32 vectors only.
        observation = self.metadata.get("observation") or {}
        self._obs_dtype = np.dtype(observation.get("dtype", "float32"))
        self._obs_shape = tuple(observation.get("shape", [-1]))

    def _checked_run_config(self, source: Path) -> RunConfig:
        m = self.metadata
        # The evaluation env is one env; n_envs only has to be one the agent's defaults take.
        config = RunConfig(agent=m["agent"], env=m["env"], seed=m["seed"],
                           max_episode_steps=m["max_episode_steps"],
                           n_envs=getattr(AGENTS.get(m["agent"]), "default_n_envs", 1))
        try:
            config.validate()
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        return config

    def run_config(self) -> RunConfig:
        """The settings that make the env this policy was trained on."""
        return self._config

    def act(self, obs, explore: bool = False):
        """The deterministic action for one observation (``explore`` must be False)."""
        if explore:
            raise ValueError("an exported policy is deterministic: explore must be False")
        obs = np.asarray(obs, self._obs_dtype).reshape(1, *self._obs_shape)
        if not np.isfinite(obs).all():  # as agent.act: never an action from NaN
            raise NonFiniteValue(f"the observation given to act() is not finite ({obs[0]})")
        action = self._serve(observation=tf.constant(obs))["action"].numpy()[0]
        return int(action) if self.discrete else action

    def close(self) -> None:
        """Nothing to release (an agent needs ``close``; the evaluation loop calls it)."""
