"""Benchmark variants: named sets of settings compared against a named baseline.

A variant is a name and a mapping of agent settings (``critic_norm: batch``,
``critic_batch: joint``...); the key ``agent`` swaps the whole agent (``crossq: {agent: crossq}``
compares SAC with CrossQ in one grid). Names come from three places:

1. the built-in variants of ``configs/variants.yaml`` (the four normalizations, and the BN
   remedies under their own names);
2. ``--variants-file FILE``: a YAML mapping ``name: {key: value, ...}``;
3. ``--variant NAME:key=value,key=value`` on the command line (repeatable).

A user's variant may not take a built-in's name with other settings, and no two variants of a
grid may resolve to the same settings (``grid.check_distinct``).

``--variants a,b,c`` picks the variants of a grid, ``--baseline NAME`` the one every other is
compared with (default: the first).

``--sweep KEY=V1,V2,...`` runs every variant at each value of one setting (issue 30: is a
difference real, or a learning rate?): variant ``batch`` becomes the sweep points
``batch@learning_rate=1e-4``, ... (``SWEEP_MARK``, which no user's variant name holds), each
compared with the baseline at the same value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bnrl import configs
from bnrl.common.errors import UserError
from bnrl.training.config import parse_setting, read_yaml

VARIANTS_FILE = Path(configs.__file__).resolve().parent / "variants.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SWEEP_MARK = "@"
"""Joins a variant's name and its sweep value: ``batch@learning_rate=1e-4``."""
RUN_KEYS = ("agent", "peer")
"""Keys of a variant's settings that choose what trains, not how: ``agent`` another bnrl agent,
``peer`` another library's implementation of it (``peers``; ``benchmark --peer``)."""
# A comma splits values, except inside brackets: hidden=[64,64] stays one value.
_PAIRS = re.compile(r",(?![^\[]*\])")


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict = field(default_factory=dict)
    """Agent settings; ``agent`` (if present) replaces the grid's agent."""

    def agent(self, default: str) -> str:
        return self.settings.get("agent", default)

    def agent_settings(self) -> dict:
        return {k: v for k, v in self.settings.items() if k not in RUN_KEYS}


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"bad variant name '{name}': use letters, digits and _ . + - "
                        "(it names a directory)")
    return name


def _check_settings(name: str, settings, origin: str) -> dict:
    if settings is None:
        return {}
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise UserError(f"variant '{name}' in {origin} must be a mapping of settings "
                        "(key: value)")
    _check_no_peer(name, settings, origin)
    return dict(settings)


def _check_no_peer(name: str, settings: dict, origin: str) -> None:
    """A peer library's runs are made by ``--peer``, which checks that the library is installed
    and can run the variant: a user's variant may not set ``peer`` itself."""
    if "peer" in settings:
        raise UserError(f"variant '{name}' in {origin} sets peer: a peer library's runs are "
                        "added with --peer (e.g. --peer sbx), not by a variant")


def builtin_variants() -> dict[str, Variant]:
    """The variants shipped in ``configs/variants.yaml``."""
    with open(VARIANTS_FILE, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return {name: Variant(name, dict(settings or {})) for name, settings in data.items()}


FILE_FORMAT = ("a YAML mapping of variant name to settings, e.g. 'copy: {critic_norm: batch, "
               "target_bn: copy}' (like configs/variants.yaml)")
"""What a ``--variants-file`` holds, for its error messages."""


def read_variants_file(path) -> dict[str, Variant]:
    """Variants of a user's YAML file ``{name: {key: value}}``; one-line UserErrors that name
    the variants-file format (not a config file's)."""
    data = read_yaml(path, "variants file", FILE_FORMAT)
    return {_check_name(str(name)): Variant(str(name), _check_settings(name, s, str(path)))
            for name, s in data.items()}


def check_not_builtin(variant: Variant, builtins: dict[str, Variant], source: str) -> None:
    """One-line UserError when ``variant`` takes a built-in variant's name with other settings:
    every report would read the built-in's name (``batch`` vs ``none``) for something else."""
    builtin = builtins.get(variant.name)
    if builtin is not None and builtin.settings != variant.settings:
        raise UserError(f"{source}: '{variant.name}' is a built-in variant "
                        f"({_describe(builtin)}), not {_describe(variant)}: give your variant "
                        "a name of its own")


def parse_variant(text: str) -> Variant:
    """``NAME:key=value,key=value`` as a Variant, each pair read as ``--set`` reads one
    (``training.config.parse_setting``: an empty value is null, refused where null means
    nothing); a key given twice is refused, not silently overridden."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise UserError(f"bad --variant '{text}': expected NAME:key=value,key=value")
    settings = {}
    for pair in _PAIRS.split(rest):
        key, eq, _ = pair.partition("=")
        if not eq or not key.strip():
            raise UserError(f"bad --variant '{text}': '{pair}' is not key=value")
        key, value = parse_setting(pair, f"--variant '{text}'")
        if key in settings:
            raise UserError(f"bad --variant '{text}': {key} is given twice")
        settings[key] = value
    _check_no_peer(name, settings, "--variant")
    return Variant(_check_name(name.strip()), settings)


def select(names: list[str], defined: dict[str, Variant], baseline: str | None):
    """The variants of a grid in order and its baseline, refusing duplicates.

    Args:
      names: the ``--variants`` list.
      defined: every known variant by name.
      baseline: ``--baseline`` or None (the first variant).

    Returns:
      ``(variants, baseline name)``.
    """
    seen: dict[str, str] = {}
    chosen = []
    for name in names:
        if name in seen:
            raise UserError(f"variant '{name}' is listed twice in --variants: each variant "
                            "is one set of runs")
        if name not in defined:
            raise UserError(f"unknown variant '{name}': use one of {', '.join(defined)} or "
                            "define it with --variant NAME:key=value,...")
        key = repr(sorted(defined[name].settings.items()))
        if key in seen:
            raise UserError(f"variants '{seen[key]}' and '{name}' have the same settings "
                            f"({_describe(defined[name])}): their runs would be the same")
        seen[name] = seen[key] = name
        chosen.append(defined[name])
    baseline = baseline or chosen[0].name
    if baseline not in names:
        raise UserError(f"--baseline '{baseline}' is not one of the variants "
                        f"({', '.join(names)})")
    return chosen, baseline


def parse_sweep(text: str) -> tuple[str, list[tuple[str, object]]]:
    """``KEY=V1,V2,...`` as ``(key, [(value text, value), ...])``, each value read as ``--set``
    reads one; at least two values, no value twice, not ``agent`` (variants swap agents)."""
    key, sep, rest = text.partition("=")
    key = key.strip()
    texts = [t.strip() for t in _PAIRS.split(rest)] if sep else []
    if not key or len(texts) < 2 or not all(texts):
        raise UserError(f"bad --sweep '{text}': expected KEY=V1,V2,... with two or more values, "
                        "e.g. learning_rate=1e-4,3e-4,1e-3")
    if key == "agent":
        raise UserError("--sweep cannot sweep agent: compare agents as variants "
                        "(--variant NAME:agent=AGENT)")
    if key == "peer":
        raise UserError("--sweep cannot sweep peer: add a peer library's runs with --peer")
    values = [(t, parse_setting(f"{key}={t}", f"--sweep '{text}'")[1]) for t in texts]
    seen = [v for _, v in values]
    if any(seen.count(v) > 1 for v in seen):
        raise UserError(f"bad --sweep '{text}': a value is given twice")
    if any("/" in t or t.startswith(".") for t in texts):
        raise UserError(f"bad --sweep '{text}': a value may not hold '/' or start with '.' "
                        "(it names a directory)")
    return key, values


def sweep_points(variants: list[Variant], baseline: str, key: str,
                 values: list[tuple[str, object]]) -> tuple[list[Variant], str]:
    """Every variant at every value of ``key`` (value-major: the first value's variants first),
    and the baseline at the first value, which is the grid's recorded baseline."""
    setting_it = [v.name for v in variants if key in v.settings]
    if setting_it:
        raise UserError(f"--sweep {key}: variant '{setting_it[0]}' sets {key} itself; sweep a "
                        "setting no variant of the grid sets")
    points = [Variant(point_name(v.name, key, text), {**v.settings, key: value})
              for text, value in values for v in variants]
    return points, point_name(baseline, key, values[0][0])


def point_name(variant: str, key: str, value_text: str) -> str:
    return f"{variant}{SWEEP_MARK}{key}={value_text}"


def split_point(name: str) -> tuple[str, str, str] | None:
    """``(variant, key, value text)`` of a sweep point's name; None for an ordinary variant."""
    variant, mark, point = name.partition(SWEEP_MARK)
    key, eq, value = point.partition("=")
    return (variant, key, value) if mark and eq else None


def _describe(variant: Variant) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.settings.items()) or "no settings"
