"""``bnrl tune``: hyperparameter search with Optuna for one variant, written as a variants file.

Why here, in ``compare/``: tuning serves the comparison. A fair "does BN help" grid runs each
variant at its own good settings; this module searches those settings for one variant (a name
of ``compare.variants``: built-in, ``--variant NAME:k=v`` or ``--variants-file``) and writes
them back as a variants file (``NAME: {key: value}``) that ``benchmark --variants-file`` takes.
A trial is an ordinary training run (``training.train``) in ``OUT/trials/<number>/``, like a
grid's runs under ``OUT/runs/``; a study over a suite scores trials by the normalized returns of
``compare.suites``, as the benchmark's report does.

The parts, in order:

* the search space: RL Zoo's per-agent defaults (``rl_zoo3/hyperparams_opt.py``) in bnrl's
  setting names (``DEFAULT_SPACES``), or a user's YAML file in the same format
  (``read_search_space``), checked before any trial runs;
* ``settings_of``: a trial's parameters as bnrl agent settings (the few RL Zoo parameters that
  are not settings, e.g. ``net_arch``, are turned into the settings they mean);
* the study: TPE sampler, median pruner fed each periodic evaluation of a trial (a
  ``training.callbacks.Callback``), stored in an Optuna RDB storage (SQLite ``OUT/study.db`` by
  default), so that processes on several machines share a study and a killed one resumes;
* the variants file of the best trial, written atomically.

Optuna is an optional extra (``pip install '.[tune]'``), imported only by ``cmd_tune``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from bnrl.agents import AGENTS, agent_class
from bnrl.common.errors import NonFiniteValue, StorageError, UserError, error_line, one_line
from bnrl.common.files import atomic_write
from bnrl.compare import variants as vs
from bnrl.compare.suites import env_scores, suite
from bnrl.training import train
from bnrl.training.callbacks import Callback
from bnrl.training.config import read_yaml, resolve
from bnrl.training.runs import check_run

# ------------------------------------------------------------------------------ search space
NET_ARCH = {"tiny": [64], "small": [64, 64], "medium": [256, 256], "big": [400, 300]}
"""RL Zoo's ``net_arch`` names: the hidden widths of the critic (and of the actor)."""

_GAMMAS = [0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999]
_TAUS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.08]
_TRAIN_FREQ = [1, 4, 8, 16, 32, 64, 128, 256, 512]


def _cat(*choices) -> dict:
    return {"type": "categorical", "choices": list(choices)}


def _float(low: float, high: float, log: bool = False) -> dict:
    return {"type": "float", "low": low, "high": high, "log": log}


_SAC = {
    "gamma": _cat(*_GAMMAS),
    "learning_rate": _float(1e-5, 1.0, log=True),
    "batch_size": _cat(16, 32, 64, 128, 256, 512, 1024, 2048),
    "buffer_size": _cat(10_000, 100_000, 1_000_000),
    "learning_starts": _cat(0, 1000, 10_000, 20_000),
    "train_freq": _cat(*_TRAIN_FREQ),
    "subsample_steps": 1,  # RL Zoo: gradient_steps = train_freq
    "tau": _cat(*_TAUS),
    "net_arch": _cat("small", "medium", "big"),
}
_TD3 = {
    "gamma": _cat(*_GAMMAS),
    "learning_rate": _float(1e-5, 1.0, log=True),
    "batch_size": _cat(16, 32, 64, 100, 128, 256, 512, 1024, 2048),
    "buffer_size": _cat(10_000, 100_000, 1_000_000),
    "tau": _cat(*_TAUS),
    "train_freq": _cat(*_TRAIN_FREQ),
    "subsample_steps": 1,
    "action_noise": _cat("ou", "gaussian", "none"),
    "action_noise_std": _float(0.0, 1.0),
    "net_arch": _cat("small", "medium", "big"),
}
DEFAULT_SPACES = {
    "dqn": {
        "gamma": _cat(*_GAMMAS),
        "learning_rate": _float(1e-5, 1.0, log=True),
        "batch_size": _cat(16, 32, 64, 100, 128, 256, 512),
        "buffer_size": _cat(10_000, 50_000, 100_000, 1_000_000),
        "exploration_final_eps": _float(0.0, 0.2),
        "exploration_fraction": _float(0.0, 0.5),
        "target_update_env_steps": _cat(1, 1000, 5000, 10_000, 15_000, 20_000),
        "learning_starts": _cat(0, 1000, 5000, 10_000, 20_000),
        "train_freq": _cat(1, 4, 8, 16, 128, 256, 1000),
        "subsample_steps": _cat(1, 2, 4, 8),
        "net_arch": _cat("tiny", "small", "medium"),
    },
    "sac": _SAC,
    "crossq": _SAC,  # RL Zoo has no CrossQ sampler: SAC's, which CrossQ extends
    "td3": _TD3,
    "ddpg": _TD3,
}
"""RL Zoo's search spaces (``sample_dqn_params``, ``sample_sac_params``, ``sample_td3_params``,
``sample_ddpg_params``) in bnrl's names. Dropped, for want of a bnrl setting: SAC's
``log_std_init`` (gSDE only) and ``ent_coef`` (fixed at auto there: bnrl's ``autotune_alpha``)."""

DERIVED = {
    "net_arch": "hidden widths, a name (tiny [64], small [64, 64], medium [256, 256], big "
                "[400, 300]) or a list; sets hidden, and actor_hidden for agents with an actor",
    "exploration_fraction": "exploration_steps as a fraction of the run's steps",
    "subsample_steps": "gradient_steps = max(train_freq // subsample_steps, 1)",
    "target_update_env_steps": "DQN's target_update_interval counted in env steps (SB3's "
                               "unit) instead of gradient steps",
}
"""RL Zoo parameters that are no bnrl setting, and the settings they set (``settings_of``)."""

_SPEC_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
              "categorical": {"choices"}}
SPACE_FORMAT = ("a YAML mapping of setting to {type: float|int, low: A, high: B, log: true} or "
                "{type: categorical, choices: [...]}, or to a fixed value (docs/tuning.md)")


def _bad(where: str, name: str, problem: str) -> UserError:
    return UserError(f"bad search space {where}: {name}: {problem}")


def check_space(space: dict, agent: str, where: str, fixed: dict) -> dict:
    """``space`` checked (one-line UserError): every key an agent setting of ``agent`` or a
    ``DERIVED`` one, not one the variant sets (``fixed``), every spec well formed."""
    if not isinstance(space, dict) or not space:
        raise UserError(f"bad search space {where}: expected {SPACE_FORMAT}")
    config_class = agent_class(agent).config_class
    known = {f for f in config_class.__dataclass_fields__}
    checked = {}
    for name, spec in space.items():
        name = str(name)
        if name not in known and name not in DERIVED:
            raise _bad(where, name, f"not a setting of {agent} (accepted: its settings, see "
                       f"train --help, and {', '.join(DERIVED)})")
        targets = _targets(name, config_class)
        twice = [k for k in checked if set(_targets(k, config_class)) & set(targets)]
        if twice:
            raise _bad(where, name, f"it sets {', '.join(targets)} as {twice[0]} does: keep "
                       "one of them")
        clash = sorted(set(targets) & set(fixed))
        if clash:
            raise _bad(where, name, f"the variant sets {', '.join(clash)}: the search cannot "
                       "change what the variant is; drop it from the search space")
        checked[name] = _check_spec(name, spec, where)
    return checked


def _targets(name: str, config_class) -> list[str]:
    """The agent settings a search-space key sets."""
    if name == "net_arch":
        has_actor = "actor_hidden" in config_class.__dataclass_fields__
        return ["hidden", "actor_hidden"] if has_actor else ["hidden"]
    return {"exploration_fraction": ["exploration_steps"],
            "subsample_steps": ["gradient_steps"],
            "target_update_env_steps": ["target_update_interval"]}.get(name, [name])


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_spec(name: str, spec, where: str):
    if not isinstance(spec, dict):
        return spec  # a fixed value: checked with the settings (probe_settings)
    kind = spec.get("type")
    if kind not in _SPEC_KEYS:
        raise _bad(where, name, f"type must be float, int or categorical, got {kind!r}")
    extra = sorted(str(k) for k in set(spec) - _SPEC_KEYS[kind] - {"type"})
    if extra:
        raise _bad(where, name, f"unknown key(s) {', '.join(extra)} for type {kind} "
                   f"(accepted: {', '.join(sorted(_SPEC_KEYS[kind]))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _bad(where, name, "choices must be a non-empty list")
        if any(isinstance(c, dict) for c in choices):
            raise _bad(where, name, "choices must be values or lists, not mappings")
        return {"type": kind, "choices": choices}
    low, high = spec.get("low"), spec.get("high")
    if not (_is_number(low) and _is_number(high)):
        raise _bad(where, name, f"{kind} needs numbers low and high, got {low!r} and {high!r}")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise _bad(where, name, f"int needs integer low and high, got {low} and {high}")
    if low > high:
        raise _bad(where, name, f"low {low} > high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _bad(where, name, f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise _bad(where, name, f"log needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (not _is_number(step) or step <= 0 or log):
        raise _bad(where, name, "step must be a positive number, and not given with log")
    out = {"type": kind, "low": low, "high": high, "log": log}
    if kind == "int":
        out.update(low=int(low), high=int(high))
    if step is not None:
        out["step"] = int(step) if kind == "int" else float(step)
    return out


def read_search_space(path) -> dict:
    """A user's search-space file (read with bnrl's one YAML loader: YAML 1.2 numbers)."""
    return read_yaml(path, "search-space file", SPACE_FORMAT)


def _encode(choice):
    """An Optuna categorical choice: lists (hidden widths) are stored as JSON text."""
    return json.dumps(choice) if isinstance(choice, list) else choice


def _decode(value):
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value


def sample(trial, space: dict) -> dict:
    """The trial's value of every key of ``space`` (fixed values as they are)."""
    params = {}
    for name, spec in space.items():
        if not isinstance(spec, dict):
            params[name] = spec
        elif spec["type"] == "categorical":
            params[name] = _decode(trial.suggest_categorical(
                name, [_encode(c) for c in spec["choices"]]))
        elif spec["type"] == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"],
                                               step=spec.get("step"))
        else:
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"],
                                             step=spec.get("step", 1))
    return params


def settings_of(params: dict, base) -> dict:
    """A trial's parameters as bnrl agent settings.

    Args:
      params: search-space key -> value (``sample``).
      base: the RunConfig the trial starts from (presets, ``--config``, the variant): its
        ``steps`` and, when the space does not set them, its ``train_freq`` and
        ``gradient_steps``.
    """
    settings = {k: v for k, v in params.items() if k not in DERIVED}
    agent = base.agent_config
    if "net_arch" in params:
        arch = params["net_arch"]
        arch = NET_ARCH.get(arch, arch) if isinstance(arch, str) else arch
        for key in _targets("net_arch", type(agent)):
            settings[key] = list(arch) if isinstance(arch, list | tuple) else arch
    if "exploration_fraction" in params:
        settings["exploration_steps"] = int(round(params["exploration_fraction"] * base.steps))
    train_freq = settings.get("train_freq", agent.train_freq)
    if "subsample_steps" in params:
        settings["gradient_steps"] = max(int(train_freq) // int(params["subsample_steps"]), 1)
    if "target_update_env_steps" in params:
        gradient_steps = settings.get("gradient_steps", agent.gradient_steps)
        settings["target_update_interval"] = max(1, round(
            params["target_update_env_steps"] * gradient_steps / train_freq))
    return settings


def _corners(space: dict) -> list[tuple[str, dict]]:
    """``(what, params)`` pairs that put each key at each of its ends (or choices), the others
    at their first: what ``_probe`` resolves to catch a wrong value before any trial runs."""
    first = {}
    for name, spec in space.items():
        if not isinstance(spec, dict):
            first[name] = spec
        elif spec["type"] == "categorical":
            first[name] = spec["choices"][0]
        else:
            first[name] = spec["low"]
    probes = [("at the first value of each key", first)]
    for name, spec in space.items():
        if not isinstance(spec, dict):
            continue
        values = spec["choices"][1:] if spec["type"] == "categorical" else [spec["high"]]
        probes += [(f"at {name}={v}", {**first, name: v}) for v in values]
    return probes


# ------------------------------------------------------------------------------ the setup
@dataclass
class Setup:
    """What a study is: the same for every process that works on it."""

    agent: str
    envs: list[str]
    steps: dict
    variant: vs.Variant
    space: dict
    seed: int
    eval_every: int | None
    config_file: str | None
    scores: dict | None
    """Env id -> ``EnvScores`` when the study spans several envs (normalized objective)."""

    @property
    def run_agent(self) -> str:
        return self.variant.agent(self.agent)

    def base(self, env: str, extra: dict | None = None):
        """The resolved RunConfig of a trial on ``env`` with ``extra`` agent settings."""
        return resolve(self.run_agent, env, self.config_file,
                       {"steps": self.steps.get(env), "seed": self.seed,
                        "eval_every": self.eval_every},
                       {**self.variant.agent_settings(), **(extra or {})})

    def record(self) -> dict:
        config = (Path(self.config_file).read_text(encoding="utf-8")
                  if self.config_file else None)
        return {"agent": self.run_agent, "envs": self.envs,
                "steps": {e: self.steps.get(e) for e in self.envs},
                "variant": {"name": self.variant.name, "settings": self.variant.settings},
                "search_space": self.space, "seed": self.seed, "eval_every": self.eval_every,
                "config": config}


def _variant(args) -> vs.Variant:
    """The one variant a study tunes: ``--variant NAME`` (built-in or from --variants-file) or
    ``--variant NAME:key=value,...``."""
    builtins = vs.builtin_variants()
    defined = dict(builtins)
    if args.variants_file:
        from_file = vs.read_variants_file(args.variants_file)
        for variant in from_file.values():
            vs.check_not_builtin(variant, builtins, f"--variants-file {args.variants_file}")
        defined.update(from_file)
    if ":" in args.variant:
        variant = vs.parse_variant(args.variant)
        vs.check_not_builtin(variant, builtins, f"--variant '{args.variant}'")
        return variant
    if args.variant not in defined:
        raise UserError(f"unknown variant '{args.variant}': use one of {', '.join(defined)}, "
                        "one of --variants-file, or define it with --variant "
                        "NAME:key=value,...")
    return defined[args.variant]


def _envs(args, agent: str) -> tuple[list[str], dict, dict | None]:
    """``(envs, {env: steps or None}, scores or None)`` of the arguments."""
    if args.suite:
        chosen = suite(args.suite)
        if chosen.extra and importlib.util.find_spec(chosen.extra) is None:
            raise UserError(f"suite {chosen.name} needs {chosen.extra}: pip install "
                            f"'.[{chosen.extra}]' (or pip install 'bnrl[{chosen.extra}]')")
        envs = args.env or [e for e in chosen.envs if agent in chosen.envs[e]["agents"]]
        unfit = [e for e in envs if e not in chosen.envs or agent not in
                 chosen.envs[e]["agents"]]
        if unfit or not envs:
            raise UserError(f"{agent} fits no env {'of ' + ', '.join(unfit) + ' ' if unfit else ''}"
                            f"in suite {chosen.name}: use one of its envs for "
                            f"{agent}, or another --agent")
        steps = {e: args.steps or chosen.envs[e]["steps"] for e in envs}
    else:
        envs = args.env or ["Pendulum-v1"]
        steps = {e: args.steps for e in envs}
    scores = None
    if len(envs) > 1:
        known = env_scores()
        missing = [e for e in envs if e not in known]
        if missing:
            raise UserError(f"a study over several envs scores normalized returns: "
                            f"{', '.join(missing)} has no random and reference scores in "
                            "configs/suites.yaml; tune one env at a time")
        scores = {e: known[e] for e in envs}
    return envs, steps, scores


def make_setup(args) -> Setup:
    """The study the arguments describe, every part checked (one-line UserErrors)."""
    if args.config and not Path(args.config).is_file():
        raise UserError(f"config file not found: {args.config}")
    variant = _variant(args)
    agent = variant.agent(args.agent or "sac")
    envs, steps, scores = _envs(args, agent)
    fixed = variant.agent_settings()
    if args.search_space:
        where = args.search_space
        space = check_space(read_search_space(args.search_space), agent, where, fixed)
    else:
        if agent not in DEFAULT_SPACES:
            raise UserError(f"{agent} has no default search space (RL Zoo has none): give one "
                            "with --search-space FILE (docs/tuning.md)")
        where = f"(RL Zoo's for {agent})"
        space = {k: v for k, v in DEFAULT_SPACES[agent].items()
                 if not set(_targets(k, agent_class(agent).config_class)) & set(fixed)}
        space = check_space(space, agent, where, fixed)
    setup = Setup(args.agent or "sac", envs, steps, variant, space, args.seed, args.eval_every,
                  args.config, scores)
    setup.steps = {e: setup.base(e).steps for e in envs}  # the presets' where not given
    _probe(setup, where)
    return setup


def _probe(setup: Setup, where: str) -> None:
    """Resolve the settings of each end of the search space on each env, so that a wrong value
    fails now, naming the key, not as one pruned trial after another; refuse a derived key
    whose settings would differ between the envs (a variants file holds one set)."""
    for env in setup.envs:
        check_run(setup.base(env))  # the env can be made (an unknown id fails here, once)
    for what, params in _corners(setup.space):
        per_env = []
        for env in setup.envs:
            base = setup.base(env)
            settings = settings_of(params, base)
            per_env.append(settings)
            try:
                setup.base(env, settings)
            except UserError as exc:
                raise UserError(f"bad search space {where}: {one_line(exc, 200)} ({what})"
                                ) from None
        if any(s != per_env[0] for s in per_env):
            differ = sorted(k for k in per_env[0] if any(s[k] != per_env[0][k]
                                                         for s in per_env))
            raise UserError(f"bad search space {where}: {', '.join(differ)} would differ "
                            f"between {', '.join(setup.envs)} (their step budgets or presets "
                            "differ) and a variants file holds one value: pass --steps, or "
                            f"search {', '.join(differ)} itself with --search-space")


# ------------------------------------------------------------------------------ the study
def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("tune needs Optuna: pip install '.[tune]' (or pip install "
                        "'bnrl[tune]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _shown_url(url: str) -> str:
    """A storage URL as safe to print: its password hidden."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not even a URL: show what was given, without secrets
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def open_storage(optuna, url: str):
    """An Optuna RDB storage (heartbeats, so that a killed process's trial ends as failed);
    one-line UserError when it cannot be opened."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=60,
                                          grace_period=180)
    except Exception as exc:  # noqa: BLE001 - any driver's error of a bad or unreachable URL
        raise UserError(f"cannot open the study storage {_shown_url(url)}: "
                        f"{error_line(exc)}") from None


def load_study(optuna, storage, name: str, setup: Setup, sampler: str, pruner: str,
               startup: int, url: str):
    """Create the study, or load it when it exists (a resumed or shared study), checking that
    it is the same study."""
    total = sum(setup.steps.values())
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(n_startup_trials=startup,
                                                          multivariate=True),
                "random": lambda: optuna.samplers.RandomSampler()}
    pruners = {"median": lambda: optuna.pruners.MedianPruner(
                   n_startup_trials=max(1, startup // 2),
                   n_warmup_steps=total // 3),
               "none": lambda: optuna.pruners.NopPruner()}
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=samplers[sampler](), pruner=pruners[pruner](),
                                    load_if_exists=True)
        record = json.loads(json.dumps(setup.record()))  # as the storage gives it back
        saved = study.user_attrs.get("bnrl")
        if saved is None:
            if study.trials:
                raise UserError(f"study '{name}' in {_shown_url(url)} is not a bnrl tune study: "
                                "choose another --study-name")
            study.set_user_attr("bnrl", record)
        elif saved != record:
            differ = [k for k in record if saved.get(k) != record[k]]
            raise UserError(f"study '{name}' in {_shown_url(url)} was made with other "
                            f"{', '.join(differ)}: run the same command to continue it, or "
                            "choose another --study-name or --out")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the database refused or went away
        raise UserError(f"cannot use the study storage {_shown_url(url)}: "
                        f"{error_line(exc)}") from None
    return study


def _finished(optuna, study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


class Objective:
    """One trial: train on each env of the study, report every evaluation, return the mean
    (normalized, over several envs) final evaluation return."""

    def __init__(self, optuna, setup: Setup, out: Path, prune: bool):
        self.optuna, self.setup, self.out, self.prune = optuna, setup, out, prune

    def __call__(self, trial) -> float:

        setup, optuna = self.setup, self.optuna
        params = sample(trial, setup.space)
        configs = {}
        for env in setup.envs:
            settings = settings_of(params, setup.base(env))
            try:
                configs[env] = setup.base(env, settings)
            except UserError as exc:  # a combination the search space allows but bnrl not
                trial.set_user_attr("error", one_line(exc, 300))
                raise optuna.TrialPruned(f"invalid settings: {one_line(exc, 200)}") from None
        trial.set_user_attr("settings", json.loads(json.dumps(settings_of(
            params, setup.base(setup.envs[0])))))
        finals, offset = [], 0
        for env, config in configs.items():
            run_dir = self.out / "trials" / f"{trial.number:04d}" / _safe(env)
            score = (setup.scores[env].normalize if setup.scores else float)

            try:
                summary = train(config, run_dir, progress="none",
                                callbacks=[_Pruning(optuna, trial, score, offset, self.prune)])
            except NonFiniteValue as exc:  # as RL Zoo: a diverging trial is a bad trial
                trial.set_user_attr("error", one_line(exc, 300))
                raise optuna.TrialPruned(one_line(exc, 200)) from None
            finally:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # replay buffers
            finals.append(score(summary["final_return"]))
            offset += config.steps
        return sum(finals) / len(finals)


class _Pruning(Callback):
    """Reports each evaluation of a trial's run to Optuna (normalized, at the env step counted
    over the trial's envs) and prunes it by raising ``TrialPruned``, which ends the run there."""

    def __init__(self, optuna, trial, score, offset: int, prune: bool):
        self.optuna, self.trial, self.score = optuna, trial, score
        self.offset, self.prune = offset, prune

    def on_evaluation(self, evaluation, agent) -> None:
        self.trial.report(self.score(evaluation.mean_return), self.offset + evaluation.step)
        if self.prune and self.trial.should_prune():
            raise self.optuna.TrialPruned(f"pruned at env step {evaluation.step} "
                                     f"({evaluation.mean_return:.1f})")


def _safe(env: str) -> str:
    return env.replace(":", "_").replace("/", "_")


def tuned_settings(setup: Setup, best) -> dict:
    """The variant's settings plus the best trial's, in a variants file's form."""
    settings = settings_of(sample(_Fixed(best.params), setup.space), setup.base(setup.envs[0]))
    merged = {**setup.variant.settings, **settings}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


class _Fixed:
    """A trial that gives back recorded parameters (``sample`` on a finished trial)."""

    def __init__(self, params: dict):
        self.params = params

    def suggest_categorical(self, name, choices):
        return self.params[name]

    def suggest_float(self, name, *args, **kwargs):
        return self.params[name]

    suggest_int = suggest_float


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive ``flock`` on ``directory`` itself (waiting for it; no lock file), released
    on exit, or by the kernel when the process dies."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_variants(path: Path, name: str, settings: dict) -> None:
    """Put ``name: settings`` into the variants file ``path`` (other entries kept), atomically
    and under a lock, so that studies of several variants can share one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        existing = vs.read_variants_file(path) if path.exists() else {}
        data = {n: dict(v.settings) for n, v in existing.items()}
        data[name] = settings
        text = ("# Written by `bnrl tune`: the best settings found for each variant. Compare "
                "them with\n# `bnrl benchmark --variants-file THIS_FILE --variants "
                f"{','.join(data)}`.\n"
                + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
        atomic_write(path, text)


# ------------------------------------------------------------------------------ command line
TUNE_SEED = 1000
"""Trials' default seed: not one of a benchmark's (0 to seeds - 1)."""


def _name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'")
    return int(text)


def add_tune_command(sub, positive_int) -> None:
    """Add ``tune`` to ``run.py``'s subparsers."""
    tune = sub.add_parser(
        "tune", help="tune one variant's settings with Optuna (pip install '.[tune]')",
        description="Search the settings of one variant with Optuna: TPE sampler, median pruner "
        "on each trial's evaluations, RL Zoo's per-agent search space unless --search-space. "
        "The study lives in OUT/study.db (or --storage URL): run the same command again to "
        "continue a stopped study, or in several processes or machines (one --storage) to "
        "share it. The best trial's settings are written as variant VARIANT-tuned to "
        "OUT/variants.yaml (or --variants-out), the file `benchmark --variants-file` takes. "
        "docs/tuning.md has the search spaces and a worked example.")
    tune.add_argument("--agent", choices=AGENTS, help="algorithm (default sac; a variant's "
                      "agent= setting overrides it)")
    tune.add_argument("--env", type=lambda t: [e.strip() for e in t.split(",") if e.strip()],
                      help="env id, or a comma list (scored by normalized return; default "
                      "Pendulum-v1, or the --suite's envs that fit --agent)")
    tune.add_argument("--suite", help="a suite of configs/suites.yaml: its envs that fit "
                      "--agent and their step budgets; the objective is the mean normalized "
                      "final return")
    tune.add_argument("--variant", default="none", metavar="NAME | NAME:KEY=VALUE,...",
                      help="the variant tuned: a built-in (configs/variants.yaml), one of "
                      "--variants-file, or defined inline (default none); its settings are "
                      "kept out of the search")
    tune.add_argument("--variants-file", metavar="FILE", help="YAML mapping of variant name "
                      "to settings (as benchmark takes)")
    tune.add_argument("--n-trials", type=positive_int, default=20,
                      help="finished (complete or pruned) trials the study should have; a "
                      "resumed study runs only the missing ones (default 20)")
    tune.add_argument("--steps", type=positive_int,
                      help="env steps per trial (default: the env preset's or suite's)")
    tune.add_argument("--seed", type=_seed, default=TUNE_SEED,
                      help=f"seed of every trial's run (default {TUNE_SEED}: none of a "
                      "benchmark's seeds 0, 1, ..., which then measures the tuned settings on "
                      "seeds they were not picked on)")
    tune.add_argument("--eval-every", type=positive_int, help="env steps between evaluations "
                      "(each is a pruning point)")
    tune.add_argument("--config", help="YAML with `train:` and `agent:` sections for every trial")
    tune.add_argument("--search-space", metavar="FILE", help="YAML search space replacing RL "
                      "Zoo's (docs/tuning.md)")
    tune.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                      help="Optuna sampler (default tpe)")
    tune.add_argument("--pruner", choices=("median", "none"), default="median",
                      help="prune a trial whose evaluation is below the median of earlier "
                      "trials at the same step (default median)")
    tune.add_argument("--startup-trials", type=positive_int, default=10,
                      help="random trials before TPE models (half as many before pruning; "
                      "default 10, as RL Zoo)")
    tune.add_argument("--out", help="directory of the study (default tune_out/STUDY)")
    tune.add_argument("--study-name", help="default AGENT-ENV-VARIANT")
    tune.add_argument("--storage", help="Optuna RDB URL (default sqlite:///OUT/study.db), e.g. "
                      "postgresql://user@host/db for several machines")
    tune.add_argument("--tuned-name", help="name of the written variant (default VARIANT-tuned)")
    tune.add_argument("--variants-out", metavar="FILE",
                      help="variants file to add the tuned variant to (default "
                      "OUT/variants.yaml); other variants in it are kept")
    tune.add_argument("--quiet", action="store_true", help="no per-trial lines")


def cmd_tune(args) -> int:
    optuna = _import_optuna()
    setup = make_setup(args)
    where = args.suite or "+".join(setup.envs)
    name = args.study_name or _name(f"{setup.run_agent}-{where}-{setup.variant.name}")
    out = Path(args.out or Path("tune_out") / name)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}") from None
    url = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    tuned_name = vs._check_name(args.tuned_name or f"{setup.variant.name}-tuned")
    if tuned_name in vs.builtin_variants():
        raise UserError(f"--tuned-name {tuned_name} is a built-in variant: give the tuned "
                        "settings a name of their own")
    variants_out = Path(args.variants_out or out / "variants.yaml")
    # Processes started together on one machine open the storage in turn: two that create the
    # same new SQLite database at once collide on its tables.
    with _locked(out):
        storage = open_storage(optuna, url)
        study = load_study(optuna, storage, name, setup, args.sampler, args.pruner,
                           args.startup_trials, url)
    objective = Objective(optuna, setup, out, args.pruner != "none")
    started = time.time()

    def report(study, trial) -> None:
        if args.quiet:
            return
        if trial.state == optuna.trial.TrialState.COMPLETE:
            what = f"value {trial.value:.3f}"
        else:
            why = trial.user_attrs.get("error")
            last = trial.intermediate_values
            what = (f"{trial.state.name.lower()}" + (f" ({why})" if why else
                    f" at step {max(last)} ({last[max(last)]:.3f})" if last else ""))
        try:
            best = f"; best {study.best_value:.3f} (trial {study.best_trial.number})"
        except ValueError:
            best = ""
        print(f"[{_finished(optuna, study)}/{args.n_trials}] trial {trial.number}: {what} in "
              f"{(trial.duration.total_seconds() if trial.duration else 0):.0f}s{best} "
              f"({time.time() - started:.0f}s elapsed)", flush=True)

    done = _finished(optuna, study)
    if not args.quiet:
        print(f"tune: study '{name}' in {_shown_url(url)}: {done} of {args.n_trials} trials "
              f"finished; {setup.run_agent} on {', '.join(setup.envs)}, variant "
              f"{setup.variant.name}, {len(setup.space)} parameters", flush=True)
    try:
        while _finished(optuna, study) < args.n_trials:
            study.optimize(objective, n_trials=1, callbacks=[report], catch=())
    except KeyboardInterrupt:
        raise KeyboardInterrupt("tune interrupted; the study keeps its finished trials: run "
                                "the same command to continue it") from None
    except (UserError, StorageError):
        raise
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "optuna")):
            raise StorageError(f"the study storage {_shown_url(url)} failed: "
                               f"{error_line(exc)}; finished trials are kept: run the same "
                               "command again") from None
        raise
    try:
        best = study.best_trial
    except ValueError:
        print("tune: no trial completed (all were pruned): no variants file written; run "
              "more trials (--n-trials) or widen the search space", file=sys.stderr)
        return 1
    settings = tuned_settings(setup, best)
    try:
        write_variants(variants_out, tuned_name, settings)
    except OSError as exc:
        raise StorageError(f"cannot write {variants_out}: {exc.strerror}") from None
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    print(f"best: trial {best.number}, value {best.value:.3f}: {shown}")
    print(f"variants file: {variants_out} (variant {tuned_name}); compare with `bnrl benchmark "
          f"--variants-file {variants_out} --variants {tuned_name},...`")
    return 0

