"""Issue 26 (2): damaged run folders: records carry a digest, cut summary rows are named and skipped, a folder in a
record's place is refused up front, and the default summary of a --run_dir run stays with the run."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import bigain.runs.classification
import bigain.runs.generation
from bigain import classify, generate
from bigain.cli import run_cli
from bigain.storage import append_csv_row, load_record, read_csv_rows, record_digest, record_path

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--n_samples", "2", "4", "--to_keep", "3", "1", "--dtype", "fp32", "--device", "cpu", "--no_flops"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGAIN_CACHE", str(tmp_path / "cache"))


def _classify(dit_path: Path, tmp_path: Path, *extra: str) -> dict:
    return classify.main(["--dataset", "fmnist", "--model_path", str(dit_path), "--run_dir", str(tmp_path / "run"),
                          "--output_dir", str(tmp_path / "out"), "--max_images", "3", *FAST, *extra])


def _rewrite(path: Path, edit) -> None:
    """Rewrite a record's arrays and metadata through `edit(arrays, meta)`, keeping its (now stale) digest."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("errors", "timesteps", "classidx")}
        meta = json.loads(str(f["meta"]))
    edit(arrays, meta)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, meta=np.array(json.dumps(meta)))
    path.write_bytes(buf.getvalue())


def test_an_edited_record_fails_its_digest_and_is_recomputed(dit_path, tmp_path, caplog):
    first = _classify(dit_path, tmp_path)
    path = record_path(tmp_path / "run", 0)
    original = load_record(path)
    assert original is not None

    def forge(arrays, meta):  # another valid-looking record: other prediction, other errors
        others = [int(c) for c in arrays["classidx"] if int(c) != meta["pred"]]
        meta["pred"] = others[0]
        arrays["errors"] = np.where(np.isfinite(arrays["errors"]), arrays["errors"] * 0.5, np.nan).astype(np.float32)

    _rewrite(path, forge)
    with caplog.at_level(logging.WARNING, logger="bigain.storage.records"):
        assert load_record(path) is None
    assert "digest" in caplog.text and str(path) in caplog.text
    merged = _classify(dit_path, tmp_path, "--merge_only")
    assert merged["images"] == 2 and not merged["complete"]  # not counted
    again = _classify(dit_path, tmp_path)
    assert again["images_computed"] == 1 and again["accuracy"] == first["accuracy"]
    rec = load_record(path)
    assert rec.pred == original.pred
    np.testing.assert_array_equal(rec.errors, original.errors)


def test_records_written_before_digests_are_still_accepted(dit_path, tmp_path):
    _classify(dit_path, tmp_path)
    path = record_path(tmp_path / "run", 1)
    _rewrite(path, lambda arrays, meta: meta.pop("digest"))
    assert load_record(path) is not None
    assert _classify(dit_path, tmp_path)["images_computed"] == 0


def test_digest_covers_arrays_dtype_shape_and_metadata():
    arrays = {"errors": np.ones((2, 3, 1), np.float32), "timesteps": np.arange(3), "classidx": np.arange(2)}
    meta = {"pred": 0, "labels": [1]}
    base = record_digest(arrays, meta)
    assert base == record_digest(arrays, {**meta, "digest": "anything"})
    assert base != record_digest({**arrays, "errors": arrays["errors"].astype(np.float64)}, meta)
    assert base != record_digest({**arrays, "errors": arrays["errors"].reshape(3, 2, 1)}, meta)
    assert base != record_digest(arrays, {**meta, "pred": 1})


def _summary(path: Path, rows: int) -> list[str]:
    header = [f"c{i}" for i in range(29)]
    lines = [",".join(header)] + [",".join(f"r{r}v{i}" for i in range(29)) for r in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return header


def test_reader_names_and_skips_a_cut_row(tmp_path, caplog):
    path = tmp_path / "summary.csv"
    _summary(path, 3)
    lines = path.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:27])  # row 2 cut to 27 of 29 fields, then more rows appended after it
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="bigain.storage.records"):
        header, rows = read_csv_rows(path)
    assert [r["c0"] for r in rows] == ["r0v0", "r2v0"]
    assert f"{path} line 3: 27 fields, expected 29" in caplog.text

    from eval.report.rows import _csv_rows

    assert [r["c0"] for r in _csv_rows(path)] == ["r0v0", "r2v0"]


@pytest.mark.parametrize("cut", ['r9v0,r9v1,"half a quoted', "r9v0,r9v1"])
def test_append_after_a_cut_last_row_does_not_build_on_it(tmp_path, caplog, cut):
    path = tmp_path / "summary.csv"
    header = _summary(path, 2)
    with open(path, "a") as f:
        f.write(cut)  # a writer killed mid-row: no newline, too few fields (or an open quote)
    with caplog.at_level(logging.WARNING, logger="bigain.storage.records"):
        append_csv_row(path, {k: f"new{k}" for k in header})
    assert "cut row" in caplog.text
    rows = list(csv.reader(open(path, newline="")))
    assert all(len(r) == 29 for r in rows) and len(rows) == 4 and rows[-1][0] == "newc0"


def test_a_folder_in_a_records_place_is_refused_before_computing(dit_path, tmp_path, capsys, monkeypatch):
    record_path(tmp_path / "run", 2).mkdir(parents=True)
    monkeypatch.setattr(bigain.runs.classification, "classify_dataset_image",
                        lambda *a, **k: pytest.fail("an image was classified before the record paths were checked"))
    with pytest.raises(SystemExit) as info:
        run_cli(classify.main, ["--dataset", "fmnist", "--model_path", str(dit_path), "--run_dir",
                                str(tmp_path / "run"), "--max_images", "3", *FAST])
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(record_path(tmp_path / "run", 2)) in err and "Traceback" not in err, err

    images = tmp_path / "gen" / "images"
    (images / "000001.json").mkdir(parents=True)
    monkeypatch.setattr(bigain.runs.generation, "sample_batch", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(SystemExit) as info:
        run_cli(generate.main, ["--model_path", str(dit_path), "--classes", "0", "1", "--run_dir",
                                str(tmp_path / "gen"), "--steps", "2", "--no_flops", "--no_progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(images / "000001.json") in err, err


def test_run_dir_without_summary_csv_writes_the_summary_beside_the_run(dit_path, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    classify.main(["--dataset", "fmnist", "--model_path", str(dit_path), "--run_dir", str(tmp_path / "elsewhere"),
                   "--max_images", "1", *FAST])
    generate.main(["--model_path", str(dit_path), "--classes", "0", "--run_dir", str(tmp_path / "gen"),
                   "--steps", "2", "--no_flops", "--no_progress"])
    assert (tmp_path / "elsewhere" / "summary.csv").is_file() and (tmp_path / "gen" / "summary.csv").is_file()
    assert not any(cwd.iterdir())  # nothing under the current folder
    # an explicit --output_dir still receives the summary, and runs without --run_dir keep <output_dir>/summary.csv
    from bigain.runs import ClassifyRun

    assert ClassifyRun(run_dir="r", output_dir="o").summary_path == Path("o/summary.csv")
    assert ClassifyRun().summary_path == Path("results/classification/summary.csv")
    assert ClassifyRun(run_dir="r").summary_path == Path("r/summary.csv")
