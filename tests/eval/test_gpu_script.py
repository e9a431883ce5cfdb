"""scripts/gpu_speed.sh (its --dry_run on CPU) and the eval.speed pieces it relies on: attention backends, compile,
the gpu preset's FLUX.1 / SD3 cases, and partial results that survive a run cut short."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.speed import cases as C
from eval.speed import timing
from eval.speed.__main__ import main as speed_main

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_speed.sh"


def run_script(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_times_eager_compiled_and_backend_cases_on_cpu(tmp_path):
    """The dry run's steps: no download, install skipped (no wheels), eval.speed on tiny shapes (one model here to
    stay quick; the preset has the SD U-Net, SD3 and BiGain_TM too) with a backend set, compiled, and an
    unavailable backend skipped."""
    out = tmp_path / "speed"
    proc = run_script("--dry_run", "--wheels", str(tmp_path / "none"), "--out", str(out), "--budget", "200",
                      "--", "--models", "tiny-flux", "--methods", "bigain_td")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[collect] dry run, nothing downloaded" in proc.stdout and "diffusers==" in proc.stdout
    assert "install step skipped" in proc.stdout and "[run] done" in proc.stdout
    assert "_flash_3 skipped" in proc.stderr
    rows = list(csv.DictReader((out / "speed.csv").open()))
    kinds = {(r["method"], r["attention"], r["compiled"]) for r in rows}
    for method in ("none", "bigain_td"):
        assert (method, "diffusers:native", "") in kinds
        assert (method, "diffusers:native", "eager") in kinds  # compiled with dynamo's eager backend on CPU
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    compiled = [r for r in rows if r["compiled"] == "eager" and r["method"] == "bigain_td"]
    assert compiled and all(float(r["speedup_lo"]) <= float(r["speedup"]) <= float(r["speedup_hi"]) for r in compiled)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["cases_done"] == 3


def test_bad_options_are_errors_with_exit_2(tmp_path):
    for args, message in ((["--budget", "soon"], "--budget must be a positive whole number"),
                          (["--frobnicate"], "unknown option '--frobnicate'")):
        proc = run_script(*args, timeout=60)
        assert proc.returncode == 2 and f"error: {message}" in proc.stderr


def test_run_without_wheels_says_to_collect_first(tmp_path):
    proc = run_script("--run", "--wheels", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), timeout=60)
    assert proc.returncode == 2 and "run --collect" in proc.stderr


def test_gpu_preset_has_flux_and_sd3_at_1024_under_each_backend_eager_and_compiled():
    cases = C.preset_cases("gpu")
    mmdit = {(c.model, c.attention_backend, c.compile) for c in cases if c.model.split("@")[0] in
             ("flux-dev", "sd3-medium")}
    assert {c.resolution for c in cases if c.model.startswith(("flux", "sd3"))} == {1024}
    for model in ("flux-dev@L4", "sd3-medium@L6"):
        for backend in ("native", "flash", "_flash_3", "sage"):
            assert {(model, backend, False), (model, backend, True)} <= mmdit
    assert cases[0].model == "sd2" and not cases[0].compile  # the earlier grid comes first, unchanged


def test_partial_results_survive_a_run_cut_short(tmp_path, monkeypatch):
    """A time limit (SIGINT from `timeout`) during the second case keeps the first case's rows on disk."""
    real = timing.benchmark_case
    calls = {"n": 0}

    def second_case_interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(timing, "benchmark_case", second_case_interrupted)
    out = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        speed_main(["--preset", "tiny", "--no_upstream", "--no_breakdown", "--methods", "bigain_td",
                    "--out", str(out)])
    rows = list(csv.DictReader((out / "speed.csv").open()))
    assert {r["model"] for r in rows} == {"tiny-sd"}  # case 1 only
    assert {r["method"] for r in rows} == {"none", "bigain_td"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] is False and meta["cases_done"] == 1


def test_attention_backend_and_compile_flags_apply_to_every_case(capsys):
    speed_main(["--preset", "tiny", "--attention_backend", "_native_math", "--compile", "--dry_run"])
    out = capsys.readouterr().out
    assert out.count("backend _native_math, compiled") == 2
    with pytest.raises(SystemExit) as exit_info:
        speed_main(["--preset", "tiny", "--attention_backend", "warp_drive", "--dry_run"])
    assert exit_info.value.code == 2


def test_a_spent_budget_ends_the_run_and_the_script_exits_0(tmp_path):
    proc = run_script("--dry_run", "--out", str(tmp_path / "o"), "--budget", "1", timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "time budget (1 s) reached" in proc.stdout
