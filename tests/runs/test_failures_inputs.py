"""Issue 26 (1): the last bad inputs end as `error: ...` naming the culprit, exit 2, before any model loads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bigain.runs.classification
import bigain.runs.generation
from bigain import classify, generate
from bigain.cli import run_cli
from bigain.models import ModelFolderError, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def damaged(dit_path, tmp_path) -> Path:
    """A copy of the tiny model to damage."""
    return Path(shutil.copytree(dit_path, tmp_path / "model"))


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: the input had to be refused before."""
    def fail(*a, **k):
        pytest.fail("the model was loaded before the input was checked")

    monkeypatch.setattr(bigain.runs.classification, "load_model", fail)
    monkeypatch.setattr(bigain.runs.generation, "load_model", fail)


def _error(main, argv, capsys) -> str:
    """stderr of a CLI run that must end with exit status 2 and an `error:` line, no traceback."""
    with pytest.raises(SystemExit) as info:
        run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "error: " in err and "Traceback" not in err, err
    return err


def _gen_argv(model: Path, tmp_path: Path, *extra) -> list:
    return ["--model_path", model, "--classes", "1", "--run_dir", tmp_path / "run", "--steps", "2", "--no_flops",
            "--no_progress", *extra]


@pytest.mark.parametrize("device, needle", [("bogus", "is not a device"), ("cuda:0", "CUDA"), ("meta", "unsupported")])
def test_bad_device_is_refused_before_loading(device, needle, dit_path, tmp_path, capsys, no_model_load):
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU
    for main, argv in ((generate.main, _gen_argv(dit_path, tmp_path)),
                       (classify.main, ["--dataset", "fmnist", "--model_path", dit_path, "--run_dir", tmp_path / "c"])):
        err = _error(main, [*argv, "--device", device], capsys)
        assert f"--device {device}" in err and (needle in err or "GPU" in err), err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_safetensors_is_named(damage, damaged, tmp_path, capsys):
    weights = damaged / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a safetensors file" * 3,
                         "empty": b""}[damage])
    with pytest.raises(ModelFolderError, match="diffusion_pytorch_model.safetensors"):
        load_model(model_path=damaged, dtype="fp32", device="cpu")
    err = _error(generate.main, _gen_argv(damaged, tmp_path), capsys)
    assert str(weights) in err


def test_wrong_typed_config_value_names_file_and_key(damaged, tmp_path, capsys, monkeypatch):
    config = damaged / "transformer" / "config.json"
    values = json.loads(config.read_text())
    config.write_text(json.dumps({**values, "num_layers": "five"}))
    import diffusers

    def no_weights(*a, **k):
        pytest.fail("weights were loaded before the config was checked")

    monkeypatch.setattr(diffusers.DiTTransformer2DModel, "from_pretrained", no_weights)
    err = _error(generate.main, _gen_argv(damaged, tmp_path), capsys)
    assert str(config) in err and "'num_layers'" in err and "'five'" in err, err


def test_shipped_and_tiny_model_configs_pass_the_type_check(dit_path):
    from bigain.models.folder_checks import component_config_problems, safetensors_problems

    for folder in [dit_path, *sorted(p for p in (Path(__file__).parents[2] / "bigain/assets/testbed").iterdir()
                                     if p.is_dir())]:
        assert component_config_problems(folder) == [] and safetensors_problems(folder) == []


def test_truncated_png_is_named_before_feature_extraction(tmp_path, capsys, monkeypatch):
    import eval.metrics.__main__ as metrics_cli
    import eval.metrics.compute as compute

    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(gen / f"{i:06d}.png")
    bad = gen / "000001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    monkeypatch.setattr(compute, "extract_features", lambda *a, **k: pytest.fail("features extracted"))
    err = _error(metrics_cli.main, ["--gen", gen, "--ref", "fmnist-test"], capsys)
    assert str(bad) in err and "000000.png" not in err and "000002.png" not in err, err


def test_steps_beyond_the_schedulers_timesteps_refused_before_loading(dit_path, tmp_path, capsys, no_model_load):
    argv = _gen_argv(dit_path, tmp_path)
    argv[argv.index("--steps") + 1] = "5000"
    err = _error(generate.main, argv, capsys)
    assert "--steps 5000" in err and "1000" in err, err


def test_yaml_config_with_a_duplicated_key_is_refused(dit_path, tmp_path, capsys, no_model_load):
    config = tmp_path / "preset.yaml"
    config.write_text("max_images: 3\nseed: 1\nmax_images: 5\n")
    err = _error(classify.main, ["--dataset", "fmnist", "--model_path", dit_path, "--config", config], capsys)
    assert str(config) in err and "'max_images'" in err and "twice" in err, err
