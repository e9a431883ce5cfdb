"""ToDo (Smith et al. 2024): queries at full resolution, keys/values from a downsampled grid."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from tomesd.options import DownsampleOptions, check_choice, check_stop_threshold
from tomesd.reducers.base import KVPlan, Plan, ReductionContext
from tomesd.reducers.grid import from_grid, to_grid
from tomesd.registry import register_reducer

DOWNSAMPLE_MODES = ("nearest-exact", "nearest", "avg_pool", "max_pool", "area", "bilinear", "bicubic")


@dataclass(frozen=True)
class ToDoOptions(DownsampleOptions):
    """`df` downsample factor (level 1; `df_level2` for level 2, default = df); `mode` pooling;
    `stop_threshold` (default None: no gate, every sample compressed) compresses only samples with
    `t/1000 > stop_threshold`; the gate runs both attentions and picks per sample (no host sync)."""

    mode: str = "nearest-exact"
    stop_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, DOWNSAMPLE_MODES)
        check_stop_threshold(self.stop_threshold)


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
    """Per-sample bool mask of compressed samples, where the timesteps live; None when there is no gate.

    No host copy and no Python branch on its values: the hooks blend per sample with `torch.where`.
    """
    if timesteps is None or stop_threshold is None:
        return None
    return timesteps.float() / 1000.0 > stop_threshold


def kv_plan(ctx: ReductionContext, df: int, stop_threshold: Optional[float], source) -> Plan:
    """Common tail of ToDo/BiGain_TD: idle when df == 1 or the grid is too small."""
    if df <= 1 or ctx.height // df == 0 or ctx.width // df == 0:
        return None
    active = timestep_gate(ctx.timesteps, stop_threshold)
    return KVPlan(kv_source=source, kv_tokens=(ctx.height // df) * (ctx.width // df), active=active)


@register_reducer("todo", label="ToDo")
class ToDo:
    """Token downsampling of keys/values (nearest-exact by default)."""

    Options = ToDoOptions
    plan_kind = "kv"
    default_blocks = "published"

    @staticmethod
    def needs_host_timesteps(opts: ToDoOptions) -> bool:
        return False  # the gate is a device mask: no host copy, no sync

    @staticmethod
    def plan(ctx: ReductionContext, opts: ToDoOptions) -> Plan:
        df = level_factor(opts.df, opts.df_level2, ctx.level)
        height, width, mode = ctx.height, ctx.width, opts.mode  # the plan must not keep `ctx.metric` alive
        return kv_plan(ctx, df, opts.stop_threshold, lambda h: downsample_tokens(h, height, width, df, mode))

    @staticmethod
    def kept_tokens(height: int, width: int, opts: ToDoOptions, level: int = 1) -> int:
        df = level_factor(opts.df, opts.df_level2, level)
        return height * width if df <= 1 else (height // df) * (width // df)


