"""Embedded testbed: shipped data/model files, the training script (2 steps + resume),
loading the shipped diffusion models, and the reference classifier."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from bigain.testbed import ASSETS_DIR, CLASSIFIER_PATH, DIT_PATH, UNET_PATH, sources, train, train_classifier
from bigain.testbed.data import CLASS_NAMES, load_test_subset, verify_checksums
from bigain.testbed.reference_classifier import load_reference_classifier


def test_shipped_files_match_checksums():
    with open(os.path.join(ASSETS_DIR, "checksums.json")) as f:
        listed = set(json.load(f)["files"])
    assert verify_checksums() == {}
    on_disk = set()
    for dirpath, dirnames, filenames in os.walk(ASSETS_DIR):
        dirnames[:] = [d for d in dirnames if d != "checkpoints" and not d.startswith(".")]
        for fn in filenames:
            rel = os.path.relpath(os.path.join(dirpath, fn), ASSETS_DIR).replace(os.sep, "/")
            if rel != "checksums.json" and not fn.startswith("."):
                on_disk.add(rel)
    assert on_disk == listed, f"unlisted: {on_disk - listed}, missing: {listed - on_disk}"
    for rel in ["fmnist_test_subset.npz", "classifier/model.safetensors",
                "dit-fmnist/transformer/diffusion_pytorch_model.safetensors", "dit-fmnist/testbed.json",
                "unet-fmnist/unet/diffusion_pytorch_model.safetensors", "unet-fmnist/class_embeddings.safetensors"]:
        assert rel in listed
    total = sum(os.path.getsize(os.path.join(ASSETS_DIR, r)) for r in listed)
    assert total <= 40 * 2 ** 20


def test_test_subset_is_stratified():
    x, y = load_test_subset()
    assert x.shape == (1000, 1, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.bincount(y, minlength=10).tolist() == [100] * 10
    assert np.all(x[:, :, :2, :] == -1.0)  # 2-px zero padding
    assert len(CLASS_NAMES) == 10


@pytest.mark.parametrize("kind", ["dit", "unet"])
def test_train_two_steps_then_resume(kind, tmp_path, capsys):
    out = str(tmp_path / kind)
    common = ["--model", kind, "--size", "tiny", "--batch_size", "4", "--threads", "1",
              "--device", "cpu", "--data", "subset", "--eval_images", "20", "--warmup", "1"]
    s1 = train.main(common + ["--output_dir", out, "--steps", "2"])
    assert s1["step"] == 2
    ck = os.path.join(out, "checkpoints", "latest")
    with open(os.path.join(ck, "state.json")) as f:
        assert json.load(f)["step"] == 2
    for fn in ["model.safetensors", "ema.safetensors", "optimizer.pt"]:
        assert os.path.exists(os.path.join(ck, fn))
    torch.load(os.path.join(ck, "optimizer.pt"), weights_only=True)  # no pickled objects
    s2 = train.main(common + ["--out", out, "--steps", "4"])  # the alias names the same folder
    assert "resumed" in capsys.readouterr().out
    assert s2["step"] == 4 and s2["resumes"][0]["at_step"] == 2
    sub = "transformer" if kind == "dit" else "unet"
    for rel in [f"{sub}/config.json", f"{sub}/diffusion_pytorch_model.safetensors",
                "scheduler/scheduler_config.json", "testbed.json"]:
        assert os.path.exists(os.path.join(out, rel)), rel
    with open(os.path.join(out, "testbed.json")) as f:
        info = json.load(f)
    assert info["kind"] == kind and info["metrics"]["steps"] == 4 and info["null_class_index"] == 10
    if kind == "unet":
        assert os.path.exists(os.path.join(out, "class_embeddings.safetensors"))


def _check_eps(eps, b):
    assert eps.shape == (b, 1, 32, 32)
    assert torch.isfinite(eps).all()


def test_shipped_dit_loads():
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    m = DiTTransformer2DModel.from_pretrained(DIT_PATH, subfolder="transformer").eval()
    sched = DDPMScheduler.from_pretrained(DIT_PATH, subfolder="scheduler")
    assert sched.config.num_train_timesteps == 1000
    with open(os.path.join(DIT_PATH, "testbed.json")) as f:
        info = json.load(f)
    assert info["kind"] == "dit" and info["num_classes"] == 10 and info["null_class_index"] == 10
    assert m.config.patch_size == 2 and m.config.sample_size == 32 and m.config.in_channels == 1
    x, _ = load_test_subset()
    with torch.no_grad():
        eps = m(torch.from_numpy(x[:3]), timestep=torch.tensor([10, 500, 990]),
                class_labels=torch.tensor([0, 5, 10])).sample
    _check_eps(eps, 3)


def test_shipped_unet_loads():
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file

    m = UNet2DConditionModel.from_pretrained(UNET_PATH, subfolder="unet").eval()
    DDPMScheduler.from_pretrained(UNET_PATH, subfolder="scheduler")
    emb = load_file(os.path.join(UNET_PATH, "class_embeddings.safetensors"))["embeddings"]
    with open(os.path.join(UNET_PATH, "testbed.json")) as f:
        info = json.load(f)
    assert info["kind"] == "unet" and list(emb.shape) == info["embedding_shape"]
    assert emb.shape[0] == 11 and emb.shape[2] == m.config.cross_attention_dim
    x, _ = load_test_subset()
    with torch.no_grad():
        eps = m(torch.from_numpy(x[:3]), torch.tensor([10, 500, 990]),
                encoder_hidden_states=emb[torch.tensor([0, 5, 10])]).sample
    _check_eps(eps, 3)


def test_reference_classifier_accuracy():
    from bigain.testbed.reference_classifier import classify, load_reference_classifier

    model = load_reference_classifier(CLASSIFIER_PATH)
    assert not model.training
    x, y = load_test_subset()
    x = torch.from_numpy(x)
    acc = (classify(model, x).numpy() == y).mean()
    assert acc >= 0.90, acc
    with torch.no_grad():
        f = model.features(x[:4])
    assert f.shape == (4, 128)


@pytest.mark.parametrize("flag", ["--output_dir", "--out"])
def test_trainers_spell_output_dir_with_out_as_alias(flag, tmp_path):
    folder = str(tmp_path / "m")
    assert train.parse_args(["--model", "dit", "--steps", "1", flag, folder]).output_dir == folder
    assert train_classifier.parse_args([flag, folder]).output_dir == folder


def test_train_needs_output_dir(capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--model", "dit", "--steps", "1"])
    assert exc.value.code == 2 and "--output_dir" in capsys.readouterr().err


def test_train_classifier_writes_its_folder(tmp_path, monkeypatch):
    """One short epoch on the shipped subset: the weights and config land in --output_dir (atomic writers)."""
    fmnist = sources.TESTBED_DATA["fmnist"]
    subset_only = dataclasses.replace(fmnist, load=lambda split: load_test_subset())
    monkeypatch.setitem(sources.TESTBED_DATA, "fmnist", subset_only)
    out = tmp_path / "classifier"
    acc = train_classifier.main(["--output_dir", str(out), "--epochs", "1", "--batch_size", "250",
                                 "--max_train", "500"])
    config = json.loads((out / "config.json").read_text())
    assert config["test_accuracy"] == acc and config["training"]["train_images"] == 500
    model = load_reference_classifier(str(out))  # strict load_state_dict of the written weights
    assert sum(p.numel() for p in model.parameters()) == config["parameters"]
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
