"""ToDo (Smith et al. 2024): queries at full resolution, keys/values from a downsampled grid."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from ..options import PlacementOptions, check_choice, check_positive_int, optional_factor
from ..registry import register_reducer
from .base import KVPlan, Plan, ReductionContext
from .grid import from_grid, to_grid

DOWNSAMPLE_MODES = ("nearest-exact", "nearest", "avg_pool", "max_pool", "area", "bilinear", "bicubic")


@dataclass(frozen=True)
class ToDoOptions(PlacementOptions):
    """`df` downsample factor (level 1; `df_level2` for level 2, default = df); `mode` pooling;
    only samples with `t/1000 > stop_threshold` are compressed (per sample); `stop_threshold=None`
    turns the gate off (every sample compressed, timesteps never copied to the host: no sync)."""

    df: int = 2
    df_level2: Optional[int] = None
    mode: str = "nearest-exact"
    stop_threshold: Optional[float] = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("df", self.df)
        optional_factor("df_level2", self.df_level2)
        check_choice("mode", self.mode, DOWNSAMPLE_MODES)
        check_stop_threshold(self.stop_threshold)


def check_stop_threshold(value: Optional[float]) -> None:
    """None (no timestep gate) or a number in [0, 1]."""
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"stop_threshold={value!r} must be in [0, 1] or None (no gate)")


def gate_needs_host_timesteps(opts) -> bool:
    """The per-sample gate branches in Python on timestep values: only then copy them to the host."""
    return opts.stop_threshold is not None


def downsample_tokens(x: Tensor, height: int, width: int, df: int, mode: str) -> Tensor:
    """Tokens (B, N, C) on an h x w grid -> (B, (h//df)*(w//df), C) by `mode`."""
    return from_grid(downsample_grid(to_grid(x, height, width), df, mode))


def downsample_grid(grid: Tensor, df: int, mode: str) -> Tensor:
    """(B, C, h, w) -> (B, C, h//df, w//df) by `mode` (a fresh tensor)."""
    height, width = grid.shape[-2:]
    size = (height // df, width // df)
    if mode == "avg_pool":
        out = F.avg_pool2d(grid, kernel_size=df, stride=df)
    elif mode == "max_pool":
        out = F.max_pool2d(grid, kernel_size=df, stride=df)
    elif mode == "area":
        out = F.adaptive_avg_pool2d(grid, size)
    elif mode in ("bilinear", "bicubic"):
        out = F.interpolate(grid, size=size, mode=mode, align_corners=False)
    else:
        out = F.interpolate(grid, size=size, mode=mode)
    return out


def level_factor(df: int, df_level2: Optional[int], level: int) -> int:
    """Downsample factor for a U-Net level (DiT blocks are level 1)."""
    return df if level <= 1 or df_level2 is None else df_level2


def timestep_gate(timesteps: Optional[Tensor], stop_threshold: Optional[float]) -> Optional[Tensor]:
    """Per-sample bool mask of compressed samples (CPU); None when every sample is compressed."""
    if timesteps is None or stop_threshold is None:
        return None
    active = timesteps.float() / 1000.0 > stop_threshold
    return None if bool(active.all()) else active


def kv_plan(ctx: ReductionContext, df: int, stop_threshold: Optional[float], source) -> Plan:
    """Common tail of ToDo/BiGain_TD: idle when df == 1, grid too small, or all samples gated off."""
    if df <= 1 or ctx.height // df == 0 or ctx.width // df == 0:
        return None
    active = timestep_gate(ctx.timesteps, stop_threshold)
    if active is not None and not bool(active.any()):
        return None
    return KVPlan(kv_source=source, kv_tokens=(ctx.height // df) * (ctx.width // df), active=active)


@register_reducer("todo")
class ToDo:
    """Token downsampling of keys/values (nearest-exact by default)."""

    Options = ToDoOptions
    plan_kind = "kv"
    default_blocks = "published"
    timesteps_on_host = staticmethod(gate_needs_host_timesteps)

    @staticmethod
    def plan(ctx: ReductionContext, opts: ToDoOptions) -> Plan:
        df = level_factor(opts.df, opts.df_level2, ctx.level)
        return kv_plan(ctx, df, opts.stop_threshold, lambda h: downsample_tokens(h, ctx.height, ctx.width, df, opts.mode))

    @staticmethod
    def kept_tokens(height: int, width: int, opts: ToDoOptions, level: int = 1) -> int:
        df = level_factor(opts.df, opts.df_level2, level)
        return height * width if df <= 1 else (height // df) * (width // df)


