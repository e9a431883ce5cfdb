"""Presets validate and run through the CLI; bad configs fail before model work; sweeps resume."""
import json
from pathlib import Path

import pytest
import yaml

import bigain.classify as C
from bigain import sweep
from bigain.cli import list_presets, parse_args_with_config, read_yaml_mapping, validate_config
from bigain.runs import run_classification
from bigain.zoo import build_tiny_pixel_dit

REPO = Path(__file__).resolve().parents[2]
PRESETS = [p for p in list_presets(REPO / "configs") if "sweeps" not in p.parts]


def parsers_for(preset: Path) -> list:
    """Method and model presets serve both CLIs; experiment presets the one their prefix names."""
    import bigain.generate as G

    if preset.parent.name == "experiments":
        return [C.build_parser() if preset.name.startswith("cls_") else G.build_parser()]
    return [C.build_parser(), G.build_parser()]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_validates_against_its_cli(preset):
    data = read_yaml_mapping(preset)
    assert data, f"{preset} is empty"
    assert preset.parent.name != "experiments" or preset.name.startswith(("cls_", "gen_"))
    for parser in parsers_for(preset):
        validate_config(data, parser, str(preset))


@pytest.mark.parametrize("sweep_file", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_plans(sweep_file, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = sweep.plan_sweep(sweep_file)
    assert runs and len({r.run_dir for r in runs}) == len(runs)


@pytest.mark.parametrize("text,match", [
    ("colour: red\n", r"unknown key 'colour'.*allowed keys"),
    ("ratio: fast\n", r"key 'ratio' expects float"),
    ("n_samples: 5.5\n", r"key 'n_samples' expects a list of int"),
    ("method: nope\n", r"key 'method' expects"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_config_names_key_and_file(tmp_path, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        parse_args_with_config(C.build_parser(), ["--config", str(bad)])
    assert "bad.yaml" in str(info.value)


def test_later_config_wins_and_flags_override(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("method: tome\nratio: 0.3\nn_samples: [2, 4]\n")
    b.write_text("ratio: 0.7\n")
    args = parse_args_with_config(C.build_parser(), ["--config", str(a), "--config", str(b)])
    assert (args.method, args.ratio, args.n_samples) == ("tome", 0.7, [2, 4])
    args = parse_args_with_config(C.build_parser(), ["--config", str(a), "--ratio", "0.5"])
    assert args.ratio == 0.5


@pytest.fixture(scope="module")
def tiny_dit_dir(tmp_path_factory):
    return build_tiny_pixel_dit(tmp_path_factory.mktemp("dit"))


def write_sweep(tmp_path, model_dir, methods):
    spec = {
        "name": "t", "output_dir": str(tmp_path / "runs"), "tasks": ["classify"], "datasets": ["fmnist"],
        "models": [{"name": "tiny", "model_path": str(model_dir), "img_size": 16}],
        "experiment": {"n_samples": [1, 2], "to_keep": [2, 1], "batch_size": 32, "max_images": 2, "no_flops": True},
        "methods": methods,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_runs_resumes_and_reports(tmp_path, tiny_dit_dir, capsys):
    path = write_sweep(tmp_path, tiny_dit_dir,
                       ["configs/methods/baseline.yaml", {"method": "tome", "ratio": [0.3, 0.6]}])
    calls = []

    def runner(task, run):
        calls.append(run)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted in the middle of the second run
        run_classification(run)

    with pytest.raises(KeyboardInterrupt):
        sweep.main([str(path)], runner=runner)
    runs = sweep.plan_sweep(path)
    assert [r.is_done() for r in runs] == [True, False, False]
    calls.clear()
    sweep.main([str(path)], runner=lambda task, run: (calls.append(run), run_classification(run)))
    assert len(calls) == 2, "finished runs must not be redone"
    assert all(r.is_done() for r in sweep.plan_sweep(path))
    summary = (tmp_path / "runs" / "classify" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 3 and "tome" in summary[-1]
    sweep.main([str(path), "--plan"])
    assert "3/3 runs done" in capsys.readouterr().out


def test_sweep_rejects_bad_cells_before_running(tmp_path, tiny_dit_dir):
    path = write_sweep(tmp_path, tiny_dit_dir, [{"method": "todo", "ratio": 0.5}])
    with pytest.raises(ValueError):
        sweep.main([str(path)], runner=lambda *a: pytest.fail("nothing may run"))
    path = write_sweep(tmp_path, tiny_dit_dir, [{"method": "tome", "colour": "red"}])
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        sweep.main([str(path)], runner=lambda *a: pytest.fail("nothing may run"))


def test_sweep_sharding_partitions_runs(tmp_path, tiny_dit_dir):
    path = write_sweep(tmp_path, tiny_dit_dir, [{"method": "tome", "ratio": [0.1, 0.2, 0.3, 0.4]}])
    seen = []
    for idx in range(2):
        sweep.main([str(path), "--n_workers", "2", "--worker_idx", str(idx)],
                   runner=lambda task, run: seen.append(run.run_dir))
    assert len(seen) == 4 and len(set(seen)) == 4
    marker = json.loads((Path(seen[0]) / sweep.DONE_MARKER).read_text())
    assert marker["options"]["method"] == "tome"


@pytest.mark.parametrize("module", ["bigain.classify", "bigain.generate", "eval.metrics.__main__",
                                    "eval.report.__main__", "eval.speed.__main__", "bigain.benchmark"])
def test_every_cli_rejects_a_bad_config_before_work(tmp_path, module):
    import importlib

    bad = tmp_path / "bad.yaml"
    bad.write_text("not_an_option: 1\n")
    with pytest.raises(ValueError, match="unknown key 'not_an_option'"):
        importlib.import_module(module).main(["--config", str(bad)])


METHOD_PRESETS = sorted((REPO / "configs" / "methods").glob("*.yaml"))


@pytest.mark.parametrize("preset", METHOD_PRESETS, ids=lambda p: p.name)
def test_every_method_preset_runs_through_classify_on_a_tiny_model(tmp_path, tiny_dit_dir, preset):
    row = C.main(["--config", str(preset), "--model_path", str(tiny_dit_dir), "--dataset", "fmnist", "--img_size", "16",
                  "--max_images", "1", "--n_samples", "1", "--to_keep", "1", "--no_flops", "--cpu_threads", "1",
                  "--output_dir", str(tmp_path), "--run_dir", str(tmp_path / "run")])
    assert row["images"] == 1 and row["method"] == read_yaml_mapping(preset)["method"]
    assert "config" not in read_yaml_mapping(tmp_path / "run" / "effective_config.yaml")


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.parent.name in ("models", "experiments")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_model_and_experiment_presets_dry_run_through_their_cli(tmp_path, preset, monkeypatch, capsys):
    import bigain.generate as G

    monkeypatch.setenv("DATASET_ROOT", str(tmp_path))
    cli = C if preset.name.startswith("cls_") or preset.parent.name == "models" else G
    argv = ["--config", str(preset), "--dry-run", "--output_dir", str(tmp_path)]
    if cli is G and "classes" not in read_yaml_mapping(preset) and "dataset" not in read_yaml_mapping(preset):
        argv += ["--classes", "0"]
    try:
        cli.main(argv)
    except (ValueError, OSError) as err:  # datasets are absent here: the error must name the expected layout
        assert "DATASET_ROOT" in str(err) or str(tmp_path) in str(err), err
