"""The engine on tiny diffusers models: every method x backbone, API contract, invariants 1, 2, 14, 15."""
from types import SimpleNamespace

import pytest
import torch

import tomesd
from bigain.zoo import (
    IDLE,
    METHODS,
    PER_SAMPLE,
    dit_inputs,
    pixart_inputs,
    sd2_sized_unet,
    tiny_dit,
    tiny_pixart,
    tiny_sd_unet,
    tiny_sdxl_unet,
    unet_inputs,
)
from tomesd import registry
from tomesd.options import TokenPlacementOptions

BACKBONES = {
    "sd": (tiny_sd_unet, unet_inputs, {}),
    "sdxl": (tiny_sdxl_unet, unet_inputs, {"max_downsample": 2}),
    "dit": (tiny_dit, dit_inputs, {}),
    "pixart": (tiny_pixart, pixart_inputs, {}),
}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, (build, _, _) in BACKBONES.items()}


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(METHODS))
def test_method_on_backbone(models, backbone, method):
    model = models[backbone]
    _, make_inputs, placement = BACKBONES[backbone]
    x = make_inputs(batch=2)
    base = run(model, x)
    report = tomesd.apply_patch(model, method=method, seed=0, **METHODS[method], **placement)
    assert report.blocks, "a patch must act on some block"
    out = run(model, x)
    tomesd.remove_patch(model)
    assert out.shape == base.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, base), "a non-zero setting must change the output"
    assert torch.equal(run(model, x), base), "apply -> remove must be bit-identical"
    tomesd.apply_patch(model, method=method, **IDLE[method], **placement)
    idle = run(model, x)
    tomesd.remove_patch(model)
    assert torch.equal(idle, base), "idle setting must equal the baseline"




@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(PER_SAMPLE))
def test_mixed_timesteps_keyword_call_is_per_sample(models, backbone, method):
    model = models[backbone]
    _, make_inputs, placement = BACKBONES[backbone]
    x = make_inputs(batch=3)
    x["timestep"] = torch.tensor([950, 100, 0])  # gated differently by the thresholds above
    tomesd.apply_patch(model, method=method, seed=0, **PER_SAMPLE[method], **placement)
    try:
        tomesd.reseed(model, 0)
        batched = run(model, x)
        for i in range(3):
            single = {k: (v[i:i + 1] if torch.is_tensor(v) else v) for k, v in x.items()}
            tomesd.reseed(model, 0)
            assert torch.allclose(batched[i:i + 1], run(model, single), atol=1e-5), f"sample {i}"
    finally:
        tomesd.remove_patch(model)


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("size", [(24, 16), (18, 14)])
@pytest.mark.parametrize("method", list(METHODS))
def test_non_square_odd_sizes_odd_batch(models, backbone, size, method):
    model = models[backbone]
    _, make_inputs, placement = BACKBONES[backbone]
    if backbone == "dit":  # diffusers' DiT unpatchify assumes a square grid: test odd square grids there
        size = (size[0], size[0])
    x = make_inputs(batch=3, size=size)
    base = run(model, x)
    tomesd.apply_patch(model, method=method, **METHODS[method], **placement)
    out = run(model, x)
    tomesd.remove_patch(model)
    assert out.shape == base.shape and torch.isfinite(out).all()


def test_positional_call_works(models):
    model = models["sd"]
    x = unet_inputs(batch=2)
    tomesd.apply_patch(model, method="bigain_tm", ratio=0.5)
    out = model(x["sample"], x["timestep"], x["encoder_hidden_states"]).sample
    tomesd.remove_patch(model)
    assert out.shape == x["sample"].shape


def test_sd2_levels_and_dit_default_pattern():
    unet = sd2_sized_unet()
    assert len(tomesd.apply_patch(unet, ratio=0.5, max_downsample=1).blocks) == 5
    assert len(tomesd.apply_patch(unet, ratio=0.5, max_downsample=2).blocks) == 10
    report = tomesd.apply_patch(unet, method="todo", max_downsample=2)
    assert report.levels[1].tokens == 4096 and report.levels[1].kept == 1024
    tomesd.remove_patch(unet)
    dit = tiny_dit(num_layers=28)
    report = tomesd.apply_patch(dit, method="bigain_tm", ratio=0.7)
    expected = [f"transformer_blocks.{i}" for i in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11)]
    assert report.blocks == expected
    assert len(tomesd.apply_patch(dit, method="sito", ratio=0.7).blocks) == 28
    assert len(tomesd.apply_patch(dit, method="tome", ratio=0.7, blocks="all").blocks) == 28
    assert tomesd.apply_patch(dit, method="tome", ratio=0.7, blocks=[0, 27]).blocks == ["transformer_blocks.0",
                                                                                        "transformer_blocks.27"]
    tomesd.remove_patch(dit)


def test_published_size_report():
    unet = sd2_sized_unet()
    report = tomesd.apply_patch(unet, method="tome", ratio=0.7)
    assert report.levels[1].kept == 1229 and report.levels[1].blocks == 5
    assert "1229/4096" in str(report)
    tomesd.remove_patch(unet)


class Spy:
    """A throwaway reducer recording what reaches it (invariant 15 and the one-file extension story)."""

    seen: list = []

    @staticmethod
    def needs_host_timesteps(opts):
        return True  # a reducer may branch on timesteps in Python: it gets a host copy

    @staticmethod
    def plan(ctx, opts):
        Spy.seen.append((ctx.timesteps.clone(), ctx.height, ctx.width, ctx.level))
        return None

    @staticmethod
    def kept_tokens(h, w, opts, level=1):
        return h * w


def test_registered_reducer_gets_per_sample_keyword_timesteps(models):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class SpyOptions(TokenPlacementOptions):
        pass

    Spy.Options, Spy.plan_kind, Spy.default_blocks = SpyOptions, "token", "all"
    registry.register_reducer("spy_test")(Spy)
    try:
        with pytest.raises(ValueError, match="already registered"):
            registry.register_reducer("spy_test")(Spy)
        model = models["sd"]
        x = unet_inputs(batch=3, size=(24, 16))
        x["timestep"] = torch.tensor([10, 500, 990])
        Spy.seen.clear()
        with tomesd.patched(model, method="spy_test"):
            run(model, x)
        assert Spy.seen and all(t.tolist() == [10.0, 500.0, 990.0] for t, *_ in Spy.seen)
        assert {(h, w, lvl) for _, h, w, lvl in Spy.seen} == {(24, 16, 1)}
        assert tomesd.get_patch(model) is None
    finally:
        registry._REDUCERS.pop("spy_test", None)


def test_scalar_timestep_is_expanded(models):
    model = models["sd"]  # U-Nets accept a scalar timestep for the whole batch
    x = unet_inputs(batch=2)
    x["timestep"] = torch.tensor(500)
    with tomesd.patched(model, method="bigain_td", alpha_schedule=True):
        out = run(model, x)
    assert torch.isfinite(out).all()


def test_pipeline_objects_and_reapply(models):
    model = models["dit"]
    pipe = SimpleNamespace(transformer=model, vae=None)
    first = tomesd.apply_patch(pipe, method="tome", ratio=0.5)
    second = tomesd.apply_patch(pipe, method="todo", df=2)
    assert first.method == "tome" and second.method == "todo"
    assert tomesd.get_patch(model).report.method == "todo"
    processors = [b.attn1.processor for b in model.transformer_blocks]
    assert all(type(p).__name__ == "ReducingAttnProcessor" and type(p.inner).__name__ != "ReducingAttnProcessor"
               for p in processors[1:2])
    tomesd.remove_patch(pipe)
    assert all(type(b.attn1.processor).__name__ != "ReducingAttnProcessor" for b in model.transformer_blocks)
    assert tomesd.apply_patch(SimpleNamespace(unet=models["sd"]), 0.3).method == "tome"  # upstream call shape
    tomesd.remove_patch(models["sd"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="nope"), "known methods"),
    (dict(method="tome", ratio=1.0), r"\[0, 1\)"),
    (dict(method="tome", ratio=-0.5), r"\[0, 1\)"),
    (dict(method="todo", df=0), "df"),
    (dict(method="todo", ratio=0.5), "takes no ratio"),
    (dict(method="tome", ratio=0.5, colour="red"), "allowed"),
    (dict(method="tome", ratio=0.5, blocks=[0, 99]), "out of range"),
])
def test_bad_input_errors(models, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tomesd.apply_patch(models["dit"], **kwargs)
    assert tomesd.get_patch(models["dit"]) is None


def test_sdxl_without_full_resolution_attention_names_levels(models):
    with pytest.raises(ValueError, match=r"levels with attention: \[2\]"):
        tomesd.apply_patch(models["sdxl"], method="tome", ratio=0.5)


def test_unsupported_objects(models):
    with pytest.raises(ValueError, match="pipeline"):
        tomesd.apply_patch(torch.nn.Linear(2, 2), ratio=0.5)
    with pytest.raises(ValueError, match="pipeline"):
        tomesd.apply_patch(SimpleNamespace(text_encoder=None), ratio=0.5)
    with pytest.raises(ValueError, match="U-Net"):
        tomesd.apply_patch(models["sd"], ratio=0.5, blocks=[0])


def test_merge_crossattn_and_mlp_hooks(models):
    model = models["sd"]
    x = unet_inputs(batch=2)
    base = run(model, x)
    outs = {}
    for extra in ({}, {"merge_crossattn": True}, {"merge_mlp": True}):
        with tomesd.patched(model, method="tome", ratio=0.5, use_rand=False, **extra):
            outs[tuple(extra)] = run(model, x)
    assert torch.equal(run(model, x), base)
    assert not torch.allclose(outs[()], outs[("merge_crossattn",)])
    assert not torch.allclose(outs[()], outs[("merge_mlp",)])


@pytest.mark.parametrize("method", list(METHODS))
def test_bf16_cpu(method):
    model = tiny_dit().to(torch.bfloat16)
    x = dit_inputs(batch=2)
    x["hidden_states"] = x["hidden_states"].to(torch.bfloat16)
    base = run(model, x)
    with tomesd.patched(model, method=method, **METHODS[method]):
        out = run(model, x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.equal(run(model, x), base)
