"""The reducer registry: one dict, a decorator that checks the `Reducer` protocol and refuses
duplicates, aliases, display labels, clear errors."""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

from tomesd.reducers.base import Reducer, check_reducer

_REDUCERS: dict[str, Reducer] = {}
_ALIASES: dict[str, str] = {}

T = TypeVar("T", bound=type)


def register_reducer(name: str, aliases: tuple[str, ...] = (), label: Optional[str] = None) -> Callable[[T], T]:
    """Class decorator: make a reducer available to `apply_patch(method=name)`.

    `label` is the method's display name in tables and plots (default: `name`). The class must satisfy
    `tomesd.reducers.base.Reducer` (TypeError otherwise).
    """

    def wrap(cls: T) -> T:
        check_reducer(cls)
        for key in (name, *aliases):
            if key in _REDUCERS or key in _ALIASES:
                raise ValueError(f"reducer name {key!r} is already registered")
        _REDUCERS[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        cls.name = name
        cls.label = label if label is not None else name
        return cls

    return wrap


def canonical_name(method: str) -> str:
    """Resolve an alias (`lgtm`, `iekvd`) to its method name; ValueError lists known names."""
    key = str(method).lower()
    key = _ALIASES.get(key, key)
    if key not in _REDUCERS:
        raise ValueError(f"unknown method {method!r}; known methods: {list_methods(include_aliases=True)}")
    return key


def get_reducer(method: str) -> Reducer:
    """The reducer class registered under `method` (or its alias)."""
    return _REDUCERS[canonical_name(method)]


def method_label(method: str) -> str:
    """Display label of a method or alias (`"bigain_tm"` / `"lgtm"` -> `"BiGain_TM"`)."""
    return get_reducer(method).label


def list_methods(include_aliases: bool = False) -> list[str]:
    """Registered method names (optionally with aliases)."""
    names = list(_REDUCERS)
    return names + list(_ALIASES) if include_aliases else names
