"""Typed runs (bigain.runs): same folders, fingerprints, records and rows as the CLIs; the shared flag spellings and
their aliases (command line and config files); the launch shard; benchmark and sweep build the runs the CLIs would."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from bigain import benchmark, make_prompts, sweep
from bigain import classify as C
from bigain import generate as G
from bigain.cli import launch_shard, parse_args_with_config, validate_config
from bigain.reduction import REDUCTION_FLAGS
from bigain.runs import ClassifyRun, GenerateRun, run_classification, run_generation
from bigain.storage import load_record, record_path
from bigain.zoo import build_tiny_pixel_dit

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "bigain" / "assets" / "testbed"

# Fingerprints and run folders written by the CLIs before they were split into typed runs (same arguments, the
# shipped testbed models): a run folder made then must resume now without recomputation.
CLASSIFY_PINS = [
    (["--model_path", "{M}/dit-fmnist"], "fmnist_subset/dit-fmnist/none/ns5-20_tk5-1_l2_tr1_s0_28px-bicubic_fp32_bs32",
     "3c37cfe15b90ef65"),
    (["--model_path", "{M}/unet-fmnist", "--method", "bigain_tm", "--ratio", "0.7", "--max_downsample", "1",
      "--max_images", "50", "--n_samples", "5", "20", "--to_keep", "5", "1", "--batch_size", "125"],
     "fmnist_subset/unet-fmnist/bigain_tm_max_downsample1_ratio0.7/ns5-20_tk5-1_l2_tr1_s0_28px-bicubic_fp32_bs125",
     "e7af0fcf0cfad162"),
    (["--model_path", "{M}/dit-fmnist", "--method", "bigain_td", "--alpha", "0.5", "--df", "2", "--reduction_seed", "3",
      "--seed", "2", "--n_trials", "2", "--loss", "l1"],
     "fmnist_subset/dit-fmnist/bigain_td_alpha0.5_df2_rseed3/ns5-20_tk5-1_l1_tr2_s2_28px-bicubic_fp32_bs32",
     "187ff30a7898e595"),
]
GENERATE_PINS = [
    (["--model_path", "{M}/dit-fmnist", "--classes", "0", "1", "--steps", "1", "--batch_size", "2"],
     "classes0-1x1/dit-fmnist/none/ddim1_g4_s0_bs2_32px_fp32", "7aa6593d6850cce0"),
    (["--model_path", "{M}/unet-fmnist", "--classes", "1", "--steps", "1", "--method", "todo", "--df", "2",
      "--max_downsample", "1"],
     "classes1x1/unet-fmnist/todo_df2_max_downsample1/euler1_g7.5_s0_bs4_32px_fp32", "e4ba96914257baa1"),
]


def _argv(extra: list[str]) -> list[str]:
    return [a.replace("{M}", str(TESTBED)) for a in extra]


# ----------------------------------------------------------------------------- pinned folders and fingerprints


@pytest.mark.parametrize("case", range(len(CLASSIFY_PINS)))
def test_classification_fingerprint_and_folder_unchanged(tmp_path, case):
    extra, folder, fingerprint = CLASSIFY_PINS[case]
    argv = ["--dataset", "fmnist", "--split", "subset", "--img_size", "28", "--dtype", "fp32", *_argv(extra),
            "--output_dir", str(tmp_path), "--summary_csv", str(tmp_path / "s.csv"), "--merge_only"]
    row = C.main(argv)  # --merge_only with --img_size: the fingerprint without loading the model
    assert Path(row["run_dir"]) == tmp_path / folder
    assert row["fingerprint"] == fingerprint


@pytest.mark.parametrize("case", range(len(GENERATE_PINS)))
def test_generation_fingerprint_and_folder_unchanged(tmp_path, case):
    extra, folder, fingerprint = GENERATE_PINS[case]
    row = G.main(["--dtype", "fp32", "--device", "cpu", *_argv(extra), "--no_flops", "--no_progress",
                  "--output_dir", str(tmp_path), "--summary_csv", str(tmp_path / "s.csv")])
    assert Path(row["run_dir"]) == tmp_path / folder
    assert row["fingerprint"] == fingerprint


# ----------------------------------------------------------------------------- runs and namespaces


CLASSIFY_ARGVS = [[], ["--dataset", "fmnist", "--method", "tome", "--ratio", "0.5", "--blocks", "0,1", "--threads", "2",
                       "--n_samples", "2", "4", "--config", "x.yaml", "--dry-run"]]
GENERATE_ARGVS = [["--classes", "1", "2"], ["--dataset", "fmnist", "--method", "todo", "--df", "2", "--guidance", "1",
                                             "--max_images", "3", "--cpu_threads", "1"]]


@pytest.mark.parametrize("task,argv",
                         [("classify", a) for a in CLASSIFY_ARGVS] + [("generate", a) for a in GENERATE_ARGVS])
def test_run_from_args_holds_every_flag(task, argv, monkeypatch):
    """A run built from a parsed command line gives back exactly that namespace (config.json records it)."""
    monkeypatch.delenv("MODEL_PATH", raising=False)
    cli, kind = (C, ClassifyRun) if task == "classify" else (G, GenerateRun)
    args = cli.build_parser().parse_args(argv)
    run = kind.from_args(args)
    assert vars(run.namespace()) == vars(args)
    fields = {f.name for f in dataclasses.fields(kind)} - {"reduction"}
    assert fields | set(REDUCTION_FLAGS) == set(vars(args))
    assert kind.from_args(run.namespace()) == run


def test_run_normalises_lists_and_float_options():
    run = ClassifyRun(n_samples=[2, 4], method="tome", reduction={"ratio": 1, "sx": 2, "blocks": None})
    assert run.n_samples == (2, 4) and run.reduction == {"ratio": 1.0, "sx": 2}
    assert isinstance(run.reduction["ratio"], float)  # as `--ratio 1` parses: the folder says ratio1.0
    with pytest.raises(ValueError, match="unknown reducer option"):
        ClassifyRun(reduction={"colour": 1})


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory):
    return build_tiny_pixel_dit(tmp_path_factory.mktemp("dit"))


def test_classify_run_in_python_matches_the_cli(tmp_path, tiny_dit):
    flags = ["--dataset", "fmnist", "--model_path", str(tiny_dit), "--img_size", "16", "--n_samples", "1", "2",
             "--to_keep", "2", "1", "--max_images", "3", "--dtype", "fp32", "--device", "cpu", "--no_flops",
             "--method", "tome", "--ratio", "0.5"]
    cli = C.main(flags + ["--output_dir", str(tmp_path / "cli")])
    run = ClassifyRun(dataset="fmnist", model_path=str(tiny_dit), img_size=16, n_samples=(1, 2), to_keep=(2, 1),
                      max_images=3, dtype="fp32", device="cpu", no_flops=True, method="tome", reduction={"ratio": 0.5},
                      output_dir=str(tmp_path / "api"))
    api = run_classification(run)
    assert Path(api["run_dir"]).relative_to(tmp_path / "api") == Path(cli["run_dir"]).relative_to(tmp_path / "cli")
    for key in ("fingerprint", "accuracy", "images", "calls_per_image", "reduction"):
        assert api[key] == cli[key], key
    for i in range(3):
        a, b = load_record(record_path(api["run_dir"], i)), load_record(record_path(cli["run_dir"], i))
        np.testing.assert_array_equal(a.errors, b.errors)
    assert run_classification(run)["images_computed"] == 0  # the same run resumes: nothing recomputed


def test_generate_run_in_python_matches_the_cli(tmp_path, tiny_dit):
    cli = G.main(["--model_path", str(tiny_dit), "--classes", "0", "1", "--steps", "2", "--dtype", "fp32",
                  "--device", "cpu", "--no_flops", "--no_progress", "--output_dir", str(tmp_path / "cli")])
    api = run_generation(GenerateRun(model_path=str(tiny_dit), classes=(0, 1), steps=2, dtype="fp32", device="cpu",
                                     no_flops=True, no_progress=True, output_dir=str(tmp_path / "api")))
    assert api["fingerprint"] == cli["fingerprint"]
    for name in ("000000.png", "000001.png", "000000.json"):
        api_file, cli_file = Path(api["run_dir"]) / "images" / name, Path(cli["run_dir"]) / "images" / name
        assert api_file.read_bytes() == cli_file.read_bytes()


# ----------------------------------------------------------------------------- benchmark and sweep build runs


def test_benchmark_builds_the_run_its_former_command_line_did(tmp_path, monkeypatch):
    """bigain.benchmark hands run_classification / run_generation the runs its former argv lists parsed into."""
    monkeypatch.delenv("MODEL_PATH", raising=False)
    seen = {}
    monkeypatch.setattr(benchmark, "run_classification", lambda run: seen.setdefault("cls", run) and {})
    monkeypatch.setattr(benchmark, "run_generation", lambda run: seen.setdefault("gen", run) and {"fingerprint": "f"})
    monkeypatch.setattr(benchmark, "compute_metrics", lambda *a, **k: {"domain_frechet_distance": 1.0})
    args = benchmark.build_parser().parse_args(["--n_images", "7", "--guidance", "2", "--device", "cpu",
                                                "--allow_stages_without_new_timesteps"])
    out = tmp_path / "classify" / "dit" / "tag"
    benchmark.classify_setting(Path("/m/dit"), "bigain_td", {"alpha": 0.5, "df": 2}, out, args)
    benchmark.generate_setting(Path("/m/dit"), "tome", {"ratio": 0.7}, tmp_path / "generate" / "dit" / "tag", args)
    former_cls = ["--dataset", "fmnist", "--split", "subset", "--model_path", "/m/dit", "--dtype", "fp32", "--device",
                  "cpu", "--batch_size", "125", "--n_samples", "5", "20", "--to_keep", "5", "1", "--seed", "0",
                  "--run_dir", str(out), "--summary_csv", str(tmp_path / "classify" / "summary.csv"),
                  "--allow_stages_without_new_timesteps", "--max_images", "7", "--method", "bigain_td", "--alpha",
                  "0.5",
                  "--df", "2"]
    assert seen["cls"] == ClassifyRun.from_args(C.build_parser().parse_args(former_cls))
    gen_dir = tmp_path / "generate" / "dit" / "tag" / "n50"
    former_gen = ["--model_path", "/m/dit", "--classes", *map(str, range(10)), "--images_per_class", "5", "--steps",
                  "10",
                  "--dtype", "fp32", "--device", "cpu", "--batch_size", "50", "--seed", "0", "--run_dir", str(gen_dir),
                  "--summary_csv", str(tmp_path / "generate" / "summary.csv"), "--no_progress", "--guidance", "2.0",
                  "--method", "tome", "--ratio", "0.7"]
    assert seen["gen"] == GenerateRun.from_args(G.build_parser().parse_args(former_gen))


def test_sweep_cell_run_equals_its_recorded_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MODEL_PATH", raising=False)
    options = {"model_path": "/m", "img_size": 16, "n_samples": [1, 2], "to_keep": [2, 1], "no_flops": True,
               "max_images": None, "method": "tome", "ratio": 0.3, "blocks": [0, 1], "cpu_threads": 1,
               "dataset": "fmnist"}
    cell = sweep.PlannedRun("classify", "m", "fmnist", "tome_ratio0.3", options, tmp_path / "run")
    typed = sweep.typed_run(cell, tmp_path / "summary.csv")
    argv = sweep.run_argv(cell, tmp_path / "summary.csv")
    assert typed == ClassifyRun.from_args(C.build_parser().parse_args(argv))
    assert typed.run_dir == str(tmp_path / "run") and typed.reduction == {"ratio": 0.3, "blocks": "0,1"}


# ----------------------------------------------------------------------------- one spelling per flag, old ones kept


@pytest.mark.parametrize("parser,new,old,dest,value", [
    (C.build_parser, "--threads", "--cpu_threads", "cpu_threads", 2),
    (G.build_parser, "--threads", "--cpu_threads", "cpu_threads", 2),
    (benchmark.build_parser, "--threads", "--cpu_threads", "threads", 2),
    (benchmark.build_parser, "--output_dir", "--out", "out", "o"),
    (C.build_parser, "--output_dir", "--out", "output_dir", "o"),
    (benchmark.build_parser, "--max_images", "--n_images", "n_images", 3),
    (G.build_parser, "--max_images", "--n_images", "max_images", 3),
])
def test_old_flag_spellings_are_aliases(parser, new, old, dest, value, tmp_path):
    assert getattr(parser().parse_args([new, str(value)]), dest) == value
    assert getattr(parser().parse_args([old, str(value)]), dest) == value
    for key in (new.lstrip("-"), old.lstrip("-"), dest):  # a config file may use any spelling
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump({key: value}))
        assert getattr(parse_args_with_config(parser(), ["--config", str(path)]), dest) == value


def test_config_key_alias_is_checked_like_the_flag():
    with pytest.raises(ValueError, match="threads"):
        validate_config({"threads": 0}, C.build_parser(), "x.yaml")
    with pytest.raises(ValueError, match="unknown key 'thread'"):
        validate_config({"thread": 1}, C.build_parser(), "x.yaml")


def test_make_prompts_output_dir_spellings(tmp_path):
    make_prompts.main(["--datasets", "pets", "--output_dir", str(tmp_path / "a")])
    make_prompts.main(["--datasets", "pets", "--out_dir", str(tmp_path / "b")])
    assert (tmp_path / "a" / "pets_prompts.csv").read_bytes() == (tmp_path / "b" / "pets_prompts.csv").read_bytes()


# ----------------------------------------------------------------------------- the launch shard


@pytest.mark.parametrize("env,expected", [
    ({}, (0, 1)),
    ({"RANK": "0", "WORLD_SIZE": "1"}, (0, 1)),
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}, (2, 4)),  # torchrun
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "ACCELERATE_MIXED_PRECISION": "no"}, (1, 2)),  # accelerate
])
def test_launch_shard_reads_torchrun_and_accelerate_launches(env, expected):
    assert launch_shard(env) == expected


@pytest.mark.parametrize("env", [{"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_launch_shard_rejects_inconsistent_launch_variables(env):
    with pytest.raises(ValueError, match="RANK"):
        launch_shard(env)


def test_classify_and_generate_shard_alike_under_a_launch(tmp_path, monkeypatch, tiny_dit, capsys):
    """Both runners take their process share from the same launch variables (formerly generate used accelerate's
    state and classify the environment)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    plan = run_classification(ClassifyRun(dataset="fmnist", model_path=str(tiny_dit), max_images=5, n_samples=(1, 2),
                                          to_keep=(2, 1), device="cpu", dry_run=True, n_workers=2, worker_idx=1))
    assert plan["shard"] == "3/4" and plan["this_shard"] == 1
    plan = run_generation(GenerateRun(model_path=str(tiny_dit), classes=(0, 1), device="cpu", dry_run=True))
    assert plan["shard"] == "1/2"
