"""Converted offline Inception weights reproduce the TorchScript model they came from."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import bigain.storage.records
from bigain.storage import atomic_save_safetensors

pytest.importorskip("torch_fidelity")

from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x  # noqa: E402

from eval.metrics import inception as inc  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    """Converted weights in a private cache dir."""
    try:
        ts_path = inc.fid_helper_torchscript_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("bigain-cache")
    return inc.converted_weights_path(root, ts_path), ts_path


def test_conversion_is_cached_and_pickle_free(converted) -> None:
    path, _ = converted
    assert path.suffix == ".safetensors"
    mtime = path.stat().st_mtime_ns
    assert inc.converted_weights_path(path.parent) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    sd = inc.load_state_dict_file(path)
    assert "fc.weight" not in sd and len([k for k in sd if k.endswith(".conv.weight")]) == 94


@pytest.mark.parametrize("size", [299, 64])
def test_converted_matches_torchscript_features(converted, size: int) -> None:
    path, ts_path = converted
    model = inc.build_inception(["2048"], path)
    ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
    x = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(size), dtype=torch.uint8)
    with torch.no_grad():
        ours = model(x)[0]
        # fid-helper's model takes 299x299 input in [-1, 0.9921875] = (x - 128) / 128; resize like torch-fidelity
        x299 = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        ref = ts((x299 - 128) / 128)
    assert ours.shape == ref.shape == (2, 2048)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_inception_score_needs_real_weights(converted) -> None:
    path, _ = converted
    with pytest.raises(ValueError, match="--inception_weights"):
        inc.build_inception(["logits_unbiased"], path)


def test_unreadable_weights_path_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        inc.resolve_inception_weights(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        inc.resolve_inception_weights(bad)


def test_safetensors_caches_are_saved_atomically(tmp_path, monkeypatch) -> None:
    """Weights and feature caches go through one atomic writer: a write killed before the rename keeps the old file."""
    path = tmp_path / "sub" / "w.safetensors"
    t = torch.arange(6.0).reshape(2, 3).t()  # not contiguous, as a transposed weight may be
    atomic_save_safetensors({"w": t.requires_grad_()}, path, metadata={"key": "v1"})
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"key": "v1"} and torch.equal(fh.get_tensor("w"), t.detach())
    before = path.read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(bigain.storage.records.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_safetensors({"w": torch.zeros(2)}, path, metadata={"key": "v2"})
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["w.safetensors"]
    assert inc.atomic_save_safetensors is atomic_save_safetensors  # the inception cache uses the same writer
