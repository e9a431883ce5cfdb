"""Presets validate and run through the CLI; bad configs fail before model work; sweeps resume."""
import json
from pathlib import Path

import pytest
import yaml

import bigain.classify as C
from bigain import sweep
from bigain.config import list_presets, parse_args_with_config, read_yaml_mapping, validate_config
from tiny_pipelines import build_tiny_pixel_dit

REPO = Path(__file__).resolve().parents[1]
PRESETS = [p for p in list_presets(REPO / "configs") if "sweeps" not in p.parts]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_validates_against_the_classify_cli(preset):
    data = read_yaml_mapping(preset)
    assert data, f"{preset} is empty"
    validate_config(data, C.build_parser(), str(preset))


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
    path = write_sweep(tmp_path, tiny_dit_dir, ["configs/methods/baseline.yaml", {"method": "tome", "ratio": [0.3, 0.6]}])
    calls = []

    def runner(task, argv):
        calls.append(argv)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted in the middle of the second run
        C.main(argv)

    with pytest.raises(KeyboardInterrupt):
        sweep.main([str(path)], runner=runner)
    runs = sweep.plan_sweep(path)
    assert [r.is_done() for r in runs] == [True, False, False]
    calls.clear()
    sweep.main([str(path)], runner=lambda task, argv: (calls.append(argv), C.main(argv)))
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
                   runner=lambda task, argv: seen.append(argv[argv.index("--run_dir") + 1]))
    assert len(seen) == 4 and len(set(seen)) == 4
    marker = json.loads((Path(seen[0]) / sweep.DONE_MARKER).read_text())
    assert marker["options"]["method"] == "tome"
