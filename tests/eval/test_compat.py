"""eval.compat: every feature function runs on at least one tiny backbone; the ok rule; the writer; the CLI."""
from __future__ import annotations

import csv
import re

import pytest
import torch

import tomesd
from bigain.cli import run_cli
from eval.compat import cells, matrix, subjects
from eval.compat import features as F
from eval.compat.__main__ import main
from eval.compat.cells import Cell, ReductionCounter, from_patched_error, judge
from eval.compat.features import RunOptions, all_features
from eval.compat.subjects import BACKBONES

pytestmark = pytest.mark.usefixtures("one_thread")
OPTS = RunOptions()


@pytest.fixture(autouse=True)
def keep_the_active_attention_backend():
    """`set_attention_backend` also sets diffusers' process-wide backend: restore it after each test."""
    with F.active_backend(matrix.default_backend()):
        yield


def cell(feature: str, backbone: str, method: str = "bigain_tm") -> Cell:
    return all_features()[feature](BACKBONES[backbone], method, OPTS)


# ------------------------------------------------------------------------ the ok rule, refusals


def test_judge_needs_finite_output_a_reduction_and_a_changed_output():
    counter, ref = ReductionCounter(), torch.zeros(2, 3)
    assert judge(ref + 1, ref, counter).status == "failing"  # no reduce/kv phase ran
    counter("reduce")
    assert judge(ref + 1, ref, counter).status == "ok"
    assert "no effect" in judge(ref.clone(), ref, counter).reason
    assert judge(torch.full((2, 3), float("nan")), ref, counter).reason == "non-finite output"
    counter2 = ReductionCounter()
    counter2("kv")  # a K/V downsample counts as a reduction
    assert counter2.reductions == 1


def test_engine_errors_are_refusals_and_others_are_failures():
    with pytest.raises(ValueError) as engine:
        tomesd.apply_patch(BACKBONES["dit"].build(), method="tome", ratio=2.0)
    assert from_patched_error(engine.value).status == "refused"
    with pytest.raises(RuntimeError) as other:
        torch.ones(2) @ torch.ones(3)
    assert from_patched_error(other.value).status == "failing"
    with pytest.raises(ValueError):
        Cell("fine")


# ------------------------------------------------------------------------ each feature on a backbone


def test_compile_fullgraph_equals_eager_on_dit():
    result = cell("compile_fullgraph", "dit", "bigain_td")
    assert result.status == "ok", result.reason
    assert "compiled == eager" in result.reason


def test_compile_fullgraph_on_flux():
    result = cell("compile_fullgraph", "flux")
    assert result.status == "ok", result.reason


@pytest.mark.parametrize("method", ["bigain_tm", "bigain_td"])
def test_cpu_attention_backend_is_used_by_the_patched_flux(method):
    result = cell("backend:_native_math", "flux", method)
    assert result.status == "ok", result.reason
    assert "attention calls via _native_math" in result.reason


def test_a_backend_the_patch_bypasses_is_failing(monkeypatch):
    """The spy sees through a patch that swaps the user's backend for the default one (as patched Flux once did)."""
    real_patch = F.patch

    def dropping_patch(model, backbone, method):
        report = real_patch(model, backbone, method)
        model.set_attention_backend("native")
        return report

    monkeypatch.setattr(F, "patch", dropping_patch)
    result = cell("backend:_native_math", "flux")
    assert result.status == "failing"
    before = re.search(r"set before apply_patch: (\d+) of (\d+)", result.reason)
    assert before and int(before[1]) < int(before[2])  # the backend set before patching was dropped


def test_the_backend_spy_counts_only_calls_that_carry_the_backend():
    """A stock Flux runs every attention on the backend set on it, whatever backend is active process-wide."""
    model, backbone = BACKBONES["flux"].build(), BACKBONES["flux"]
    model.set_attention_backend("_native_math")
    with F.backend_spy("_native_math") as calls:
        F.forward(model, backbone)
    assert calls[0] == 5  # 2 double- and 3 single-stream blocks
    model.reset_attention_backend()
    with F.backend_spy("_native_math") as calls:
        F.forward(model, backbone)
    assert calls[0] == 0


def test_unavailable_backend_is_not_applicable_and_a_patched_pixart_honours_one():
    flash = cell("backend:flash", "dit")
    assert flash.status == "n/a" and "does not run here" in flash.reason
    honoured = cell("backend:_native_math", "pixart")  # stock AttnProcessor2_0 calls SDPA directly
    assert honoured.status == "ok" and "set after apply_patch" in honoured.reason, honoured.reason


@pytest.mark.parametrize("kind", F.CACHE_KINDS)
def test_diffusers_cache_hooks_on_patched_flux(kind):
    result = cell(f"cache:{kind}", "flux")
    assert result.status == "ok", result.reason


def test_cache_hooks_are_not_applicable_without_enable_cache():
    result = cell("cache:FirstBlockCache", "sd3")
    assert result.status == "n/a" and "enable_cache" in result.reason


def test_cache_dit_dbcache_on_the_tiny_flux_pipeline():
    pytest.importorskip("cache_dit")
    assert cell("cache_dit_dbcache", "flux").status == "ok"
    assert cell("cache_dit_dbcache", "dit").status == "n/a"


def test_torchao_int8_weight_only():
    pytest.importorskip("torchao")
    result = cell("torchao_int8_weight_only", "dit")
    assert result.status == "ok", result.reason


@pytest.mark.parametrize("feature", ["group_offload_block", "group_offload_leaf"])
def test_group_offloading(feature):
    assert cell(feature, "sd3", "bigain_td").status == "ok"
    assert cell(feature, "dit").status == "n/a"  # DiTTransformer2DModel does not support group offloading


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="has an accelerator")
def test_model_cpu_offload_is_refused_without_an_accelerator():
    result = cell("model_cpu_offload", "flux")
    assert result.status == "refused" and "accelerator" in result.reason


@pytest.mark.parametrize("feature", ["layerwise_casting_bf16", "weights_bf16", "weights_fp16"])
def test_low_precision_storage_and_weights(feature):
    result = cell(feature, "pixart")
    assert result.status == "ok", result.reason


def test_lora_loaded_and_fused_into_a_tiny_pipeline():
    pytest.importorskip("peft")
    result = cell("lora_fused", "flux")
    assert result.status == "ok", result.reason
    assert cell("lora_fused", "dit").status == "n/a"  # DiTPipeline has no LoRA loader


def test_custom_processor_after_patching_keeps_reducing_or_is_refused():
    unet = cell("ip_adapter_style_processor", "sd")
    assert unet.status == "ok" and "custom processor ran" in unet.reason
    mmdit = cell("ip_adapter_style_processor", "flux", "bigain_td")
    assert mmdit.status in ("ok", "refused"), mmdit.reason  # never silently dropped


def test_trace_reducers_sees_the_phases_without_changing_the_output():
    result = cell("trace_reducers", "dit")
    assert result.status == "ok" and "reduce" in result.reason


# ------------------------------------------------------------------------ the 2026 families' rows

NEW_FAMILIES = ["flux2", "qwen_image", "wan"]


@pytest.mark.parametrize("backbone", NEW_FAMILIES)
@pytest.mark.parametrize("feature", ["trace_reducers", "backend:_native_math", "cache:TaylorSeer",
                                     "group_offload_leaf", "layerwise_casting_bf16"])
def test_2026_families_compose_with_the_toolbox(backbone, feature):
    kv_method = feature in ("group_offload_leaf", "layerwise_casting_bf16")  # FLUX.2 ToDo reads weights itself
    result = cell(feature, backbone, "bigain_td" if kv_method else "bigain_tm")
    assert result.status == "ok", result.reason


@pytest.mark.parametrize("backbone", NEW_FAMILIES)
def test_2026_families_in_their_pipelines(backbone):
    """Each tiny denoiser sits in its own diffusers pipeline (with its own VAE class) for the pipeline cases."""
    pytest.importorskip("peft")
    pipe = subjects.build_pipeline(BACKBONES[backbone])
    assert type(pipe).__name__ == BACKBONES[backbone].pipeline
    assert torch.equal(next(pipe.transformer.parameters()), next(BACKBONES[backbone].build().parameters()))
    result = cell("lora_fused", backbone)
    assert result.status == "ok", result.reason


def test_2026_families_compile_and_refuse_a_custom_processor_loudly():
    result = cell("compile_fullgraph", "wan", "bigain_td")
    assert result.status == "ok", result.reason
    for backbone in NEW_FAMILIES:
        custom = cell("ip_adapter_style_processor", backbone)
        assert custom.status == "refused" and "stock attention processor" in custom.reason, custom.reason


# ------------------------------------------------------------------------ matrix, writer, CLI


def test_writer_puts_every_cell_in_csv_and_markdown(tmp_path):
    results = matrix.run_matrix(["dit", "sd3"], ["bigain_tm"], ["trace_reducers", "backend:flash"], OPTS)
    csv_path, md_path = matrix.write_matrix(results, tmp_path, "python -m eval.compat ...", 1.0)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["backbone"] for r in rows] == ["dit", "dit", "sd3", "sd3"]
    assert set(rows[0]) == set(matrix.CSV_COLUMNS)
    assert {(r["feature"], r["status"]) for r in rows} == {("trace_reducers", "ok"), ("backend:flash", "n/a")}
    text = md_path.read_text()
    assert "| feature | dit | sd3 |" in text and "| trace_reducers | ok | ok |" in text
    assert "n/a on every backbone here" in text and "`backend:flash`" in text  # collapsed, with its reason
    assert "4 cells: 2 ok, 0 refused, 0 failing, 2 n/a" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_feature_filters_take_names_and_patterns():
    names = all_features()
    assert matrix.select_features(["cache:*"], names) == [f"cache:{k}" for k in F.CACHE_KINDS]
    assert matrix.select_features(None, names) == list(names)
    with pytest.raises(ValueError, match="matches no feature"):
        matrix.select_features(["cache:Nope"], names)


def test_cli_writes_prints_summary_and_strict_exits_1_on_failing(tmp_path, capsys, monkeypatch):
    rc = main(["--backbones", "dit", "--features", "trace_reducers", "--methods", "bigain_tm", "tome",
               "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "2 cells: 2 ok, 0 refused, 0 failing, 0 n/a" in out
    assert (tmp_path / "compat.md").is_file() and (tmp_path / "compat.csv").is_file()
    broken = {"broken": lambda backbone, method, opts: Cell("failing", "made up")}
    monkeypatch.setattr("eval.compat.__main__.all_features", lambda: broken)
    monkeypatch.setattr(matrix, "all_features", lambda: broken)
    args = ["--backbones", "dit", "--features", "broken", "--output_dir", str(tmp_path)]
    assert main(args) == 0  # failing cells are reported, not fatal...
    assert main(args + ["--strict"]) == 1  # ...unless --strict


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "--methods nope: unknown"),
    (["--features", "nope"], "--features 'nope' matches no feature"),
    (["--backbones", "nope"], "invalid choice"),
    (["--threads", "0"], "--threads"),
])
def test_bad_input_is_an_error_with_exit_2(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args + ["--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert not (tmp_path / "out").exists()


def test_every_backbone_and_status_is_known():
    assert list(BACKBONES) == ["sd", "sdxl", "dit", "pixart", "sd3", "flux", "flux2", "qwen_image", "wan"]
    assert cells.STATUSES == ("ok", "refused", "failing", "n/a")


def test_hub_backends_are_not_fetched(monkeypatch):
    """A *_hub backend downloads its kernel at first use: the offline check names it and never tries."""
    from diffusers.models import attention_dispatch

    def no_network(*args, **kwargs):
        raise AssertionError("the compatibility check tried to download a kernel")

    monkeypatch.setattr(attention_dispatch, "_maybe_download_kernel_for_backend", no_network)
    F.backend_unusable.cache_clear()
    assert "not tried" in F.backend_unusable("flash_hub")
