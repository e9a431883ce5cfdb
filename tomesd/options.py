"""Validated, frozen option dataclasses: the knobs every reducer shares, and their checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence, Union

BlockSpec = Union[None, str, Sequence[int]]
PLAN_REUSE = ("block", "level")  # and "group<k>", k >= 1 (see `plan_reuse_span`)


def plan_reuse_span(value: Any) -> int:
    """Patched blocks of a level that share one plan: "block" -> 1, "level" -> 0 (all), "group<k>" -> k.

    ValueError naming the allowed spellings for anything else.
    """
    if value == "block":
        return 1
    if value == "level":
        return 0
    digits = value[len("group"):] if isinstance(value, str) and value.startswith("group") else ""
    if digits.isdigit() and digits == str(int(digits)) and int(digits) >= 1:
        return int(digits)
    raise ValueError(f"plan_reuse={value!r} is not allowed; choose 'block', 'level' or 'group<k>' "
                     f"(one plan per k consecutive patched blocks of a level, k >= 1, e.g. 'group2')")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise a ValueError naming the allowed values when `value` is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def check_ratio(name: str, value: float) -> None:
    """Ratios live in [0, 1)."""
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}={value!r} must be a number in [0, 1)")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """Integers >= minimum (strides, downsample factors, levels)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


@dataclass(frozen=True)
class PlacementOptions:
    """Where a reducer acts: U-Net levels (`max_downsample`) or DiT/PixArt block indices (`blocks`),
    and how often it plans (`plan_reuse`, `plan_every`).

    `blocks`: None = the method's default pattern, "all", or a list of block indices.
    `plan_reuse`: "block" plans every patched block; "level" makes one plan per U-Net level (per token
    grid on DiT/PixArt) per forward, at the level's first patched block, and reuses it in the others;
    "group<k>" (e.g. "group2") makes a new plan every k patched blocks of a level (deep DiTs).
    `plan_every`: plans on every k-th denoiser call and reuses the last plans in between (token
    methods; the call counter restarts with `tomesd.reseed`).
    """

    max_downsample: int = 1
    blocks: BlockSpec = None
    plan_reuse: str = "block"
    plan_every: int = 1

    def __post_init__(self) -> None:
        check_positive_int("max_downsample", self.max_downsample)
        plan_reuse_span(self.plan_reuse)
        check_positive_int("plan_every", self.plan_every)
        if isinstance(self.blocks, str):
            check_choice("blocks", self.blocks, ["all"])
        elif self.blocks is not None:
            blocks = tuple(self.blocks)
            if not blocks:
                raise ValueError("blocks=[] selects no block; give None (the method's pattern), 'all' or block indices")
            if not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
                raise ValueError(f"blocks={self.blocks!r} must be None, 'all' or a list of integers")
            object.__setattr__(self, "blocks", blocks)


@dataclass(frozen=True)
class TokenPlacementOptions(PlacementOptions):
    """Placement for reducers that shrink the token sequence: which layers see reduced tokens."""

    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False


@dataclass(frozen=True)
class MergeOptions(TokenPlacementOptions):
    """Shared by the merging and pruning reducers (ToMe, BiGain_TM, SiTo): `ratio` of the tokens removed
    (upstream default 0.5) and the `sx x sy` stride blocks that each keep one destination/base token."""

    ratio: float = 0.5
    sx: int = 2
    sy: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio("ratio", self.ratio)
        check_positive_int("sx", self.sx)
        check_positive_int("sy", self.sy)


@dataclass(frozen=True)
class DownsampleOptions(PlacementOptions):
    """Shared by the K/V downsampling reducers (ToDo, BiGain_TD): factor `df` at level 1, `df_level2`
    at level 2 (None = df). Each subclass declares `stop_threshold` (checked by `check_stop_threshold`)
    as its last option, after its own, so the option order users see is the published one."""

    df: int = 2
    df_level2: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("df", self.df)
        optional_factor("df_level2", self.df_level2)


def check_stop_threshold(value: Optional[float]) -> None:
    """None (no timestep gate) or a number in [0, 1]."""
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"stop_threshold={value!r} must be in [0, 1] or None (no gate)")


def build_options(cls: type, method: str, values: dict[str, Any]) -> Any:
    """Instantiate `cls` from `values`, rejecting unknown keys with the list of allowed ones."""
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; allowed: {allowed}")
    defaults = {f.name: f.default for f in fields(cls)}
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number (method {method!r})")
        if isinstance(defaults[name], bool) and not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be True or False (method {method!r})")
    return cls(**values)


def option_defaults(cls: type) -> dict[str, Any]:
    """Name -> default of every option of `cls` (for CLIs and docs)."""
    return {f.name: f.default for f in fields(cls)}


def as_dict(options: Any) -> dict[str, Any]:
    """Options as a plain JSON-friendly dict."""
    out = {}
    for f in fields(options):
        value = getattr(options, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def optional_factor(name: str, value: Optional[int]) -> None:
    """None or a downsample factor >= 1."""
    if value is not None:
        check_positive_int(name, value)
