"""Two processes sharing a summary CSV or a run folder: no lost rows, no work done twice."""
from __future__ import annotations

import csv
import multiprocessing as mp

import pytest

from bigain.storage import append_csv_row, try_lock
from bigain.zoo import build_tiny_pixel_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def _append_rows(path: str, writer: int, n: int, start) -> None:
    start.wait()
    for i in range(n):
        row = {"writer": writer, "i": i}
        if i == n // 2:
            row[f"extra{writer}"] = "x"  # a new column: the file is rewritten with a wider header
        append_csv_row(path, row)


def test_two_processes_append_every_row(tmp_path):
    path = tmp_path / "summary.csv"
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_rows, args=(str(path), w, 50, start)) for w in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = list(csv.DictReader(open(path, newline="")))
    assert len(rows) == 100
    assert sorted((int(r["writer"]), int(r["i"])) for r in rows) == [(w, i) for w in (0, 1) for i in range(50)]
    assert {"extra0", "extra1"} <= set(rows[0])


def test_row_after_a_half_written_line_starts_a_new_line(tmp_path):
    path = tmp_path / "s.csv"
    append_csv_row(path, {"a": 1, "b": 2})
    with open(path, "a") as f:
        f.write("3,")  # a writer killed mid-row
    append_csv_row(path, {"a": 5, "b": 6})
    lines = path.read_text().splitlines()
    assert lines == ["a,b", "1,2", "3,", "5,6"]


def test_classify_skips_an_image_another_process_holds(tmp_path, monkeypatch):
    from bigain import classify as C

    monkeypatch.setenv("BIGAIN_CACHE", str(tmp_path / "cache"))
    model = build_tiny_pixel_dit(tmp_path / "m")
    run = tmp_path / "run"
    argv = ["--dataset", "fmnist", "--model_path", str(model), "--run_dir", str(run), "--output_dir", str(tmp_path),
            "--n_samples", "2", "--to_keep", "1", "--dtype", "fp32", "--no_flops", "--max_images", "2"]
    with try_lock(run / ".locks" / f"{1:08d}.lock") as held:  # "another process" is computing image 1
        assert held
        row = C.main(argv)
    assert row["images_computed"] == 1 and row["images"] == 1 and not row["complete"]
    row = C.main(argv)
    assert row["images_computed"] == 1 and row["complete"]


def _generate(argv: list[str], start) -> None:
    from bigain import generate

    start.wait()
    generate.main(argv)


def test_two_processes_on_one_generation_run_compute_each_image_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGAIN_CACHE", str(tmp_path / "cache"))
    model = build_tiny_pixel_dit(tmp_path / "m")
    run, summary = tmp_path / "run", tmp_path / "summary.csv"
    argv = ["--model_path", str(model), "--run_dir", str(run), "--summary_csv", str(summary), "--classes", "0", "1",
            "2", "3", "--images_per_class", "2", "--batch_size", "1", "--steps", "12", "--no_flops", "--no_progress"]
    ctx = mp.get_context("fork")  # no re-import: both start sampling at once
    start = ctx.Event()
    procs = [ctx.Process(target=_generate, args=(argv, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    rows = list(csv.DictReader(open(summary, newline="")))
    assert len(rows) == 2
    assert sum(int(r["images_sampled"]) for r in rows) == 8  # each image sampled by exactly one process
    assert sum(int(r["images_written"]) for r in rows) == 8
    assert len(list((run / "images").glob("*.png"))) == 8


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """A result renamed into place has the mode `open` / `mkdir` would give it (not the temp file's private 0o600 /
    0o700), so a shared results folder stays readable to the group and others the umask allows."""
    import os
    import stat

    import numpy as np

    from bigain.storage import atomic_write_json
    from bigain.storage.media import video_files, write_video_item

    old = os.umask(0o022)
    try:
        written = atomic_write_json(tmp_path / "r.json", {"a": 1})
        write_video_item(tmp_path / "v", video_files(np.zeros((2, 4, 4, 3), np.uint8), 8.0), tmp_path / "v.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "v").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "v.json").stat().st_mode) == 0o644
