"""Public API: `apply_patch` / `remove_patch` (drop-in for upstream tomesd), `patched`, `reseed`."""
from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator, Optional

from tomesd import reducers  # noqa: F401  (registers the built-in methods)
from tomesd.attention_backends import check_model_parallelism
from tomesd.backbones import find_backbone, resolve_denoiser, select_sites
from tomesd.hooks import RuntimeState
from tomesd.install import PatchHandle, install_blocks
from tomesd.mmdit import install_mmdit
from tomesd.options import as_dict, build_options
from tomesd.reducers.base import Tracer
from tomesd.registry import canonical_name, get_reducer
from tomesd.report import PatchReport, summarize_levels
from tomesd.video import check_temporal_block, install_video

__all__ = ["PatchHandle", "PatchReport", "apply_patch", "get_patch", "patched", "remove_patch", "reseed",
           "trace_reducers"]

PATCH_ATTR = "_bigain_patch"


def apply_patch(model: Any, ratio: Optional[float] = None, method: str = "tome", *, seed: Optional[int] = None,
                latent_size: Optional[int | tuple[int, int]] = None, st: Optional[int] = None,
                **options: Any) -> PatchReport:
    """Install a token reducer in a diffusers U-Net / DiT / PixArt model, a declared family's (SD3, FLUX.1, FLUX.2,
    Qwen-Image, Wan 2.x; `tomesd.families`) or a pipeline holding one.

    Important args:
        method: "tome" (default), "bigain_tm"/"lgtm", "todo", "bigain_td"/"iekvd", "sito", "none".
        ratio:  fraction of tokens merged (ToMe, BiGain_TM) or pruned (SiTo); 0.3-0.7 is typical.
        df / alpha: K/V downsample factor (ToDo, BiGain_TD) and the BiGain_TD blend.
        seed:   seeds the patch's own random stream (random ToMe destinations, SiTo noise).
        plan_reuse / plan_every: one plan per level per forward ("level"), plans every k-th call.
        latent_size: the run's latent side (or (H, W)) for the report's token counts; default: the config's.
        st:     video families: frames per spatio-temporal block (ToMe, SiTo); default 1, every frame on its own.
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
    temporal_block = check_temporal_block(backbone, name, st)
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
    handle = PatchHandle(runtime, report, temporal_block=temporal_block)
    install = {"mmdit": install_mmdit, "video": install_video}.get(backbone.family, install_blocks)
    install(backbone, sites, reducer, opts, handle)
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
