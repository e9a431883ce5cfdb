"""Full-size SD3/Flux FLOP counts from per-block counts equal a direct count (checked on tiny models)."""
import dataclasses

import pytest

import tomesd
from eval.flops import count_flops
from eval.full_flops import DEFAULT_SETTINGS, full_depth_flops, patched_blocks
from eval.speed.model_zoo import build_model, get_spec, make_inputs, shrink

pytestmark = pytest.mark.usefixtures("one_thread")


def deeper(name):
    spec = shrink(get_spec(name), num_layers=6) if name == "tiny-sd3" else get_spec(name)
    if name == "tiny-sd3":
        spec = dataclasses.replace(spec, config={**spec.config, "dual_attention_layers": (0, 1)})
    return spec


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
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
