"""Generation metrics: FID/KID sanity relations, reference-feature cache, domain extractor hook, CLIP code path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

pytest.importorskip("torch_fidelity")

from eval.metrics import compute as M  # noqa: E402
from eval.metrics import extractors as ext  # noqa: E402
from eval.metrics import inception as inc  # noqa: E402
from eval.metrics.__main__ import main as metrics_main  # noqa: E402

N_IMAGES = 8
SIZE = 48


def _base_images(n: int = N_IMAGES, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Smooth, varied uint8 RGB images (low-frequency noise upsampled)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _write(images: np.ndarray, folder: Path, labels: list[int] | None = None, prompts: list[str] | None = None) -> Path:
    """Save images as PNG with a <stem>.json record each."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.png")
        rec = {"index": i}
        if labels is not None:
            rec["label"] = labels[i]
        if prompts is not None:
            rec["prompt"] = prompts[i]
        (folder / f"{i:05d}.json").write_text(json.dumps(rec))
    return folder


def _noisy(images: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    """Add Gaussian noise of std `sigma` (in 0..255 units), same pattern for every sigma."""
    noise = np.random.default_rng(seed).standard_normal(images.shape)
    return np.clip(images.astype(np.float64) + sigma * noise, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Reference folder, converted Inception weights and a private cache."""
    root = tmp_path_factory.mktemp("metrics")
    try:
        weights = inc.converted_weights_path(root / "cache", inc.fid_helper_torchscript_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    base = _base_images()
    ref = _write(base, root / "ref")
    opts = dict(inception_weights=str(weights), cache_root=str(root / "stats"), device="cpu", batch_size=16)
    return {"root": root, "base": base, "ref": ref, "weights": weights, "opts": opts}


@pytest.mark.slow
def test_fid_kid_zero_on_itself_and_grow_with_noise(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_extract = M.extract_features
    monkeypatch.setattr(M, "extract_features",
                        lambda src, *a, **k: calls.append(len(src)) or real_extract(src, *a, **k))
    res = M.compute_metrics(env["ref"], env["ref"], metrics=["fid", "kid"], **env["opts"])
    assert abs(res[M.KEY_FID]) < 1e-2
    assert abs(res[M.KEY_KID_MEAN]) < 0.05  # the unbiased MMD of a set with itself is slightly negative
    rep = res[M.KEY_REPORT]
    assert rep["n_generated"] == rep["n_reference"] == N_IMAGES
    for key in ("library", "feature_extractor", "inception_weights", "reference", "resize"):
        assert rep[key], key
    assert "torch-fidelity" in rep["library"]
    assert len(calls) == 2 and list(Path(env["opts"]["cache_root"]).glob("ref-*.safetensors"))
    fids, kids = [res[M.KEY_FID]], [res[M.KEY_KID_MEAN]]
    for sigma in (2, 5, 12):
        gen = _write(_noisy(env["base"], sigma), env["root"] / f"noise{sigma}")
        res = M.compute_metrics(gen, env["ref"], metrics=["fid", "kid"], **env["opts"])
        fids.append(res[M.KEY_FID])
        kids.append(res[M.KEY_KID_MEAN])
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a < b for a, b in zip(kids, kids[1:])), kids
    assert len(calls) == 5  # reference features were read from the cache after the first call


@pytest.mark.parametrize("n1,n2", [(12, 9), (150, 90)])
def test_frechet_distance_matches_torch_fidelity(n1: int, n2: int) -> None:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(n1)
    f1, f2 = torch.randn(n1, 64, generator=g), torch.randn(n2, 64, generator=g) * 1.3 + 0.2
    theirs = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2), False)
    assert M.frechet_distance(f1, f2) == pytest.approx(theirs[M.KEY_FID], rel=1e-5)


def test_inception_score_skipped_or_required_without_fc(env: dict) -> None:
    res = M.compute_metrics(env["ref"], None, metrics=["is"], **env["opts"])
    assert M.KEY_IS_MEAN not in res and "inception_weights" in res[M.KEY_REPORT]["inception_score"]
    with pytest.raises(ValueError, match="--inception_weights"):
        M.compute_metrics(env["ref"], None, metrics=["is"], require_is=True, **env["opts"])


def test_inception_score_with_a_classifier_head(env: dict) -> None:
    """Code path of IS when the weights carry fc (a random head here: the value itself means nothing)."""
    from safetensors.torch import save_file

    sd = inc.load_state_dict_file(env["weights"])
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1008, 2048, generator=g) * 0.05, torch.zeros(1008)
    path = env["root"] / "with_fc.safetensors"
    save_file(sd, str(path))
    opts = {**env["opts"], "inception_weights": str(path)}
    res = M.compute_metrics(env["ref"], None, metrics=["is"], require_is=True, **opts)
    assert res[M.KEY_IS_MEAN] > 1.0 and res[M.KEY_REPORT]["inception_weights"].startswith("user file")
    assert res[M.KEY_REPORT]["isc_splits"] == N_IMAGES // 2


class _ColourClassifier(nn.Module):
    """Toy 'domain classifier': class = dominant RGB channel; features = channel means and stds."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def parameters(self, recurse: bool = True):
        yield torch.zeros(1)


def test_domain_extractor_hook_gives_domain_fid_and_class_consistency(env: dict) -> None:
    if "toy-colour" not in ext.DOMAIN_EXTRACTORS:
        ext.register_domain_extractor("toy-colour", _ColourClassifier, in_channels=3, image_size=16)
    with pytest.raises(ValueError, match="already registered"):
        ext.register_domain_extractor("toy-colour", _ColourClassifier, in_channels=3, image_size=16)
    with pytest.raises(ValueError, match="known"):
        ext.get_domain_extractor("nope")
    rgb = np.zeros((12, 16, 16, 3), np.uint8)
    labels = [i % 3 for i in range(12)]
    for i, c in enumerate(labels):
        rgb[i, :, :, c] = 200 + i
    gen = _write(rgb, env["root"] / "colour", labels=labels)
    res = M.compute_metrics(gen, gen, metrics=["domain_fid", "class_consistency"], domain_extractor="toy-colour",
                            **env["opts"])
    assert res[M.KEY_CLASS_CONSISTENCY] == 1.0
    assert abs(res[M.KEY_DOMAIN_FID]) < 1e-3
    wrong = _write(rgb, env["root"] / "colour_wrong", labels=[(c + 1) % 3 for c in labels])
    res = M.compute_metrics(wrong, env["ref"], metrics=["domain_fid", "class_consistency"],
                            domain_extractor="toy-colour", **env["opts"])
    assert res[M.KEY_CLASS_CONSISTENCY] == 0.0 and res[M.KEY_DOMAIN_FID] > 1.0
    assert "toy-colour" in res[M.KEY_REPORT]["domain_extractor"]
    # the same number as torch_fidelity.calculate_metrics with the registered extractor
    import torch_fidelity

    ref = _write(np.roll(rgb, 1, axis=0)[:, :, :, ::-1].copy(), env["root"] / "colour_ref")
    theirs = torch_fidelity.calculate_metrics(input1=str(gen), input2=str(ref), fid=True, cuda=False, cache=False,
                                              feature_extractor=ext.fidelity_name("toy-colour"), verbose=False,
                                              save_cpu_ram=True)[M.KEY_FID]
    ours = M.compute_metrics(gen, ref, metrics=["domain_fid"], domain_extractor="toy-colour", **env["opts"])
    assert ours[M.KEY_DOMAIN_FID] == pytest.approx(theirs, rel=1e-6)


def test_fmnist_reference_extractor_when_testbed_present(env: dict) -> None:
    try:
        from bigain.testbed.reference_classifier import load_reference_classifier  # noqa: F401

        load_reference_classifier()
    except Exception as e:  # noqa: BLE001 - the testbed lands separately
        pytest.skip(f"testbed reference classifier not available: {e}")
    from bigain.testbed.data import SUBSET_PATH

    with np.load(SUBSET_PATH) as d:
        imgs, labels = np.pad(d["images"][:50], ((0, 0), (2, 2), (2, 2))), d["labels"][:50].tolist()
    gen = _write(imgs, env["root"] / "fmnist", labels=labels)
    res = M.compute_metrics(gen, "fmnist", metrics=["domain_fid", "class_consistency"],
                            domain_extractor="fmnist-reference", **env["opts"])
    assert res[M.KEY_CLASS_CONSISTENCY] > 0.7
    assert res[M.KEY_REPORT]["n_reference_domain"] == 1000


def test_bad_inputs_error_clearly(env: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        M.compute_metrics(tmp_path / "empty", env["ref"], **env["opts"])
    with pytest.raises(ValueError, match="neither a folder"):
        M.compute_metrics(env["ref"], tmp_path / "missing", metrics=["fid"], **env["opts"])
    with pytest.raises(M.MetricsUnavailableError, match="will skip kid: no reference set given"):
        M.compute_metrics(env["ref"], None, metrics=["kid"], skip_unavailable=False, **env["opts"])
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute_metrics(env["ref"], env["ref"], metrics=["fidd"], **env["opts"])
    with pytest.raises(ValueError, match="unknown option"):
        M.compute_metrics(env["ref"], env["ref"], batchsize=3)


def _tiny_clip(folder: Path) -> Path:
    """A randomly initialised CLIPModel + processor saved locally (offline tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from bigain.zoo import build_clip_tokenizer

    tok = build_clip_tokenizer(folder / "tok", n_merges=100)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    CLIPModel(cfg).save_pretrained(folder / "clip")
    proc.save_pretrained(folder / "clip")
    return folder / "clip"


def test_clip_score_code_path_with_tiny_local_clip(env: dict, tmp_path: Path) -> None:
    """Code-path test only: a random tiny CLIP says nothing about real text-image agreement."""
    clip = _tiny_clip(tmp_path)
    gen = _write(_base_images(4, 40), tmp_path / "gen", prompts=["a photo of a cat.", "a dog", "car", "a boat"])
    out = tmp_path / "m.json"
    metrics_main(["--gen", str(gen), "--metrics", "clip", "--clip_model", str(clip), "--out", str(out), "--device",
                  "cpu"])
    res = json.loads(out.read_text())
    assert 0.0 <= res[M.KEY_CLIP_SCORE] <= 100.0
    assert "CLIPScore" in res[M.KEY_REPORT]["clip_model"]
    with pytest.raises(RuntimeError, match="--clip_model"):
        from eval.metrics.clip_score import load_clip

        load_clip(str(tmp_path / "no-such-clip"))


def test_cli_writes_json(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "fid.json"
    metrics_main(["--gen", str(env["ref"]), "--ref", str(env["ref"]), "--metrics", "fid", "--out", str(out),
            "--inception_weights", str(env["weights"]), "--cache_root", env["opts"]["cache_root"], "--device", "cpu"])
    res = json.loads(out.read_text())
    assert abs(res[M.KEY_FID]) < 1e-2 and res[M.KEY_REPORT]["n_reference"] == N_IMAGES
    with pytest.raises(SystemExit):
        metrics_main(["--gen", str(env["ref"]), "--ref", "no-such-dataset", "--metrics", "fid", "--out", str(out)])
