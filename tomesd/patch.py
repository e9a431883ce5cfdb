"""Public API: `apply_patch` / `remove_patch` (drop-in for upstream tomesd), `patched`, `reseed`."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from torch import nn

from . import reducers  # noqa: F401  (registers the built-in methods)
from .backbones import Backbone, BlockSite, find_backbone, resolve_denoiser, select_sites
from .hooks import BlockHook, FeedForwardChunking, ReducingAttnProcessor, RuntimeState, install_mlp_hooks, \
    make_capture_hook
from .options import as_dict, build_options
from .registry import canonical_name, get_reducer

PATCH_ATTR = "_bigain_patch"


@dataclass
class LevelSummary:
    """Tokens of one level at the model's default latent size, and how many the method keeps."""

    blocks: int
    tokens: Optional[int]
    kept: Optional[int]


@dataclass
class PatchReport:
    """What `apply_patch` did: method, validated options, patched blocks, tokens kept per level."""

    method: str
    options: dict[str, Any]
    model: str
    family: str
    blocks: list[str]
    levels: dict[int, LevelSummary]
    kept_label: str = "tokens kept"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "options": self.options, "model": self.model, "family": self.family,
            "blocks": self.blocks, "kept_label": self.kept_label,
            "levels": {str(k): vars(v) for k, v in self.levels.items()},
        }

    def __str__(self) -> str:
        lines = [f"{self.method} on {self.model} ({len(self.blocks)} blocks) options={self.options}"]
        for level, s in sorted(self.levels.items()):
            where = f"level ds={level}" if self.family == "unet" else "token grid"
            tokens = "?" if s.tokens is None else f"{s.kept}/{s.tokens} {self.kept_label}"
            lines.append(f"  {where}: {s.blocks} blocks, {tokens}")
        return "\n".join(lines)


@dataclass
class PatchHandle:
    """Everything `remove_patch` must undo: original processors and hook handles."""

    runtime: RuntimeState
    report: PatchReport
    processors: list[tuple[nn.Module, Any]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)


def summarize_levels(backbone: Backbone, sites: list[BlockSite], reducer: type, options: Any) -> dict[int, LevelSummary]:
    """Blocks per level and tokens kept at the config's default latent size (when known)."""
    summary: dict[int, LevelSummary] = {}
    for site in sites:
        tokens = kept = None
        if backbone.reference_size is not None:
            stride = site.level * backbone.patch_size
            height = math.ceil(backbone.reference_size[0] / stride)
            width = math.ceil(backbone.reference_size[1] / stride)
            tokens, kept = height * width, reducer.kept_tokens(height, width, options, level=site.level)
        entry = summary.setdefault(site.level, LevelSummary(0, tokens, kept))
        entry.blocks += 1
    return summary


def wraps_reducer(processor: Any, hook: BlockHook) -> bool:
    """Whether `processor` is this hook's reducing wrapper, or wraps it (via `.inner`, e.g. a timer)."""
    while processor is not None:
        if isinstance(processor, ReducingAttnProcessor) and processor.hook is hook:
            return True
        processor = getattr(processor, "inner", None)
    return False


def wrap_attention(attn: nn.Module, hook: BlockHook, self_attention: bool, handle: PatchHandle) -> None:
    """Swap `attn`'s processor for a reducing wrapper around it; remember the original.

    A processor set after patching (`set_attn_processor`, `enable_xformers_memory_efficient_attention`)
    is wrapped again before the next call, and is the one `remove_patch` restores.
    """
    slot = len(handle.processors)
    handle.processors.append((attn, attn.processor))
    attn.set_processor(ReducingAttnProcessor(attn.processor, hook, self_attention))

    def rewrap(module: nn.Module, args: tuple) -> None:
        current = module.processor
        if not wraps_reducer(current, hook):
            handle.processors[slot] = (module, current)
            module.set_processor(ReducingAttnProcessor(current, hook, self_attention))

    handle.handles.append(attn.register_forward_pre_hook(rewrap))


def install_block(site: BlockSite, backbone: Backbone, reducer: type, options: Any, handle: PatchHandle,
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


def apply_patch(model: Any, ratio: Optional[float] = None, method: str = "tome", *, seed: Optional[int] = None,
                **options: Any) -> PatchReport:
    """Install a token reducer in a diffusers U-Net / DiT / PixArt model or pipeline.

    Important args:
        method: "tome" (default), "bigain_tm"/"lgtm", "todo", "bigain_td"/"iekvd", "sito", "none".
        ratio:  fraction of tokens merged (ToMe, BiGain_TM) or pruned (SiTo); 0.3-0.7 is typical.
        df / alpha: K/V downsample factor (ToDo, BiGain_TD) and the BiGain_TD blend.
        seed:   seeds the patch's own random stream (random ToMe destinations, SiTo noise).
        plan_reuse / plan_every: one plan per level per forward ("level"), plans every k-th call.
    Args to tinker with: max_downsample, sx, sy, use_rand, merge_attn, merge_crossattn, merge_mlp,
        blocks (DiT/PixArt), laplacian_norm, strip_layout, df_level2, mode, stop_threshold,
        alpha_schedule/alpha_start/alpha_end, noise_alpha, sim_beta.
    Calling it twice replaces the previous patch. Returns a `PatchReport`.
    """
    name = canonical_name(method)
    reducer = get_reducer(name)
    if ratio is not None:
        if "ratio" not in [f for f in reducer.Options.__dataclass_fields__]:
            raise ValueError(f"method {name!r} takes no ratio; its options are {list(reducer.Options.__dataclass_fields__)}")
        options["ratio"] = ratio
    opts = build_options(reducer.Options, name, options)
    if getattr(opts, "plan_every", 1) > 1 and reducer.plan_kind != "token":
        raise ValueError(f"plan_every={opts.plan_every} applies to token methods (tome, bigain_tm, sito); "
                         f"{name!r} plans depend on each call's timesteps and cost no planning")
    denoiser = resolve_denoiser(model)
    remove_patch(denoiser)
    backbone = find_backbone(denoiser)
    if reducer.plan_kind == "none":
        return PatchReport(name, {}, type(denoiser).__name__, backbone.family, [], {})
    sites = select_sites(backbone, opts.max_downsample, opts.blocks, reducer.default_blocks)
    report = PatchReport(
        name, as_dict(opts), type(denoiser).__name__, backbone.family, [s.name for s in sites],
        summarize_levels(backbone, sites, reducer, opts),
        "K/V tokens" if reducer.plan_kind == "kv" else "tokens kept",
    )
    runtime = RuntimeState(seed=seed, plan_reuse=opts.plan_reuse, plan_every=opts.plan_every, streams=len(sites))
    handle = PatchHandle(runtime, report)
    handle.handles.append(denoiser.register_forward_pre_hook(
        make_capture_hook(handle.runtime, backbone.signature), with_kwargs=True))
    for stream, site in enumerate(sites):
        install_block(site, backbone, reducer, opts, handle, stream)
    setattr(denoiser, PATCH_ATTR, handle)
    return report


def remove_patch(model: Any) -> Any:
    """Undo `apply_patch` (a no-op on an unpatched model); returns `model` like upstream."""
    denoiser = resolve_denoiser(model)
    handle: Optional[PatchHandle] = getattr(denoiser, PATCH_ATTR, None)
    if handle is not None:
        for attn, original in reversed(handle.processors):
            attn.set_processor(original)
        for h in handle.handles:
            h.remove()
        delattr(denoiser, PATCH_ATTR)
    return model


def get_patch(model: Any) -> Optional[PatchHandle]:
    """The active patch of a model or pipeline, or None."""
    return getattr(resolve_denoiser(model), PATCH_ATTR, None)


def reseed(model: Any, seed: Optional[int]) -> None:
    """Restart the active patch's random stream and plan-reuse counter (no-op without a patch)."""
    handle = get_patch(model)
    if handle is not None:
        handle.runtime.reseed(seed)


@contextlib.contextmanager
def patched(model: Any, ratio: Optional[float] = None, method: str = "tome", **options: Any) -> Iterator[PatchReport]:
    """`with tomesd.patched(pipe, method="bigain_tm", ratio=0.7) as report: ...` removes on exit."""
    report = apply_patch(model, ratio, method, **options)
    try:
        yield report
    finally:
        remove_patch(model)
