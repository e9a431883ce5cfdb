"""Bipartite soft matching shared by ToMe and BiGain_TM: steps 2-5 of methods.md.

Destinations are given (one per complete block, per sample); sources are all other tokens.
The `r` sources whose best cosine similarity to a destination is highest are averaged into
that destination; `merge` returns kept sources (in token order) then destinations, and
`unmerge` copies every destination's output back to the sources merged into it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import TokenPlan
from .grid import complement_indices, gather_tokens


def merge_count(num_tokens: int, ratio: float, num_dst: int) -> int:
    """Tokens removed by merging: `int(N * ratio)` clipped to the number of sources."""
    return max(0, min(int(num_tokens * ratio), num_tokens - num_dst))


def restore_by_map(z: Tensor, index_map: Tensor) -> Tensor:
    """Full-length output from a reduced one: position n takes `z[:, index_map[:, n]]`."""
    return gather_tokens(z, index_map)


def bipartite_merge_plan(metric: Tensor, dst_idx: Tensor, ratio: float) -> Optional[TokenPlan]:
    """Match sources to the destinations `dst_idx` (B, D) on `metric` (B, N, C); None when idle."""
    batch, num_tokens, _ = metric.shape
    num_dst = dst_idx.shape[1]
    r = merge_count(num_tokens, ratio, num_dst)
    if r <= 0:
        return None
    with torch.no_grad():
        src_idx = complement_indices(dst_idx, num_tokens)  # (B, S) ascending
        unit = F.normalize(metric, dim=-1)
        scores = gather_tokens(unit, src_idx) @ gather_tokens(unit, dst_idx).transpose(1, 2)  # (B, S, D)
        best_score, best_dst = scores.max(dim=-1)
        merged_local = best_score.topk(r, dim=-1).indices  # (B, r)
        kept_local = complement_indices(merged_local, src_idx.shape[1])  # (B, S - r) ascending
        merged_idx = src_idx.gather(1, merged_local)
        kept_idx = src_idx.gather(1, kept_local)
        merged_into = best_dst.gather(1, merged_local)  # (B, r) in [0, D)
        num_kept = kept_idx.shape[1]
        index_map = torch.empty(batch, num_tokens, dtype=torch.long, device=metric.device)
        arange_kept = torch.arange(num_kept, device=metric.device).expand(batch, -1)
        index_map.scatter_(1, kept_idx, arange_kept)
        index_map.scatter_(1, dst_idx, num_kept + torch.arange(num_dst, device=metric.device).expand(batch, -1))
        index_map.scatter_(1, merged_idx, num_kept + merged_into)

    def merge(x: Tensor) -> Tensor:
        channels = x.shape[-1]
        dst = gather_tokens(x, dst_idx)
        dst = dst.scatter_reduce(
            1, merged_into.unsqueeze(-1).expand(-1, -1, channels), gather_tokens(x, merged_idx),
            reduce="mean", include_self=True,
        )
        return torch.cat([gather_tokens(x, kept_idx), dst], dim=1)

    def unmerge(z: Tensor) -> Tensor:
        return restore_by_map(z, index_map)

    return TokenPlan(reduce=merge, restore=unmerge, kept_tokens=num_tokens - r)
