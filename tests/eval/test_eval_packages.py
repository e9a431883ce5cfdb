"""The eval tools as packages: public APIs, `python -m eval.<tool>` commands, the old module spellings, and
eval.speed's underscore flags (dashed aliases) and `--config`."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.speed.__main__ import build_parser as speed_parser
from eval.speed.__main__ import main as speed_main

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("eval.metrics", "eval.speed", "eval.report", "eval.compat")
# old spelling -> the module it now runs
ALIASES = {"eval.upstream": "eval.speed.upstream", "eval.op_count": "eval.speed.op_count",
           "eval.sito_precision": "eval.speed.sito_precision"}
# every dashed flag of eval.speed -> its underscore spelling (the dest is the same)
DASHED = {"--max-downsample": "--max_downsample", "--dry-run": "--dry_run", "--no-upstream": "--no_upstream",
          "--no-breakdown": "--no_breakdown", "--cuda-graphs": "--cuda_graphs",
          "--flops-full-batch": "--flops_full_batch"}


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_package_exports_what_its_all_names(name):
    package = importlib.import_module(name)
    assert hasattr(package, "__path__") and package.__all__
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert not missing, missing
    assert (Path(package.__file__).parent / "__main__.py").is_file()


# the commands, by the layering rule: modules directly in bigain/ and bigain.runs (tests/project/test_layering.py)
COMMANDS = ["bigain.runs"] + [f"bigain.{p.stem}" for p in sorted((REPO / "bigain").glob("*.py"))
                              if p.stem != "__init__"]


@pytest.mark.parametrize("name", TOOLS)
def test_no_tool_library_module_imports_an_entry_point(name):
    """Only a tool's `__main__` may import a command; importing the package alone loads none."""
    res = _run("-c", f"import sys, {name}; print(sorted(m for m in {COMMANDS!r} if m in sys.modules))")
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr + res.stdout


def test_speed_dry_run_through_python_m():
    res = _run("-m", "eval.speed", "--preset", "tiny", "--dry_run")
    assert res.returncode == 0, res.stderr
    assert "2 cases" in res.stdout and "tiny-sd 128px batch 2" in res.stdout


@pytest.mark.parametrize("tool", ["eval.report", "eval.metrics", "eval.speed", "eval.compat"])
def test_tool_help_exits_0(tool):
    res = _run("-m", tool, "--help")
    assert res.returncode == 0 and f"python -m {tool}" in res.stdout, res.stderr


@pytest.mark.parametrize("old, new", ALIASES.items())
def test_old_module_spelling_runs_the_moved_module(old, new):
    alias = REPO / Path(*old.split(".")).with_suffix(".py")
    assert f'runpy.run_module("{new}", run_name="__main__")' in alias.read_text()
    if new == "eval.speed.upstream":  # its main downloads; the alias module is checked above
        return
    if new.endswith("op_count"):
        for spelling in (old, new):
            res = _run("-m", spelling, "--help")
            assert res.returncode == 0 and f"python -m {new}" in res.stdout, res.stderr
            assert "Warning" not in res.stderr, res.stderr


def test_speed_dashed_flags_are_aliases_of_the_underscore_ones():
    parser = speed_parser()
    strings = {s for action in parser._actions for s in action.option_strings}
    assert set(DASHED) | set(DASHED.values()) <= strings
    for dashed, underscore in DASHED.items():
        action = parser._option_string_actions[underscore]
        assert parser._option_string_actions[dashed] is action and action.option_strings[0] == underscore
    base = ["--preset", "tiny"]
    old = vars(parser.parse_args(base + ["--dry-run", "--no-upstream", "--max-downsample", "2", "--no-breakdown"]))
    new = vars(parser.parse_args(base + ["--dry_run", "--no_upstream", "--max_downsample", "2", "--no_breakdown"]))
    assert old == new and new["dry_run"] and new["upstream"] is False and new["max_downsample"] == [2]


def test_speed_reads_option_values_from_a_config(tmp_path, capsys):
    config = tmp_path / "speed.yaml"
    config.write_text("preset: tiny\ndry_run: true\nmethods: [tome]\nratios: [0.5]\n")
    assert speed_main(["--config", str(config)]) == []
    out = capsys.readouterr().out
    assert "tiny-sd 128px batch 2: baseline + 1 settings" in out and "2 cases" in out
    speed_main(["--config", str(config), "--ratios", "0.3", "0.5"])  # an explicit flag overrides the config
    assert "tiny-sd 128px batch 2: baseline + 2 settings" in capsys.readouterr().out
    config.write_text("dry-run: true\nnot_an_option: 1\n")
    with pytest.raises(ValueError, match="unknown key 'not_an_option'"):
        speed_main(["--config", str(config)])
