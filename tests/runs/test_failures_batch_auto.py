"""Issue 26 (4): `--batch_size auto` halves on out-of-memory (accelerate's find_executable_batch_size) and is then the
fixed-size run of the size found: same records, folder and fingerprint, so the two resume each other. The
out-of-memory error is injected on CPU: the model's call raises it above a batch size."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from bigain import classify, generate
from bigain.cli import batch_size, parse_args_with_config, run_cli
from bigain.models import LoadedModel
from bigain.runs.batching import find_batch_size
from bigain.storage import load_record, record_path

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--n_samples", "2", "4", "--to_keep", "3", "1", "--dtype", "fp32", "--device", "cpu", "--no_flops"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGAIN_CACHE", str(tmp_path / "cache"))


def memory_for(monkeypatch, rows: int) -> list[int]:
    """The denoiser runs out of memory (CUDA's message) on calls of more than `rows` rows; returns the sizes seen."""
    real, seen = LoadedModel.predict_eps, []

    def predict_eps(self, x_t, t, cond):
        seen.append(x_t.shape[0])
        if x_t.shape[0] > rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x_t.shape[0]} rows")
        return real(self, x_t, t, cond)

    monkeypatch.setattr(LoadedModel, "predict_eps", predict_eps)
    return seen


def _classify(dit_path, run_dir, bs, *extra):
    return classify.main(["--dataset", "fmnist", "--model_path", str(dit_path), "--run_dir", str(run_dir),
                          "--output_dir", str(run_dir.parent), "--batch_size", bs, *FAST, *extra])


def test_classify_auto_halves_to_what_fits_and_equals_the_fixed_size(dit_path, tmp_path, monkeypatch):
    seen = memory_for(monkeypatch, 8)
    auto = _classify(dit_path, tmp_path / "auto", "auto", "--max_images", "3")
    assert seen[:3] == [20, 10, 5]  # the largest stage (10 classes x 2 timesteps), halved until it fits
    assert auto["batch_size"] == 5 and max(seen) == 20 and max(seen[3:]) == 5
    fixed = _classify(dit_path, tmp_path / "fixed", "5", "--max_images", "3")
    assert fixed["fingerprint"] == auto["fingerprint"] and fixed["accuracy"] == auto["accuracy"]
    for i in range(3):
        a, b = load_record(record_path(tmp_path / "auto", i)), load_record(record_path(tmp_path / "fixed", i))
        np.testing.assert_array_equal(a.errors, b.errors)
        assert (a.pred, a.calls) == (b.pred, b.calls)
    # the two resume each other: a fixed-size rerun of the auto run computes only the new image
    assert _classify(dit_path, tmp_path / "auto", "5", "--max_images", "4")["images_computed"] == 1
    # auto on an existing --run_dir reuses the size its config.json records (no new probe)
    seen.clear()
    assert _classify(dit_path, tmp_path / "auto", "auto", "--max_images", "4")["batch_size"] == 5
    assert 20 not in seen
    # without --run_dir the folder is the fixed-size run's folder
    row = classify.main(["--dataset", "fmnist", "--model_path", str(dit_path), "--output_dir", str(tmp_path / "o"),
                         "--batch_size", "auto", "--max_images", "1", *FAST])
    assert row["run_dir"].endswith("_bs5")


def test_generate_auto_halves_to_what_fits_and_equals_the_fixed_size(dit_path, tmp_path, monkeypatch):
    seen = memory_for(monkeypatch, 4)  # guidance doubles the rows: 2 images per call fit
    gen = ["--model_path", str(dit_path), "--classes", "0", "1", "2", "3", "--images_per_class", "2", "--steps", "3",
           "--no_flops", "--no_progress"]
    auto = generate.main([*gen, "--run_dir", str(tmp_path / "auto"), "--batch_size", "auto"])
    assert seen[:3] == [16, 8, 4] and auto["batch_size"] == 2
    fixed = generate.main([*gen, "--run_dir", str(tmp_path / "fixed"), "--batch_size", "2"])
    assert fixed["fingerprint"] == auto["fingerprint"]
    a, b = (sorted((tmp_path / k / "images").glob("*.png")) for k in ("auto", "fixed"))
    assert len(a) == 8 and [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    again = generate.main([*gen, "--run_dir", str(tmp_path / "auto"), "--batch_size", "2"])
    assert again["images_written"] == 0  # the fixed size resumes the auto run


def test_find_batch_size_errors():
    def never_fits(n):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 byte")

    with pytest.raises(ValueError, match="even a batch of 1"):
        find_batch_size(never_fits, 8)

    def broken(n):
        raise RuntimeError("shape mismatch")  # not an out-of-memory error: no retry

    with pytest.raises(RuntimeError, match="shape mismatch"):
        find_batch_size(broken, 8)
    assert find_batch_size(lambda n: None, 6) == 6


def test_batch_size_flag_and_config_values(tmp_path, dit_path, capsys):
    assert batch_size("auto") == "auto" and batch_size("8") == 8
    with pytest.raises(argparse.ArgumentTypeError, match="or 'auto'"):
        batch_size("0")
    config = tmp_path / "c.yaml"
    config.write_text("batch_size: auto\n")
    assert parse_args_with_config(classify.build_parser(), ["--config", str(config)]).batch_size == "auto"
    config.write_text("batch_size: 16\n")
    assert parse_args_with_config(classify.build_parser(), ["--config", str(config)]).batch_size == 16
    with pytest.raises(SystemExit) as info:  # shards probing separately could disagree
        run_cli(generate.main, ["--model_path", str(dit_path), "--classes", "0", "--batch_size", "auto",
                                "--n_workers", "2", "--run_dir", str(tmp_path / "g"), "--steps", "2", "--no_flops"])
    assert info.value.code == 2 and "several shards" in capsys.readouterr().err
