"""bnrl command line: train, evaluate, export, benchmark BN vs no-BN critics, report.

    python run.py train --agent sac --env Pendulum-v1 --critic-norm batch --steps 20000
    python run.py evaluate --run runs/sac-Pendulum-v1-batch-s0 --episodes 10
    python run.py export --run runs/sac-Pendulum-v1-batch-s0 --out policies/sac-pendulum
    python run.py benchmark            # the quick BN vs no-BN benchmark (about 4 minutes)
    python run.py report bench_out/quick
    python run.py tune --agent sac --env Pendulum-v1 --variant batch --n-trials 50

Bad input exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys


def _use_checkout() -> None:
    """Make ``bnrl`` this checkout when ``python run.py`` runs from one.

    ``pyproject.toml`` maps the repository's top level into the ``bnrl`` package; this does the
    same at run time, so a checkout runs its own code whether or not (or whatever) bnrl is
    installed. Spawned benchmark workers re-import this file as ``__mp_main__`` and get it too.
    """
    root = os.path.dirname(os.path.abspath(__file__))
    loaded = sys.modules.get("bnrl")
    if loaded is not None and os.path.dirname(os.path.abspath(loaded.__file__)) == root:
        return
    spec = importlib.util.spec_from_file_location(
        "bnrl", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bnrl"] = module
    spec.loader.exec_module(module)


if __name__ in ("__main__", "__mp_main__"):
    _use_checkout()

# Every bnrl import comes after _use_checkout (so that it is this checkout's), and TensorFlow is
# first imported by quiet_tensorflow, with its start-up logging hidden.
from bnrl.common.quiet import quiet_tensorflow  # noqa: E402 - after _use_checkout

quiet_tensorflow()

from bnrl import __version__, agents  # noqa: E402 - after quiet_tensorflow
from bnrl.common.errors import RunFailed, StorageError, UserError, one_line  # noqa: E402
from bnrl.compare.cli import COMMANDS, add_benchmark_commands  # noqa: E402
from bnrl.compare.tune import add_tune_command, cmd_tune  # noqa: E402
from bnrl.envs import VECTOR_MODES  # noqa: E402
from bnrl.training import evaluate_run, resolve, train  # noqa: E402
from bnrl.training.config import parse_setting  # noqa: E402
from bnrl.training.export import export_policy  # noqa: E402

AGENTS = tuple(agents.AGENTS)
NORMS = ("none", "batch", "batch_renorm", "layer")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(minimum: int, what: str):
    """An argparse type accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _setting(text: str) -> tuple[str, object]:
    try:
        return parse_setting(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TRAIN_EPILOG = """\
agents: dqn, pqn (Discrete actions), ddpg, td3, sac, crossq (Box actions).
norms:  none, batch (BatchNormalization), batch_renorm (Batch Renorm, CrossQ clipping), layer.
Presets in configs/<ENV_ID>.yaml (configs/<NAMESPACE>.yaml for NAMESPACE/Game ids) are applied
first; --config FILE (YAML with `train:` and `agent:` sections; `train:` takes every run setting,
agent and env included) overrides them;
flags and --set override both (a flag left out overrides nothing). Values are YAML 1.2
(3e-4 is a number); aliases (*name) and duplicate keys are not accepted; numbers must be finite.
An empty or null value (--set KEY=, KEY=null) is refused, except where null means the default:
actor_learning_rate (learning_rate), target_entropy (-action_dim), xla_single_update (on with
xla and a BN layer, unless a network has convolutions), max_episode_steps (the env's limit);
there --set KEY=null overrides a config file's value. Run settings without a flag go under
`train:` in --config, e.g. check_finite: false turns off the check of every observation, reward
and action for NaN/inf (on by default; a non-finite one, loss or eval return ends the run as
failed, exit code 1, naming the step).
Agent settings (--set KEY=VALUE):
  all agents: gamma batch_size buffer_size learning_starts train_freq gradient_steps hidden
              critic_norm critic_input_norm critic_norm_position bn_momentum bn_epsilon
              target_bn tau adam_beta1 intra_op_threads inter_op_threads xla
              xla_single_update
              BN remedies (docs/bn-critics.md): critic_batch (auto, separate, joint)
              target (auto, polyak, none) bootstrap_mode (auto, inference, training)
              bn_modes (auto, ma_bn, naive: a named set of the mode settings)
              renorm_warmup renorm_rmax renorm_dmax
              SimBa (docs/simba.md): network (mlp, simba) simba_width simba_blocks
  dqn:    learning_rate target_update_interval exploration_steps exploration_initial_eps
          exploration_final_eps max_grad_norm double_q dueling n_steps loss (huber, mse)
          encoder (auto, mlp, nature, minatar: auto picks nature for 84x84 image stacks,
          minatar for 10x10 grids, mlp for vectors)
  td3/ddpg: learning_rate actor_learning_rate actor_hidden actor_norm actor_input_norm n_critics
          policy_delay target_policy_noise target_noise_clip action_noise action_noise_std
          ou_theta action_at norm_after_action critic_l2 actor_loss_mode (auto, inference,
          training) next_action_mode (auto, inference, training) actor_network (mlp, simba)
          actor_simba_width actor_simba_blocks
  sac:    learning_rate actor_hidden actor_norm n_critics init_alpha autotune_alpha target_entropy
          policy_delay actor_loss_mode next_action_mode actor_network actor_simba_width
          actor_simba_blocks
  crossq: the sac settings, with CrossQ's defaults (joint critic pass, no target network,
          Batch Renorm with warm-up, Adam beta1 0.5, policy_delay 3)
  pqn:    learning_rate lr_decay_steps optimizer (radam, adam) max_grad_norm rollout_len
          n_epochs q_lambda reward_scale exploration_steps exploration_initial_eps
          exploration_final_eps encoder; batch_size is the minibatch, critic_norm defaults to
          layer; no replay and no target network (docs/pqn.md). Default --n-envs 16.
examples:
  python run.py train --agent sac --env Pendulum-v1 --critic-norm batch --steps 20000
  python run.py train --agent dqn --env CartPole-v1 --set hidden=[128,128] --logdir runs/dqn
  python run.py train --logdir runs/dqn --resume --agent dqn --env CartPole-v1
  python run.py train --agent dqn --env MinAtar/Breakout-v1 --steps 100000 --critic-norm batch
  python run.py train --agent pqn --env CartPole-v1 --steps 100000 --critic-norm batch
Image envs (DQN and PQN): ALE/<Game>-v5 (pip install '.[atari]': no-op reset, frame skip 4 with
max-pooling, 84x84 grayscale, 4 stacked frames; episodic life and reward clipping in training
only, evaluation on full games with raw scores) and MinAtar/<Game>-v1 (pip install '.[minatar]').
A namespaced id's presets are configs/<namespace>.yaml (ALE.yaml: the RL Zoo's / CleanRL's DQN;
MinAtar.yaml: Young & Tian 2019's DQN; both: purejaxql's PQN); other ids' are
configs/<env id>.yaml.
The run directory gets config.yaml, TensorBoard events (tensorboard --logdir DIR), metrics.csv,
checkpoints/ and summary.json. --resume is the same command again: its settings must equal the
saved ones, except --steps (not below the latest checkpoint), --checkpoint-every, --log-every,
keep_checkpoints, check_finite and the thread counts. A run that fails to start removes what it
made; an env that raises mid-run ends it in one line, naming the step, with the checkpoint it kept.
"""


EXPORT_EPILOG = """\
serving signature (serving_default), input observation: float32 [batch, obs_dim], or for image
observations uint8 [batch, height, width, channels] as the env gives them; outputs:
  continuous agents: action      float32 [batch, act_dim] in [-1, 1], the scale bnrl agents act in
                     env_action  the same action rescaled to the env's bounds,
                                 low + (action + 1) / 2 * (high - low), for a plain gymnasium env
  dqn, pqn:          action      int64 [batch], the greedy action;  q_values  float32 [batch, n]
SAC and CrossQ act with tanh(mean), DDPG and TD3 with the actor: agent.act(obs, explore=False).
OUT/bnrl_policy.json (and metadata() on the loaded model) names the agent, env, checkpoint and
spaces. `bnrl evaluate --run OUT` runs the export on its env.
example:
  python run.py export --run runs/sac-bn --out policies/sac-bn
  python -c "import tensorflow as tf; p = tf.saved_model.load('policies/sac-bn'); \\
print(p.signatures['serving_default'](observation=tf.zeros([1, 3])))"
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bnrl", description="Off-policy RL with Batch Normalization that "
                     "actually updates: train, evaluate, benchmark BN vs no-BN critics.")
    parser.add_argument("--version", action="version", version=f"bnrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train one agent on one environment",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=TRAIN_EPILOG)
    train.add_argument("--agent", choices=AGENTS, help="algorithm (default sac)")
    train.add_argument("--env", help="gymnasium id (ALE/<Game>-v5, MinAtar/<Game>-v1 included) "
                       "or module:EnvId (default Pendulum-v1)")
    train.add_argument("--steps", type=_positive_int, help="env steps (default: preset or 20000)")
    train.add_argument("--seed", type=_non_negative_int, help="seed (default 0)")
    train.add_argument("--logdir", help="run directory (default runs/AGENT-ENV-NORM-sSEED)")
    train.add_argument("--critic-norm", choices=NORMS,
                       help="normalization of the critic / Q-network (default none)")
    train.add_argument("--actor-norm", choices=NORMS,
                       help="normalization of the actor (actor-critic agents; default none)")
    train.add_argument("--config", help="YAML file with `train:` and `agent:` sections")
    train.add_argument("--set", dest="settings", action="append", type=_setting, default=[],
                       metavar="KEY=VALUE", help="agent setting, repeatable (see below)")
    train.add_argument("--eval-every", type=_positive_int, help="env steps between evaluations")
    train.add_argument("--eval-episodes", type=_positive_int, help="episodes per evaluation")
    train.add_argument("--eval-epsilon", type=float, metavar="P",
                       help="dqn, pqn: evaluate epsilon-greedily, a random action with "
                       "probability P (default 0: greedy; Dopamine's Atari evaluation: 0.001)")
    train.add_argument("--checkpoint-every", type=_positive_int,
                       help="env steps between checkpoints")
    train.add_argument("--log-every", type=_positive_int,
                       help="gradient steps between TensorBoard scalar logs (default 250)")
    train.add_argument("--max-episode-steps", type=_positive_int,
                       help="override the env's time limit")
    train.add_argument("--n-envs", type=_positive_int,
                       help="sub-envs stepping together (gymnasium vector env; default 1); "
                       "train_freq then counts vector steps, as in SB3")
    train.add_argument("--vector-env", choices=VECTOR_MODES,
                       help="with --n-envs: sub-envs in this process (sync, default) or one "
                       "process each (async)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --logdir from its latest checkpoint")
    train.add_argument("--without-replay", action="store_true",
                       help="with --resume: continue with an empty replay buffer (for a "
                       "checkpoint whose replay.npz is lost or damaged)")
    train.add_argument("--quiet", action="store_true", help="no progress output")

    evaluate = sub.add_parser(
        "evaluate", help="evaluate the latest checkpoint of a run, or an exported policy",
        description="Run the deterministic policy (BN in inference mode) and print the mean and "
        "std of its return. --run takes a run directory (latest checkpoint) or a directory "
        "written by `bnrl export` (the SavedModel, on the env it was trained on).")
    evaluate.add_argument("--run", required=True,
                          help="run directory written by train, or policy directory written by "
                          "export")
    evaluate.add_argument("--episodes", type=_positive_int, default=10,
                          help="episodes (default 10)")
    evaluate.add_argument("--seed", type=_non_negative_int,
                          help="env seed (default: the run's seed + 20000)")
    evaluate.add_argument("--epsilon", type=float, metavar="P",
                          help="dqn, pqn: a random action with probability P at each step "
                          "(default: the run's eval_epsilon, 0 unless set)")
    evaluate.add_argument("--render-video", action="store_true",
                          help="also record the first episode as RUN/eval.mp4 (gymnasium's "
                          "RecordVideo; needs moviepy: pip install 'bnrl[video]')")

    export = sub.add_parser(
        "export", help="write a run's policy as a TensorFlow SavedModel",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXPORT_EPILOG,
        description="Write the latest checkpoint's acting policy as a SavedModel that loads "
        "with tf.saved_model.load, without bnrl or Keras, every BN layer frozen in inference "
        "mode.")
    export.add_argument("--run", required=True, help="run directory written by train")
    export.add_argument("--out", required=True, help="new directory for the SavedModel")

    add_benchmark_commands(sub, _positive_int)
    add_tune_command(sub, _positive_int)
    return parser


def cmd_train(args) -> int:
    if args.without_replay and not args.resume:
        raise UserError("--without-replay only applies to --resume")
    agent_overrides = dict(args.settings)
    # The flags win over --set critic_norm=... / actor_norm=..., but only when given.
    if args.critic_norm is not None:
        agent_overrides["critic_norm"] = args.critic_norm
    train_overrides = dict(steps=args.steps, seed=args.seed, eval_every=args.eval_every,
                           eval_episodes=args.eval_episodes, eval_epsilon=args.eval_epsilon,
                           checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                           max_episode_steps=args.max_episode_steps, n_envs=args.n_envs,
                           vector_env=args.vector_env)
    config = _resolve_train(args, train_overrides, agent_overrides)
    norm = config.agent_config.critic_norm
    logdir = args.logdir or os.path.join(
        "runs", f"{config.agent}-{config.env.replace(':', '_').replace('/', '_')}-{norm}"
        f"-s{config.seed}")
    summary = train(config, logdir, resume=args.resume, progress="none" if args.quiet else "auto",
                    replay=not args.without_replay,
                    warn=lambda message: print(f"bnrl: warning: {message}", file=sys.stderr))
    if not args.quiet:
        final = summary["final_return"]
        final = "none" if final is None else f"{final:.1f}"
        print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.0f}s, final eval return "
              f"{final}, {summary['updates_per_second']:.0f} updates/s; run dir {logdir}")
    return 0


def _resolve_train(args, train_overrides: dict, agent_overrides: dict):
    """The run config of ``train``, with ``--actor-norm`` when it is given, resolved together
    with the other settings (``actor_network=simba`` is checked with the actor's norm); for an
    agent without an actor (known only once resolved: it may come from --config), one line."""
    if args.actor_norm is None:
        return resolve(args.agent, args.env, args.config, train_overrides, agent_overrides)
    try:
        return resolve(args.agent, args.env, args.config, train_overrides,
                       {**agent_overrides, "actor_norm": args.actor_norm})
    except UserError as exc:
        try:
            config = resolve(args.agent, args.env, args.config, train_overrides,
                             {k: v for k, v in agent_overrides.items() if k != "actor_network"})
        except UserError:
            raise exc from None
        if not hasattr(config.agent_config, "actor_norm"):
            raise UserError(f"{config.agent} has no actor: use --critic-norm for its "
                            "Q-network") from None
        raise


def cmd_evaluate(args) -> int:
    result = evaluate_run(args.run, args.episodes, args.render_video, args.seed, args.epsilon)
    print(f"mean return {result.mean:.2f} +- {result.std:.2f} over {result.episodes} episodes "
          f"of {result.checkpoint}")
    if result.video is not None:
        print(f"video: {result.video}")
    return 0


def cmd_export(args) -> int:
    metadata = export_policy(args.run, args.out)
    print(f"exported {metadata['agent']} on {metadata['env']} ({metadata['checkpoint']}) to "
          f"{args.out}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export, **COMMANDS,
                "tune": cmd_tune}
    try:
        return commands[args.command](args)
    except UserError as exc:
        print(f"bnrl: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (RunFailed, StorageError) as exc:
        print(f"bnrl: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"bnrl: {one_line(exc) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
