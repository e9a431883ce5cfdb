"""`torch.compile(model, fullgraph=True)` of patched models on every backbone, at each method's default options.

Dynamo's `backend="eager"` is used: `fullgraph=True` raises at tracing on any graph break, whatever runs the
graph, so it proves one graph without paying for AOT/inductor compilation on a shared CPU. Compiled outputs
must equal eager ones within 1e-5 (absolute): the first call after `apply_patch`, and the first call after
`tomesd.reseed` (which restarts the random stream, so it must repeat the first call's result).

The default run covers Flux with every method (the backbone that did not compile), SD3 + ToDo and
PixArt + SiTo; `BIGAIN_COMPILE_MATRIX=1` runs every backbone x method pair (U-Net tracing is the slow
part: about 5 minutes on 2 CPU cores). tests/test_engine_compat.py compiles DiT with every method
(aot_eager) and the SD U-Net with ToMe (inductor) in the default run.
"""
import os

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

import tomesd
from bigain.zoo import (
    dit_inputs,
    flux_image_ids,
    flux_inputs,
    pixart_inputs,
    sd3_inputs,
    tiny_dit,
    tiny_flux,
    tiny_pixart,
    tiny_sd3,
    tiny_sd_unet,
    tiny_sdxl_unet,
    unet_inputs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["tome", "bigain_tm", "todo", "bigain_td", "sito"]
BACKBONES = {
    "unet": (tiny_sd_unet, unet_inputs),
    "sdxl": (tiny_sdxl_unet, unet_inputs),
    "dit": (tiny_dit, dit_inputs),
    "pixart": (tiny_pixart, pixart_inputs),
    "sd3": (tiny_sd3, sd3_inputs),
    # 2 double- and 1 single-stream block: the default blocks (1, 2) patch one of each kind.
    "flux": (lambda: tiny_flux(num_layers=2, num_single_layers=1), flux_inputs),
}
# SDXL has no attention at full resolution: its default-equivalent setting is the first level with attention.
OPTIONS = {"sdxl": {"max_downsample": 2}}
DEFAULT_RUN = {("pixart", "sito"), ("sd3", "todo")}
DEFAULT_RUN |= {("flux", method) for method in METHODS}
FULL_MATRIX = os.environ.get("BIGAIN_COMPILE_MATRIX") == "1"
TOLERANCE = 1e-5


def pairs():
    for backbone in BACKBONES:
        for method in METHODS:
            marks = [] if (backbone, method) in DEFAULT_RUN else [pytest.mark.skipif(
                not FULL_MATRIX, reason="full compile matrix: set BIGAIN_COMPILE_MATRIX=1")]
            yield pytest.param(backbone, method, id=f"{backbone}-{method}", marks=marks)


def assert_close(out, ref):
    assert torch.allclose(out, ref, atol=TOLERANCE, rtol=0), (out - ref).abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("backbone,method", list(pairs()))
def test_patched_model_compiles_as_one_graph(backbone, method):
    build, inputs = BACKBONES[backbone]
    model, x = build(), inputs(batch=2)
    torch._dynamo.reset()
    tomesd.apply_patch(model, method=method, seed=0, **OPTIONS.get(backbone, {}))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        first = compiled(**x).sample
        tomesd.reseed(model, 0)
        eager = model(**x).sample
        tomesd.reseed(model, 0)
        again = compiled(**x).sample
        tomesd.remove_patch(model)
        plain = model(**x).sample
    assert_close(first, eager)
    assert_close(again, eager)
    assert not torch.allclose(eager, plain, atol=1e-4), "the patch must change the output"


@pytest.mark.slow
def test_compiled_flux_checks_the_assumed_token_grid():
    """Compiled, the Flux grid comes from shapes (a square, or `latent_size`); ids of another layout fail loudly."""
    model = tiny_flux(num_layers=1, num_single_layers=1)
    x = flux_inputs(batch=2, size=(4, 4))
    torch._dynamo.reset()
    tomesd.apply_patch(model, method="todo", blocks="all")
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        compiled(**x)
        x["img_ids"] = flux_image_ids(2, 8)  # 16 tokens, a 2x8 grid: not the 4x4 one the graph assumed
        with pytest.raises(RuntimeError, match="not the row-major 4x4 grid"):
            compiled(**x)
        torch._dynamo.reset()
        tomesd.apply_patch(model, method="todo", blocks="all", latent_size=(2, 8))  # the grid, named up front
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        assert_close(compiled(**x).sample, model(**x).sample)
    tomesd.remove_patch(model)


@pytest.mark.slow
def test_patched_attention_through_a_backend_compiles_as_one_graph():
    """A backend set on a patched DiT (its attention then runs through `dispatch_attention_fn`) still compiles."""
    model, x = tiny_dit(), dit_inputs(batch=2)
    active = _AttentionBackendRegistry._active_backend
    torch._dynamo.reset()
    try:
        tomesd.apply_patch(model, method="bigain_td", seed=0)
        model.set_attention_backend("_native_math")
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        with torch.no_grad():
            assert_close(compiled(**x).sample, model(**x).sample)
    finally:
        _AttentionBackendRegistry._active_backend = active
