"""BiGain_TD (IEKVD): ToDo whose K/V source blends nearest and average pooling.

`src = alpha * nearest(h) + (1 - alpha) * avg_pool(h)`; alpha > 1 extrapolates past nearest
(sharpening away from the local mean), alpha < 0 past the average. Optional per-sample
schedule `alpha(t) = a_start * t/999 + a_end * (1 - t/999)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from tomesd.options import DownsampleOptions, check_stop_threshold
from tomesd.reducers.base import Plan, ReductionContext
from tomesd.reducers.grid import from_grid, to_grid
from tomesd.reducers.todo import downsample_grid, kv_plan, level_factor
from tomesd.registry import register_reducer


@dataclass(frozen=True)
class IEKVDOptions(DownsampleOptions):
    """`alpha` blend (1 = ToDo nearest, 0 = avg pool, no clamping); optional timestep schedule."""

    alpha: float = 0.5
    alpha_schedule: bool = False
    alpha_start: float = 0.1
    alpha_end: float = 0.9
    stop_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "alpha_start", "alpha_end"):
            if not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a number")
        check_stop_threshold(self.stop_threshold)


def scheduled_alpha(timesteps: Tensor, alpha_start: float, alpha_end: float) -> Tensor:
    """Per-sample alpha: alpha_start at t=999, alpha_end at t=0, linear in between."""
    frac = timesteps.float() / 999.0
    return alpha_start * frac + alpha_end * (1.0 - frac)


def blended_kv_source(x: Tensor, height: int, width: int, df: int, alpha: Tensor | float) -> Tensor:
    """alpha * nearest-exact + (1 - alpha) * avg_pool, alpha scalar or per sample (B,).

    One grid reshape shared by both poolings, blended in place on the fresh pooled tensors
    (same operations and values as the out-of-place expression).
    """
    grid = to_grid(x, height, width)
    nearest = downsample_grid(grid, df, "nearest-exact")
    if not isinstance(alpha, Tensor) and alpha == 1.0:
        return from_grid(nearest)  # exactly ToDo
    average = downsample_grid(grid, df, "avg_pool")
    if isinstance(alpha, Tensor):
        alpha = alpha.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return from_grid(nearest.mul_(alpha).add_(average.mul_(1.0 - alpha)))


@register_reducer("bigain_td", aliases=("iekvd",), label="BiGain_TD")
class IEKVD:
    """Interpolate-extrapolate K/V downsampling."""

    Options = IEKVDOptions
    plan_kind = "kv"
    default_blocks = "published"

    @staticmethod
    def needs_host_timesteps(opts: IEKVDOptions) -> bool:
        return False  # gate and alpha schedule work on the device: no host copy, no sync

    @staticmethod
    def plan(ctx: ReductionContext, opts: IEKVDOptions) -> Plan:
        df = level_factor(opts.df, opts.df_level2, ctx.level)
        if opts.alpha_schedule:
            if ctx.timesteps is None:
                raise ValueError("alpha_schedule=True needs the model to be called with a timestep")
            alpha: Tensor | float = scheduled_alpha(ctx.timesteps, opts.alpha_start, opts.alpha_end)
        else:
            alpha = float(opts.alpha)
        height, width = ctx.height, ctx.width  # the plan must not keep `ctx.metric` alive
        return kv_plan(ctx, df, opts.stop_threshold, lambda h: blended_kv_source(h, height, width, df, alpha))

    @staticmethod
    def kept_tokens(height: int, width: int, opts: IEKVDOptions, level: int = 1) -> int:
        df = level_factor(opts.df, opts.df_level2, level)
        return height * width if df <= 1 else (height // df) * (width // df)

