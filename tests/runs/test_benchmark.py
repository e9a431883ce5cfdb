"""The main job (bigain.benchmark) end to end in a reduced form, so it cannot rot."""
import csv
import json
from pathlib import Path

import pytest

from bigain import benchmark
from bigain.zoo import build_tiny_pixel_dit, build_tiny_pixel_unet
from eval.speed.allocator import set_allocator

FAST = ["--n_images", "2", "--n_samples", "2", "--to_keep", "1", "--images_per_class", "1", "--steps", "2",
        "--timing_repeats", "1", "--target_halfwidth", "0", "--timing_batch", "4", "--threads", "1",
        "--cls_batch_size", "20"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_models")
    return build_tiny_pixel_dit(root / "dit", image_size=32), build_tiny_pixel_unet(root / "unet", image_size=32)


def test_benchmark_runs_resumes_and_writes_outputs(tmp_path, tiny_models):
    dit, unet = tiny_models
    argv = ["--model_dir", f"dit={dit}", "--model_dir", f"unet={unet}", "--methods", "bigain_tm", "todo",
            "--out", str(tmp_path), *FAST]
    rows = benchmark.main(argv)
    assert [(r["model"], r["method"]) for r in rows] == [
        ("dit", "none"), ("dit", "bigain_tm"), ("dit", "todo"), ("unet", "none"), ("unet", "bigain_tm"),
        ("unet", "todo")]
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and r["images"] == 2 and r["generated"] == 10
        assert r["speedup"] > 0 and r["gflops_per_call"] > 0 and r["domain_fid"] is not None
    base = {r["model"]: r["gflops_per_call"] for r in rows if r["method"] == "none"}
    assert all(r["gflops_per_call"] < base[r["model"]] for r in rows if r["method"] != "none")
    assert all(r["timing_rounds"] == 1 and r["timing_stop"] == "rounds" and r["bound_speedup"] >= 1.0 for r in rows)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["machine_load"]["before"]["cpu_count"] and isinstance(meta["noise_check"]["unreliable"], list)
    assert set(meta["timing"]["allocator"].values()) == {set_allocator("steady", "cpu")}  # the default, recorded
    assert len(list(csv.DictReader(open(tmp_path / "benchmark.csv")))) == 6
    assert (tmp_path / "tradeoffs.png").stat().st_size > 1000
    assert (tmp_path / "samples_dit.png").stat().st_size > 1000  # the grid finds the sets in generate/*/*/n<N>/
    assert all(Path(r["generation_dir"]).name == "n10" for r in rows)
    assert "BiGain_TM r=0.7" in (tmp_path / "benchmark.md").read_text()
    assert "allocator: " in (tmp_path / "benchmark.md").read_text()
    # a rerun reuses every finished record and image
    again = benchmark.main(argv)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    summary = list(csv.DictReader(open(tmp_path / "generate" / "summary.csv")))
    assert all(int(s["images_written"]) == 0 for s in summary[6:])


def test_bad_model_dir_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="NAME=PATH"):
        benchmark.main(["--model_dir", "vae=/x", "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="missing"):
        benchmark.main(["--model_dir", f"dit={tmp_path / 'nope'}", "--models", "dit", "--out", str(tmp_path)])


SHIPPED = Path(benchmark.MODELS["dit"]).exists() and Path(benchmark.MODELS["unet"]).exists()


@pytest.mark.skipif(not SHIPPED, reason="shipped testbed models not present")
def test_main_job_on_shipped_models_reduced(tmp_path):
    rows = benchmark.main(["--out", str(tmp_path), "--methods", "bigain_tm", "bigain_td", *FAST])
    assert len(rows) == 6 and all(r["accuracy"] is not None for r in rows)


def test_testbed_tables_script_end_to_end(tmp_path, tiny_models):
    import os
    import subprocess
    import sys

    dit, unet = tiny_models
    env = {**os.environ, "BENCH": str(tmp_path / "bench"), "OUT": str(tmp_path / "report"), "PYTHON": sys.executable}
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(["bash", "scripts/testbed_tables.sh", "--model_dir", f"dit={dit}", "--model_dir", f"unet={unet}",
                    "--methods", "bigain_td", *FAST], cwd=repo, env=env, check=True, capture_output=True)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "BiGain_TD" in report and "Baseline" in report
    assert list((tmp_path / "report").glob("*.png"))


def test_textures_testbed_classifies_texture_crops_and_scores_with_its_own_reference(tmp_path, tiny_models):
    """`--testbed textures` reads the texture subset, scores samples against the texture reference with the
    texture CNN (a different cache key from Fashion-MNIST's) and writes to its own default folder."""
    from bigain.testbed import classifier_dir

    dit, _ = tiny_models
    argv = ["--testbed", "textures", "--model_dir", f"dit={dit}", "--models", "dit", "--methods", "tome",
            "--out", str(tmp_path), *FAST]
    if not (Path(classifier_dir("textures")) / "model.safetensors").exists():
        argv[argv.index("--images_per_class") + 1] = "0"  # no texture CNN yet: classification only
    rows = benchmark.main(argv)
    assert [r["method"] for r in rows] == ["none", "tome"] and all(r["images"] == 2 for r in rows)
    configs = list((tmp_path / "classify" / "dit" / "none").rglob("config.json"))
    assert configs and all(json.loads(p.read_text())["args"]["dataset"] == "textures" for p in configs)
    assert "natural textures" in (tmp_path / "benchmark.md").read_text()
    assert benchmark.metrics_key("f", 10, "textures")["reference"] == "textures-test"
    assert benchmark.metrics_key("f", 10, "textures") != benchmark.metrics_key("f", 10, "fmnist")
    assert benchmark.build_parser().parse_args(["--testbed", "textures"]).out is None  # resolved per testbed


TEXTURE_MODELS = benchmark.shipped_model_dirs("textures")


@pytest.mark.skipif(not all(Path(p).exists() for p in TEXTURE_MODELS.values()), reason="texture models not shipped")
def test_main_job_on_shipped_texture_models_reduced(tmp_path):
    """The shipped texture DiT and U-Net load through the same loader and run the main job (reduced) with the
    texture reference CNN scoring their samples."""
    rows = benchmark.main(["--testbed", "textures", "--out", str(tmp_path), "--methods", "bigain_tm", *FAST])
    assert [(r["model"], r["method"]) for r in rows] == [("dit", "none"), ("dit", "bigain_tm"), ("unet", "none"),
                                                         ("unet", "bigain_tm")]
    assert all(r["accuracy"] is not None and r["domain_fid"] is not None for r in rows)


def test_an_incomplete_sample_set_is_not_scored_or_cached(tmp_path, monkeypatch):
    """Two processes share a sample set: the one that finishes its half first must not score (and cache) the half
    set; cached metrics are keyed by the exact image files."""
    import argparse

    out = tmp_path / "gen"
    images = out / "n20" / "images"
    images.mkdir(parents=True)
    for i in range(10):  # 10 of the 20 images
        (images / f"{i:06d}.png").write_bytes(b"x" * (i + 1))
    monkeypatch.setattr(benchmark, "run_generation", lambda run: {"fingerprint": "f", "n_images": 10})
    monkeypatch.setattr(benchmark, "compute_metrics", lambda *a, **k: pytest.fail("scored an incomplete set"))
    args = argparse.Namespace(images_per_class=2, steps=2, device="cpu", gen_batch_size=4, seed=0, guidance=None,
                              metrics_device="cpu", testbed="fmnist")
    row = benchmark.generate_setting(Path("m"), "none", {}, out, args)
    assert "domain_frechet_distance" not in row and not (out / "n20" / "metrics.json").exists()
    first = benchmark.image_set_digest(sorted(images.glob("*.png")))
    (images / "000000.png").write_bytes(b"yy")
    assert benchmark.image_set_digest(sorted(images.glob("*.png"))) != first
