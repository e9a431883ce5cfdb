"""The patch composed with diffusers' model hooks: cache hooks on Flux, group offloading and layerwise casting.

Each case checks that the hook still works on the patched model (same result as the patch alone where the
hook is exact) and that the patch still reduces under it (the output differs from the same hook unpatched).
"""
import pytest
import torch
from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks import apply_group_offloading

import tomesd
from bigain.zoo import dit_inputs, flux_inputs, sd3_inputs, tiny_dit, tiny_flux, tiny_sd3, tiny_sd_unet, unet_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONES = {
    "unet": (tiny_sd_unet, unet_inputs),
    "dit": (tiny_dit, dit_inputs),
    "sd3": (tiny_sd3, sd3_inputs),
    "flux": (tiny_flux, flux_inputs),
}
PATCH = {"method": "tome", "ratio": 0.5, "seed": 0}
CPU = torch.device("cpu")


def forward(model, x):
    with torch.no_grad():
        return model(**x).sample


def flux_steps(model, steps=4):
    """A few denoising calls at decreasing timesteps inside the cache context a Flux pipeline opens."""
    outs = []
    with model.cache_context("cond"):
        for t in torch.linspace(0.9, 0.3, steps):
            x = flux_inputs(batch=2)
            x["timestep"] = t.expand(2)
            outs.append(forward(model, x))
    return outs


@pytest.mark.parametrize("config", [FirstBlockCacheConfig(threshold=0.5),
                                    TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1)],
                         ids=["first_block_cache", "taylorseer"])
def test_cache_hooks_on_a_patched_flux(config):
    """Cache on, patch on (every block, so the cache's first block is patched too): the first step, which
    the cache computes in full, equals the patch alone; the cache then reuses work (some later step differs
    from the patch alone); every step is finite and differs from the cache without the patch."""
    patched_alone = tiny_flux()
    tomesd.apply_patch(patched_alone, blocks="all", **PATCH)
    alone_steps = flux_steps(patched_alone)
    cached, both = tiny_flux(), tiny_flux()
    cached.enable_cache(config)
    both.enable_cache(config)
    tomesd.apply_patch(both, blocks="all", **PATCH)
    plain_steps, patched_steps = flux_steps(cached), flux_steps(both)
    assert torch.equal(patched_steps[0], alone_steps[0])
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(alone_steps[1:], patched_steps[1:]))
    for plain, patched in zip(plain_steps, patched_steps):
        assert torch.isfinite(patched).all()
        assert not torch.allclose(plain, patched, atol=1e-4)
    tomesd.remove_patch(both)
    both.disable_cache()
    cached.disable_cache()
    assert torch.equal(flux_steps(both, 1)[0], flux_steps(cached, 1)[0])


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("offload", ["block_level", "leaf_level"])
def test_group_offloading_on_patched_models(backbone, offload):
    """`apply_group_offloading` (CPU onload) before or after the patch: same output as the patch alone."""
    build, inputs = BACKBONES[backbone]
    x = inputs(batch=2)
    alone = build()
    tomesd.apply_patch(alone, **PATCH)
    reference = forward(alone, x)
    options = {"num_blocks_per_group": 1} if offload == "block_level" else {}
    for order in ("offload_first", "patch_first"):
        model = build()
        if order == "patch_first":
            tomesd.apply_patch(model, **PATCH)
        apply_group_offloading(model, onload_device=CPU, offload_device=CPU, offload_type=offload, **options)
        plain = forward(model, x)
        if order == "offload_first":
            tomesd.apply_patch(model, **PATCH)
        else:
            tomesd.reseed(model, 0)
        out = forward(model, x)
        assert torch.allclose(out, reference, atol=1e-6), (order, (out - reference).abs().max())
        if order == "offload_first":
            assert not torch.allclose(out, plain, atol=1e-4)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_layerwise_casting_on_patched_models(backbone):
    """bf16 weight storage, fp32 compute: the patched model runs, reduces (differs from casting alone), and
    stays within bf16 rounding (5e-2) of the fp32 patched output."""
    build, inputs = BACKBONES[backbone]
    x = inputs(batch=2)
    full = build()
    tomesd.apply_patch(full, **PATCH)
    reference = forward(full, x)
    model = build()
    model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    plain = forward(model, x)
    tomesd.apply_patch(model, **PATCH)
    out = forward(model, x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.allclose(out, reference, atol=5e-2), (out - reference).abs().max()
    assert not torch.allclose(out, plain, atol=1e-4)
