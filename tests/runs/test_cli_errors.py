"""Every CLI: bad input -> `error: ...` on stderr and exit 2 before any model work; --debug / BIGAIN_DEBUG re-raise."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigain.cli import check_output_dir, check_output_file, finite_float, positive_int, run_cli

REPO = Path(__file__).resolve().parents[2]
CLIS = ["bigain.classify", "bigain.generate", "bigain.benchmark", "bigain.sweep", "bigain.demo", "bigain.make_prompts",
        "eval.speed", "eval.report", "eval.metrics", "eval.compat"]


def _cli_module(name: str):
    """The module holding a CLI's `main`: a package's `__main__` (the eval tools), else the module itself."""
    module = importlib.import_module(name)
    return importlib.import_module(f"{name}.__main__") if hasattr(module, "__path__") else module


@pytest.fixture
def no_model_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load, benchmark or timing run fails the test."""
    import bigain.benchmark
    import bigain.models.loading
    import eval.speed.__main__ as speed_cli

    def fail(*a, **k):
        pytest.fail("model work started before the input was checked")

    monkeypatch.setattr(bigain.models.loading, "load_model", fail)
    monkeypatch.setattr(bigain.benchmark, "benchmark_model", fail)
    monkeypatch.setattr(speed_cli, "run_benchmark", fail)


def _paths(tmp_path: Path) -> dict[str, str]:
    """{file}: an existing file, {dir}: an existing folder, {tmp}: the test folder."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir(exist_ok=True)
    return {"{file}": str(tmp_path / "a_file"), "{dir}": str(tmp_path / "a_dir"), "{tmp}": str(tmp_path)}


CLS = ["--dataset", "fmnist", "--model_path", "{dir}", "--output_dir", "{tmp}/out"]
GEN = ["--classes", "1", "--model_path", "{dir}", "--output_dir", "{tmp}/out"]
BENCH = ["--models", "dit", "--model_dir", "dit={dir}", "--out", "{tmp}/bench"]
SPEED = ["--models", "sd2@w0.25", "--resolutions", "64", "--out", "{tmp}/speed"]
BAD = [
    # classify
    ("bigain.classify", CLS + ["--batch_size", "0"], "--batch_size"),
    ("bigain.classify", CLS + ["--n_samples", "20", "5"], "add no new timestep"),
    ("bigain.classify", CLS + ["--n_samples", "5", "5"], "add no new timestep"),
    ("bigain.classify", CLS + ["--n_trials", "-1"], "--n_trials"),
    ("bigain.classify", CLS + ["--max_images", "0"], "--max_images"),
    ("bigain.classify", CLS + ["--img_size", "nan"], "--img_size"),
    ("bigain.classify", CLS + ["--seed", "-3"], "--seed"),
    ("bigain.classify", CLS + ["--method", "bigain_td", "--alpha", "nan"], "--alpha"),
    ("bigain.classify", CLS + ["--method", "tome", "--ratio", "inf"], "--ratio"),
    ("bigain.classify", CLS + ["--method", "tome", "--blocks", ","], "names no block"),
    ("bigain.classify", CLS + ["--method", "todo", "--df", "0"], "--df"),
    ("bigain.classify", CLS + ["--method", "bigain_tm", "--plan_reuse", "group0"], "group<k>"),
    ("bigain.classify", CLS + ["--output_dir", "{file}"], "--output_dir"),
    ("bigain.classify", CLS + ["--summary_csv", "{dir}"], "--summary_csv"),
    ("bigain.classify", CLS + ["--run_dir", "{file}/sub"], "--run_dir"),
    # generate
    ("bigain.generate", GEN + ["--guidance", "nan"], "--guidance"),
    ("bigain.generate", GEN + ["--guidance", "inf"], "--guidance"),
    ("bigain.generate", GEN + ["--guidance", "-1"], "--guidance"),
    ("bigain.generate", GEN + ["--steps", "0"], "--steps"),
    ("bigain.generate", GEN + ["--batch_size", "-2"], "--batch_size"),
    ("bigain.generate", GEN + ["--images_per_class", "0"], "--images_per_class"),
    ("bigain.generate", ["--classes", "-1", "--model_path", "{dir}"], "--classes"),
    ("bigain.generate", GEN + ["--method", "bigain_td", "--alpha", "inf"], "--alpha"),
    ("bigain.generate", GEN + ["--method", "sito", "--noise_alpha", "nan"], "--noise_alpha"),
    ("bigain.generate", GEN + ["--method", "tome", "--blocks", ","], "names no block"),
    ("bigain.generate", GEN + ["--output_dir", "{file}"], "--output_dir"),
    ("bigain.generate", GEN + ["--summary_csv", "{dir}"], "--summary_csv"),
    # benchmark
    ("bigain.benchmark", BENCH + ["--n_images", "0"], "--n_images"),
    ("bigain.benchmark", BENCH + ["--steps", "0"], "--steps"),
    ("bigain.benchmark", BENCH + ["--guidance", "nan"], "--guidance"),
    ("bigain.benchmark", BENCH + ["--timing_repeats", "0"], "--timing_repeats"),
    ("bigain.benchmark", BENCH + ["--images_per_class", "-1"], "--images_per_class"),
    ("bigain.benchmark", BENCH + ["--out", "{file}"], "--out"),
    ("bigain.benchmark", BENCH + ["--target_halfwidth", "-0.1"], "--target_halfwidth"),
    ("bigain.benchmark", BENCH + ["--max_seconds", "nan"], "--max_seconds"),
    ("bigain.benchmark", BENCH + ["--max_drift", "1.5"], "--max_drift"),
    # sweep
    ("bigain.sweep", ["{tmp}/missing.yaml", "--n_workers", "0"], "--n_workers"),
    ("bigain.sweep", ["{tmp}/missing.yaml", "--worker_idx", "-1"], "--worker_idx"),
    ("bigain.sweep", ["{tmp}/missing.yaml"], "does not exist"),
    ("bigain.sweep", ["{file}", "--output_dir", "{file}"], "--output_dir"),
    # eval.speed
    ("eval.speed", SPEED + ["--repeats", "0"], "--repeats"),
    ("eval.speed", SPEED + ["--warmup", "-1"], "--warmup"),
    ("eval.speed", SPEED + ["--ratios", "nan"], "--ratios"),
    ("eval.speed", SPEED + ["--ratios", "1.5"], "--ratios"),
    ("eval.speed", SPEED + ["--batches", "0"], "--batches"),
    ("eval.speed", SPEED + ["--threads", "0"], "--threads"),
    ("eval.speed", SPEED + ["--out", "{file}"], "--out"),
    ("eval.speed", SPEED + ["--target_halfwidth", "inf"], "--target_halfwidth"),
    ("eval.speed", SPEED + ["--max_rounds", "0"], "--max_rounds"),
    ("eval.speed", SPEED + ["--max_drift", "-0.1"], "--max_drift"),
    ("eval.speed", ["--out", "{tmp}/speed"], "--preset or --models"),
    # eval.report, eval.metrics, make_prompts, demo
    ("eval.report", ["{dir}", "--out", "{file}"], "--out"),
    ("eval.metrics", ["--gen", "{dir}", "--batch_size", "0"], "--batch_size"),
    ("eval.metrics", ["--gen", "{dir}", "--kid_subsets", "-1"], "--kid_subsets"),
    ("eval.metrics", ["--gen", "{dir}", "--out", "{dir}"], "--out"),
    ("bigain.make_prompts", ["--folder", "{dir}"], "no class sub-folders"),
    ("bigain.make_prompts", ["--out_dir", "{file}"], "--out_dir"),
    ("bigain.demo", ["--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize("module, argv, needle", BAD, ids=[f"{m}:{' '.join(a[-2:])}" for m, a, _ in BAD])
def test_bad_input_is_error_exit_2_before_model_work(module, argv, needle, tmp_path, capsys, no_model_work):
    paths = _paths(tmp_path)
    for key, value in paths.items():
        argv = [a.replace(key, value) for a in argv]
    main = _cli_module(module).main
    with pytest.raises(SystemExit) as info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "error: " in err and needle in err, err
    assert "Traceback" not in err


def test_debug_flag_and_env_reraise(tmp_path, monkeypatch, capsys):
    from bigain import generate

    argv = ["--classes", "1", "--model_path", str(tmp_path / "missing")]
    with pytest.raises(FileNotFoundError):
        run_cli(generate.main, argv + ["--debug"])
    monkeypatch.setenv("BIGAIN_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run_cli(generate.main, argv)
    monkeypatch.delenv("BIGAIN_DEBUG")
    with pytest.raises(SystemExit) as info:
        run_cli(generate.main, argv)
    assert info.value.code == 2 and "error: --model_path" in capsys.readouterr().err


def test_real_bugs_keep_their_traceback():
    def buggy(argv):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        run_cli(buggy, [])


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_entry_point_uses_run_cli(module):
    """`python -m <cli>` goes through run_cli (the table above calls the same main)."""
    tree = ast.parse(Path(_cli_module(module).__file__).read_text())
    mains = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert mains and "run_cli(main)" in ast.unparse(mains[0]), module


def test_checked_types_have_one_import_site():
    """The checked argparse types come from bigain.cli.argtypes only: bigain.cli.flags does not re-export them."""
    cli = importlib.import_module("bigain.cli.flags")
    argtypes = importlib.import_module("bigain.cli.argtypes")
    assert not set(argtypes.__all__) & (set(cli.__all__) | set(vars(cli))), "bigain.cli.flags re-exports argtypes"
    for path in sorted(p for pkg in ("bigain", "eval", "tests", "scripts") for p in (REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "bigain.cli.flags":
                names = {a.name for a in node.names}
                assert not names & set(argtypes.__all__), f"{path}: import them from bigain.cli.argtypes"


@pytest.mark.parametrize("module, argv, needle", [
    ("bigain.generate", ["--classes", "1", "--guidance", "nan"], "error: argument --guidance"),
    ("eval.speed", ["--models", "sd2@w0.25", "--repeats", "0"], "error: argument --repeats"),
])
def test_cli_subprocess_exit_code(module, argv, needle):
    res = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 2 and needle in res.stderr, res.stderr


def test_checked_types_and_path_checks(tmp_path):
    import argparse

    for bad in ("nan", "inf", "-inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            finite_float(bad)
    for bad in ("0", "-1", "1.5", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    assert positive_int("3") == 3 and finite_float("-2.5") == -2.5
    (tmp_path / "f").write_text("x")
    check_output_dir(tmp_path / "new" / "deeper", "--out")  # creatable
    check_output_file(tmp_path / "new" / "s.csv", "--summary_csv")
    with pytest.raises(ValueError, match="not a folder"):
        check_output_dir(tmp_path / "f", "--out")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "f" / "sub", "--out")
    with pytest.raises(ValueError, match="is a folder"):
        check_output_file(tmp_path, "--summary_csv")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ValueError, match="not writable"):
                check_output_dir(ro / "x", "--out")
        finally:
            ro.chmod(0o700)


def test_config_values_go_through_the_same_checks(tmp_path):
    from bigain import generate
    from bigain.cli import parse_args_with_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 0\n")
    with pytest.raises(ValueError, match="key 'batch_size' expects int >= 1"):
        parse_args_with_config(generate.build_parser(), ["--config", str(cfg), "--classes", "1"])
    cfg.write_text("guidance: .nan\n")
    with pytest.raises(ValueError, match="key 'guidance'"):
        parse_args_with_config(generate.build_parser(), ["--config", str(cfg), "--classes", "1"])
    cfg.write_text("steps: 3\nguidance: 2\n")
    args = parse_args_with_config(generate.build_parser(), ["--config", str(cfg), "--classes", "1"])
    assert args.steps == 3 and args.guidance == 2.0


def test_malformed_yaml_config_names_file_and_line(tmp_path, capsys):
    from bigain import classify

    cfg = tmp_path / "broken.yaml"
    cfg.write_text("method: tome\nratio: [0.5\nseed: 1\n")
    with pytest.raises(SystemExit) as info:
        run_cli(classify.main, ["--config", str(cfg)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"error: config {cfg}: line " in err and "<unicode string>" not in err
