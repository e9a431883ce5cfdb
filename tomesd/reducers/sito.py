"""SiTo (Zhang et al. 2025): similarity-based token pruning with copy-back recovery.

Base tokens (highest graph score per stride block) are always computed; of the rest, the ones
most similar to some base token are pruned and later receive the output of their most similar
retained (kept or base) token.

Ties are broken deterministically: a block's base token is its first maximum in row-major order,
equal affinities are pruned lower index first (stable sort), and a pruned token copies the first
most similar retained token in the order [kept non-base tokens ascending, base tokens]. The graph
and scores use the model dtype with fp32 degree sums (the official code uses fp16 throughout; the
kept sets differ in ~0.1% of tokens, see docs/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tomesd.options import MergeOptions, check_choice
from tomesd.reducers.base import Plan, ReductionContext, TokenPlan, run_phase
from tomesd.reducers.grid import block_positions, complement_indices, gather_tokens
from tomesd.reducers.matching import merge_count, restore_by_map
from tomesd.reducers.tome import merged_token_count
from tomesd.registry import register_reducer
from tomesd.rng import CounterRandom, draw_normal


@dataclass(frozen=True)
class SiToOptions(MergeOptions):
    """`ratio` of tokens pruned; score = sim_beta * graph degree + noise_alpha * N(0, 1) noise."""

    noise_alpha: float = 0.1
    sim_beta: float = 1.0
    graph: str = "full"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("graph", self.graph, GRAPH_MODES)
        if float(self.noise_alpha) < 0:
            raise ValueError(f"noise_alpha={self.noise_alpha!r} must be >= 0")


# "full": the published computation, the whole N x N cosine graph (outputs of record).
# "blocks": speed option, off by default: degrees as x_i . sum_j x_j (O(N C)) and only the
# (N - D) x D and P x (N - P) similarity blocks that are used (~2.5x fewer FLOPs). Equal in exact
# arithmetic; float rounding differs, so near-tied choices can flip (measured in docs/benchmarks.md).
GRAPH_MODES = ("full", "blocks")


def cosine_graph(unit: Tensor) -> Tensor:
    """(B, N, N) cosine similarities of L2-normalised tokens."""
    return unit @ unit.transpose(1, 2)


def graph_degrees(unit: Tensor) -> Tensor:
    """Row sums of the cosine graph without forming it: x_i . sum_j x_j, (B, N) float32."""
    total = unit.sum(1, dtype=torch.float32).unsqueeze(-1)  # (B, C, 1)
    return (unit.float() @ total).squeeze(-1)


def base_token_scores(graph: Optional[Tensor], sim_beta: float, noise_alpha: float, random: Optional[CounterRandom],
                      degrees: Optional[Tensor] = None) -> Tensor:
    """Score (B, N): weighted graph degree plus standard Gaussian noise shared by the whole batch.

    Gaussian as in the SiTo paper and its official code; drawn from the patch's seeded counter-based
    stream (`tomesd.rng`), so it is traceable and the same for every sample of a batch.
    `degrees` (B, N) replaces `graph.sum(-1)` when given (then `graph` may be None).
    """
    degree = graph.sum(-1, dtype=torch.float32) if degrees is None else degrees
    score = sim_beta * degree
    if noise_alpha > 0:
        score = score + noise_alpha * draw_normal(random, (1, degree.shape[-1]), degree.device)
    return score


def top_indices(values: Tensor, k: int) -> Tensor:
    """Indices of the `k` largest values per row; exact ties go to the lower index (stable sort).

    `topk` leaves the order of equal values unspecified (and it differs between devices); a stable
    descending sort makes the pruned set a function of the values alone.
    """
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]


def columns(rows: Tensor, index: Tensor) -> Tensor:
    """rows (B, R, N), index (B, K) -> rows[:, :, index] per sample (B, R, K)."""
    return rows.gather(2, index.unsqueeze(1).expand(-1, rows.shape[1], -1))


def graph_and_scores(unit: Tensor, opts: SiToOptions,
                     random: Optional[CounterRandom]) -> tuple[Optional[Tensor], Tensor]:
    """The cosine graph (B, N, N) ("full"; None for "blocks") and the base-token scores (B, N) of `unit` tokens."""
    graph = cosine_graph(unit) if opts.graph == "full" else None
    degrees = None if graph is not None else graph_degrees(unit)
    return graph, base_token_scores(graph, opts.sim_beta, opts.noise_alpha, random, degrees=degrees)


@register_reducer("sito", label="SiTo")
class SiTo:
    """Similarity-based token pruning (prune before the layer, copy back after)."""

    Options = SiToOptions
    plan_kind = "token"
    default_blocks = "all"

    @staticmethod
    def needs_host_timesteps(opts: SiToOptions) -> bool:
        return False  # never reads timesteps: no host copy, no device sync

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
            full = opts.graph == "full"
            graph, score = run_phase(ctx.trace, "score", graph_and_scores, unit, opts, ctx.random)
            block_choice = score[:, positions].argmax(-1)  # (B, D)
            base_idx = positions[torch.arange(num_base, device=metric.device), block_choice]
            other_idx = complement_indices(base_idx, num_tokens)

            def similarity(rows: Tensor, cols: Tensor) -> Tensor:
                """graph[rows][:, cols]; from the full graph columns first (never copies row blocks)."""
                if full:
                    return gather_tokens(columns(graph, cols), rows)
                return gather_tokens(unit, rows) @ gather_tokens(unit, cols).transpose(1, 2)

            affinity = similarity(other_idx, base_idx).amax(-1)  # (B, N - D)
            pruned_local = top_indices(affinity, num_prune)
            kept_local = complement_indices(pruned_local, other_idx.shape[1])
            pruned_idx = other_idx.gather(1, pruned_local)
            retained_idx = torch.cat([other_idx.gather(1, kept_local), base_idx], dim=1)  # (B, N - P)
            # max(-1).indices == argmax(-1) (first maximum, ties and NaN alike) at half the CPU time.
            nearest_retained = similarity(pruned_idx, retained_idx).max(-1).indices  # (B, P)
            index_map = torch.empty(batch, num_tokens, dtype=torch.long, device=metric.device)
            index_map.scatter_(1, retained_idx,
                               torch.arange(retained_idx.shape[1], device=metric.device).expand(batch, -1))
            index_map.scatter_(1, pruned_idx, nearest_retained)

        def prune(x: Tensor) -> Tensor:
            return gather_tokens(x, retained_idx)

        def recover(z: Tensor) -> Tensor:
            return restore_by_map(z, index_map)

        return TokenPlan(reduce=prune, restore=recover, kept_tokens=num_tokens - num_prune)

    @staticmethod
    def kept_tokens(height: int, width: int, opts: SiToOptions, level: int = 1) -> int:
        return merged_token_count(height, width, opts.ratio, opts.sx, opts.sy)
