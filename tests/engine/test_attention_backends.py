"""Patched models and diffusers' attention backends (`set_attention_backend`) and parallel configs.

A spy replaces `dispatch_attention_fn` in every loaded module that imported it (diffusers' processors and
the engine), recording each call's `backend`; the global active backend that `set_attention_backend` also
sets is restored after every test.
"""

import pytest
import torch
from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import tomesd
from bigain.zoo import (
    METHODS,
    dit_inputs,
    flux_inputs,
    pixart_inputs,
    sd3_inputs,
    tiny_dit,
    tiny_flux,
    tiny_pixart,
    tiny_sd3,
    tiny_sd_unet,
    unet_inputs,
)
from tomesd.attention_backends import BackendSlots, dispatched_attention

pytestmark = pytest.mark.usefixtures("one_thread", "restore_active_backend")
MATH = AttentionBackendName._NATIVE_MATH


@pytest.fixture
def restore_active_backend():
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry._active_backend = active



def names(calls):
    return [None if b is None else AttentionBackendName(b).value for b in calls]


def forward(model, x):
    with torch.no_grad():
        return model(**x).sample


def set_backend(model, backend):
    model.set_attention_backend(backend)
    _AttentionBackendRegistry._active_backend = AttentionBackendName.NATIVE  # only the processors' own setting counts


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("when", ["before", "after"])
def test_patched_flux_dispatches_like_the_unpatched_model(dispatch_calls, method, when):
    """Every attention call of a patched Flux goes through `dispatch_attention_fn` with the user's backend,
    as unpatched; `remove_patch` leaves the backend on the stock processors."""
    model, x = tiny_flux(), flux_inputs(batch=2)
    set_backend(model, "_native_math")
    forward(model, x)
    unpatched = names(dispatch_calls)
    dispatch_calls.clear()
    model.reset_attention_backend()
    if when == "before":
        set_backend(model, "_native_math")
    tomesd.apply_patch(model, method=method, seed=0, blocks="all", **METHODS[method])
    if when == "after":
        set_backend(model, "_native_math")
    forward(model, x)
    assert unpatched == ["_native_math"] * 4
    assert names(dispatch_calls) == unpatched
    tomesd.remove_patch(model)
    assert {p._attention_backend for p in model.attn_processors.values()} == {MATH}


def cpu_backends():
    """Every diffusers backend except the `*_hub` ones (they download kernels from the Hub)."""
    return [b.value for b in AttentionBackendName if not b.value.endswith("_hub")]


@pytest.mark.slow
@pytest.mark.parametrize("backend", cpu_backends())
def test_every_backend_that_runs_on_cpu_runs_patched(dispatch_calls, backend):
    """Each backend the unpatched tiny Flux runs with on this machine also runs the patched one (ToMe and ToDo),
    with every call on that backend and the output within 1e-4 of the patched native-SDPA output."""
    model, x = tiny_flux(), flux_inputs(batch=2)
    try:
        set_backend(model, backend)
        forward(model, x)
    except (RuntimeError, ValueError, ImportError) as error:
        pytest.skip(f"{backend} does not run on this machine: {str(error)[:120]}")
    model.reset_attention_backend()
    for method in ("tome", "todo"):
        tomesd.apply_patch(model, method=method, seed=0, blocks="all", **METHODS[method])
        reference = forward(model, x)
        set_backend(model, backend)
        dispatch_calls.clear()
        tomesd.reseed(model, 0)
        out = forward(model, x)
        assert names(dispatch_calls) == [backend] * 4
        assert torch.allclose(out, reference, atol=1e-4), (method, (out - reference).abs().max())
        model.reset_attention_backend()
        tomesd.remove_patch(model)


BACKBONES = {
    "unet": (tiny_sd_unet, unet_inputs),
    "dit": (tiny_dit, dit_inputs),
    "pixart": (tiny_pixart, pixart_inputs),
    "sd3": (tiny_sd3, sd3_inputs),
}


def patched_processors(model):
    return [m.processor for m in model.modules() if isinstance(getattr(m, "processor", None), BackendSlots)]


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(METHODS))
def test_patched_sdpa_backbones_honour_a_backend_set_after_patching(dispatch_calls, backbone, method):
    """SD U-Net, DiT, PixArt and SD3 processors call SDPA themselves; patched, a backend set on the model
    runs every patched attention through `dispatch_attention_fn` with it (output within 1e-5 of SDPA).
    Without a backend the stock processors run as before (no dispatch on U-Net/DiT/PixArt)."""
    build, inputs = BACKBONES[backbone]
    model, x = build(), inputs(batch=2)
    tomesd.apply_patch(model, method=method, seed=0, **METHODS[method])
    reference = forward(model, x)
    if backbone != "sd3":  # SD3's K/V methods always dispatched (backend None, the active default)
        assert dispatch_calls == []
    assert set(dispatch_calls) <= {None}
    dispatch_calls.clear()
    set_backend(model, "_native_math")
    tomesd.reseed(model, 0)
    out = forward(model, x)
    assert names(dispatch_calls) == ["_native_math"] * len(patched_processors(model))
    assert torch.allclose(out, reference, atol=1e-5), (out - reference).abs().max()
    model.reset_attention_backend()
    dispatch_calls.clear()
    tomesd.reseed(model, 0)
    assert torch.equal(forward(model, x), reference)  # reset: the stock processors again, same bits


def test_dispatched_attention_equals_the_sdpa_processor():
    """`dispatched_attention` reproduces `AttnProcessor2_0`: masks, 4-D input, group norm, residual, rescale."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=12, norm_num_groups=4,
                     residual_connection=True, rescale_output_factor=2.0, processor=AttnProcessor2_0()).eval()
    image = torch.randn(2, 16, 4, 4)
    text = torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    self_attn = Attention(query_dim=16, heads=2, dim_head=8, qk_norm="layer_norm").eval()
    tokens = torch.randn(2, 9, 16)
    with torch.no_grad():
        for module, args in ((attn, (image, text, mask)), (self_attn, (tokens, None, None))):
            expected = AttnProcessor2_0()(module, *args)
            for backend in ("native", "_native_math"):
                got = dispatched_attention(module, *args, backend=AttentionBackendName(backend))
                assert torch.allclose(got, expected, atol=1e-5), (backend, (got - expected).abs().max())


CONTEXT_PARALLEL = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))


@pytest.mark.parametrize("build", [tiny_flux, tiny_sd_unet], ids=["flux", "unet"])
def test_context_parallelism_is_refused_at_apply_patch(build):
    model = build()
    for module in model.modules():  # what `enable_parallelism` records (it needs torch.distributed)
        if hasattr(getattr(module, "processor", None), "_parallel_config"):
            module.processor._parallel_config = CONTEXT_PARALLEL
    model._parallel_config = CONTEXT_PARALLEL
    with pytest.raises(NotImplementedError, match="context parallelism"):
        tomesd.apply_patch(model, ratio=0.5)
    assert tomesd.get_patch(model) is None


@pytest.mark.parametrize("backbone", ["flux", "unet"])
def test_context_parallelism_enabled_after_patching_is_refused_at_the_first_call(backbone):
    model, x = (tiny_flux(), flux_inputs()) if backbone == "flux" else (tiny_sd_unet(), unet_inputs())
    tomesd.apply_patch(model, ratio=0.5, **({"blocks": "all"} if backbone == "flux" else {}))
    for processor in patched_processors(model):  # `enable_parallelism` sets every processor with the slot
        processor._parallel_config = CONTEXT_PARALLEL
    with pytest.raises(NotImplementedError, match="context parallelism"):
        forward(model, x)
    tomesd.remove_patch(model)
    if backbone == "flux":  # forwarded to the stock processor, which keeps it after remove_patch
        assert all(p._parallel_config is CONTEXT_PARALLEL for p in model.attn_processors.values())
