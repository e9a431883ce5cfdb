"""bigain.models.loading: every checkpoint layout loads through one path and exposes the same interface."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigain.models import MODEL_VERSIONS, LoadedModel, ModelNotFoundError, load_model, resolve_dtype
from bigain.zoo import build_tiny_dit, build_tiny_pixel_dit, build_tiny_pixel_unet, build_tiny_sd

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _check_common(m: LoadedModel, n: int = 3) -> None:
    """Shapes of the uniform interface."""
    x = torch.rand(n, m.image_channels, m.image_size, m.image_size) * 2 - 1
    z = m.encode_images(x)
    assert z.shape == (n, m.in_channels, m.sample_size, m.sample_size)
    assert m.decode_latents(z).shape == x.shape
    cond = m.condition(prompts=["a photo of a cat.", "a dog", "x"], class_ids=[0, 1, 2])
    assert all(v.shape[0] == 3 for v in cond.values())
    eps = m.predict_eps(z, torch.tensor([1, 500, 999][:n]), m.select(cond, [2, 0, 1][:n]))
    assert eps.shape == z.shape
    null = m.null_condition(2)
    assert set(null) == set(cond) and all(v.shape[0] == 2 for v in null.values())
    assert m.alphas_cumprod.shape == (1000,) and m.num_train_timesteps == 1000
    assert m.describe()["kind"] == m.kind


def test_tiny_sd_pipeline(tmp_path):
    m = load_model(model_path=build_tiny_sd(tmp_path / "sd"), dtype="fp32", device="cpu")
    assert (m.kind, m.conditioning, m.vae_scale_factor, m.image_size) == ("sd", "text", 2, 32)
    _check_common(m)
    emb = m.condition(prompts=["a photo of a cat."])["encoder_hidden_states"]
    assert emb.shape == (1, 77, 32)
    with pytest.raises(ValueError, match="text-conditioned"):
        m.condition(class_ids=[0])


def test_tiny_dit_pipeline_learned_sigma(tmp_path):
    m = load_model(model_path=build_tiny_dit(tmp_path / "dit"), dtype="fp32", device="cpu")
    assert (m.kind, m.conditioning, m.num_classes, m.null_class) == ("dit", "class", 1000, 1000)
    assert m.class_names[:2] == ["class0", "class1"]
    _check_common(m)
    z = torch.randn(2, 4, 16, 16)
    raw = m.denoiser(z, timestep=torch.tensor([3, 4]), class_labels=torch.tensor([1, 2])).sample
    assert raw.shape[1] == 8
    torch.testing.assert_close(m.predict_eps(z, torch.tensor([3, 4]), {"class_labels": torch.tensor([1, 2])}),
                               raw[:, :4])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        m.condition(class_ids=[1000])


def test_testbed_layouts_pixel_space(tmp_path):
    dit = load_model(model_path=build_tiny_pixel_dit(tmp_path / "pd"), dtype="fp32", device="cpu")
    unet = load_model(model_path=build_tiny_pixel_unet(tmp_path / "pu"), dtype="fp32", device="cpu")
    for m in (dit, unet):
        assert m.vae is None and m.in_channels == 1 and m.image_size == 16 and m.null_class == 10
        assert m.class_names[0] == "T-shirt/top"
        x = torch.rand(2, 1, 16, 16)
        assert torch.equal(m.encode_images(x), x)
        _check_common(m, n=2)
    assert unet.kind == "sd" and unet.conditioning == "class"
    rows = unet.condition(class_ids=[4])["encoder_hidden_states"]
    torch.testing.assert_close(rows[0], unet.class_embeddings[4])
    torch.testing.assert_close(unet.null_condition(1)["encoder_hidden_states"][0], unet.class_embeddings[10])
    assert dit.null_condition(1)["class_labels"].tolist() == [10]


def test_v_prediction_is_converted_to_eps(tmp_path):
    m = load_model(model_path=build_tiny_pixel_unet(tmp_path / "pu"), dtype="fp32", device="cpu")
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([100, 800])
    cond = m.condition(class_ids=[1, 2])
    raw = m.predict_eps(x, t, cond)
    m.scheduler.register_to_config(prediction_type="v_prediction")
    a = m.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(m.predict_eps(x, t, cond), a.sqrt() * raw + (1 - a).sqrt() * x)


def test_dtype_and_loading_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError) as err:
        load_model("2-0", device="cpu")
    text = str(err.value)
    assert "stabilityai/stable-diffusion-2-base" in text and "HF cache" in text and "--model_path" in text
    assert "HF_HUB_OFFLINE" in text
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(model_path=tmp_path / "nope", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a diffusers model folder"):
        load_model(model_path=tmp_path / "empty", device="cpu")
    with pytest.raises(ValueError, match="unknown model version 'sd9'; allowed: 1-1"):
        load_model("sd9", device="cpu")
    with pytest.raises(ValueError, match="allowed"):
        resolve_dtype("fp8", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert {"1-1", "1-5", "2-0", "2-1", "dit-256", "dit-512"} <= set(MODEL_VERSIONS)


@pytest.mark.parametrize("name", ["dit-fmnist", "unet-fmnist"])
def test_shipped_testbed_model_loads(name):
    folder = REPO / "bigain" / "assets" / "testbed" / name
    if not (folder / "testbed.json").is_file():
        pytest.skip(f"{folder} not shipped yet")
    m = load_model(model_path=folder, dtype="fp32", device="cpu")
    assert m.vae is None and m.num_classes == 10 and m.null_class == 10
    _check_common(m, n=2)


def test_hub_id_loads_from_hf_cache_offline(tmp_path, monkeypatch):
    """A hub id resolves through the HF cache layout (models--owner--name/snapshots/<rev>) with no network."""
    import shutil

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-dit"
    src = build_tiny_dit(tmp_path / "src", num_classes=10)
    shutil.copytree(src, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = load_model("someone/tiny-dit", dtype="fp32", device="cpu")
    assert m.kind == "dit" and m.num_classes == 10 and "0123abc" in m.source
    shutil.rmtree(repo / "snapshots" / "0123abc" / "transformer")
    with pytest.raises(ModelNotFoundError, match="incomplete"):
        load_model("someone/tiny-dit", dtype="fp32", device="cpu")
