"""The matrix's features: each a function (backbone, method, options) -> Cell that RUNS the case.

Every function builds fresh tiny models (same seed, same weights), runs the feature unpatched for reference,
then patched, and judges with `eval.compat.cells` (ok / refused / failing / n/a). Nothing is looked up or guessed.
"""
from __future__ import annotations

import contextlib
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import tomesd
from bigain.storage import atomic_save_safetensors
from eval.compat.cells import (
    Cell,
    ReductionCounter,
    describe,
    first_tensor,
    from_patched_error,
    judge,
    patched_vs_plain,
)
from eval.compat.subjects import BATCH, RESOLUTION, Backbone, build_pipeline

SEED = 0
CACHE_STEPS = 6  # denoising steps of the cache-hook and pipeline cases: enough for every cache to skip some
COMPILE_TOL = 1e-4  # compiled vs eager patched output, float32 (dynamo's eager backend reorders nothing)


@dataclass(frozen=True)
class RunOptions:
    """Knobs of a matrix run that features read."""

    compile_backend: str = "eager"  # dynamo backend for the fullgraph check ("inductor" for codegen too)


FeatureFn = Callable[[Backbone, str, RunOptions], Cell]


def patch(model: Any, backbone: Backbone, method: str) -> Any:
    """apply_patch at the method's default options (plus the backbone's placement), seeded."""
    return tomesd.apply_patch(model, method=method, seed=SEED, **backbone.placement)


def forward(model: Any, backbone: Backbone, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One no-grad denoiser call on the backbone's inputs; the output sample."""
    args, kwargs = backbone.inputs(dtype=dtype)
    with torch.no_grad():
        return first_tensor(model(*args, **kwargs))


def simple(backbone: Backbone, method: str, prepare: Callable[[Any], Any], dtype: torch.dtype = torch.float32,
           **kw: Any) -> Cell:
    """A feature that only changes how the denoiser is set up, then one forward."""
    return patched_vs_plain(lambda: backbone.build(dtype=dtype), lambda m: patch(m, backbone, method), prepare,
                            lambda m: forward(m, backbone, dtype), **kw)


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------

def compile_fullgraph(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """`torch.compile(model, fullgraph=True)` after apply_patch: first call, then again after `tomesd.reseed`;
    each equal to the eager patched output (COMPILE_TOL). A patched failure is n/a if the unpatched model fails too."""
    model = backbone.build()
    unpatched = forward(model, backbone)
    counter = ReductionCounter()
    try:
        patch(model, backbone, method)
        with tomesd.trace_reducers(model, counter):
            tomesd.reseed(model, SEED)
            eager = forward(model, backbone)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=opts.compile_backend)
        tomesd.reseed(model, SEED)
        first = forward(compiled, backbone)
        tomesd.reseed(model, SEED)
        again = forward(compiled, backbone)
    except Exception as err:  # noqa: BLE001
        cell = from_patched_error(err)
        if cell.status == "failing" and not compiles_unpatched(backbone, opts):
            return Cell("n/a", f"the unpatched model does not compile with fullgraph=True either: {cell.reason}")
        return cell
    finally:
        torch._dynamo.reset()
    for label, out in (("first call", first), ("after reseed", again)):
        gap = (out - eager).abs().max().item()
        if not gap <= COMPILE_TOL:
            return Cell("failing", f"compiled output ({label}) differs from eager by {gap:.3g} > {COMPILE_TOL:g}")
    return judge(first, unpatched, counter, f"backend {opts.compile_backend}, compiled == eager within {COMPILE_TOL:g}")


def compiles_unpatched(backbone: Backbone, opts: RunOptions) -> bool:
    """Whether the unpatched backbone compiles with fullgraph=True (for telling the backbone's breaks from ours)."""
    torch._dynamo.reset()
    try:
        forward(torch.compile(backbone.build(), fullgraph=True, backend=opts.compile_backend), backbone)
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# Attention backends
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def active_backend(name: str) -> Iterator[None]:
    """diffusers' process-wide active attention backend (what `dispatch_attention_fn(backend=None)` uses, and what
    `set_attention_backend` also sets) = `name` for the block, restored after."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    saved = _AttentionBackendRegistry._active_backend
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName(name))
    try:
        yield
    finally:
        _AttentionBackendRegistry.set_active_backend(saved)


def other_backend(name: str) -> str:
    """A CPU backend other than `name`, made process-wide active while a backend cell runs its model: calls that
    only follow the global default, not the model's own processors, then miss the spy."""
    return "_native_math" if name == "native" else "native"


@contextlib.contextmanager
def backend_spy(name: str) -> Iterator[list[int]]:
    """Count calls of the function diffusers registered for backend `name` (whoever dispatches to it), with another
    backend active process-wide, so only calls that carry `name` themselves count."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    key = AttentionBackendName(name)
    original = _AttentionBackendRegistry._backends[key]
    calls = [0]

    @functools.wraps(original)
    def spy(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    _AttentionBackendRegistry._backends[key] = spy
    try:
        with active_backend(other_backend(name)):
            yield calls
    finally:
        _AttentionBackendRegistry._backends[key] = original


def attention_backend(name: str) -> FeatureFn:
    """`model.set_attention_backend(name)` before and after apply_patch: the backend is "used" when its registered
    function runs as many times as on the unpatched model (a spy on diffusers' backend registry). While the model
    runs another backend is active process-wide (`set_attention_backend` also sets the global default, which a
    second model or a later call may change), so a call counts only when the processor itself carries `name`."""

    def feature(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
        why = backend_unusable(name)
        if why:
            return Cell("n/a", f"the backend does not run here: {why}")
        try:
            plain = backbone.build()
            plain.set_attention_backend(name)
            with backend_spy(name) as calls:
                reference = forward(plain, backbone)
            expected = calls[0]
        except Exception as err:  # noqa: BLE001
            return Cell("n/a", f"unpatched too: {describe(err)}")
        results = []
        for order in ("before", "after"):
            model, counter = backbone.build(), ReductionCounter()
            try:
                if order == "before":
                    model.set_attention_backend(name)
                patch(model, backbone, method)
                if order == "after":
                    model.set_attention_backend(name)
                with backend_spy(name) as calls, tomesd.trace_reducers(model, counter):
                    out = forward(model, backbone)
            except Exception as err:  # noqa: BLE001
                cell = from_patched_error(err)
                return Cell(cell.status, f"backend set {order} apply_patch: {cell.reason}")
            results.append((order, calls[0], out, counter))
        if expected == 0 and all(n == 0 for _, n, _, _ in results):
            return Cell("n/a", f"{stock_processor(plain)} calls SDPA directly: set_attention_backend has no effect, "
                               "patched or not")
        counts = "; ".join(f"set {order} apply_patch: {n} of {expected}" for order, n, _, _ in results)
        if expected == 0:  # stock processors call SDPA: the patch's processors honour a backend set after patching
            results = [r for r in results if r[0] == "after"]
        if any(n < expected or n == 0 for _, n, _, _ in results):
            return Cell("failing", f"attention calls that ran on {name}, patched vs unpatched ({counts}); the rest "
                                   "ran on the process-wide default backend or outside diffusers' dispatch")
        for _order, _n, out, counter in results:
            cell = judge(out, reference, counter)
            if cell.status != "ok":
                return cell
        if expected == 0:
            return Cell("ok", f"{results[0][1]} patched attention calls via {name} with the backend set after "
                              "apply_patch (unpatched diffusers ignores it here, and so does the patch when it is set "
                              f"before: docs/toolbox.md); {results[0][3].reductions} reductions")
        return Cell("ok", f"{results[0][1]} attention calls via {name} with the backend set before or after "
                          f"apply_patch (unpatched: {expected}); {results[0][3].reductions} reductions")

    feature.__doc__ = f"set_attention_backend({name!r}) honoured by the patched model"
    return feature


@functools.lru_cache(maxsize=None)
def backend_unusable(name: str) -> str:
    """Why backend `name` cannot run here ("" when it can): diffusers' package check, its Hub kernel fetch (the
    *_hub backends), then `dispatch_attention_fn(backend=name)` on small CPU tensors."""
    from diffusers.models import attention_dispatch as dispatch

    backend = dispatch.AttentionBackendName(name)
    if name.endswith("_hub"):  # never reach for the network from a compatibility check
        return "fetches its kernel from the Hugging Face Hub at first use; not tried (offline check)"
    q = torch.randn(1, 16, 2, 8, generator=torch.Generator().manual_seed(SEED))  # (batch, tokens, heads, head dim)
    try:
        dispatch._check_attention_backend_requirements(backend)
        dispatch._maybe_download_kernel_for_backend(backend)
        dispatch.dispatch_attention_fn(q, q, q, backend=backend)
        return ""
    except Exception as err:  # noqa: BLE001
        return describe(err)


def stock_processor(model: torch.nn.Module) -> str:
    """Class name of the first attention processor of `model`."""
    return next(type(m.processor).__name__ for m in model.modules() if hasattr(m, "processor"))


def backend_names() -> list[str]:
    """Every member of diffusers' AttentionBackendName, in its declared order."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


# ----------------------------------------------------------------------------------------------
# diffusers cache hooks
# ----------------------------------------------------------------------------------------------

def cache_config(kind: str, clock: dict[str, float]) -> Any:
    """A diffusers cache config that skips work within CACHE_STEPS tiny steps; `clock["t"]` is the current timestep."""
    import diffusers

    now = lambda: clock["t"]  # noqa: E731
    if kind == "FirstBlockCache":
        return diffusers.FirstBlockCacheConfig(threshold=0.5)
    if kind == "TaylorSeer":
        return diffusers.TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                               taylor_factors_dtype=torch.float32)
    if kind == "MagCache":
        return diffusers.MagCacheConfig(threshold=0.5, num_inference_steps=CACHE_STEPS,
                                        mag_ratios=[1.0] + [0.98] * (CACHE_STEPS - 1), retention_ratio=0.2)
    if kind == "PAB":
        return diffusers.PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                         spatial_attention_timestep_skip_range=(-1, 1001),
                                                         current_timestep_callback=now)
    if kind == "FasterCache":
        return diffusers.FasterCacheConfig(spatial_attention_block_skip_range=2,
                                           current_timestep_callback=now, attention_weight_callback=lambda _: 0.5,
                                           is_guidance_distilled=True, tensor_format="BCHW")
    raise ValueError(f"unknown cache {kind!r}")


CACHE_KINDS = ("FirstBlockCache", "TaylorSeer", "MagCache", "PAB", "FasterCache")


def denoise_steps(model: Any, backbone: Backbone, clock: dict[str, float]) -> torch.Tensor:
    """CACHE_STEPS denoiser calls at falling timesteps inside a "cond" cache context; the stacked outputs."""
    outs = []
    context = getattr(model, "cache_context", None)
    for t in torch.linspace(999, 50, CACHE_STEPS).round().long().tolist():
        clock["t"] = t
        args, kwargs = backbone.inputs(timesteps=torch.full((BATCH,), t))
        with torch.no_grad(), (context("cond") if context else contextlib.nullcontext()):
            outs.append(first_tensor(model(*args, **kwargs)))
    return torch.stack(outs)


def cache_hook(kind: str) -> FeatureFn:
    """`model.enable_cache(<kind> config)` after apply_patch, over CACHE_STEPS steps."""

    def feature(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
        clock = {"t": 999.0}

        def prepare(model: Any) -> Any:
            model.enable_cache(cache_config(kind, clock))
            return model

        return patched_vs_plain(backbone.build, lambda m: patch(m, backbone, method), prepare,
                                lambda m: denoise_steps(m, backbone, clock))

    feature.__doc__ = f"diffusers {kind} via enable_cache, {CACHE_STEPS} steps"
    return feature


# ----------------------------------------------------------------------------------------------
# Pipelines: cache-dit, model CPU offload, LoRA
# ----------------------------------------------------------------------------------------------

def pipeline_call(pipe: Any, backbone: Backbone, steps: int = CACHE_STEPS) -> torch.Tensor:
    """A whole tiny pipeline run from prompt embeddings to latents (no text encoder, no decode)."""
    args, kwargs = backbone.inputs()
    call: dict[str, Any] = dict(num_inference_steps=steps, height=RESOLUTION, width=RESOLUTION, output_type="latent",
                                generator=torch.Generator().manual_seed(SEED),
                                prompt_embeds=kwargs["encoder_hidden_states"][:1])
    if "pooled_projections" in kwargs:
        call["pooled_prompt_embeds"] = kwargs["pooled_projections"][:1]
    if backbone.spec.kind in ("flux", "flux2"):
        call["guidance_scale"] = 3.5
    if backbone.spec.kind == "qwen_image":
        call["prompt_embeds_mask"] = torch.ones(call["prompt_embeds"].shape[:2], dtype=torch.long)
    if backbone.spec.kind == "wan":  # no negative prompt embeddings: no CFG
        call.update(num_frames=backbone.spec.frames, guidance_scale=1.0)
    with torch.no_grad():
        return first_tensor(pipe(**call))


def dbcache(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """cache-dit's DBCache (`cache_dit.enable_cache`) on the tiny FLUX pipeline, apply_patch first."""
    if backbone.spec.kind != "flux":
        return Cell("n/a", "not run: the cache-dit case is the tiny FLUX pipeline")
    try:
        import cache_dit
    except ImportError as err:
        return Cell("n/a", f"cache-dit is not installed: {describe(err)}")

    def prepare(pipe: Any) -> Any:
        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=1))
        return pipe

    return patched_vs_plain(lambda: build_pipeline(backbone, SEED), lambda p: patch(p, backbone, method), prepare,
                            lambda p: pipeline_call(p, backbone))


def model_cpu_offload(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """`pipe.enable_model_cpu_offload()` after apply_patch, then a pipeline run; diffusers needs an accelerator."""
    if backbone.spec.kind in ("dit",):  # DiTPipeline takes class labels, not prompt embeddings
        runner = lambda p: forward(p.transformer, backbone)  # noqa: E731
    else:
        runner = lambda p: pipeline_call(p, backbone, steps=2)  # noqa: E731

    def prepare(pipe: Any) -> Any:
        pipe.enable_model_cpu_offload()
        return pipe

    return patched_vs_plain(lambda: build_pipeline(backbone, SEED), lambda p: patch(p, backbone, method), prepare,
                            runner, plain_failure="refused")


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_RANK = 4


def lora_state_dict(denoiser: torch.nn.Module, prefix: str, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA (PEFT key layout, `prefix.` first) on every attention projection, nonzero A and B."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS) and ".attn" in f".{name}":
            state[f"{prefix}.{name}.lora_A.weight"] = torch.randn(LORA_RANK, module.in_features, generator=gen) * 0.1
            state[f"{prefix}.{name}.lora_B.weight"] = torch.randn(module.out_features, LORA_RANK, generator=gen) * 0.1
    return state


def lora_fused(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """A LoRA saved as safetensors, `pipe.load_lora_weights` + `pipe.fuse_lora()` after apply_patch."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lora.safetensors"
        atomic_save_safetensors(lora_state_dict(backbone.build(seed=SEED), backbone.denoiser_name), path)

        def prepare(pipe: Any) -> Any:
            pipe.load_lora_weights(tmp, weight_name=path.name, adapter_name="compat")
            pipe.fuse_lora()
            return pipe

        denoiser = lambda p: getattr(p, backbone.denoiser_name)  # noqa: E731
        plain = forward(backbone.build(seed=SEED), backbone)
        cell = patched_vs_plain(lambda: build_pipeline(backbone, SEED), lambda p: patch(p, backbone, method), prepare,
                                lambda p: forward(denoiser(p), backbone), trace_target=denoiser)
        if cell.status == "ok":  # the case itself: the fused LoRA must change the unpatched output
            with_lora = forward(denoiser(prepare(build_pipeline(backbone, SEED))), backbone)
            if torch.equal(with_lora, plain):
                return Cell("failing", "the LoRA had no effect on the unpatched pipeline (case error)")
        return cell


# ----------------------------------------------------------------------------------------------
# Model-level features: quantization, offloading, casting, dtypes, processors, tracing
# ----------------------------------------------------------------------------------------------

def torchao_int8(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """torchao int8 weight-only quantization (`quantize_(model, Int8WeightOnlyConfig())`) after apply_patch."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as err:
        return Cell("n/a", f"torchao is not installed: {describe(err)}")

    def prepare(model: Any) -> Any:
        quantize_(model, Int8WeightOnlyConfig())
        return model

    return simple(backbone, method, prepare)


def group_offload(level: str) -> FeatureFn:
    """`model.enable_group_offload(cpu, offload_type=level)` after apply_patch (CPU to CPU here)."""

    def feature(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
        def prepare(model: Any) -> Any:
            model.enable_group_offload(onload_device=torch.device("cpu"), offload_type=level,
                                       num_blocks_per_group=1 if level == "block_level" else None)
            return model

        return simple(backbone, method, prepare)

    feature.__doc__ = f"group offloading, {level}"
    return feature


def layerwise_casting(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """`model.enable_layerwise_casting(storage_dtype=bfloat16, compute_dtype=float32)` after apply_patch."""

    def prepare(model: Any) -> Any:
        model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
        return model

    return simple(backbone, method, prepare)


def weights_in(dtype: torch.dtype) -> FeatureFn:
    """The whole model and its inputs in `dtype` (bf16 / fp16 checkpoints)."""

    def feature(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
        return simple(backbone, method, lambda m: m, dtype=dtype)

    feature.__doc__ = f"weights and activations in {dtype}"
    return feature


def ip_adapter_style(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """A custom processor on every attention (a subclass of the stock one that adds to its output, like an
    IP-Adapter processor) set with `set_attn_processor` after apply_patch: it must run, and the patch must keep
    reducing around it or refuse loudly."""
    calls = [0]

    def prepare(model: Any) -> Any:
        stock = backbone.build().attn_processors  # the unpatched processor classes
        model.set_attn_processor({name: custom_processor(type(p), calls)() for name, p in stock.items()})
        return model

    cell = simple(backbone, method, prepare)
    calls[0] = 0
    if cell.status == "ok":
        model = patch_then(backbone, method, prepare)
        forward(model, backbone)
        if calls[0] == 0:
            return Cell("failing", "the custom processor was silently dropped: it never ran while patched")
        return Cell("ok", f"custom processor ran {calls[0]} times; {cell.reason}")
    return cell


def patch_then(backbone: Backbone, method: str, prepare: Callable[[Any], Any]) -> Any:
    """A fresh denoiser, patched, then prepared (the order every model-level feature uses)."""
    model = backbone.build()
    patch(model, backbone, method)
    return prepare(model)




def custom_processor(base: type, calls: list[int]) -> type:
    """A subclass of `base` whose call counts itself and adds 1% of the attention output (same signature)."""

    @functools.wraps(base.__call__)
    def __call__(self: Any, attn: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        out = base.__call__(self, attn, hidden_states, *args, **kwargs)
        return tuple(o * 1.01 for o in out) if isinstance(out, tuple) else out * 1.01

    return type(f"IPStyle{base.__name__}", (base,), {"__call__": __call__})


def trace_reducers(backbone: Backbone, method: str, opts: RunOptions) -> Cell:
    """`tomesd.trace_reducers` sees the reducer phases, and tracing leaves the output unchanged."""
    model = backbone.build()
    unpatched = forward(model, backbone)
    counter = ReductionCounter()
    try:
        patch(model, backbone, method)
        tomesd.reseed(model, SEED)
        untraced = forward(model, backbone)
        tomesd.reseed(model, SEED)
        with tomesd.trace_reducers(model, counter):
            traced = forward(model, backbone)
    except Exception as err:  # noqa: BLE001
        return from_patched_error(err)
    if not torch.equal(traced, untraced):
        return Cell("failing", "tracing changed the output")
    phases = ", ".join(f"{p} {n}" for p, n in sorted(counter.phases.items()))
    return judge(traced, unpatched, counter, f"phases seen: {phases}")


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

def all_features() -> dict[str, FeatureFn]:
    """Feature name -> function, in matrix order (attention backends from diffusers' enum)."""
    features: dict[str, FeatureFn] = {"compile_fullgraph": compile_fullgraph}
    features.update({f"backend:{name}": attention_backend(name) for name in backend_names()})
    features.update({f"cache:{kind}": cache_hook(kind) for kind in CACHE_KINDS})
    features.update({
        "cache_dit_dbcache": dbcache, "torchao_int8_weight_only": torchao_int8,
        "group_offload_block": group_offload("block_level"), "group_offload_leaf": group_offload("leaf_level"),
        "model_cpu_offload": model_cpu_offload, "layerwise_casting_bf16": layerwise_casting,
        "weights_bf16": weights_in(torch.bfloat16), "weights_fp16": weights_in(torch.float16),
        "lora_fused": lora_fused, "ip_adapter_style_processor": ip_adapter_style, "trace_reducers": trace_reducers,
    })
    return features
