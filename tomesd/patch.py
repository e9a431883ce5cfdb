"""Public API: `apply_patch` / `remove_patch` (drop-in for upstream tomesd), `patched`, `reseed`."""
from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from torch import nn

from tomesd import reducers  # noqa: F401  (registers the built-in methods)
from tomesd.attention_backends import check_model_parallelism
from tomesd.backbones import Backbone, BlockSite, find_backbone, resolve_denoiser, select_sites
from tomesd.hooks import (
    BlockHook,
    FeedForwardChunking,
    ReducingAttnProcessor,
    RuntimeState,
    install_mlp_hooks,
    make_capture_hook,
)
from tomesd.mmdit import install_mmdit
from tomesd.options import as_dict, build_options
from tomesd.reducers.base import Reducer, Tracer
from tomesd.registry import canonical_name, get_reducer

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
    latent_size: Optional[tuple[int, int]] = None  # (H, W) the token counts refer to

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "options": self.options, "model": self.model, "family": self.family,
            "blocks": self.blocks, "kept_label": self.kept_label, "latent_size": self.latent_size,
            "levels": {str(k): vars(v) for k, v in self.levels.items()},
        }

    def __str__(self) -> str:
        at = f" at latent {self.latent_size[0]}x{self.latent_size[1]}" if self.latent_size else ""
        lines = [f"{self.method} on {self.model} ({len(self.blocks)} blocks{at}) options={self.options}"]
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


def summarize_levels(backbone: Backbone, sites: list[BlockSite], reducer: Reducer, options: Any,
                     size: Optional[tuple[int, int]] = None) -> dict[int, LevelSummary]:
    """Blocks per level and tokens kept at latent `size` (default: the config's latent size, when known)."""
    size = size or backbone.reference_size
    summary: dict[int, LevelSummary] = {}
    for site in sites:
        tokens = kept = None
        if size is not None:
            stride = site.level * backbone.patch_size
            height = math.ceil(size[0] / stride)
            width = math.ceil(size[1] / stride)
            tokens, kept = height * width, reducer.kept_tokens(height, width, options, level=site.level)
        entry = summary.setdefault(site.level, LevelSummary(0, tokens, kept))
        entry.blocks += 1
    return summary


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


def apply_patch(model: Any, ratio: Optional[float] = None, method: str = "tome", *, seed: Optional[int] = None,
                latent_size: Optional[int | tuple[int, int]] = None, **options: Any) -> PatchReport:
    """Install a token reducer in a diffusers U-Net / DiT / PixArt / SD3 / Flux model or pipeline.

    Important args:
        method: "tome" (default), "bigain_tm"/"lgtm", "todo", "bigain_td"/"iekvd", "sito", "none".
        ratio:  fraction of tokens merged (ToMe, BiGain_TM) or pruned (SiTo); 0.3-0.7 is typical.
        df / alpha: K/V downsample factor (ToDo, BiGain_TD) and the BiGain_TD blend.
        seed:   seeds the patch's own random stream (random ToMe destinations, SiTo noise).
        plan_reuse / plan_every: one plan per level per forward ("level"), plans every k-th call.
        latent_size: the run's latent side (or (H, W)) for the report's token counts; default: the config's.
    Args to tinker with: max_downsample, sx, sy, use_rand, merge_attn, merge_crossattn, merge_mlp,
        blocks (DiT/PixArt), laplacian_norm, strip_layout, df_level2, mode, stop_threshold,
        alpha_schedule/alpha_start/alpha_end, noise_alpha, sim_beta.
    Calling it twice replaces the previous patch. Returns a `PatchReport`.
    """
    name = canonical_name(method)
    reducer = get_reducer(name)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed={seed!r} must be None or an integer")
    if ratio is not None:
        if "ratio" not in [f for f in reducer.Options.__dataclass_fields__]:
            raise ValueError(f"method {name!r} takes no ratio; "
                             f"its options are {list(reducer.Options.__dataclass_fields__)}")
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
    check_model_parallelism(denoiser)
    sites = select_sites(backbone, opts.max_downsample, opts.blocks, reducer.default_blocks)
    if not sites:
        raise ValueError(f"method {name!r} would patch no block of {type(denoiser).__name__} (options {as_dict(opts)})")
    size = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    size = tuple(size) if size is not None else backbone.reference_size
    report = PatchReport(
        name, as_dict(opts), type(denoiser).__name__, backbone.family, [s.name for s in sites],
        summarize_levels(backbone, sites, reducer, opts, size),
        "K/V tokens" if reducer.plan_kind == "kv" else "tokens kept", size,
    )
    runtime = RuntimeState(seed=seed, plan_reuse=opts.plan_reuse, plan_every=opts.plan_every, streams=len(sites))
    handle = PatchHandle(runtime, report)
    if backbone.family == "mmdit":
        install_mmdit(backbone, sites, reducer, opts, handle, wrap_attention)
    else:
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
def trace_reducers(model: Any, tracer: Tracer) -> Iterator[None]:
    """Call `tracer(phase)` (a context manager) around every reducer phase of the patched `model` while active.

    Phases: "plan" (a reducer's whole `plan`), inside it "score" (Laplacian, SiTo graph and scores) and
    "match" (bipartite matching), then "reduce" / "restore" (token plans) and "kv" (K/V source). E.g.
    `with tomesd.trace_reducers(pipe, lambda phase: torch.profiler.record_function(phase)): pipe(...)`.
    Without a patch (or method "none") there is nothing to trace; untraced forwards pay nothing.
    """
    handle = get_patch(model)
    if handle is None:
        yield
        return
    previous, handle.runtime.trace = handle.runtime.trace, tracer
    try:
        yield
    finally:
        handle.runtime.trace = previous


@contextlib.contextmanager
def patched(model: Any, ratio: Optional[float] = None, method: str = "tome", **options: Any) -> Iterator[PatchReport]:
    """`with tomesd.patched(pipe, method="bigain_tm", ratio=0.7) as report: ...` removes on exit."""
    report = apply_patch(model, ratio, method, **options)
    try:
        yield report
    finally:
        remove_patch(model)
