"""How a patch goes into a U-Net / DiT / PixArt: a capture hook on the model, a hook per block, and each
attention processor swapped for a reducing wrapper (re-wrapped if the user sets another processor later).

`PatchHandle` remembers everything `remove_patch` must undo. MMDiT and video blocks are installed by `tomesd.mmdit`
with the same `wrap_attention`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from tomesd.backbones import Backbone, BlockSite
from tomesd.hooks import (
    BlockHook,
    FeedForwardChunking,
    ReducingAttnProcessor,
    RuntimeState,
    install_mlp_hooks,
    make_capture_hook,
)
from tomesd.reducers.base import Reducer
from tomesd.report import PatchReport


@dataclass
class PatchHandle:
    """Everything `remove_patch` must undo: original processors and hook handles."""

    runtime: RuntimeState
    report: PatchReport
    processors: list[tuple[nn.Module, Any]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    temporal_block: int = 1  # frames per spatio-temporal block on video families (`st`; 1: per frame)


def wraps_reducer(processor: Any, hook: BlockHook) -> bool:
    """Whether `processor` is this hook's reducing wrapper, or wraps it (via `.inner`, e.g. a timer)."""
    while processor is not None:
        if getattr(processor, "hook", None) is hook:  # ReducingAttnProcessor or an MMDiT processor
            return True
        processor = getattr(processor, "inner", None)
    return False


def wrap_attention(attn: nn.Module, hook: BlockHook, self_attention: bool, handle: PatchHandle,
                   make: Optional[Callable[[Any], Any]] = None) -> None:
    """Swap `attn`'s processor for a reducing wrapper around it (`make(inner)`, default
    `ReducingAttnProcessor`); remember the original.

    A processor set after patching (`set_attn_processor`, `enable_xformers_memory_efficient_attention`)
    is wrapped again before the next call, and is the one `remove_patch` restores.
    """
    if make is None:
        def make(inner: Any) -> Any:
            return ReducingAttnProcessor(inner, hook, self_attention)
    slot = len(handle.processors)
    handle.processors.append((attn, attn.processor))
    attn.set_processor(make(attn.processor))

    def rewrap(module: nn.Module, args: tuple) -> None:
        current = module.processor
        if not wraps_reducer(current, hook):
            handle.processors[slot] = (module, current)
            module.set_processor(make(current))

    handle.handles.append(attn.register_forward_pre_hook(rewrap))


def install_block(site: BlockSite, backbone: Backbone, reducer: Reducer, options: Any, handle: PatchHandle,
                  stream: int = 0) -> None:
    """Hook one transformer block according to the method's plan kind and placement options."""
    block = site.block
    hook = BlockHook(reducer, options, handle.runtime, site.level, backbone.patch_size,
                     metric_from_block_input=backbone.family == "unet", stream=stream)
    handle.handles.append(block.register_forward_pre_hook(hook.on_block_start, with_kwargs=True))
    token_plan = reducer.plan_kind == "token"
    if not token_plan or getattr(options, "merge_attn", True):
        wrap_attention(block.attn1, hook, True, handle)
    if token_plan and getattr(options, "merge_crossattn", False) and getattr(block, "attn2", None) is not None:
        wrap_attention(block.attn2, hook, False, handle)
    if token_plan and getattr(options, "merge_mlp", False) and getattr(block, "ff", None) is not None:
        handle.handles += install_mlp_hooks(block.ff, hook)
        if hasattr(block, "_chunk_size"):
            handle.handles.append(FeedForwardChunking(block))


def install_blocks(backbone: Backbone, sites: list[BlockSite], reducer: Reducer, options: Any,
                   handle: PatchHandle) -> None:
    """Install a reducer in a U-Net / DiT / PixArt: the capture hook on the model, then each block (own stream)."""
    handle.handles.append(backbone.model.register_forward_pre_hook(
        make_capture_hook(handle.runtime, backbone.signature), with_kwargs=True))
    for stream, site in enumerate(sites):
        install_block(site, backbone, reducer, options, handle, stream)
