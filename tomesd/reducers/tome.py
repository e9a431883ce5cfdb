"""ToMe (Bolya & Hoffman 2023): merge similar tokens into one destination per stride block."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tomesd.options import MergeOptions
from tomesd.reducers.base import Plan, ReductionContext, run_phase
from tomesd.reducers.grid import block_positions, num_blocks, static_tensor
from tomesd.reducers.matching import bipartite_merge_plan, merge_count
from tomesd.registry import register_reducer


@dataclass(frozen=True)
class ToMeOptions(MergeOptions):
    """`ratio` of tokens merged (upstream default 0.5); `sx, sy` block strides; random dst offsets."""

    use_rand: bool = True


def merged_token_count(height: int, width: int, ratio: float, sx: int, sy: int) -> int:
    """Length of the merged sequence on an `height x width` grid (invariant 3)."""
    n = height * width
    return n - merge_count(n, ratio, num_blocks(height, width, sx, sy))


@register_reducer("tome", label="ToMe")
class ToMe:
    """Random (or top-left) destination per block, shared by the batch; cosine bipartite merging."""

    Options = ToMeOptions
    plan_kind = "token"
    default_blocks = "published"

    @staticmethod
    def needs_host_timesteps(opts: ToMeOptions) -> bool:
        return False  # never reads timesteps: no host copy, no device sync

    @staticmethod
    def plan(ctx: ReductionContext, opts: ToMeOptions) -> Plan:
        if opts.ratio <= 0:
            return None
        batch, device = ctx.metric.shape[0], ctx.metric.device
        positions = block_positions(ctx.height, ctx.width, opts.sx, opts.sy, device)
        if positions.shape[0] == 0:
            return None
        # Upstream rule: odd batches (e.g. no CFG pair) use the deterministic top-left destination.
        num_dst, slots = positions.shape
        first = static_tensor(("block_starts", num_dst, slots, str(device)),
                              lambda: torch.arange(num_dst, device=device) * slots)

        def destinations(offsets: torch.Tensor) -> torch.Tensor:
            """Slot offsets (..., D) -> token index of each block's destination (..., D)."""
            return torch.take(positions, offsets + first)

        if opts.use_rand and batch % 2 == 0:
            if ctx.random is None:
                dst = destinations(torch.randint(slots, (num_dst,), device=device))
            else:  # made once per call for every block on this grid; each block selects its row
                dst = ctx.random.derived_randint(slots, num_dst, device,
                                                 ("tome", ctx.height, ctx.width, opts.sx, opts.sy),
                                                 destinations)
        else:  # the top-left position of every block, cached
            dst = static_tensor(("top_left", ctx.height, ctx.width, opts.sx, opts.sy, str(device)),
                                lambda: positions[:, 0].contiguous())
        dst_idx = dst.expand(batch, -1)  # one destination per block, shared by the batch
        return run_phase(ctx.trace, "match", bipartite_merge_plan, ctx.metric, dst_idx, opts.ratio)

    @staticmethod
    def kept_tokens(height: int, width: int, opts: ToMeOptions, level: int = 1) -> int:
        return merged_token_count(height, width, opts.ratio, opts.sx, opts.sy)
