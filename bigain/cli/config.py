"""YAML presets for every CLI: `--config FILE` (repeatable, later wins), explicit flags override.

The schema of a config is the CLI's own argparse parser: a key must be one of its options
(by `dest`), and a value must have the option's type, arity and choices. Errors name the key,
the file and the allowed keys, and happen before any model work.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from bigain.storage import atomic_write_text

SKIPPED_DESTS = {"help", "config"}


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """Add `--config FILE` (repeatable) to a CLI."""
    parser.add_argument("--config", action="append", default=None, metavar="FILE",
                        help="YAML preset(s) of option values; several allowed (later wins); explicit flags override")


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action for every option a config may set."""
    return {a.dest: a for a in parser._actions if a.dest not in SKIPPED_DESTS and a.dest is not argparse.SUPPRESS}


def option_dest(parser: argparse.ArgumentParser, key: str) -> Optional[str]:
    """The dest of the option a config key names: the dest itself or any of its flag spellings (an alias such
    as `cpu_threads` for `--threads`), dashes or underscores; None when the parser has no such option."""
    actions = option_actions(parser)
    name = str(key).replace("-", "_")
    if name in actions:
        return name
    for dest, action in actions.items():
        if any(flag.lstrip("-").replace("-", "_") == name for flag in action.option_strings):
            return dest
    return None


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader refusing a mapping that repeats a key (plain YAML silently keeps the later value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (safe loader; empty file = {})."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config {path}: file does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {path}: {yaml_error_text(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"config {path}: cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: a config must be a mapping of option: value, got {type(data).__name__}")
    return data


def yaml_error_text(err: Exception) -> str:
    """'line L: problem (context)' of a YAML parser error, without the parser's '<unicode string>' name."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


def describe(action: argparse.Action) -> str:
    """Human description of what an option accepts."""
    if action.nargs == 0:
        return "true or false"
    kind = getattr(action.type, "__name__", "string") if action.type not in (None, str) else "string"
    text = {"parse_bool": "true or false", "lower": "string", "positive_int": "int >= 1",
            "nonneg_int": "int >= 0", "finite_float": "float (finite)", "nonneg_float": "float >= 0 (finite)",
            "positive_float": "float > 0 (finite)", "fraction": "float in [0, 1)",
            "batch_size": "int >= 1 or auto"}.get(kind, kind)
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        text = f"a list of {text}"
    if action.choices:
        text += f" in {list(action.choices)}"
    return text


def coerce_scalar(action: argparse.Action, value: Any) -> Any:
    """One value converted as the option's `type` would, strictly (no bool for int, no int for str)."""
    kind = action.type
    if getattr(kind, "accepts_auto", False):  # e.g. batch_size: 8 or batch_size: auto
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError
        return kind(value)
    base = getattr(kind, "base", None)  # a checked type of bigain.cli.argtypes (positive_int, finite_float, ...)
    if base is int or base is float:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (base is int and not isinstance(value, int))):
            raise TypeError
        return kind(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError
        return float(value)
    if getattr(kind, "__name__", "") == "parse_bool":
        if not isinstance(value, bool):
            raise TypeError
        return value
    if isinstance(value, list) and all(isinstance(v, int) for v in value):  # e.g. blocks: [1, 2, 3]
        value = ",".join(map(str, value))
    if not isinstance(value, str):
        raise TypeError
    return kind(value) if callable(kind) else value


def coerce_value(action: argparse.Action, value: Any) -> Any:
    """Validate and convert a config value for `action`; TypeError/ValueError when it does not fit."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise TypeError
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise ValueError
        converted = [coerce_scalar(action, v) for v in items]
        bad = [v for v in converted if action.choices and v not in action.choices]
    else:
        converted = None if value is None else coerce_scalar(action, value)
        bad = [converted] if action.choices and converted is not None and converted not in action.choices else []
    if bad:
        raise ValueError
    return converted


def validate_config(data: dict[str, Any], parser: argparse.ArgumentParser, source: str) -> dict[str, Any]:
    """Config mapping -> {dest: value}; ValueError naming the key, the file and the allowed keys.

    A key may be an option's dest or any of its flag spellings (old spellings kept as aliases)."""
    actions = option_actions(parser)
    out = {}
    for key, value in data.items():
        dest = option_dest(parser, key)
        if dest is None:
            raise ValueError(f"{source}: unknown key {key!r}; allowed keys: {sorted(actions)}")
        try:
            out[dest] = coerce_value(actions[dest], value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(
                f"{source}: key {key!r} expects {describe(actions[dest])}, got {value!r}") from None
    return out


def config_files(argv: Optional[Sequence[str]]) -> list[str]:
    """The `--config` files named on a command line, in order."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    return known.config


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse `argv` with config files as defaults (later files win) and explicit flags on top."""
    merged: dict[str, Any] = {}
    for path in config_files(argv):
        merged.update(validate_config(read_yaml_mapping(path), parser, str(path)))
    parser.set_defaults(**merged)
    return parser.parse_args(argv)


def jsonable(value: Any) -> Any:
    """Values of a Namespace as JSON/YAML-friendly data."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def effective_config(args: argparse.Namespace) -> dict[str, Any]:
    """Every option value a run actually used (re-usable as `--config`: the file list itself is left out)."""
    return {k: jsonable(v) for k, v in sorted(vars(args).items()) if k not in SKIPPED_DESTS}


def save_effective_config(args: argparse.Namespace, run_dir: str | Path, name: str = "effective_config.yaml") -> Path:
    """Save the effective config next to a run's results (re-usable as `--config`)."""
    data = effective_config(args)
    return atomic_write_text(Path(run_dir) / name, yaml.safe_dump(data, sort_keys=True))


def list_presets(root: str | Path = "configs") -> list[Path]:
    """Every YAML preset under `root`."""
    return sorted(Path(root).rglob("*.yaml"))

