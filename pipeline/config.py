"""Every config file of the harness, read and schema-checked in one place (config/README.md documents the keys).

- :func:`load_scale`: config/defaults.yaml + config/protocols.yaml + config/scales/<scale>.yaml (+ overrides),
  merged into the config the registry and the rules read (the Snakefile, pipeline.budget, tests).
- :func:`load_experiments`, :func:`load_claims`, :func:`load_fig3`: config/experiments.yaml, config/claims.yaml,
  config/figures/fig3.yaml.
- :func:`network_for_scale` and ``STAND_INS`` (``{paper network: {scale: stand-in}}``), read off the scales.

Each file is checked against its schema in workflow/schemas/ (jsonschema, draft 2020-12; schemas may refer to
each other by file name). Cheap to import: PyYAML and jsonschema, no torch.
"""

from __future__ import annotations

import copy
import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
SCHEMA_DIR = ROOT / "workflow" / "schemas"
DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"
PROTOCOLS_FILE = CONFIG_DIR / "protocols.yaml"
SCALES_DIR = CONFIG_DIR / "scales"
EXPERIMENTS_FILE = CONFIG_DIR / "experiments.yaml"
CLAIMS_FILE = CONFIG_DIR / "claims.yaml"
FIG3_FILE = CONFIG_DIR / "figures" / "fig3.yaml"

# Protocol keys that name a role (the paper's name in config/protocols.yaml) -> the `stand_ins` kind mapping it.
ROLE_KINDS = {"dataset": "datasets", "autoencoder": "autoencoders", "reference": "references"}
STAND_IN_KINDS = ("datasets", "autoencoders", "references", "networks")


class ConfigError(ValueError):
    """A config file is missing, malformed or inconsistent."""


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of ``path`` (an empty file is ``{}``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no config file {path}")
    with open(path) as handle:
        data = yaml.safe_load(handle)
    return {} if data is None else data


@cache
def _schemas() -> Registry:
    """Every workflow/schemas/*.yaml, registered under its file name (what ``$ref`` between schemas uses)."""
    resources = [(p.name, Resource.from_contents(read_yaml(p), default_specification=DRAFT202012))
                 for p in sorted(SCHEMA_DIR.glob("*.schema.yaml"))]
    return Registry().with_resources(resources)


_MAX_MESSAGE = 160     # characters of one schema error's message (jsonschema quotes whole values)
_MAX_ERRORS = 3        # schema errors named in one ConfigError (then "+N more")


def _key_path(parts: Iterable[Any]) -> str:
    return "/".join(str(p) for p in parts) or "(top)"


def _describe(error: ValidationError) -> list[str]:
    """One schema error as ``key/path: what is wrong`` (an unknown key names the key and the closest known one)."""
    error = best_match([error])          # anyOf / oneOf: the branch that came closest, not "is not valid under"
    if error.validator == "additionalProperties" and error.validator_value is False \
            and isinstance(error.instance, Mapping):
        known = list(error.schema.get("properties") or {})
        patterns = list(error.schema.get("patternProperties") or {})
        lines = []
        for key in error.instance:
            if key in known or any(re.search(p, str(key)) for p in patterns):
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            lines.append(f"{_key_path([*error.absolute_path, key])}: unknown key ({hint})")
        if lines:
            return lines
    message = " ".join(error.message.split())
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE - 3] + "..."
    return [f"{_key_path(error.absolute_path)}: {message}"]


def validate(instance: Any, schema: str, what: str) -> None:
    """Check ``instance`` against workflow/schemas/``schema``; raise :class:`ConfigError`, one line naming the
    path of each bad key (``protocols/section3/steps: 0 is less than the minimum of 1``)."""
    validator = Draft202012Validator(_schemas().contents(schema), registry=_schemas())
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = list(dict.fromkeys(line for e in errors for line in _describe(e)))
        more = f"; +{len(lines) - _MAX_ERRORS} more" if len(lines) > _MAX_ERRORS else ""
        raise ConfigError(f"{what} does not match workflow/schemas/{schema}: " + "; ".join(lines[:_MAX_ERRORS]) + more)


def config_error_exit(err: BaseException) -> None:
    """End the process with ``error: <err as one line>`` on stderr and exit code 1, no traceback: what the
    Snakefile and the rule files do with a :class:`ConfigError` while Snakemake parses them."""
    print("error: " + " ".join(line.strip() for line in str(err).splitlines() if line.strip()), file=sys.stderr)
    raise SystemExit(1)


def scale_names() -> tuple[str, ...]:
    """The scales there are a file for (config/scales/<scale>.yaml)."""
    return tuple(sorted(p.stem for p in SCALES_DIR.glob("*.yaml")))


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` on top: mappings merge key by key, anything else is replaced (both are copied)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stand_in(stand_ins: Mapping[str, Any] | None, kind: str, name: str, scale: str) -> str:
    """What a scale uses for the paper's ``name`` of ``kind`` (datasets, autoencoders, references, networks).

    A scale whose ``stand_ins.<kind>`` is empty or absent uses the paper's names; otherwise it must map ``name``.
    """
    table = (stand_ins or {}).get(kind) or {}
    if not table:
        return name
    if name not in table:
        raise ConfigError(f"scale {scale!r} has no stand-in for the paper's {kind[:-1]} {name!r} "
                          f"(stand_ins.{kind} maps {sorted(table)})")
    return str(table[name])


def build_protocols(declared: Mapping[str, Any], defaults: Mapping[str, Any], values: Mapping[str, Any],
                    stand_ins: Mapping[str, Any] | None, scale: str,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Full protocols: config/protocols.yaml (``shared`` < ``protocols.<name>``, roles resolved through
    ``stand_ins``) < the scale's ``protocol_defaults`` < the scale's ``protocols.<name>`` < ``overrides.all`` <
    ``overrides.<name>`` (the config's ``protocol_overrides``: an alternative reading, e.g.
    config/alternatives/*.yaml, applied at any scale)."""
    overrides = overrides or {}
    unknown = sorted(set(values) - set(declared["protocols"]))
    if unknown:
        raise ConfigError(f"scale {scale!r} sets protocols {unknown} that config/protocols.yaml does not declare "
                          f"(declared: {list(declared['protocols'])})")
    unknown = sorted(set(overrides) - set(declared["protocols"]) - {"all"})
    if unknown:
        raise ConfigError(f"protocol_overrides: unknown protocol(s) {unknown} (declared: 'all', "
                          f"{', '.join(map(repr, declared['protocols']))})")
    protocols = {}
    for name, own in declared["protocols"].items():
        protocol = deep_merge(declared.get("shared") or {}, own)
        for key, kind in ROLE_KINDS.items():
            if key in protocol:
                protocol[key] = stand_in(stand_ins, kind, protocol[key], scale)
        if "name" in protocol.get("network", {}):
            protocol["network"]["name"] = stand_in(stand_ins, "networks", protocol["network"]["name"], scale)
        protocol = deep_merge(deep_merge(protocol, defaults), values.get(name) or {})
        protocols[name] = deep_merge(deep_merge(protocol, overrides.get("all") or {}), overrides.get(name) or {})
    return protocols


def _check_names(config: Mapping[str, Any]) -> None:
    """Every protocol's data set, autoencoder and reference is configured."""
    problems = []
    for name, protocol in config["protocols"].items():
        for key, kind in ROLE_KINDS.items():
            if protocol[key] not in (config.get(kind) or {}):
                problems.append(f"protocol {name}: {key} {protocol[key]!r} is not a key of {kind} "
                                f"({sorted(config.get(kind) or {})})")
    if problems:
        raise ConfigError(f"scale {config['scale']!r}: " + "; ".join(problems))


def _apply_layer(config: dict[str, Any], layer: Mapping[str, Any], scale_values: Mapping[str, Any]) -> None:
    """``layer`` (a --configfile / --config / extra file) over ``config``: a non-empty mapping merges key by key
    into what the key holds so far (the scale's value if nothing set it yet), so ``datasets: {imagenet: {root:
    X}}`` changes one root; anything else, an empty mapping included, replaces the key."""
    for key, value in layer.items():
        base = config.get(key, scale_values.get(key))
        merge = isinstance(value, Mapping) and value and isinstance(base, Mapping)
        config[key] = deep_merge(base, value) if merge else copy.deepcopy(value)


def load_scale(name: str, overrides: Mapping[str, Any] | None = None,
               extra_files: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The merged, schema-checked config of scale ``name``.

    config/defaults.yaml, then ``extra_files`` (YAML) and ``overrides`` in that order, each merged over the
    scale's values (:func:`_apply_layer`: mappings key by key, anything else replaced; ``overrides`` is what
    Snakemake's ``--config``/``--configfile`` left in its ``config``); then every key of
    config/scales/<name>.yaml not set so far. ``protocol_defaults`` and
    ``protocols`` are value layers over config/protocols.yaml: the result's ``protocols`` are complete and
    its ``protocol_defaults`` is gone. Loading a loaded config again (as overrides) changes nothing.
    """
    if name not in scale_names():      # before building a path from it (`--config scale=../..` reads nothing)
        raise ConfigError(f"scale: unknown scale {name!r} (choose {', '.join(scale_names())}: "
                          "config/scales/<scale>.yaml)")
    path = SCALES_DIR / f"{name}.yaml"
    scale_values = read_yaml(path)
    validate(scale_values, "scale.schema.yaml", str(path.relative_to(ROOT)))
    declared = read_yaml(PROTOCOLS_FILE)
    validate(declared, "protocols.schema.yaml", str(PROTOCOLS_FILE.relative_to(ROOT)))

    config: dict[str, Any] = dict(read_yaml(DEFAULTS_FILE))
    config["scale"] = name
    for extra in extra_files:
        _apply_layer(config, read_yaml(extra) or {}, scale_values)
    _apply_layer(config, overrides or {}, scale_values)
    if isinstance(config.get("fig3"), Mapping):
        config["fig3"] = cli_numbers(config["fig3"])
    for key, value in list(config.items()):   # `--config std_grid=[0.3,1.0]` reaches here as ['0.3', '1.0']
        if isinstance(value, list):
            config[key] = cli_numbers(value)
    for key, value in scale_values.items():
        config.setdefault(key, value)
    alternative = config.pop("protocol_overrides", None) or {}
    validate(alternative, "protocol_overrides.schema.yaml", "protocol_overrides")
    config["protocols"] = build_protocols(declared, config.pop("protocol_defaults", None) or {},
                                          config.get("protocols") or {}, config.get("stand_ins"), name,
                                          alternative)
    validate(config, "config.schema.yaml", f"the config of scale {name!r}")
    _check_names(config)
    return config


def load_experiments(path: str | Path = EXPERIMENTS_FILE) -> dict[str, Any]:
    """The experiment registry (config/experiments.yaml), schema-checked."""
    experiments = read_yaml(path)
    validate(experiments, "experiments.schema.yaml", str(path))
    return experiments


def load_claims(path: str | Path = CLAIMS_FILE) -> list[dict[str, Any]]:
    """The claims of config/claims.yaml (the ``claims`` list), schema-checked."""
    data = read_yaml(path)
    validate(data, "claims.schema.yaml", str(path))
    return data["claims"]


def load_fig3(path: str | Path = FIG3_FILE) -> dict[str, Any]:
    """The ``fig3`` block of config/figures/fig3.yaml, schema-checked."""
    data = read_yaml(path)
    validate(data, "fig3.schema.yaml", str(path))
    return data["fig3"]


def merge_fig3(overrides: Mapping[str, Any] | None = None, path: str | Path = FIG3_FILE) -> dict[str, Any]:
    """:func:`load_fig3` with ``overrides`` (the run config's ``fig3``) replacing its top-level keys, checked again."""
    merged = {**load_fig3(path), **cli_numbers(overrides or {})}
    validate({"fig3": merged}, "fig3.schema.yaml", f"{path} with --config fig3=...")
    return merged


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def cli_numbers(value: Any) -> Any:
    """``value`` with number-like strings as numbers: a structured ``--config key={...}`` reaches the config
    through YAML's BaseLoader, which leaves every scalar a string (``{n_samples: 100}`` gives ``"100"``)."""
    if isinstance(value, Mapping):
        return {k: cli_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cli_numbers(v) for v in value]
    if isinstance(value, str) and _NUMBER.match(value):
        return int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value)
    return value


@cache
def _network_stand_ins(scales: tuple[str, ...]) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for scale in scales:
        for paper, small in ((load_scale(scale).get("stand_ins") or {}).get("networks") or {}).items():
            table.setdefault(paper, {})[scale] = small
    return table


def network_stand_ins(scales: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
    """``{paper network: {scale: stand-in}}`` from each scale's ``stand_ins.networks`` (all scales by default)."""
    return copy.deepcopy(_network_stand_ins(tuple(scale_names() if scales is None else scales)))


def network_for_scale(name: str, scale: str) -> str:
    """The network scale ``scale`` trains in place of the paper's ``name`` (a scale without stand-ins keeps it)."""
    from models.networks import family

    family(name)
    return stand_in(load_scale(scale).get("stand_ins"), "networks", name, scale)


def __getattr__(attr: str) -> Any:
    """``STAND_INS``: :func:`network_stand_ins` of every scale, read when first asked for (no I/O on import)."""
    if attr == "STAND_INS":
        return network_stand_ins()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
