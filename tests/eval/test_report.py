"""eval.report: tables (cells, deltas, empty missing cells in md/csv/tex), speed-up per model+dataset, plots, CLI."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bigain.reduction import setting_label
from eval import report
from eval.report.__main__ import main as report_main

REPO = Path(__file__).resolve().parents[2]
SD = "stabilityai/stable-diffusion-2-base"
DIT = "facebook/DiT-XL-2-256"
CLASSIFY_COLUMNS = ["time", "dataset", "split", "model", "method", "reduction", "accuracy", "images",
                    "expected_images", "complete", "calls_per_image", "model_time_s", "images_per_s",
                    "wall_time_s", "flops_per_call", "run_dir"]


def _row(dataset: str, model: str, method: str, reduction: str, acc: float, time_per_image: float,
         images: int = 10, complete: bool = True, when: str = "2026-01-01 10:00:00", gflops: float = 10.0) -> dict:
    """One classification summary row as bigain.classify's _finish writes it."""
    return {"time": when, "dataset": dataset, "split": "test", "model": model, "method": method,
            "reduction": reduction, "accuracy": acc, "images": images, "expected_images": 10, "complete": complete,
            "calls_per_image": 120.0, "model_time_s": time_per_image * images, "images_per_s": 1.0 / time_per_image,
            "wall_time_s": 1.0, "flops_per_call": f"{gflops * 1e9:.4g}", "run_dir": ""}


def _write_csv(path: Path, rows: list[dict]) -> Path:
    """A summary CSV with the union of the rows' columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Classification (baseline + ToMe + BiGain_TM x cifar10/pets, BiGain_TM on pets missing; a DiT model),
    generation (a summary CSV and a run folder with metrics.json) and a speed.csv, under one folder."""
    root = tmp_path / "runs"
    cls = [
        _row("cifar10", SD, "none", "none", 0.80, 10.0, gflops=20.0),
        _row("cifar10", SD, "tome", "tome_ratio0.7", 0.78, 5.0, gflops=15.0),
        _row("cifar10", SD, "bigain_tm", "bigain_tm_ratio0.7", 0.812, 4.0, gflops=15.0),
        _row("pets", SD, "none", "none", 0.60, 30.0),
        _row("pets", SD, "tome", "tome_ratio0.7", 0.55, 10.0),
        # older complete run, and a newer incomplete rerun of the same setting: the complete one wins
        _row("cifar10", DIT, "none", "none", 0.50, 2.0, when="2026-01-01 09:00:00"),
        _row("cifar10", DIT, "tome", "tome_ratio0.7", 0.40, 1.0, when="2026-01-01 09:00:00"),
        _row("cifar10", DIT, "tome", "tome_ratio0.7", 0.10, 1.0, images=3, complete=False,
             when="2026-01-02 09:00:00"),
    ]
    _write_csv(root / "classify" / "summary.csv", cls[:5])
    _write_csv(root / "classify_dit" / "summary.csv", cls[5:])
    gen = [{"time": "2026-01-01 11:00:00", "dataset": "coco2017", "model": SD, "method": m, "reduction": r,
            "fid": fid, "images": 8, "model_time_s": t * 8, "flops_per_call": "2e10", "complete": True}
           for m, r, fid, t in (("none", "none", 20.0, 6.0), ("tome", "tome_ratio0.7", 23.5, 3.0))]
    _write_csv(root / "generate" / "summary.csv", gen)
    run = root / "generate_runs" / "bigain_tm_ratio0.7"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({
        "time": "2026-01-01 11:30:00", "dataset": "coco2017", "model": SD, "method": "bigain_tm",
        "reduction": "bigain_tm_ratio0.7", "images": 8, "model_time_s": 2.0 * 8, "complete": True}))
    (run / "metrics.json").write_text(json.dumps({"frechet_inception_distance": 21.0,
                                                  "report": {"library": "torch-fidelity"}}))
    speed = [{"model": "sd2", "resolution": 512, "batch": 2, "method": m, "setting": s, "options": json.dumps(o),
              "latency_ms": lat, "baseline_ms": 100.0, "speedup": sp, "flops_g": fl, "ideal_speedup": ideal}
             for m, s, o, lat, sp, fl, ideal in (("none", "baseline (SDPA)", {}, 100.0, 1.0, 400.0, 1.0),
                                                 ("tome", "tome r=0.5", {"ratio": 0.5}, 80.0, 1.25, 300.0, 1.33))]
    _write_csv(root / "speed" / "speed.csv", speed)
    return root


def test_reduction_labels_and_order():
    """Tags parse into method + options; labels read like the paper; baseline sorts first."""
    assert report.parse_reduction("bigain_td_alpha0.5_df2") == ("bigain_td", [("alpha", "0.5"), ("df", "2")])
    assert report.parse_reduction("todo_df2_df_level24_max_downsample1") == (
        "todo", [("df", "2"), ("df_level2", "4"), ("max_downsample", "1")])
    assert report.reduction_label("bigain_tm_ratio0.7") == "BiGain_TM r=0.7"
    assert report.reduction_label("sito_ratio0.7_rseed3") == "SiTo r=0.7 rseed=3"
    # one label format for the commands and the report: the main job's `setting` column reads the same
    for method, options in (("bigain_td", {"alpha": 0.5, "df": 2}), ("tome", {"max_downsample": 2, "ratio": 0.7}),
                            ("none", {})):
        tag = "_".join([method, *(f"{k}{v}" for k, v in options.items())])
        assert report.reduction_label(tag) == setting_label(method, options)
    assert report.reduction_label("none") == "Baseline"
    tags = ["sito_ratio0.7", "tome_ratio0.7", "none", "tome_ratio0.5", "bigain_tm_ratio0.7"]
    assert sorted(tags, key=report.reduction_sort_key) == [
        "none", "tome_ratio0.5", "tome_ratio0.7", "bigain_tm_ratio0.7", "sito_ratio0.7"]


def test_table_cells_deltas_and_missing(runs: Path):
    """Accuracy in %, difference from the baseline of the same column, missing run -> ''."""
    df = report.collect_rows([runs])
    assert set(df["task"]) == {"classify", "generate", "speed"}
    sd = df[(df["task"] == "classify") & (df["model"] == SD)]
    table = report.build_table(sd, "accuracy", columns="dataset")
    assert list(table.index) == ["Baseline", "ToMe r=0.7", "BiGain_TM r=0.7"]
    assert list(table.columns) == ["cifar10", "pets"]
    assert table.loc["Baseline", "cifar10"] == "80.0"
    assert table.loc["ToMe r=0.7", "cifar10"] == "78.0 (-2.0)"
    assert table.loc["BiGain_TM r=0.7", "cifar10"] == "81.2 (+1.2)"
    assert table.loc["ToMe r=0.7", "pets"] == "55.0 (-5.0)"
    assert table.loc["BiGain_TM r=0.7", "pets"] == ""
    flops = report.build_table(sd, "flops")
    assert flops.loc["Baseline", "cifar10"] == "20.0"
    assert flops.loc["ToMe r=0.7", "cifar10"] == "15.0 (-25%)"
    # columns = models: one row per method, SD and DiT side by side for one dataset
    by_model = report.build_table(df[(df["task"] == "classify") & (df["dataset"] == "cifar10")], "accuracy",
                                  columns="model")
    assert list(by_model.columns) == ["SD 2.0", "DiT-XL/2-256"]
    assert by_model.loc["ToMe r=0.7", "DiT-XL/2-256"] == "40.0 (-10.0)"  # the complete run, not the rerun


def test_speedup_against_same_model_and_dataset(runs: Path):
    """Speed-up = baseline time per image / method time per image within the same model+dataset."""
    df = report.collect_rows([runs])
    cls = df[df["task"] == "classify"].set_index(["model", "dataset", "reduction"])["speedup"]
    assert cls[(SD, "cifar10", "none")] == pytest.approx(1.0)
    assert cls[(SD, "cifar10", "tome_ratio0.7")] == pytest.approx(2.0)
    assert cls[(SD, "cifar10", "bigain_tm_ratio0.7")] == pytest.approx(2.5)
    assert cls[(SD, "pets", "tome_ratio0.7")] == pytest.approx(3.0)
    assert cls[(DIT, "cifar10", "tome_ratio0.7")] == pytest.approx(2.0)
    gen = df[df["task"] == "generate"].set_index("reduction")
    assert gen.loc["bigain_tm_ratio0.7", "fid"] == pytest.approx(21.0)  # from the run folder's metrics.json
    assert gen.loc["bigain_tm_ratio0.7", "speedup"] == pytest.approx(3.0)
    speed = df[df["task"] == "speed"].set_index("reduction")
    assert speed.loc["tome_ratio0.5", "speedup"] == pytest.approx(1.25)  # speed.csv's own speed-up
    table = report.build_table(df[(df["task"] == "classify") & (df["model"] == SD)], "speedup")
    assert table.loc["ToMe r=0.7", "pets"] == "3.00x"
    assert table.loc["BiGain_TM r=0.7", "pets"] == ""


def _md_cells(text: str, label: str) -> list[str]:
    """Cells of the markdown row starting with `label`."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")][1:]


def test_missing_cell_empty_in_md_csv_tex(runs: Path, tmp_path: Path):
    """The missing run is an empty cell in every format, never 0 or nan."""
    df = report.collect_rows([runs / "classify"])
    out = tmp_path / "out"
    written = report.write_tables(df, out, metrics=["accuracy"], formats=("md", "csv", "tex"))
    assert {p.name for p in written} >= {"classify_accuracy.md", "classify_accuracy.csv", "classify_accuracy.tex",
                                         "rows.csv", "report.md"}
    md = (out / "classify_accuracy.md").read_text()
    assert _md_cells(md, "BiGain_TM r=0.7") == ["81.2 (+1.2)", ""]
    with open(out / "classify_accuracy.csv", newline="") as fh:
        rows = {r[0]: r[1:] for r in csv.reader(fh)}
    assert rows["Method"] == ["cifar10", "pets"]
    assert rows["BiGain_TM r=0.7"] == ["81.2 (+1.2)", ""]
    tex = (out / "classify_accuracy.tex").read_text()
    line = next(ln for ln in tex.splitlines() if ln.startswith("BiGain\\_TM"))
    assert [c.strip() for c in line.rstrip("\\ ").split("&")] == ["BiGain\\_TM r=0.7", "81.2 (+1.2)", ""]
    assert "\\toprule" in tex and "\\bottomrule" in tex
    for text in (md, tex, (out / "classify_accuracy.csv").read_text()):
        assert "nan" not in text.lower() and "None" not in text
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_plots_written(runs: Path, tmp_path: Path):
    """accuracy vs speed-up, FID vs speed-up and accuracy vs FID PNGs."""
    df = report.collect_rows([runs])
    paths = report.tradeoff_plots(df, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["accuracy_vs_fid.png", "accuracy_vs_speedup.png", "fid_vs_speedup.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_no_rows_error_names_paths(tmp_path: Path, capsys: pytest.CaptureFixture):
    """An empty folder is a clear error naming what was searched."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match="empty"):
        report.collect_rows([empty])
    with pytest.raises(SystemExit) as exc:
        report_main([str(empty), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert str(empty) in capsys.readouterr().err
    with pytest.raises(report.ReportError, match="no such file"):
        report.collect_rows([tmp_path / "missing.csv"])


def test_cli_end_to_end(runs: Path, tmp_path: Path):
    """python -m eval.report over files and folders writes tables per task/metric/model, plots and report.md."""
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "eval.report", str(runs / "classify" / "summary.csv"),
                           str(runs / "classify_dit"), str(runs / "generate"), str(runs / "generate_runs"),
                           str(runs / "speed"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    for stem in ("classify_accuracy_SD-2.0", "classify_accuracy_DiT-XL-2-256", "classify_speedup_SD-2.0",
                 "generate_fid", "speed_speedup"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= names, (stem, sorted(names))
    assert {"accuracy_vs_speedup.png", "fid_vs_speedup.png", "accuracy_vs_fid.png", "report.md"} <= names
    fid = pd.read_csv(out / "generate_fid.csv", dtype=str, keep_default_na=False).set_index("Method")
    assert fid.loc["BiGain_TM r=0.7", "coco2017"] == "21.00 (+1.00)"
    speed = (out / "speed_speedup.md").read_text()
    assert _md_cells(speed, "ToMe r=0.5") == ["1.25x"]
    # a filtered run: one task, one metric, columns = models, markdown only
    out2 = tmp_path / "report2"
    report_main([str(runs), "--out", str(out2), "--task", "classify", "--metric", "accuracy",
                 "--columns", "model", "--formats", "md", "--no_plots"])
    assert sorted(p.name for p in out2.iterdir()) == ["classify_accuracy_cifar10.md", "classify_accuracy_pets.md",
                                                      "report.md", "rows.csv"]
    pets = (out2 / "classify_accuracy_pets.md").read_text()
    assert "BiGain_TM" not in pets and _md_cells(pets, "ToMe r=0.7") == ["55.0 (-5.0)"]  # no run at all: no row


def _generate_run(root: Path, reduction: str, invocations: list[tuple[int, float]], n_items: int = 8,
                  fid: float | None = None, pngs: int | None = None) -> list[dict]:
    """A run folder as bigain.generate leaves it (config.json, images/*.png, images/metrics.json) and its
    summary rows (one per invocation: images written, model seconds), with no dataset column."""
    run = root / "coco2017" / "sd" / reduction / "euler50"
    (run / "images").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": SD, "method": reduction.split("_ratio")[0],
                                                 "reduction": reduction, "source": "coco2017", "n_items": n_items}))
    for i in range(n_items if pngs is None else pngs):
        (run / "images" / f"{i:06d}.png").write_bytes(b"png")
    if fid is not None:
        (run / "images" / "metrics.json").write_text(json.dumps({"frechet_inception_distance": fid,
                                                                 "inception_score_mean": 9.5, "report": {}}))
    return [{"time": f"2026-01-01 12:0{k}:00", "run_dir": str(run), "model": SD, "method": reduction.split("_ratio")[0],
             "reduction": reduction, "sampler": "euler", "steps": 50, "items": n_items, "images_written": n,
             "images_skipped": n_items - n, "model_time_s": t, "model_time_per_image_s": t / n if n else "",
             "flops_per_call_per_image": "3e10"} for k, (n, t) in enumerate(invocations)]


def test_generation_cli_rows_resumed_and_incomplete(tmp_path: Path):
    """bigain.generate rows: dataset from config.json, FID from images/metrics.json, time per image over every
    invocation of a resumed run, completeness from the PNG count; an incomplete-only run is marked *."""
    root = tmp_path / "gen"
    rows = (_generate_run(root, "none", [(8, 32.0)], fid=20.0)
            + _generate_run(root, "tome_ratio0.7", [(5, 10.0), (3, 6.0), (0, 0.0)], fid=22.5)  # resumed, rerun
            + _generate_run(root, "bigain_tm_ratio0.7", [(4, 4.0)], fid=30.0, pngs=4))  # stopped half-way
    _write_csv(root / "summary.csv", rows)
    df = report.collect_rows([root / "summary.csv"])
    assert set(df["task"]) == {"generate"} and set(df["dataset"]) == {"coco2017"}
    by = df.set_index("reduction")
    assert by.loc["tome_ratio0.7", "speedup"] == pytest.approx(2.0)  # 4 s / (16 s / 8 images)
    assert by.loc["tome_ratio0.7", "fid"] == pytest.approx(22.5)
    assert bool(by.loc["tome_ratio0.7", "complete"]) and not bool(by.loc["bigain_tm_ratio0.7", "complete"])
    table = report.build_table(df, "fid")
    assert table.loc["ToMe r=0.7", "coco2017"] == "22.50 (+2.50)"
    assert table.loc["BiGain_TM r=0.7", "coco2017"] == "30.00 (+10.00)*"
    assert report.build_table(df, "inception_score").loc["Baseline", "coco2017"] == "9.50"
    assert report.build_table(df, "flops").loc["Baseline", "coco2017"] == "30.0"
    # the whole folder (summary + run folders) gives the same rows; a run folder alone gives its FID
    everything = report.collect_rows([root]).set_index("reduction")
    assert len(everything) == 3 and everything.loc["tome_ratio0.7", "speedup"] == pytest.approx(2.0)
    alone = report.collect_rows([root / "coco2017" / "sd" / "tome_ratio0.7"])
    assert list(alone["reduction"]) == ["tome_ratio0.7"] and alone["fid"].iloc[0] == pytest.approx(22.5)


def test_bad_requests_are_clear_errors(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """An unknown metric or a task the runs lack: exit 2, naming what exists."""
    with pytest.raises(SystemExit) as exc:
        report_main([str(runs / "classify"), "--out", str(tmp_path / "a"), "--metric", "bogus"])
    assert exc.value.code == 2 and "known metrics" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_main([str(runs / "classify"), "--out", str(tmp_path / "b"), "--task", "speed"])
    assert "the runs hold ['classify']" in capsys.readouterr().err
