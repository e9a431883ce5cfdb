"""Checks of a model folder that need no weights loaded: every component's config.json value has the type its class's
``__init__`` declares, and every safetensors file has a readable, complete header. Each returns problem texts naming
the file (and key), so a damaged folder is refused before loading starts instead of failing deep inside diffusers."""
from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Optional

__all__ = ["component_config_problems", "config_type_problems", "safetensors_problems"]


def _accepts(annotation: Any, value: Any) -> Optional[bool]:
    """Whether `value` fits a type annotation: True / False, or None when the annotation is not one we can judge."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(arg, value) for arg in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if origin in (tuple, list) or annotation in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return None


def _kind_of_default(default: Any) -> Any:
    """The annotation an unannotated parameter's default implies (bool, float for numbers, str), else empty."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float  # ints and floats are interchangeable for an unannotated number
    if isinstance(default, str):
        return str
    return inspect.Parameter.empty


def _expected_text(annotation: Any) -> str:
    """Readable name of an annotation ('int', 'Optional[int]', ...)."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def config_type_problems(config_path: Path, cls: type) -> list[str]:
    """Keys of a component's config.json whose values do not fit `cls.__init__`'s declared types (None allowed only
    where the type or default allows it)."""
    try:
        config = json.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        return []  # unreadable JSON is reported by the JSON check
    if not isinstance(config, dict):
        return [f"{config_path}: expected a mapping of option: value, got {type(config).__name__}"]
    try:
        params = inspect.signature(cls.__init__).parameters
        hints = typing.get_type_hints(cls.__init__)
    except (TypeError, ValueError, NameError):
        params, hints = inspect.signature(cls.__init__).parameters, {}
    problems = []
    for key, value in config.items():
        param = params.get(key)
        if key.startswith("_") or param is None:
            continue
        if value is None and param.default is None:  # an unset option (often annotated without Optional)
            continue
        annotation = hints.get(key, param.annotation)
        if isinstance(annotation, str) or annotation is inspect.Parameter.empty:
            annotation = _kind_of_default(param.default)
        if _accepts(annotation, value) is False:
            problems.append(f"{config_path}: key {key!r} expects {_expected_text(annotation)} "
                            f"({cls.__name__}), got {value!r}")
    return problems


def component_config_problems(folder: Path) -> list[str]:
    """Type problems of every `<component>/config.json` (and scheduler config) whose `_class_name` is a diffusers
    class."""
    import diffusers

    problems = []
    for path in sorted([*folder.glob("*/config.json"), *folder.glob("*/scheduler_config.json")]):
        try:
            name = json.loads(path.read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            continue
        cls = getattr(diffusers, name, None) if isinstance(name, str) else None
        if isinstance(cls, type):
            problems += config_type_problems(path, cls)
    return problems


def safetensors_problems(folder: Path) -> list[str]:
    """Every safetensors file of a model folder (top level and component folders) whose header is unreadable or
    does not cover the file (truncated, garbage, empty)."""
    from safetensors import safe_open

    problems = []
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*/*.safetensors")]):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError and OS errors alike mean "damaged file"
            problems.append(f"{path} is not a readable safetensors file ({err}); restore it from the checkpoint")
    return problems
