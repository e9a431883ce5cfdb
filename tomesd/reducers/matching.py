"""Bipartite soft matching shared by ToMe and BiGain_TM: steps 2-5 of docs/methods.md.

Destinations are given (one per complete block, per sample); sources are all other tokens.
The `r` sources whose best cosine similarity to a destination is highest are averaged into
that destination; `merge` returns kept sources (in token order) then destinations, and
`unmerge` copies every destination's output back to the sources merged into it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tomesd.reducers.base import TokenPlan
from tomesd.reducers.grid import batch_offsets, gather_tokens, sources_then_destinations, static_tensor, take_rows


def merge_count(num_tokens: int, ratio: float, num_dst: int) -> int:
    """Tokens removed by merging: `int(N * ratio)` clipped to the number of sources."""
    return max(0, min(int(num_tokens * ratio), num_tokens - num_dst))


def restore_by_map(z: Tensor, index_map: Tensor) -> Tensor:
    """Full-length output from a reduced one: position n takes `z[:, index_map[:, n]]`."""
    return gather_tokens(z, index_map)


def normalize_rows_(x: Tensor, eps: float = 1e-12) -> Tensor:
    """In-place `F.normalize(x, dim=-1)` (same ops, same values) for a tensor we own."""
    return x.div_(x.norm(2, dim=-1, keepdim=True).clamp_min_(eps))


ROW_MAX_CHUNK = 64  # chunk width of the CPU row max; measured best of 32/64/128/256 for D = 1024


def row_max(scores: Tensor) -> tuple[Tensor, Tensor]:
    """`scores.max(-1)`: the maximum of every row and the index of its first occurrence.

    On CPU, PyTorch's max-with-index is ~6x slower than `amax`; for wide rows it is done as a
    vectorised `amax` over 64-wide chunks, a max over the few chunk maxima, and a max within the
    winning chunk (2.5 -> 1.6 ms at 3072 x 1024). Only comparisons: the same values and indices,
    ties, NaN and signed zeros included.
    """
    *lead, width = scores.shape
    if scores.device.type != "cpu" or width % ROW_MAX_CHUNK or width < 8 * ROW_MAX_CHUNK:
        return scores.max(-1)
    chunks = scores.unflatten(-1, (width // ROW_MAX_CHUNK, ROW_MAX_CHUNK))
    best_chunk = chunks.amax(-1).max(-1).indices
    winner = chunks.gather(-2, best_chunk[..., None, None].expand(*lead, 1, ROW_MAX_CHUNK)).squeeze(-2)
    value, offset = winner.max(-1)
    return value, best_chunk * ROW_MAX_CHUNK + offset


def merge_counts(add_rows: Tensor, batch: int, out_len: int, dtype: torch.dtype) -> Tensor:
    """(B*out_len, 1) tokens per merged slot: 1 for kept sources, 1 + merged sources for destinations.

    Ones index-added in the tensor's dtype, exactly like `scatter_reduce(..., "mean", include_self=True)`
    builds its divisor (whole numbers: exact), so the division is bit-identical; kept rows divide by 1.
    One out-of-place `index_add` on cached ones.
    """
    device = add_rows.device
    ones = static_tensor(("ones", add_rows.numel(), dtype, str(device)),
                         lambda: torch.ones(add_rows.numel(), 1, dtype=dtype, device=device))
    base = static_tensor(("ones", batch * out_len, dtype, str(device)),
                         lambda: torch.ones(batch * out_len, 1, dtype=dtype, device=device))
    return base.index_add(0, add_rows, ones)


def slot_rows(batch: int, out_len: int, device: torch.device) -> Tensor:
    """(B*out_len,) flat row of every slot of the merged output, cached."""
    return static_tensor(("slots", batch * out_len, str(device)), lambda: torch.arange(batch * out_len, device=device))


def destination_slots(batch: int, num_src: int, num_dst: int, device: torch.device) -> Tensor:
    """(B, D) positions S .. S + D - 1 of the destinations in `sources_then_destinations` order, cached."""
    return static_tensor(("dst_slots", batch, num_src, num_dst, str(device)),
                         lambda: torch.arange(num_src, num_src + num_dst, device=device).expand(batch, -1))


def bipartite_merge_plan(metric: Tensor, dst_idx: Tensor, ratio: float) -> Optional[TokenPlan]:
    """Match sources to the destinations `dst_idx` (B, D) on `metric` (B, N, C); None when idle.

    All index work happens here, once per layer call, on flat row indices into the (B*N, C) input
    and (B*out_len, C) output, with offsets and slot indices cached per size (fewer launches):
    `merge` is two row gathers, one `index_add_` and one division; `unmerge` one row gather.
    Ties of the match scores go to the lower source index (stable sort).
    """
    batch, num_tokens, _ = metric.shape
    num_dst = dst_idx.shape[1]
    r = merge_count(num_tokens, ratio, num_dst)
    if r <= 0:
        return None
    device = metric.device
    num_src = num_tokens - num_dst
    num_kept = num_src - r
    out_len = num_kept + num_dst
    with torch.no_grad():
        # (B, N) flat rows: sources ascending, then destinations in block order.
        rows = sources_then_destinations(dst_idx, num_tokens) + batch_offsets(batch, num_tokens, device)
        # One gather of source and destination rows, L2-normalised in place (the values of F.normalize).
        unit = normalize_rows_(take_rows(metric, rows.view(-1)))
        src_unit, dst_unit = unit.split([num_src, num_dst], 1)
        scores = torch.bmm(src_unit, dst_unit.transpose(1, 2))  # (B, S, D) cosine similarities
        best_score, best_dst = row_max(scores)
        order = torch.sort(best_score, dim=-1, descending=True, stable=True).indices
        merged_local, kept_by_score = order.split([r, num_kept], 1)
        kept_local = torch.sort(kept_by_score, dim=-1).values  # kept sources stay in token order
        merged_rows = rows.gather(1, merged_local).view(-1)
        # Kept sources, then destinations: one gather from `rows`.
        take = rows.gather(1, torch.cat([kept_local, destination_slots(batch, num_src, num_dst, device)], 1)).view(-1)
        # Output row of each merged source's destination.
        add_rows = (best_dst.gather(1, merged_local) + batch_offsets(batch, out_len, device, shift=num_kept)).view(-1)
        # Every input row -> the output row it is restored from (kept/destination: its slot; merged: its dst).
        unset = static_tensor(("restore_rows", batch * num_tokens, str(device)),
                              lambda: torch.zeros(batch * num_tokens, dtype=torch.long, device=device))
        restore_rows = unset.scatter(0, take, slot_rows(batch, out_len, device)).scatter_(0, merged_rows, add_rows)
        counts = merge_counts(add_rows, batch, out_len, metric.dtype)

    def merge(x: Tensor) -> Tensor:
        # Equals cat([x[kept], scatter_reduce(x[dst], x[merged] -> merged_into, "mean", include_self)]).
        channels = x.shape[-1]
        flat = x.reshape(-1, channels)
        out = flat.index_select(0, take)
        out.index_add_(0, add_rows, flat.index_select(0, merged_rows))
        return out.div_(counts if x.dtype == counts.dtype else counts.to(x.dtype)).view(batch, out_len, channels)

    def unmerge(z: Tensor) -> Tensor:
        return take_rows(z, restore_rows)

    return TokenPlan(reduce=merge, restore=unmerge, kept_tokens=num_tokens - r)
