"""eval.speed on the 2026 families: the cpu-2026 preset's cases (full-width proxies), and one tiny case of each family
timed end to end with its FLOP-ideal, intervals and removed-layers bound."""
import math

import pytest

from eval.speed.__main__ import main as speed_main
from eval.speed.cases import CPU_2026, PRESET_FLAGS, PRESETS, parse_model, preset_cases
from eval.speed.model_zoo import get_spec, make_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_2026_preset_builds_full_width_proxies_at_reduced_depth():
    cases = preset_cases("cpu-2026")
    assert [c.model for c in cases] == [m for m, _ in CPU_2026] and "cpu-2026" in PRESETS and "cpu-2026" in PRESET_FLAGS
    assert all(c.batch == 1 and len(c.settings) == 5 for c in cases)
    assert all(s.kwargs["blocks"] == "all" for c in cases for s in c.settings)
    flux2, qwen, wan = (parse_model(c.model) for c in cases)
    assert (flux2.config["num_layers"], flux2.config["num_single_layers"], flux2.text_tokens) == (1, 1, 32)
    assert flux2.config["num_attention_heads"] == get_spec("flux2-dev").config["num_attention_heads"]  # full width
    assert (qwen.config["num_layers"], qwen.text_tokens, qwen.family) == (1, 32, "mmdit")
    assert (wan.config["num_layers"], wan.frames, wan.family) == (1, 5, "video")
    (latent,), _ = make_inputs(wan, 1, cases[2].resolution)
    assert tuple(latent.shape) == (1, 16, 2, 60, 104)  # 5 frames at 480 x 832: 2 latent frames of 30 x 52 tokens


@pytest.mark.parametrize("name, message", [("wan2.1-t2v-1.3b@F6", "4k + 1"), ("qwen-image@F5", "video"),
                                           ("flux2-dev@X1", "@FN (video frames)"), ("flux2-dev@T0", "at least 1")])
def test_bad_model_modifiers_are_named(name, message):
    with pytest.raises(ValueError) as error:
        parse_model(name)
    assert message in str(error.value)


def test_speed_benchmark_times_the_2026_families(tmp_path):
    rows = speed_main(["--models", "tiny-flux2", "tiny-qwen-image", "tiny-wan", "--resolutions", "64", "--batches",
                       "1", "--methods", "bigain_tm", "bigain_td", "--ratios", "0.5", "--dfs", "2", "--blocks", "all",
                       "--repeats", "2", "--warmup", "0", "--threads", "1", "--max_seconds", "0",
                       "--out", str(tmp_path)])
    patched = [r for r in rows if r["method"] != "none"]
    assert {r["model"] for r in patched} == {"tiny-flux2", "tiny-qwen-image", "tiny-wan"} and len(patched) == 6
    assert all(r["ideal_speedup"] > 1 and r["speedup"] > 0 for r in patched)
    assert {r["family"] for r in patched} == {"mmdit", "video"}
    assert all(math.isfinite(r["attn_share"]) and r["attn_share"] > 0 for r in patched)
    assert (tmp_path / "speed.md").stat().st_size > 0
