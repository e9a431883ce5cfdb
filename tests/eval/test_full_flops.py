"""Full-size SD3/Flux/FLUX.2/Qwen-Image/Wan FLOP counts from per-block meta-device counts equal a direct CPU count
(checked on tiny models)."""
import dataclasses

import pytest

import tomesd
from eval.flops import count_flops
from eval.full_flops import (
    DEFAULT_SETTINGS,
    PAPER_VS_ALL,
    full_depth_flops,
    known_image_grid,
    main,
    meta_model,
    patched_blocks,
    probe_spec,
)
from eval.speed.model_zoo import build_model, get_spec, make_inputs, shrink

PUBLISHED = (1, 2, 3, 4, 5, 7, 8, 9, 10, 11)  # DiT's published block indices, every family's default

pytestmark = pytest.mark.usefixtures("one_thread")


def deeper(name):
    spec = shrink(get_spec(name), num_layers=6) if name == "tiny-sd3" else get_spec(name)
    if name == "tiny-sd3":
        spec = dataclasses.replace(spec, config={**spec.config, "dual_attention_layers": (0, 1)})
    return spec


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-flux2", "tiny-qwen-image", "tiny-wan"])
def test_per_block_sum_equals_direct_count(name):
    spec = deeper(name)
    estimated = full_depth_flops(spec, DEFAULT_SETTINGS, 128)
    model = build_model(spec)
    args, kwargs = make_inputs(spec, 1, 128)
    for setting in DEFAULT_SETTINGS:
        if setting.method == "none":
            direct = count_flops(model, args, kwargs).total
        else:
            with tomesd.patched(model, method=setting.method, seed=0, **setting.kwargs):
                direct = count_flops(model, args, kwargs).total
        assert estimated[setting] == direct, setting.label
    assert estimated[DEFAULT_SETTINGS[1]] < estimated[DEFAULT_SETTINGS[0]]


def test_full_size_patterns_from_the_meta_model():
    flux = get_spec("flux-dev")
    published = (1, 2, 3, 4, 5, 7, 8, 9, 10, 11)
    assert patched_blocks(flux, DEFAULT_SETTINGS[1]) == [f"transformer_blocks.{i}" for i in published]
    assert len(patched_blocks(flux, DEFAULT_SETTINGS[5])) == 57  # SiTo: every block
    assert len(patched_blocks(get_spec("sd3.5-medium"), DEFAULT_SETTINGS[6])) == 24


@pytest.mark.parametrize("name,params", [("sd3-medium", 2_028_328_000), ("flux-dev", 11_901_408_320)])
def test_full_size_mmdit_configs_have_the_published_parameter_counts(name, params):
    import torch

    from eval.speed.model_zoo import model_class

    with torch.device("meta"):
        model = model_class(get_spec(name))(**get_spec(name).config)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name,billions", [("flux2-dev", 32.2), ("qwen-image", 20.4), ("wan2.1-t2v-1.3b", 1.4)])
def test_full_size_2026_configs_have_the_published_sizes(name, billions):
    """FLUX.2-dev "32B", Qwen-Image "20B" (20.4B on its model card), Wan2.1-T2V "1.3B" (1.42B in the checkpoint)."""
    model = meta_model(get_spec(name))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == billions


def test_2026_default_blocks_and_full_size_grids():
    """Default: DiT's published indices on the running block index; the FLOP-ideal of blocks="all" beats it."""
    tome, every = PAPER_VS_ALL[1], PAPER_VS_ALL[6]
    assert patched_blocks(get_spec("flux2-dev"), tome) == (
        [f"transformer_blocks.{i}" for i in (1, 2, 3, 4, 5, 7)] + [f"single_transformer_blocks.{i}" for i in range(4)])
    assert patched_blocks(get_spec("qwen-image"), tome) == [f"transformer_blocks.{i}" for i in PUBLISHED]
    assert patched_blocks(get_spec("wan2.1-t2v-1.3b"), tome) == [f"blocks.{i}" for i in PUBLISHED]
    assert len(patched_blocks(get_spec("wan2.1-t2v-1.3b"), every)) == 30
    args, _ = make_inputs(get_spec("wan2.1-t2v-1.3b"), 1)
    assert tuple(args[0].shape) == (1, 16, 21, 60, 104)  # 81 frames at 480 x 832: 21 x 30 x 52 tokens
    args, kwargs = make_inputs(get_spec("flux2-dev"), 1)
    assert tuple(args[0].shape) == (1, 4096, 128) and tuple(kwargs["img_ids"].shape) == (1, 4096, 4)


def test_meta_counts_need_the_known_grid_only_for_img_ids_families():
    spec = get_spec("tiny-flux2")
    probe, _ = probe_spec(spec)
    model = meta_model(probe)
    args, kwargs = make_inputs(probe, 1, 128, device="meta")
    with tomesd.patched(model, method="tome", blocks="all", seed=0), pytest.raises(RuntimeError, match="meta"):
        count_flops(model, args, kwargs)  # the engine reads the grid from the ids' values
    with tomesd.patched(model, method="tome", blocks="all", seed=0), known_image_grid(spec, 128, "meta"):
        assert count_flops(model, args, kwargs).total > 0


def test_cli_takes_the_2026_models_and_the_paper_settings(capsys):
    rows = main(["--models", "tiny-wan", "--settings", "paper-vs-all"])
    assert [r["setting"] for r in rows][:2] == ["baseline (SDPA)", PAPER_VS_ALL[1].label] and len(rows) == 11
    assert rows[0]["resolution"] == "128" and all(r["ideal_speedup"] >= 1 for r in rows)
    with pytest.raises(SystemExit):
        main(["--models", "nope"])


def test_cpu_mmdit_preset_builds_its_cases():
    from eval.speed.cases import parse_model, preset_cases

    cases = preset_cases("cpu-mmdit")
    assert [c.model for c in cases] == ["sd3-medium@L2", "flux-schnell@L1"]
    flux = parse_model("flux-schnell@L1")
    assert flux.config["num_layers"] == 1 and flux.config["num_single_layers"] == 2 and flux.family == "mmdit"


def test_speed_benchmark_times_sd3_and_flux(tmp_path):
    import math

    from eval.speed.__main__ import main as speed_main

    rows = speed_main(["--models", "tiny-sd3", "tiny-flux", "--resolutions", "128", "--batches", "2", "--methods",
                      "tome", "todo", "--ratios", "0.5", "--dfs", "2", "--repeats", "1", "--warmup", "0",
                      "--threads", "1", "--out", str(tmp_path)])
    patched = [r for r in rows if r["method"] != "none"]
    assert {r["model"] for r in patched} == {"tiny-sd3", "tiny-flux"} and len(patched) == 4
    assert all(r["ideal_speedup"] > 1 and r["family"] == "mmdit" for r in patched)
    assert all(math.isfinite(r["attn_share"]) and r["attn_share"] > 0 for r in patched)
