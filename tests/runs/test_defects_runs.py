"""Runs never reuse what another model or other settings produced, verify finished images, and count FLOPs once."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

import tomesd
from bigain import classify as C
from bigain import generate as G
from bigain.models import model_identity
from bigain.zoo import build_tiny_pixel_dit

pytestmark = pytest.mark.usefixtures("one_thread")

CLS_FAST = ["--dataset", "fmnist", "--n_samples", "2", "4", "--to_keep", "3", "1", "--dtype", "fp32", "--device", "cpu",
            "--no_flops", "--max_images", "2"]
GEN_FAST = ["--classes", "0", "1", "2", "--batch_size", "1", "--steps", "2", "--no_flops", "--no_progress"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private digest cache."""
    monkeypatch.setenv("BIGAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- model identity


def test_identity_follows_weights_not_folder_name(tmp_path, cache, monkeypatch):
    a = build_tiny_pixel_dit(tmp_path / "a" / "model", seed=0)
    b = build_tiny_pixel_dit(tmp_path / "b" / "model", seed=1)
    c = build_tiny_pixel_dit(tmp_path / "c" / "other_name", seed=0)
    ia, ib, ic = model_identity(a), model_identity(b), model_identity(c)
    assert ia != ib and ia == ic and ia["revision"] is None
    assert (cache / "weight_digests.json").is_file()
    import bigain.storage.records

    monkeypatch.setattr(bigain.storage.records, "file_digest", lambda *a, **k: pytest.fail("weights re-read"))
    assert model_identity(a) == ia  # cached by (path, size, mtime_ns)


def test_identity_of_a_hub_snapshot_is_revision_and_blobs(tmp_path, cache):
    repo = tmp_path / "hub" / "models--owner--name"
    (repo / "blobs").mkdir(parents=True)

    def snapshot(rev: str, blob: str) -> Path:
        (repo / "blobs" / blob).write_bytes(blob.encode())
        snap = repo / "snapshots" / rev / "unet"
        snap.mkdir(parents=True)
        (snap / "diffusion_pytorch_model.safetensors").symlink_to(repo / "blobs" / blob)
        return snap.parent

    one, two = snapshot("rev1", "aaaa"), snapshot("rev2", "bbbb")
    assert model_identity(one)["revision"] == "rev1"
    assert model_identity(one)["weights"] != model_identity(two)["weights"]
    assert not (cache / "weight_digests.json").exists()  # blob names are content hashes: nothing hashed


def test_classify_same_folder_name_new_weights_is_recomputed(tmp_path, cache):
    model = tmp_path / "m" / "dit-fmnist"
    build_tiny_pixel_dit(model, seed=0)
    argv = CLS_FAST + ["--model_path", str(model), "--run_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path)]
    from bigain.storage import load_record, record_path

    first = C.main(argv)
    assert C.main(argv)["fingerprint"] == first["fingerprint"]
    build_tiny_pixel_dit(model, seed=1)  # same folder and name, other weights
    again = C.main(argv)
    assert again["fingerprint"] != first["fingerprint"]
    assert all(load_record(record_path(tmp_path / "run", i), again["fingerprint"]) for i in (0, 1))
    assert again["images_computed"] == 2 and C.main(argv)["images_computed"] == 0


def test_generate_same_folder_name_new_weights_is_regenerated(tmp_path, cache):
    model = tmp_path / "m" / "dit-fmnist"
    build_tiny_pixel_dit(model, seed=0)
    argv = GEN_FAST + ["--model_path", str(model), "--run_dir", str(tmp_path / "run"),
                       "--summary_csv", str(tmp_path / "s.csv")]
    assert G.main(argv)["images_written"] == 3
    assert G.main(argv)["images_written"] == 0
    build_tiny_pixel_dit(model, seed=1)
    assert G.main(argv)["images_written"] == 3


# ----------------------------------------------------------------------------- finished images are verified


def test_truncated_png_is_regenerated(tmp_path, cache):
    model = build_tiny_pixel_dit(tmp_path / "m")
    argv = GEN_FAST + ["--model_path", str(model), "--run_dir", str(tmp_path / "run"),
                       "--summary_csv", str(tmp_path / "s.csv")]
    G.main(argv)
    png = tmp_path / "run" / "images" / "000001.png"
    original = png.read_bytes()
    png.write_bytes(original[: len(original) // 2])  # killed mid-copy; its JSON record is intact
    row = G.main(argv)
    assert row["images_written"] == 1 and png.read_bytes() == original
    record = json.loads(png.with_suffix(".json").read_text())
    assert record["png_bytes"] == len(original) and len(record["png_sha256"]) == 64


# ----------------------------------------------------------------------------- benchmark metrics cache


def test_benchmark_metrics_are_recomputed_when_generation_settings_change(tmp_path, cache, monkeypatch):
    from bigain import benchmark

    model = build_tiny_pixel_dit(tmp_path / "m")
    calls = []

    def fake_metrics(gen_dir, ref, **kw):
        steps = {json.loads(p.read_text())["steps"] for p in Path(gen_dir).glob("*.json")}
        calls.append(steps)
        return {"domain_frechet_distance": float(min(steps)), "class_consistency": 0.5, "report": {}}

    monkeypatch.setattr(benchmark, "compute_metrics", fake_metrics)
    args = argparse.Namespace(testbed="fmnist", images_per_class=1, steps=3, guidance=None, gen_batch_size=10, seed=0,
                              device="cpu", metrics_device="cpu")
    out = tmp_path / "bench" / "generate" / "dit" / "none"
    first = benchmark.generate_setting(model, "none", {}, out, args)
    assert first["domain_frechet_distance"] == 3.0
    assert benchmark.generate_setting(model, "none", {}, out, args)["domain_frechet_distance"] == 3.0
    assert len(calls) == 1  # same settings: cached
    args.steps = 2  # the images are regenerated; the metrics must follow them
    second = benchmark.generate_setting(model, "none", {}, out, args)
    assert len(calls) == 2 and calls[-1] == {2} and second["domain_frechet_distance"] == 2.0


# ----------------------------------------------------------------------------- one FLOP counter


def test_generate_flops_include_attention_and_match_eval_flops(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    from bigain.data import Item
    from bigain.diffusion import SAMPLERS, guided_eps_fn, initial_noise, make_schedule
    from bigain.models import load_model
    from bigain.runs import sampling
    from eval.flops import count_flops

    model = load_model(model_path=build_tiny_pixel_dit(tmp_path / "m"), dtype="fp32", device="cpu")
    schedule = make_schedule("ddim", model.scheduler.config, 2)
    item = Item(0, None, 3)
    ours = sampling.count_flops(model, schedule, 4.0, item)
    cond, uncond = sampling.conditions(model, [item], 4.0)
    x = initial_noise((1, model.in_channels, model.sample_size, model.sample_size), schedule,
                      torch.Generator().manual_seed(0), model.device)
    run = lambda: SAMPLERS["ddim"](guided_eps_fn(model, cond, uncond, 4.0), x, schedule)  # noqa: E731
    assert ours == count_flops(run).total
    with torch.no_grad(), FlopCounterMode(display=False) as bare:
        run()
    assert ours > bare.get_total_flops()  # the CPU SDPA kernel is counted


def test_classify_has_no_private_flop_counter():
    import inspect

    assert "FlopCounterMode" not in inspect.getsource(C) and "FlopCounterMode" not in inspect.getsource(G)


# ----------------------------------------------------------------------------- apply_patch rejects meaningless options


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "tome", "seed": "abc"}, "seed"),
    ({"method": "tome", "seed": 1.5}, "seed"),
    ({"method": "tome", "blocks": []}, "no block"),
    ({"method": "tome", "ratio": float("nan")}, "ratio"),
    ({"method": "bigain_td", "alpha": float("nan")}, "alpha"),
    ({"method": "bigain_td", "alpha": float("inf")}, "alpha"),
    ({"method": "sito", "ratio": 0.5, "noise_alpha": float("-inf")}, "noise_alpha"),
    ({"method": "todo", "stop_threshold": float("nan")}, "stop_threshold"),
    ({"method": "tome", "merge_mlp": 1}, "merge_mlp"),
])
def test_apply_patch_rejects_nonfinite_empty_and_bad_seed(kwargs, match):
    from bigain.zoo import tiny_dit

    model = tiny_dit()
    with pytest.raises(ValueError, match=match):
        tomesd.apply_patch(model, **kwargs)
    assert tomesd.get_patch(model) is None


def test_a_run_cleans_stale_temp_files(tmp_path, cache):
    model = build_tiny_pixel_dit(tmp_path / "m")
    images = tmp_path / "run" / "images"
    images.mkdir(parents=True)
    old, fresh = images / ".000000.png.abc.tmp", images / ".000001.png.def.tmp"
    old.write_bytes(b"half")
    fresh.write_bytes(b"in flight")
    os.utime(old, (1, 1))
    G.main(GEN_FAST + ["--model_path", str(model), "--run_dir", str(tmp_path / "run"),
                       "--summary_csv", str(tmp_path / "s.csv")])
    assert not old.exists() and fresh.exists()


def test_sweep_cell_reruns_when_its_model_weights_change(tmp_path, cache):
    from bigain import sweep

    model = build_tiny_pixel_dit(tmp_path / "m" / "dit", seed=0)
    run = sweep.PlannedRun("generate", "dit", "classes", "none", {"model_path": str(model), "method": "none"},
                           tmp_path / "runs" / "generate" / "dit" / "classes" / "none")
    sweep.execute(run, tmp_path / "summary.csv", runner=lambda task, typed_run: None)
    assert run.is_done()
    build_tiny_pixel_dit(model, seed=1)  # same path, new weights
    assert not run.is_done()
