"""Metric prerequisites are checked before anything is computed; what can be computed is written, the rest is
recorded as skipped with its reason, and the exit status says which (0 all, 3 some skipped, 2 bad input)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torch_fidelity")

from eval.metrics import compute as M  # noqa: E402
from eval.metrics import inception as inc  # noqa: E402
from eval.metrics.__main__ import main as metrics_main  # noqa: E402
from eval.metrics.prerequisites import plan_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _write_images(folder: Path, n: int = 6, size: int = 40, seed: int = 0, prompts: bool = True) -> Path:
    """Random smooth RGB PNGs, each with a bigain.generate-style record."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 5, 5, generator=g), size=(size, size), mode="bilinear")
    for i, im in enumerate((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im).save(folder / f"{i:06d}.png")
        (folder / f"{i:06d}.json").write_text(json.dumps({"label": i % 3, **({"prompt": "a cat"} if prompts else {})}))
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    try:
        return inc.converted_weights_path(tmp_path_factory.mktemp("inc"), inc.fid_helper_torchscript_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture
def offline(tmp_path, monkeypatch, weights) -> dict:
    """No network, empty HF cache, private feature cache; CLI flags for the converted Inception weights."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BIGAIN_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("DATASET_ROOT", raising=False)
    args = ["--inception_weights", str(weights), "--cache_root", str(tmp_path / "stats"), "--device", "cpu"]
    return {"args": args, "gen": _write_images(tmp_path / "gen"), "ref": _write_images(tmp_path / "ref", seed=1)}


def test_missing_clip_model_keeps_fid_and_exits_3(offline, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    with pytest.raises(SystemExit) as ex:
        metrics_main(["--gen", str(offline["gen"]), "--ref", str(offline["ref"]), "--metrics", "fid", "clip",
                "--out", str(out), *offline["args"]])
    assert ex.value.code == M.EXIT_SKIPPED == 3
    res = json.loads(out.read_text())
    assert res[M.KEY_FID] > 0 and M.KEY_CLIP_SCORE not in res
    reason = res[M.KEY_SKIPPED]["clip"]
    assert "openai/clip-vit-large-patch14" in reason and "--clip_model" in reason and "hf download" in reason
    assert list(res[M.KEY_SKIPPED]) == ["clip"] and res[M.KEY_REPORT]["requested"] == ["fid", "clip"]
    err = capsys.readouterr().err
    assert err.index("will skip clip") < err.index("wrote")


def test_all_prerequisites_are_checked_before_any_computation(offline, monkeypatch):
    def no_extraction(*a, **k):
        raise AssertionError("features extracted before the prerequisites were checked")

    monkeypatch.setattr(M, "extract_features", no_extraction)
    with pytest.raises(M.MetricsUnavailableError) as err:
        M.compute_metrics(offline["gen"], None, metrics=["fid", "kid", "domain_fid", "clip"], skip_unavailable=False,
                          inception_weights=offline["args"][1], device="cpu")
    text = str(err.value)
    for metric in ("fid", "kid", "domain_fid", "clip"):
        assert f"will skip {metric}:" in text
    assert "--ref" in text and "--domain_extractor" in text and "--clip_model" in text


def test_check_mode_runs_before_generation(offline, tmp_path, capsys):
    later = tmp_path / "not-generated-yet" / "images"
    with pytest.raises(SystemExit) as ex:
        metrics_main(["--check", "--gen", str(later), "--ref", str(offline["ref"]), "--metrics", "fid", "is", "clip",
                *offline["args"]])
    assert ex.value.code == 3 and not later.exists()
    err = capsys.readouterr().err
    assert "will compute: fid" in err and "will skip is: Inception Score needs" in err and "will skip clip:" in err
    res = metrics_main(["--check", "--gen", str(later), "--ref", str(offline["ref"]), "--metrics", "fid", "kid",
                  *offline["args"]])
    assert res == {M.KEY_SKIPPED: {}}
    with pytest.raises(SystemExit) as ex:  # a typo in --ref is bad input, not a skip
        metrics_main(["--check", "--gen", str(later), "--ref", "no-such-set", "--metrics", "fid", *offline["args"]])
    assert ex.value.code == 2
    with pytest.raises(SystemExit) as ex:
        metrics_main(["--check", "--strict", "--gen", str(later), "--ref", str(offline["ref"]), "--metrics", "fid",
                      "clip",
                *offline["args"]])
    assert ex.value.code == 2


def test_unavailable_dataset_reference_is_skipped_with_its_reason(offline):
    plan = plan_metrics(["fid", "kid", "is"], "imagenet", {"inception_weights": offline["args"][1]})
    assert plan.to_compute == [] and set(plan.skipped) == {"fid", "kid", "is"}
    assert "DATASET_ROOT" in plan.skipped["fid"] and "Inception Score needs" in plan.skipped["is"]


def test_records_without_prompts_skip_clip(tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        (clip / name).write_text("{}")
    gen = _write_images(tmp_path / "gen", n=3, prompts=False)
    plan = plan_metrics(["clip"], None, {"clip_model": str(clip)}, sorted(gen.glob("*.png")))
    assert "3 of 3 image records have no 'prompt'" in plan.skipped["clip"]
    (clip / "model.safetensors").unlink()
    assert "lacks weights" in plan_metrics(["clip"], None, {"clip_model": str(clip)}).skipped["clip"]


def test_inception_download_attempt_prints_no_downloading_line(monkeypatch, capsys):
    """torch hub announces a download before it fails; an offline run falling back must not show it."""
    calls = []

    def announce_then_fail(url, *a, **k):
        calls.append(url)
        sys.stderr.write(f'Downloading: "{url}" to /somewhere\n')
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", announce_then_fail)
    for var in ("BIGAIN_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert inc._try_download() is None and len(calls) == 1
    assert "Downloading" not in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert inc._try_download() is None and len(calls) == 1  # offline: not even attempted


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment running sd_generation.sh offline on CPU."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable, "DTYPE": "fp32", "STEPS": "2",
            "BATCH_SIZE": "2", "SEED": "3", "OUTPUT_DIR": str(tmp_path / "out"), "BIGAIN_CACHE": str(tmp_path / "c"),
            "BIGAIN_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "DATASET": "fmnist",
            "EXTRA_ARGS": "--max_images 3 --no_flops --no_progress --device cpu", "METRICS_ARGS": "--device cpu",
            **extra}


def test_driver_checks_metrics_before_sampling(tmp_path):
    env = _script_env(tmp_path, MODEL_PATH=str(tmp_path / "never-loaded"), REF=str(tmp_path / "no-such-folder"))
    res = subprocess.run(["bash", str(REPO / "scripts" / "sd_generation.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "error: reference" in res.stderr
    assert "never-loaded" not in res.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_driver_without_clip_model_still_writes_fid_and_exits_3(tmp_path, weights):
    from bigain.zoo import build_tiny_sd

    model = build_tiny_sd(tmp_path / "sd")
    real = tmp_path / "real"
    real.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(real / f"{i}.png")
    env = _script_env(tmp_path, MODEL_PATH=str(model), REF=str(real), METRICS="fid clip",
                      METRICS_ARGS=f"--device cpu --inception_weights {weights}")
    res = subprocess.run(["bash", str(REPO / "scripts" / "sd_generation.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 3, res.stderr[-3000:]
    err = res.stderr
    assert err.index("will skip clip") < err.index("model sd: local folder")  # said before sampling
    metrics = json.loads(next((tmp_path / "out").rglob("metrics.json")).read_text())
    assert metrics[M.KEY_FID] > 0 and "clip" in metrics[M.KEY_SKIPPED] and metrics["report"]["n_generated"] == 3
