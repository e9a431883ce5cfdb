"""Issue 26 (3): SIGTERM (cluster preemption) ends a run promptly with exit 143 and a message on how to resume;
no half-written file is left, and the resumed run's records equal an uninterrupted run's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bigain import classify, generate
from bigain.storage import PREEMPTED_EXIT, Preempted, deferred, load_record, record_path, sigterm_stops_run

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


def test_sigterm_waits_for_a_deferred_block():
    events, before = [], signal.getsignal(signal.SIGTERM)
    with sigterm_stops_run():
        with pytest.raises(Preempted):
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                events.append("finished the block")
        with pytest.raises(Preempted):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes: the loop never ends on its own
                time.sleep(0.01)
            events.append("not interrupted")
    assert events == ["finished the block"]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def _sigterm_after(cmd: list[str], ready, timeout: float = 180) -> tuple[int, str, float]:
    """Start `cmd`, send SIGTERM once `ready()` holds; (exit status, stderr, seconds from signal to exit)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and not ready():
            assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read()[-2000:]
            time.sleep(0.02)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CLS = ["--dataset", "fmnist", "--max_images", "10", "--n_samples", "20", "40", "--to_keep", "5", "1",
       "--batch_size", "1", "--dtype", "fp32", "--device", "cpu", "--no_flops", "--threads", "1"]


@pytest.mark.slow
def test_sigterm_during_classification_then_resume_equals_an_uninterrupted_run(dit_path, tmp_path, monkeypatch):
    monkeypatch.setenv("BIGAIN_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    argv = ["--model_path", str(dit_path), "--run_dir", str(run), *CLS]
    cmd = [sys.executable, "-m", "bigain.classify", *argv]
    code, err, seconds = _sigterm_after(cmd, lambda: len(list((run / "records").glob("*.npz"))) >= 1)
    assert code == PREEMPTED_EXIT == 143, err
    assert "SIGTERM" in err and "run the same command again to resume" in err and "Traceback" not in err, err
    assert seconds < 30
    done = sorted((run / "records").glob("*.npz"))
    assert 1 <= len(done) < 10 and not list(run.rglob("*.tmp"))
    row = classify.main(argv)
    assert row["complete"] and row["images_computed"] == 10 - len(done)
    classify.main(["--model_path", str(dit_path), "--run_dir", str(tmp_path / "whole"), *CLS])
    for i in range(10):
        a, b = load_record(record_path(run, i)), load_record(record_path(tmp_path / "whole", i))
        np.testing.assert_array_equal(a.errors, b.errors)
        assert (a.pred, a.calls, a.fingerprint) == (b.pred, b.calls, b.fingerprint)


@pytest.mark.slow
def test_sigterm_during_generation_then_resume_equals_an_uninterrupted_run(dit_path, tmp_path, monkeypatch):
    monkeypatch.setenv("BIGAIN_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    gen = ["--classes", "0", "1", "2", "3", "--images_per_class", "2", "--batch_size", "1", "--steps", "25",
           "--no_flops", "--no_progress", "--model_path", str(dit_path), "--threads", "1"]
    cmd = [sys.executable, "-m", "bigain.generate", *gen, "--run_dir", str(run)]
    code, err, seconds = _sigterm_after(cmd, lambda: len(list((run / "images").glob("*.json"))) >= 1)
    assert code == 143 and "run the same command again to resume" in err and "Traceback" not in err, err
    assert seconds < 30
    pngs = sorted((run / "images").glob("*.png"))
    assert all(p.with_suffix(".json").is_file() for p in pngs)  # an image and its record are written together
    assert 1 <= len(pngs) < 8 and not list(run.rglob("*.tmp"))
    row = generate.main([*gen, "--run_dir", str(run)])
    assert row["images_written"] == 8 - len(pngs)
    generate.main([*gen, "--run_dir", str(tmp_path / "whole")])
    resumed = sorted((run / "images").glob("*.png"))
    whole = sorted((tmp_path / "whole" / "images").glob("*.png"))
    assert [p.name for p in resumed] == [p.name for p in whole] and len(whole) == 8
    assert [p.read_bytes() for p in resumed] == [p.read_bytes() for p in whole]
