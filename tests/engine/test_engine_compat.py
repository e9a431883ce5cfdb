"""Compatibility: upstream tomesd 0.1.3 parity, torch.compile, the context manager."""
import pytest
import torch

import tomesd
from bigain.zoo import dit_inputs, tiny_dit, tiny_sd_unet, unet_inputs
from eval.speed.upstream import load_upstream


@pytest.mark.parametrize("ratio,max_downsample", [(0.5, 1), (0.7, 2)])
def test_tome_no_rand_matches_upstream_tomesd(ratio, max_downsample):
    upstream = load_upstream()
    if upstream is None:
        pytest.skip("upstream tomesd not unpacked (python -m eval.speed.upstream installs it)")
    model = tiny_sd_unet()
    x = unet_inputs(batch=2)
    args = (x["sample"], x["timestep"], x["encoder_hidden_states"])  # upstream needs positional calls
    with torch.no_grad():
        base = model(*args).sample
        upstream.apply_patch(model, ratio=ratio, max_downsample=max_downsample, use_rand=False)
        theirs = model(*args).sample
        upstream.remove_patch(model)
        tomesd.apply_patch(model, ratio=ratio, max_downsample=max_downsample, use_rand=False)
        ours = model(*args).sample
        tomesd.remove_patch(model)
    assert not torch.allclose(theirs, base)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("bigain_tm", {"ratio": 0.5}), ("bigain_td", {"alpha": 0.5})])
def test_patched_model_under_torch_compile_matches_eager(method, options):
    model = tiny_dit()
    x = dit_inputs(batch=2)
    tomesd.apply_patch(model, method=method, **options)
    with torch.no_grad():
        eager = model(**x).sample
        compiled = torch.compile(model)
        out = compiled(**x).sample
    tomesd.remove_patch(model)
    assert torch.allclose(out, eager, atol=1e-4), (out - eager).abs().max()


DEFAULT_METHODS = ["tome", "bigain_tm", "todo", "bigain_td", "sito"]


def compile_and_compare(model, x, method, backend, **options):
    """Compiled (fullgraph) vs eager calls of one seeded patch: first call after apply_patch, the next
    call, and the first call after `tomesd.reseed`; returns the two eager outputs."""
    torch._dynamo.reset()
    tomesd.apply_patch(model, method=method, seed=0, **options)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        c1, c2 = compiled(**x).sample, compiled(**x).sample
        tomesd.reseed(model, 0)
        e1, e2 = model(**x).sample, model(**x).sample
        tomesd.reseed(model, 0)
        c1_again = compiled(**x).sample
    tomesd.remove_patch(model)
    for out, ref in ((c1, e1), (c2, e2), (c1_again, e1)):
        assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    return e1, e2


@pytest.mark.slow
@pytest.mark.parametrize("method", DEFAULT_METHODS)
def test_default_patched_forward_compiles_as_one_graph(method):
    """`torch.compile(fullgraph=True)` at every method's default options: no graph break, hence no host
    sync, `torch.Generator` or data-dependent shape, also on the first call and right after reseed."""
    e1, e2 = compile_and_compare(tiny_dit(), dit_inputs(batch=2), method, "aot_eager")
    if method == "tome":  # the random stream advances from call to call (new destinations)
        assert not torch.equal(e1, e2)


@pytest.mark.slow
def test_tome_random_destinations_compile_with_inductor_on_a_unet():
    """The counter-based draws (int64 hashing) give the eager bits under inductor too."""
    compile_and_compare(tiny_sd_unet(), unet_inputs(batch=2), "tome", "inductor", ratio=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("todo", {"stop_threshold": 0.3}),
                                            ("bigain_td", {"alpha_schedule": True, "stop_threshold": 0.2})])
def test_timestep_gate_compiles_as_one_graph_with_mixed_timesteps(method, options):
    x = dit_inputs(batch=3)
    x["timestep"] = torch.tensor([950, 100, 0])
    compile_and_compare(tiny_dit(), x, method, "aot_eager", **options)


def set_ff_chunking(model, chunk_size, dim):
    blocks = [m for m in model.modules() if hasattr(m, "set_chunk_feed_forward")]
    for block in blocks:
        block.set_chunk_feed_forward(chunk_size, dim)
    return blocks


@pytest.mark.parametrize("chunk_size,dim", [(16, 1), (1, 0)])
def test_merge_mlp_with_chunked_feed_forward(chunk_size, dim):
    """diffusers' feed-forward chunking calls ff per slice; merged, the ff runs once on the merged tokens."""
    model = tiny_sd_unet()
    x = unet_inputs(batch=2)
    options = dict(ratio=0.5, merge_mlp=True, use_rand=False)
    with torch.no_grad():
        with tomesd.patched(model, **options):
            unchunked = model(**x).sample
        blocks = set_ff_chunking(model, chunk_size, dim)
        plain_chunked = model(**x).sample
        with tomesd.patched(model, **options):
            chunked = model(**x).sample
            assert all(b._chunk_size == chunk_size for b in blocks)  # restored after every forward
        after = model(**x).sample
    assert torch.equal(chunked, unchunked)
    assert not torch.allclose(chunked, plain_chunked)
    assert torch.equal(after, plain_chunked) and all(b._chunk_size == chunk_size for b in blocks)


def test_chunk_setting_survives_a_failed_patched_forward():
    model = tiny_sd_unet()
    blocks = set_ff_chunking(model, 16, 1)
    tomesd.apply_patch(model, ratio=0.5, merge_mlp=True)
    x = unet_inputs(batch=2)
    x["encoder_hidden_states"] = x["encoder_hidden_states"][:, :, :3]  # wrong width: attn2 raises
    with pytest.raises(RuntimeError), torch.no_grad():
        model(**x)
    assert all(b._chunk_size == 16 for b in blocks)
    tomesd.remove_patch(model)
    assert all(b._chunk_size == 16 for b in blocks)


def test_processor_set_after_patching_is_wrapped_and_restored_on_remove():
    """Like `enable_xformers_memory_efficient_attention()` after `apply_patch`: still reduced, and kept on remove."""
    from diffusers.models.attention_processor import AttnProcessor

    model = tiny_sd_unet()
    x = unet_inputs(batch=2)
    with torch.no_grad():
        tomesd.apply_patch(model, ratio=0.5, use_rand=False)
        patched_sdpa = model(**x).sample
        model.set_attn_processor(AttnProcessor())  # the math (non-SDPA) processor, set while patched
        patched_math = model(**x).sample
        tomesd.remove_patch(model)
        plain_math = model(**x).sample
    assert all(type(p) is AttnProcessor for p in model.attn_processors.values())
    assert torch.allclose(patched_math, patched_sdpa, atol=1e-5)  # still merged, now through AttnProcessor
    assert not torch.allclose(patched_math, plain_math, atol=1e-4)


def test_context_manager_restores_on_error():
    model = tiny_sd_unet()
    with pytest.raises(RuntimeError, match="boom"):
        with tomesd.patched(model, method="sito", ratio=0.5):
            assert tomesd.get_patch(model) is not None
            raise RuntimeError("boom")
    assert tomesd.get_patch(model) is None
    with torch.no_grad():
        model(**unet_inputs())
