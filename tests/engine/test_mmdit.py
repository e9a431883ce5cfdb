"""The engine on MMDiT backbones (SD3, SD3.5, Flux): every method, the engine's guarantees, image-only
reduction, rotary positions of reduced tokens, and the joint-attention processor against diffusers'."""
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

import tomesd
from bigain.zoo import (
    IDLE,
    METHODS,
    PER_SAMPLE,
    TEXT_TOKENS,
    flux_image_ids,
    flux_inputs,
    image_tokens,
    sd3_inputs,
    tiny_flux,
    tiny_sd3,
)
from tomesd.joint_attention import JointRope, joint_attention

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONES = {
    "sd3": (lambda: tiny_sd3(), sd3_inputs),
    "sd35": (lambda: tiny_sd3(dual=True), sd3_inputs),
    "flux": (lambda: tiny_flux(), flux_inputs),
}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, (build, _) in BACKBONES.items()}


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def family(name):
    return "flux" if name == "flux" else "sd3"


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(METHODS))
def test_method_on_backbone(models, backbone, method):
    model, make_inputs = models[backbone], BACKBONES[backbone][1]
    x = make_inputs(batch=2)
    base = run(model, x)
    report = tomesd.apply_patch(model, method=method, seed=0, blocks="all", **METHODS[method])
    assert report.family == "mmdit" and len(report.blocks) == (4 if backbone == "flux" else 2)
    out = run(model, x)
    tomesd.remove_patch(model)
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, base), "a non-zero setting must change the output"
    assert torch.equal(run(model, x), base), "apply -> remove must be bit-identical"
    tomesd.apply_patch(model, method=method, blocks="all", **IDLE[method])
    idle = run(model, x)
    tomesd.remove_patch(model)
    assert torch.equal(idle, base), "idle setting must equal the baseline"


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", ["tome", "sito"])
def test_merge_mlp_alone_acts_and_is_removed(models, backbone, method):
    """merge_mlp on joint blocks (`ff`) and on Flux single-stream blocks (`proj_mlp`)."""
    model, make_inputs = models[backbone], BACKBONES[backbone][1]
    x = make_inputs(batch=2)
    base = run(model, x)
    with tomesd.patched(model, method=method, ratio=0.5, blocks="all", merge_attn=False, merge_mlp=True, seed=0):
        out = run(model, x)
    assert torch.isfinite(out).all() and not torch.allclose(out, base)
    assert torch.equal(run(model, x), base)


def test_sd3_merge_mlp_with_feed_forward_chunking(models):
    model = models["sd3"]
    x = sd3_inputs(batch=2)
    with tomesd.patched(model, method="tome", ratio=0.5, use_rand=False, blocks="all", merge_mlp=True):
        plain = run(model, x)
    model.enable_forward_chunking(chunk_size=1, dim=1)
    try:
        with tomesd.patched(model, method="tome", ratio=0.5, use_rand=False, blocks="all", merge_mlp=True):
            chunked = run(model, x)
        assert all(b._chunk_size == 1 for b in model.transformer_blocks), "the user's chunk size is restored"
    finally:
        model.disable_forward_chunking()
    assert torch.allclose(plain, chunked, atol=1e-5)


def per_sample_timesteps(backbone):
    return torch.tensor([0.95, 0.1, 0.0]) if backbone == "flux" else torch.tensor([950.0, 100.0, 0.0])


def sample(inputs, i):
    """Sample i of a batch (ids are shared by the batch in Flux)."""
    return {k: (v[i:i + 1] if torch.is_tensor(v) and k not in ("img_ids", "txt_ids") else v) for k, v in inputs.items()}


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(PER_SAMPLE))
def test_mixed_timesteps_keyword_call_is_per_sample(models, backbone, method):
    model, make_inputs = models[backbone], BACKBONES[backbone][1]
    x = make_inputs(batch=3)
    x["timestep"] = per_sample_timesteps(backbone)  # gated differently by the thresholds above
    tomesd.apply_patch(model, method=method, seed=0, blocks="all", **PER_SAMPLE[method])
    try:
        tomesd.reseed(model, 0)
        batched = run(model, x)
        for i in range(3):
            tomesd.reseed(model, 0)
            assert torch.allclose(batched[i:i + 1], run(model, sample(x, i)), atol=1e-5), f"sample {i}"
    finally:
        tomesd.remove_patch(model)


def test_flux_gate_reads_timesteps_on_the_0_1000_scale(models):
    """Flux takes sigma = t/1000: a sample at sigma 0.1 is below stop_threshold 0.3, so it is not compressed."""
    model = models["flux"]
    x = sample(flux_inputs(batch=1), 0)
    x["timestep"] = torch.tensor([0.1])
    high = dict(x, timestep=torch.tensor([0.5]))
    base, base_high = run(model, x), run(model, high)
    with tomesd.patched(model, method="todo", df=2, stop_threshold=0.3, blocks="all"):
        assert torch.equal(run(model, x), base)
        assert not torch.allclose(run(model, high), base_high)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_positional_call_equals_keyword_call(models, backbone):
    model, make_inputs = models[backbone], BACKBONES[backbone][1]
    x = make_inputs(batch=2)
    names = ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"]
    names += ["img_ids", "txt_ids"] if backbone == "flux" else []
    with tomesd.patched(model, method="todo", df=2, blocks="all"):
        keyword = run(model, x)
        with torch.no_grad():
            positional = model(*[x[n] for n in names]).sample
    assert torch.equal(keyword, positional)


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(METHODS))
def test_non_square_odd_sizes_odd_batch(models, backbone, method):
    model, make_inputs = models[backbone], BACKBONES[backbone][1]
    size = (6, 10) if backbone == "flux" else (12, 20)
    x = make_inputs(batch=3, size=size)
    base = run(model, x)
    with tomesd.patched(model, method=method, blocks="all", seed=0, **METHODS[method]):
        out = run(model, x)
    assert out.shape == base.shape and torch.isfinite(out).all() and not torch.allclose(out, base)



@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", ["tome", "todo", "sito"])
def test_text_tokens_are_never_reduced(models, backbone, method, sdpa_calls):
    """Every attention sees all text tokens; only image tokens (or image K/V) shrink."""
    model, make_inputs = models[backbone], BACKBONES[backbone][1]
    x = make_inputs(batch=2)
    n_img = image_tokens(backbone, x)
    with tomesd.patched(model, method=method, blocks="all", seed=0, **METHODS[method]) as report:
        run(model, x)
    if method == "todo":
        expected_q, expected_k = n_img, n_img // 4
    else:
        expected_q = expected_k = report.levels[1].kept if backbone != "flux" else n_img - n_img // 2
    joint = {(TEXT_TOKENS + expected_q, TEXT_TOKENS + expected_k)}
    image_only = {(expected_q, expected_k)}  # SD3.5's second attention has no text
    assert sdpa_calls and set(sdpa_calls) <= joint | image_only and joint & set(sdpa_calls)


def capture_attention_call(attn):
    """Pre-hook saving the keyword arguments of the next call of `attn`."""
    saved = {}
    handle = attn.register_forward_pre_hook(lambda m, a, kw: saved.update(kw), with_kwargs=True)
    return saved, handle


def centroids(plan, ids):
    """Mean position of the tokens that `plan.restore` sends to each reduced slot (independent of `reduce`)."""
    slot = plan.restore(torch.arange(plan.kept_tokens, dtype=torch.float32)[None, :, None])[0, :, 0].long()
    total = torch.zeros(plan.kept_tokens, 3).index_add_(0, slot, ids)
    count = torch.zeros(plan.kept_tokens).index_add_(0, slot, torch.ones(len(slot)))
    return total / count[:, None]


@pytest.mark.parametrize("where", ["transformer_blocks", "single_transformer_blocks"])
def test_flux_merged_tokens_sit_at_the_centroid_of_their_members(models, where):
    """ToMe on Flux equals diffusers' processor on the merged tokens with rotary at the members' centroid."""
    model = models["flux"]
    x = flux_inputs(batch=1)
    attn = getattr(model, where)[0].attn
    saved, handle = capture_attention_call(attn)
    with tomesd.patched(model, method="tome", ratio=0.5, use_rand=False, blocks="all"):
        run(model, x)
        handle.remove()
        proc = attn.processor
        plan = proc.hook.plan
        with torch.no_grad():
            ours = proc(attn, saved["hidden_states"], saved.get("encoder_hidden_states"), None,
                        saved["image_rotary_emb"])
            center = centroids(plan, flux_image_ids(8, 8))
            assert (center != center.round()).any(), "some merged token must sit between grid positions"
            cos, sin = saved["image_rotary_emb"]
            c_cos, c_sin = model.pos_embed(center)
            table = (torch.cat([cos[:TEXT_TOKENS], c_cos]), torch.cat([sin[:TEXT_TOKENS], c_sin]))
            stock = FluxAttnProcessor()
            if where == "transformer_blocks":
                ref_img, ref_txt = stock(attn, plan.reduce(saved["hidden_states"]), saved["encoder_hidden_states"],
                                         None, table)
                assert torch.allclose(ours[0], plan.restore(ref_img), atol=1e-5)
                assert torch.allclose(ours[1], ref_txt, atol=1e-5)
            else:
                h = saved["hidden_states"]
                ref = stock(attn, torch.cat([h[:, :TEXT_TOKENS], plan.reduce(h[:, TEXT_TOKENS:])], 1), None, None,
                            table)
                expected = torch.cat([ref[:, :TEXT_TOKENS], plan.restore(ref[:, TEXT_TOKENS:])], 1)
                assert torch.allclose(ours, expected, atol=1e-5)


def test_flux_downsampled_keys_keep_the_positions_of_the_sampled_tokens(models):
    """ToDo (nearest-exact) on Flux: K/V from the sampled image tokens, rotated at those tokens' own rows."""
    model = models["flux"]
    x = flux_inputs(batch=1)
    attn = model.transformer_blocks[1].attn
    saved, handle = capture_attention_call(attn)
    with tomesd.patched(model, method="todo", df=2, blocks="all"):
        run(model, x)
        handle.remove()
        proc = attn.processor
        plan = proc.hook.plan
        hidden, text, (cos, sin) = saved["hidden_states"], saved["encoder_hidden_states"], saved["image_rotary_emb"]
        with torch.no_grad():
            ours_img, ours_txt = proc(attn, hidden, text, None, (cos, sin))
            n = hidden.shape[1]
            picked = plan.kv_source(torch.arange(n, dtype=torch.float32)[None, :, None])[0, :, 0].long()
            assert len(picked) == n // 4 and torch.equal(plan.kv_source(hidden), hidden[:, picked])

            def heads(t):
                return t.unflatten(-1, (attn.heads, -1))

            q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(text))), attn.norm_q(heads(attn.to_q(hidden)))], 1)
            k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(text))),
                           attn.norm_k(heads(attn.to_k(hidden[:, picked])))], 1)
            v = torch.cat([heads(attn.add_v_proj(text)), heads(attn.to_v(hidden[:, picked]))], 1)
            rows = torch.cat([torch.arange(TEXT_TOKENS), TEXT_TOKENS + picked])
            q = apply_rotary_emb(q, (cos, sin), sequence_dim=1)
            k = apply_rotary_emb(k, (cos[rows], sin[rows]), sequence_dim=1)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            out = out.transpose(1, 2).flatten(2)
            ref_img = attn.to_out[0](out[:, TEXT_TOKENS:])
            ref_txt = attn.to_add_out(out[:, :TEXT_TOKENS])
    assert torch.allclose(ours_img, ref_img, atol=1e-5) and torch.allclose(ours_txt, ref_txt, atol=1e-5)


@pytest.mark.parametrize("case", ["sd3", "sd35_attn2", "sd3_last", "flux_double", "flux_single"])
def test_joint_attention_equals_the_stock_processor(models, case):
    """With the full image as query and K/V source, `joint_attention` is diffusers' own computation."""
    backbone = "flux" if case.startswith("flux") else ("sd35" if case == "sd35_attn2" else "sd3")
    model, make_inputs = models[backbone], BACKBONES[backbone][1]
    blocks = model.single_transformer_blocks if case == "flux_single" else model.transformer_blocks
    block = blocks[-1] if case == "sd3_last" else blocks[0]  # the last SD3 block is context_pre_only
    attn = block.attn2 if case == "sd35_attn2" else block.attn
    saved, handle = capture_attention_call(attn)
    run(model, make_inputs(batch=2))
    handle.remove()
    hidden, text = saved["hidden_states"], saved.get("encoder_hidden_states")
    with torch.no_grad():
        if backbone == "flux":
            cos, sin = saved["image_rotary_emb"]
            single = case == "flux_single"
            image, text = (hidden[:, TEXT_TOKENS:], hidden[:, :TEXT_TOKENS]) if single else (hidden, text)
            full = (cos[TEXT_TOKENS:].expand(2, -1, -1), sin[TEXT_TOKENS:].expand(2, -1, -1))
            rope = JointRope((cos[:TEXT_TOKENS], sin[:TEXT_TOKENS]), full, full)
            ours = joint_attention(attn, image, image, text, text_added=not single, text_first=True, rope=rope)
            stock = FluxAttnProcessor()(attn, hidden, saved.get("encoder_hidden_states"), None, (cos, sin))
        else:
            ours = joint_attention(attn, hidden, hidden, text, text_added=True, text_first=False, rope=None)
            stock = JointAttnProcessor2_0()(attn, hidden, text)
    ours, stock = (ours if isinstance(ours, tuple) else (ours,)), (stock if isinstance(stock, tuple) else (stock,))
    assert len(ours) == len(stock) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, stock))


def test_default_blocks_per_model():
    sd3 = tiny_sd3(num_layers=24)
    published = [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert tomesd.apply_patch(sd3, method="bigain_tm",
                              ratio=0.7).blocks == [f"transformer_blocks.{i}" for i in published]
    assert len(tomesd.apply_patch(sd3, method="sito", ratio=0.7).blocks) == 24
    report = tomesd.apply_patch(sd3, method="todo")
    assert report.levels[1].tokens == 64 and report.levels[1].kept == 16  # 16x16 latent, patch 2, df 2
    tomesd.remove_patch(sd3)
    flux = tiny_flux(num_layers=19, num_single_layers=38)
    report = tomesd.apply_patch(flux, method="tome", ratio=0.5)
    assert report.blocks == [f"transformer_blocks.{i}" for i in published]
    assert report.levels[1].tokens == 64 * 64  # Flux's 1024 px reference grid
    assert tomesd.apply_patch(flux, method="todo", blocks=[19, 56]).blocks == [
        "single_transformer_blocks.0", "single_transformer_blocks.37"]
    assert len(tomesd.apply_patch(flux, method="sito", ratio=0.5).blocks) == 57
    with pytest.raises(ValueError, match="out of range"):
        tomesd.apply_patch(flux, method="todo", blocks=[57])
    tomesd.remove_patch(flux)


def test_loud_errors(models):
    flux, sd3 = models["flux"], models["sd3"]
    with pytest.raises(ValueError, match="merge_crossattn"):
        tomesd.apply_patch(sd3, method="tome", ratio=0.5, merge_crossattn=True)
    with pytest.raises(ValueError, match="patch nothing"):
        tomesd.apply_patch(flux, method="sito", ratio=0.5, merge_attn=False)
    assert tomesd.get_patch(flux) is None and tomesd.get_patch(sd3) is None
    x = flux_inputs(batch=1)
    x["img_ids"] = torch.cat([x["img_ids"][1:], x["img_ids"][:1]])  # not a row-major grid
    with tomesd.patched(flux, method="tome", ratio=0.5, blocks="all"):
        with pytest.raises(RuntimeError, match="row-major grid"):
            run(flux, x)
    with tomesd.patched(sd3, method="todo", df=2, blocks="all"):
        sd3.transformer_blocks[0].attn.set_processor(AttnProcessor2_0())  # re-wrapped before the next call
        with pytest.raises(NotImplementedError, match="stock attention processor"):
            run(sd3, sd3_inputs(batch=1))
    sd3.set_attn_processor(JointAttnProcessor2_0())


def test_processor_set_after_patching_is_wrapped_and_restored(models):
    model = models["flux"]
    x = flux_inputs(batch=2)
    base = run(model, x)
    with tomesd.patched(model, method="todo", df=2, blocks="all"):
        patched = run(model, x)
        replacement = FluxAttnProcessor()
        model.set_attn_processor(replacement)
        assert torch.equal(run(model, x), patched), "a processor set after patching is wrapped again"
    assert model.transformer_blocks[0].attn.processor is replacement
    assert torch.equal(run(model, x), base)


def test_flux_grid_is_checked_once_per_ids_tensor_and_again_after_an_in_place_edit(models, monkeypatch):
    import tomesd.mmdit as mmdit

    model = models["flux"]
    x = flux_inputs(batch=1)
    calls = []
    original = mmdit.flux_image_grid
    monkeypatch.setattr(mmdit, "flux_image_grid", lambda ids, n: calls.append(n) or original(ids, n))
    with tomesd.patched(model, method="todo", df=2, blocks="all"):
        run(model, x)
        run(model, x)
        assert len(calls) == 1
        x["img_ids"][[0, 1]] = x["img_ids"][[1, 0]]  # in place: no longer row-major
        with pytest.raises(RuntimeError, match="row-major grid"):
            run(model, x)


def test_unknown_block_types_are_refused(models):
    """A transformer with patch_size but no known block (e.g. a renamed Flux variant) is an error, not a no-op."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    class RenamedSingleBlock(FluxSingleTransformerBlock):
        pass

    model = tiny_flux(num_layers=0, num_single_layers=1)
    model.single_transformer_blocks[0] = RenamedSingleBlock(16, 2, 8)
    with pytest.raises(ValueError, match="no block this engine can reduce"):
        tomesd.apply_patch(model, method="tome", ratio=0.5)


@pytest.mark.parametrize("method", ["tome", "todo", "sito"])
def test_flux_in_bfloat16(method):
    """Low precision: positions are reduced in float32 and the rotary tables cast to the model's tables."""
    model = tiny_flux().to(torch.bfloat16)
    x = {k: (v.to(torch.bfloat16) if v.is_floating_point() and k not in ("img_ids", "txt_ids") else v)
         for k, v in flux_inputs(batch=2).items()}
    base = run(model, x)
    with tomesd.patched(model, method=method, blocks="all", seed=0, **METHODS[method]):
        out = run(model, x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all() and not torch.equal(out, base)
