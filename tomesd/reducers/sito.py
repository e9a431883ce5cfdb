"""SiTo (Zhang et al. 2025): similarity-based token pruning with copy-back recovery.

Base tokens (highest graph score per stride block) are always computed; of the rest, the ones
most similar to some base token are pruned and later receive the output of their most similar
retained (kept or base) token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import TokenPlacementOptions, check_positive_int, check_ratio
from ..registry import register_reducer
from .base import Plan, ReductionContext, TokenPlan
from .grid import block_positions, complement_indices, gather_tokens
from .matching import merge_count, restore_by_map
from .tome import merged_token_count


@dataclass(frozen=True)
class SiToOptions(TokenPlacementOptions):
    """`ratio` of tokens pruned; score = sim_beta * graph degree + noise_alpha * U[0,1) noise."""

    ratio: float = 0.5
    sx: int = 2
    sy: int = 2
    noise_alpha: float = 0.1
    sim_beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio("ratio", self.ratio)
        check_positive_int("sx", self.sx)
        check_positive_int("sy", self.sy)
        if float(self.noise_alpha) < 0:
            raise ValueError(f"noise_alpha={self.noise_alpha!r} must be >= 0")


def base_token_scores(graph: Tensor, sim_beta: float, noise_alpha: float, generator: torch.Generator | None) -> Tensor:
    """Score (B, N): weighted graph degree plus seeded noise shared by the whole batch."""
    score = sim_beta * graph.sum(-1, dtype=torch.float32)
    if noise_alpha > 0:
        device = generator.device if generator is not None else graph.device
        noise = torch.rand(1, graph.shape[-1], generator=generator, device=device).to(graph.device)
        score = score + noise_alpha * noise
    return score


def columns(rows: Tensor, index: Tensor) -> Tensor:
    """rows (B, R, N), index (B, K) -> rows[:, :, index] per sample (B, R, K)."""
    return rows.gather(2, index.unsqueeze(1).expand(-1, rows.shape[1], -1))


@register_reducer("sito")
class SiTo:
    """Similarity-based token pruning (prune before the layer, copy back after)."""

    Options = SiToOptions
    plan_kind = "token"
    default_blocks = "all"
    timesteps_on_host = False  # never reads timesteps: no host copy, no device sync

    @staticmethod
    def plan(ctx: ReductionContext, opts: SiToOptions) -> Plan:
        metric = ctx.metric
        batch, num_tokens, _ = metric.shape
        positions = block_positions(ctx.height, ctx.width, opts.sx, opts.sy, metric.device)
        num_base = positions.shape[0]
        num_prune = merge_count(num_tokens, opts.ratio, num_base)
        if num_base == 0 or num_prune <= 0:
            return None
        with torch.no_grad():
            unit = F.normalize(metric, dim=-1)
            graph = unit @ unit.transpose(1, 2)  # (B, N, N) cosine graph
            score = base_token_scores(graph, opts.sim_beta, opts.noise_alpha, ctx.generator)
            block_choice = score[:, positions].argmax(-1)  # (B, D)
            base_idx = positions[torch.arange(num_base, device=metric.device), block_choice]
            other_idx = complement_indices(base_idx, num_tokens)
            # Columns first (N x D), then rows: never copies the (N - D) x N or P x N row blocks.
            affinity = gather_tokens(columns(graph, base_idx), other_idx).amax(-1)  # (B, N - D)
            pruned_local = affinity.topk(num_prune, dim=-1).indices
            kept_local = complement_indices(pruned_local, other_idx.shape[1])
            pruned_idx = other_idx.gather(1, pruned_local)
            retained_idx = torch.cat([other_idx.gather(1, kept_local), base_idx], dim=1)  # (B, N - P)
            nearest_retained = gather_tokens(columns(graph, retained_idx), pruned_idx).argmax(-1)  # (B, P)
            index_map = torch.empty(batch, num_tokens, dtype=torch.long, device=metric.device)
            index_map.scatter_(1, retained_idx, torch.arange(retained_idx.shape[1], device=metric.device).expand(batch, -1))
            index_map.scatter_(1, pruned_idx, nearest_retained)

        def prune(x: Tensor) -> Tensor:
            return gather_tokens(x, retained_idx)

        def recover(z: Tensor) -> Tensor:
            return restore_by_map(z, index_map)

        return TokenPlan(reduce=prune, restore=recover, kept_tokens=num_tokens - num_prune)

    @staticmethod
    def kept_tokens(height: int, width: int, opts: SiToOptions, level: int = 1) -> int:
        return merged_token_count(height, width, opts.ratio, opts.sx, opts.sy)
