"""FLOPs per denoiser call with `torch.utils.flop_counter.FlopCounterMode`, SDPA included.

PyTorch's counter knows the CUDA SDPA kernels (flash, efficient, cuDNN) but not the CPU one
(`_scaled_dot_product_flash_attention_for_cpu`) or the math fallback's fused variants, so those
are added here with the same formula: 2*B*H*N*M*D for Q K^T plus the same for P V. Matrix
products (mm/addmm/bmm/baddbmm/conv) count 2 per multiply-add; elementwise work, gathers,
scatters, sorts and top-k count 0 (they are memory-bound, and PyTorch does not count them).

    report = count_flops(model, args, kwargs)
    report.total, report.by_module["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["FlopReport", "FlopSpans", "count_flops", "attention_layer_flops", "sdpa_custom_mapping"]


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def sdpa_custom_mapping() -> dict[Any, Callable]:
    """SDPA kernels missing from PyTorch's FLOP registry (those that exist in this build)."""
    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    return {getattr(aten, n): _sdpa_cpu_flop for n in names if hasattr(aten, n)}


@dataclass
class FlopReport:
    """Total FLOPs of one call and FLOPs per module path (every depth; "Global" is the total)."""

    total: int
    by_module: dict[str, int] = field(default_factory=dict)

    def sum_where(self, predicate: Callable[[str], bool]) -> int:
        """FLOPs of the modules whose path satisfies `predicate` (leaf-most matches, no double count)."""
        names = [n for n in self.by_module if n != "Global" and predicate(n)]
        tops = [n for n in names if not any(n != m and n.startswith(m + ".") for m in names)]
        return sum(self.by_module[n] for n in tops)


def strip_root(name: str) -> str:
    """FlopCounterMode names modules `ClassName.path.to.module`; drop the class name."""
    return name.split(".", 1)[1] if "." in name else name


def count_flops(model: torch.nn.Module, args: tuple = (), kwargs: Optional[dict] = None) -> FlopReport:
    """Run `model(*args, **kwargs)` once under the FLOP counter (no grad) and return the counts."""
    counter = FlopCounterMode(display=False, custom_mapping=sdpa_custom_mapping())
    with torch.no_grad(), counter:
        model(*args, **(kwargs or {}))
    counts = counter.get_flop_counts()
    by_module = {("Global" if name == "Global" else strip_root(name)): int(sum(ops.values()))
                 for name, ops in counts.items()}
    return FlopReport(total=int(counter.get_total_flops()), by_module=by_module)


def attention_layer_flops(num_queries: int, num_keys: int, channels: int, batch: int = 1,
                          kv_channels: Optional[int] = None) -> int:
    """Hand count of one diffusers `Attention` call (biases and softmax not counted).

    Q and output projections: 2 * 2*N*C^2; K and V: 2 * 2*M*Ck*C; attention: 2 * 2*N*M*C.
    Self-attention (M = N, Ck = C) gives 4*2*N*C^2 + 2*2*N*N*C.
    """
    kv_channels = channels if kv_channels is None else kv_channels
    projections = 2 * 2 * num_queries * channels * channels + 2 * 2 * num_keys * kv_channels * channels
    attention = 2 * 2 * num_queries * num_keys * channels
    return batch * (projections + attention)


class FlopSpans:
    """`Spans`-compatible collector that counts FLOPs instead of time: (block, phase) -> FLOPs.

    Used with `eval.speed.timing.timed_reducers` to count the reducers' own work (scoring,
    matching), i.e. the FLOP floor of their overhead. Nested spans each count their own ops.
    """

    def __init__(self) -> None:
        self.block: str = ""
        self.counts: dict[tuple[str, str], int] = {}

    @contextlib.contextmanager
    def span(self, phase: str, block: Optional[str] = None) -> Iterator[None]:
        key = (block if block is not None else self.block, phase)
        counter = FlopCounterMode(display=False, custom_mapping=sdpa_custom_mapping())
        try:
            with counter:
                yield
        finally:
            self.counts[key] = self.counts.get(key, 0) + int(counter.get_total_flops())
