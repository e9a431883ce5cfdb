"""The classification drivers: the active block runs end to end on a tiny model; every block's flags are valid."""
from __future__ import annotations

import csv
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bigain import classify as C
from bigain.diffusion import classifier
from bigain.zoo import build_tiny_pixel_dit, build_tiny_sd

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {"sd_classification.sh": build_tiny_sd, "dit.sh": build_tiny_pixel_dit}
# (method, flags that must appear) of the six example blocks, in order
BLOCKS = [
    ("none", []),
    ("tome", ["--ratio", "0.7"]),
    ("bigain_tm", ["--ratio", "0.7", "--laplacian_norm", "l1"]),
    ("todo", ["--df", "2", "--mode", "nearest-exact"]),
    ("bigain_td", ["--df", "2", "--alpha", "0.5"]),
    ("sito", ["--ratio", "0.7"]),
]
COMMAND = re.compile(r'^(# )?"\$\{RUN\[@\]\}"')


def _tiny_env(tmp_path: Path, model_path: Path, **extra: str) -> dict:
    """Environment that points a driver at a tiny model, the fmnist subset and fast settings."""
    env = dict(os.environ)
    env.update({"MODEL_PATH": str(model_path), "DATASET": "fmnist", "IMG_SIZE": "16", "DTYPE": "fp32",
                "OUTPUT_DIR": str(tmp_path / "out"), "N_SAMPLES": "2 4", "TO_KEEP": "2 1", "OMP_NUM_THREADS": "1",
                "PYTHON": sys.executable, "PYTHONPATH": f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
                "EXTRA_ARGS": "--max_images 2 --cpu_threads 1 --no_flops --device cpu", "HF_HUB_OFFLINE": "1"})
    env.update(extra)
    return env


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_script_runs_end_to_end_on_tiny_model(script, tmp_path):
    model = SCRIPTS[script](tmp_path / "model", image_size=16 if script == "dit.sh" else 32)
    env = _tiny_env(tmp_path, model, IMG_SIZE="16" if script == "dit.sh" else "32")
    proc = subprocess.run(["bash", str(REPO / "scripts" / script)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert len(rows) == 1 and rows[0]["method"] == "none" and rows[0]["images"] == "2"
    assert rows[0]["calls_per_image"] == str(float(classifier.StageSchedule((2, 4), (2, 1)).calls_per_image(10)))


def _all_blocks_argv(script: str, tmp_path: Path) -> list[list[str]]:
    """Uncomment every example block, run the driver with a recorder instead of python, return each argv."""
    text = (REPO / "scripts" / script).read_text()
    lines = text.splitlines()
    commands = [ln for ln in lines if COMMAND.match(ln)]
    assert len(commands) == 6, "six example blocks expected"
    assert sum(not ln.startswith("#") for ln in commands) == 1, "exactly one block uncommented"
    patched = tmp_path / "scripts" / script  # the driver cds to its parent's parent; the recorder needs no repo
    patched.parent.mkdir()
    patched.write_text("\n".join(ln[2:] if COMMAND.match(ln) and ln.startswith("# ") else ln for ln in lines))
    log = tmp_path / "argv.log"
    recorder = tmp_path / "record.sh"
    recorder.write_text(f'#!/usr/bin/env bash\nfor a in "$@"; do printf "%s\\037" "$a"; done >> "{log}"\n'
                        f'echo >> "{log}"\n')
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    env = _tiny_env(tmp_path, tmp_path / "unused", LAUNCH=str(recorder), EXTRA_ARGS="")
    proc = subprocess.run(["bash", str(patched)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [ln.rstrip("\x1f").split("\x1f") for ln in log.read_text().splitlines() if ln]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_block_runs_what_it_says(script, tmp_path, monkeypatch):
    """Each block's command line parses, validates (dry run) and sets exactly its method and values."""
    import bigain.models.loading

    monkeypatch.setattr(bigain.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded in a dry run"))
    argvs = _all_blocks_argv(script, tmp_path)
    assert len(argvs) == 6
    for argv, (method, flags) in zip(argvs, BLOCKS):
        assert argv[:2] == ["-m", "bigain.classify"]
        args = C.build_parser().parse_args(argv[2:])
        assert args.method == method
        for flag, value in zip(flags[::2], flags[1::2]):
            assert str(getattr(args, flag.lstrip("-"))) == value, (method, flag)
        plan = C.main(argv[2:] + ["--dry-run"])
        assert plan["method"] == method and plan["calls_per_image"] == 2 * 10 + 2 * 2
