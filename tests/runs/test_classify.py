"""Diffusion classifier: protocol pieces, exactness, determinism, resumption, sharding, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tomesd
from bigain import classify as C
from bigain.data import build_dataset
from bigain.diffusion import classifier
from bigain.models import LoadedModel, load_model
from bigain.storage import load_record, record_path
from bigain.zoo import build_tiny_pixel_dit, build_tiny_pixel_unet, build_tiny_sd

FAST = ["--n_samples", "2", "4", "--to_keep", "3", "1", "--dtype", "fp32", "--device", "cpu", "--no_flops",
        "--cpu_threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dit_path(tmp_path_factory):
    return build_tiny_pixel_dit(tmp_path_factory.mktemp("pixel_dit"))


@pytest.fixture(scope="module")
def unet_path(tmp_path_factory):
    return build_tiny_pixel_unet(tmp_path_factory.mktemp("pixel_unet"))


@pytest.fixture(scope="module")
def dit(dit_path):
    return load_model(model_path=dit_path, dtype="fp32", device="cpu")


def _cli(tmp_path, model_path, *extra):
    """Arguments of an in-process fmnist run on a tiny model."""
    return ["--dataset", "fmnist", "--model_path", str(model_path), "--output_dir", str(tmp_path / "out"),
            "--run_dir", str(tmp_path / "run"), *FAST, *extra]


class CallCounter:
    """Counts denoiser samples evaluated through LoadedModel.predict_eps."""

    def __init__(self, monkeypatch):
        self.samples = 0
        original = LoadedModel.predict_eps

        def counting(model, x_t, t, cond):
            self.samples += x_t.shape[0]
            return original(model, x_t, t, cond)

        monkeypatch.setattr(LoadedModel, "predict_eps", counting)


# ----------------------------------------------------------------------------- protocol pieces


def test_default_grid_stages_and_cost():
    s = classifier.StageSchedule((5, 20), (5, 1))
    assert s.grid() == list(range(25, 1000, 50))
    first, second = s.stage_slots()
    assert [s.grid()[i] for i in first] == [125, 325, 525, 725, 925]
    assert len(second) == 15 and not set(first) & set(second)
    assert [s.calls_per_image(c) for c in (37, 100, 1000)] == [260, 575, 5075]  # 5C + 75 (protocol §1)


@pytest.mark.parametrize("ns,tk,n_classes,match", [
    ((5, 20), (5,), 10, "same"),
    ((5, 20), (5, 2), 10, "last --to_keep must be 1"),
    ((5, 20), (50, 1), 37, "more classes than the dataset"),
    ((5, 20), (2, 3, 1)[:2], 10, "last --to_keep must be 1"),
    ((0, 20), (5, 1), 10, "positive"),
])
def test_schedule_rejects_bad_lists(ns, tk, n_classes, match):
    with pytest.raises(ValueError, match=match):
        classifier.StageSchedule(ns, tk).validate(n_classes)


def test_noise_depends_only_on_seed_and_index():
    a = classifier.make_noise((1, 4, 4), 3, 2, classifier.image_seed(0, 7))
    b = classifier.make_noise((1, 4, 4), 3, 2, classifier.image_seed(0, 7))
    assert torch.equal(a, b) and a.shape == (3, 2, 1, 4, 4)
    assert classifier.image_seed(0, 7) != classifier.image_seed(0, 8) != classifier.image_seed(1, 7)


def test_losses():
    p, t = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0)
    assert classifier.per_sample_error(p, t, "l2").tolist() == [4.0, 4.0]
    assert classifier.per_sample_error(p, t, "l1").tolist() == [2.0, 2.0]
    assert classifier.per_sample_error(p, t, "huber").tolist() == [1.5, 1.5]
    with pytest.raises(ValueError, match="allowed: l2, l1, huber"):
        classifier.per_sample_error(p, t, "l3")


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("n_trials", [1, 2])
def test_adaptive_keeping_all_classes_equals_brute_force(dit, n_trials):
    """to_keep = all classes until the last stage == argmin over all classes of the mean over all timesteps."""
    n_classes = 10
    cond = dit.condition(class_ids=list(range(n_classes)))
    schedule = classifier.StageSchedule((2, 4), (n_classes, 1), n_trials=n_trials)
    x0 = torch.rand(1, 1, 16, 16) * 2 - 1
    noise = classifier.make_noise((1, 16, 16), schedule.num_slots, n_trials, 123)
    res = classifier.classify_image(dit, x0, cond, schedule, noise, batch_size=7)
    assert res.calls == n_classes * 4 * n_trials
    acp = dit.alphas_cumprod
    brute = np.zeros((n_classes, 4, n_trials))
    for c in range(n_classes):
        for s, t in enumerate(schedule.grid()):
            for k in range(n_trials):
                eps = noise[s, k : k + 1]
                x_t = acp[t].sqrt().float() * x0 + (1 - acp[t]).sqrt().float() * eps
                pred = dit.predict_eps(x_t, torch.tensor([t]), dit.select(cond, [c]))
                brute[c, s, k] = classifier.per_sample_error(pred, eps, "l2").item()
    np.testing.assert_allclose(res.errors, brute, rtol=1e-4, atol=1e-6)
    assert res.pred_row == int(np.argmin(brute.reshape(n_classes, -1).mean(1)))


# ----------------------------------------------------------------------------- per-sample reducers


REDUCERS = {
    "tome": {"ratio": 0.5, "use_rand": False},
    "bigain_tm": {"ratio": 0.5},
    "todo": {"df": 2, "stop_threshold": 0.5},
    "bigain_td": {"df": 2, "alpha_schedule": True},
    "sito": {"ratio": 0.5, "noise_alpha": 0.0},
}


@pytest.mark.parametrize("kind", ["dit", "unet"])
@pytest.mark.parametrize("method", list(REDUCERS))
def test_mixed_timestep_batch_equals_alone(method, kind, dit_path, unet_path):
    """A batch mixing timesteps and classes gives each sample the error it gets alone (deterministic options).

    float64, so that float32 round-off between batched and single matmuls cannot flip near-tied matches.
    """
    model = load_model(model_path=dit_path if kind == "dit" else unet_path, dtype=torch.float64, device="cpu")
    try:
        tomesd.apply_patch(model.denoiser, method=method, seed=0, **REDUCERS[method])
    except ValueError as err:  # a reducer that does not apply to this tiny backbone
        pytest.skip(str(err))
    cond = model.condition(class_ids=list(range(10)))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 16, 16, generator=gen) * 2 - 1
    t = torch.tensor([25, 975, 525, 125])
    rows = [0, 3, 7, 3]
    eps = torch.randn(4, 1, 16, 16, generator=gen)
    acp = model.alphas_cumprod.float()
    x_t = acp[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - acp[t]).sqrt().view(-1, 1, 1, 1) * eps
    batch = classifier.per_sample_error(model.predict_eps(x_t, t, model.select(cond, rows)), eps, "l2")
    alone = torch.cat([classifier.per_sample_error(model.predict_eps(x_t[i : i + 1], t[i : i + 1],
                                                            model.select(cond, rows[i : i + 1])), eps[i : i + 1], "l2")
                       for i in range(4)])
    tomesd.remove_patch(model.denoiser)
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- runs


def test_same_errors_alone_reordered_sharded_and_resumed(tmp_path, dit_path, monkeypatch):
    """Random ToMe (batch-shared random destinations) still gives each image the same record everywhere."""
    reducer = ["--method", "tome", "--ratio", "0.5"]
    full = C.main(_cli(tmp_path / "a", dit_path, "--max_images", "4", *reducer))
    assert full["images"] == 4 and full["complete"]
    ref = {i: load_record(record_path(tmp_path / "a" / "run", i)) for i in (0, 1, 2, 3)}  # fmnist subset: first N
    assert all(r is not None for r in ref.values())

    # two shards into one run dir, then merge
    for w in ("0", "1"):
        row = C.main(_cli(tmp_path / "b", dit_path, "--max_images", "4", "--n_workers", "2", "--worker_idx", w,
                          *reducer))
    assert row["images"] == 4 and row["complete"]
    merged = C.main(_cli(tmp_path / "b", dit_path, "--max_images", "4", "--merge_only", *reducer))
    assert merged["accuracy"] == full["accuracy"] and merged["images"] == 4
    for i, r in ref.items():
        other = load_record(record_path(tmp_path / "b" / "run", i))
        np.testing.assert_array_equal(other.errors, r.errors)

    # alone and in reversed order, through the in-memory core
    model = load_model(model_path=dit_path, dtype="fp32", device="cpu")
    tomesd.apply_patch(model.denoiser, method="tome", ratio=0.5, seed=0)
    ds = build_dataset("fmnist", img_size=16)
    schedule = classifier.StageSchedule((2, 4), (3, 1))
    ctx = classifier.make_context(model, ds.classes, schedule, seed=0, batch_size=32)
    assert ctx.patched
    order = [3, 0, 2]
    recs = classifier.classify_many(ctx, [ds[i][0] for i in order], [ds[i][1] for i in order], indices=order)
    recs.append(classifier.classify_dataset_image(ctx, 1, *ds[1]))  # alone
    for rec in recs:
        np.testing.assert_array_equal(rec.errors, ref[rec.index].errors)
        assert rec.pred == ref[rec.index].pred

    # resume: a missing and a corrupt record are recomputed, identical; nothing else runs
    record_path(tmp_path / "a" / "run", 1).unlink()
    record_path(tmp_path / "a" / "run", 2).write_bytes(b"PK\x03\x04 truncated")
    counter = CallCounter(monkeypatch)
    again = C.main(_cli(tmp_path / "a", dit_path, "--max_images", "4", *reducer))
    assert counter.samples == 2 * schedule.calls_per_image(10)
    assert again["accuracy"] == full["accuracy"]
    for i in (1, 2):
        np.testing.assert_array_equal(load_record(record_path(tmp_path / "a" / "run", i)).errors, ref[i].errors)


def test_interrupted_run_recomputes_only_unfinished(tmp_path, dit_path, monkeypatch):
    import bigain.runs.classification as mod  # where the run writes records

    calls_per_image = classifier.StageSchedule((2, 4), (3, 1)).calls_per_image(10)
    saved = []
    real_save = mod.save_record

    def crash_after_two(path, rec):
        if len(saved) == 2:
            raise KeyboardInterrupt  # killed while computing the third image
        saved.append(rec.index)
        return real_save(path, rec)

    monkeypatch.setattr(mod, "save_record", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        C.main(_cli(tmp_path, dit_path, "--max_images", "5"))
    monkeypatch.setattr(mod, "save_record", real_save)
    # a stray half-written temp file must not count as a record
    (tmp_path / "run" / "records" / ".00000003.npz.x.tmp").write_bytes(b"half")
    counter = CallCounter(monkeypatch)
    row = C.main(_cli(tmp_path, dit_path, "--max_images", "5"))
    assert counter.samples == 3 * calls_per_image
    assert row["images"] == 5 and row["complete"]
    counter.samples = 0
    C.main(_cli(tmp_path, dit_path, "--max_images", "5"))
    assert counter.samples == 0  # everything reused
    C.main(_cli(tmp_path, dit_path, "--max_images", "5", "--force_recalc"))
    assert counter.samples == 5 * calls_per_image


def test_outputs_summary_config_and_flops(tmp_path, unet_path):
    argv = [a for a in _cli(tmp_path, unet_path, "--max_images", "2") if a != "--no_flops"]
    row = C.main(argv)
    assert float(row["flops_per_call"]) > 0 and row["calls_per_image"] == 26
    import csv
    import json

    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert len(rows) == 1 and rows[0]["images"] == "2" and rows[0]["method"] == "none"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["calls_per_image"] == 26 and config["timestep_grid"] == [125, 375, 625, 875]
    assert (tmp_path / "run" / "log.txt").read_text().count("accuracy") == 1


def test_text_conditioned_sd_on_folder_dataset(tmp_path):
    """Tiny SD pipeline (VAE + CLIP text encoder) on a user folder dataset with its own prompt CSV."""
    from PIL import Image

    from bigain.make_prompts import table_from_names, write_csv

    root = tmp_path / "data"
    for color in ["red", "green", "blue"]:
        (root / color).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (40, 36), color).save(root / color / f"{k}.png")
    write_csv(table_from_names(["red", "green", "blue"], "a {} square."), root / "prompts.csv")
    sd = build_tiny_sd(tmp_path / "sd")
    row = C.main(["--dataset", "folder", "--data_dir", str(root), "--model_path", str(sd), "--output_dir",
                  str(tmp_path / "out"), "--n_samples", "2", "--to_keep", "1", "--dtype", "fp32", "--no_flops",
                  "--cpu_threads", "1", "--method", "bigain_tm", "--ratio", "0.5"])
    assert row["images"] == 6 and row["calls_per_image"] == 6 and row["img_size"] == 32


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra,error,match", [
    (["--n_samples", "5", "20", "--to_keep", "1"], ValueError, "same"),
    (["--to_keep", "5", "2"], ValueError, "last --to_keep must be 1"),
    (["--to_keep", "11", "1"], ValueError, "more classes than the dataset has"),
    (["--dataset", "nosuch"], ValueError, "unknown dataset 'nosuch'; allowed: imagenet"),
    (["--dataset", "pets"], FileNotFoundError, "needs DATASET_ROOT"),
    (["--dataset", "pets", "--dataset_root", "/nonexistent"], FileNotFoundError, "oxford-iiit-pet"),
    (["--method", "tome", "--df", "2"], ValueError, "do not apply to method 'tome'"),
    (["--n_workers", "2", "--worker_idx", "2"], ValueError, "worker_idx"),
])
def test_bad_input_fails_before_model_work(extra, error, match, monkeypatch, tmp_path):
    import bigain.models.loading

    monkeypatch.delenv("DATASET_ROOT", raising=False)
    monkeypatch.setattr(bigain.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    argv = ["--dataset", "fmnist", "--model_path", "/nonexistent", "--output_dir", str(tmp_path), *extra]
    with pytest.raises(error, match=match):
        C.main(argv)


def test_dry_run_prints_plan_without_model(tmp_path, monkeypatch, capsys):
    import bigain.models.loading

    monkeypatch.setattr(bigain.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    plan = C.main(["--dataset", "fmnist", "--output_dir", str(tmp_path), "--dry-run", "--method", "bigain_td",
                   "--alpha", "0.5", "--df", "2"])
    assert plan["calls_per_image"] == 5 * 10 + 75 and plan["images"] == 1000
    assert plan["timesteps_per_stage"][0] == [125, 325, 525, 725, 925]
    assert "bigain_td" in plan["run_dir"] and '"calls_per_image": 125' in capsys.readouterr().out


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        C.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--n_samples", "--to_keep", "--n_trials", "--loss", "--batch_size", "--force_recalc", "--n_workers",
                 "--worker_idx", "--merge_only", "--dry-run", "--method", "--ratio", "--df", "--alpha",
                 "--model_path", "--dtype", "--img_size", "--interpolation", "--dataset_root"):
        assert flag in out


@pytest.mark.parametrize("name", ["dit-fmnist", "unet-fmnist"])
def test_shipped_testbed_model_classifies(name, tmp_path):
    """The embedded testbed models run through the unchanged CLI (skipped until they are shipped)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "bigain" / "assets" / "testbed" / name
    if not (folder / "testbed.json").is_file():
        pytest.skip(f"{folder} not shipped yet")
    row = C.main(_cli(tmp_path, folder, "--max_images", "2", "--method", "tome", "--ratio", "0.5"))
    assert row["images"] == 2 and row["calls_per_image"] == 26


def test_yaml_config_presets_and_effective_config(tmp_path, dit_path):
    """--config FILE sets defaults, explicit flags win, and the effective config is saved and re-usable."""
    import yaml

    preset = tmp_path / "preset.yaml"
    preset.write_text("method: tome\nratio: 0.3\nn_samples: [2, 4]\nto_keep: [3, 1]\n")
    argv = ["--config", str(preset), "--ratio", "0.5", "--dataset", "fmnist", "--model_path", str(dit_path),
            "--run_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out"), "--max_images", "1",
            "--dtype", "fp32", "--no_flops", "--cpu_threads", "1"]
    row = C.main(argv)
    assert row["reduction"] == "tome_ratio0.5" and row["n_samples"] == "2 4"
    saved = yaml.safe_load((tmp_path / "run" / "effective_config.yaml").read_text())
    assert saved["ratio"] == 0.5 and saved["method"] == "tome"
    from bigain.cli import parse_args_with_config

    again = parse_args_with_config(C.build_parser(), ["--config", str(tmp_path / "run" / "effective_config.yaml")])
    assert (again.method, again.ratio, again.n_samples) == ("tome", 0.5, [2, 4])
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("colour: red\n")
        C.main(["--config", str(bad)])


def test_skip_bad_images_flag_reaches_the_folder_dataset(tmp_path, monkeypatch, capsys):
    """A folder with an undecodable file is an error naming it; --skip_bad_images leaves it out (dry run, no model)."""
    from PIL import Image

    import bigain.models.loading
    from bigain.make_prompts import table_from_names, write_csv

    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / cls / "0.png")
    (tmp_path / "data" / "dog" / "1.png").write_text("not a PNG")
    write_csv(table_from_names(["cat", "dog"], "a photo of a {}."), tmp_path / "prompts.csv")
    monkeypatch.setattr(bigain.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    argv = ["--dataset", "folder", "--data_dir", str(tmp_path / "data"), "--prompts_csv", str(tmp_path / "prompts.csv"),
            "--output_dir", str(tmp_path / "out"), "--dry_run", "--to_keep", "2", "1"]
    with pytest.raises(FileNotFoundError, match=r"dog/1.png"):
        C.main(argv)
    assert C.main(argv + ["--skip_bad_images"])["images"] == 2
