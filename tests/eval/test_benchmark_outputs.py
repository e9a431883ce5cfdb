"""The benchmark's statistics and pictures on synthetic run folders with known answers (no model runs)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigain.storage import ImageRecord, record_path, save_record
from eval import stats
from eval.report import outcomes as rs
from eval.report.benchmark_outputs import add_statistics, format_differences, format_table, write_outputs


def write_classification(run_dir: Path, correct: np.ndarray, labels: np.ndarray, fingerprint: str = "fp") -> None:
    """A finished classification run: one record per image (pred = label when correct), result.json."""
    for i, (ok, label) in enumerate(zip(correct, labels)):
        pred = int(label) if ok else int((label + 1) % 10)
        save_record(record_path(run_dir, i), ImageRecord(
            index=i, labels=[int(label)], pred=pred, errors=np.ones((10, 2, 1), np.float32),
            timesteps=np.array([100, 500]), classidx=np.arange(10), calls=20, model_time_s=0.1,
            fingerprint=fingerprint))
    (run_dir / "result.json").write_text(json.dumps({"fingerprint": fingerprint, "expected": len(correct)}))


def write_generation(run_dir: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A finished generation run: <stem>.png + <stem>.json with the requested label."""
    folder = run_dir / "images"
    folder.mkdir(parents=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(folder / f"{i:06d}.png")
        (folder / f"{i:06d}.json").write_text(json.dumps({"label": int(label), "seed": i}))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Three settings of one model; ToMe = baseline images, BiGain_TM loses 12 images and shifts its samples."""
    out = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    base = rng.random(60) < 0.8
    worse = base.copy()
    worse[np.flatnonzero(base)[:12]] = False
    from bigain.testbed.data import SUBSET_PATH

    with np.load(SUBSET_PATH) as d:
        real = np.pad(d["images"][:40], ((0, 0), (2, 2), (2, 2)))
        real_labels = d["labels"][:40]
    shifted = np.clip(real.astype(int) // 2 + 60, 0, 255).astype(np.uint8)
    for tag, correct, imgs in (("none", base, real), ("tome_ratio0.7", base, real),
                               ("bigain_tm_ratio0.7", worse, shifted)):
        write_classification(out / "classify" / "dit" / tag, correct, labels)
        write_generation(out / "generate" / "dit" / tag, imgs, real_labels)
    rows = [{"model": "dit", "method": m, "options": o, "setting": s, "tag": t, "accuracy": c.mean(), "speedup": 1.0,
             "generation_dir": str(out / "generate" / "dit" / t)}
            for m, o, s, t, c in (("none", {}, "Baseline", "none", base),
                                  ("tome", {"ratio": 0.7}, "ToMe r=0.7", "tome_ratio0.7", base),
                                  ("bigain_tm", {"ratio": 0.7}, "BiGain_TM r=0.7", "bigain_tm_ratio0.7", worse))]
    per_class = add_statistics(rows, out, n_boot=300)
    return out, rows, per_class, base, worse


def test_statistics_match_hand_computations(bench):
    _, rows, per_class, base, worse = bench
    by = {r["tag"]: r for r in rows}
    wilson = stats.wilson_interval(int(worse.sum()), 60)
    assert by["bigain_tm_ratio0.7"]["acc"] == pytest.approx(worse.mean())
    assert (by["bigain_tm_ratio0.7"]["acc_lo"], by["bigain_tm_ratio0.7"]["acc_hi"]) == (wilson.low, wilson.high)
    # identical outcomes: zero-width difference at 0, p = 1; for both rates and FID
    same = by["tome_ratio0.7"]
    assert (same["delta_acc"], same["delta_acc_lo"], same["delta_acc_hi"], same["delta_acc_p"]) == (0, 0, 0, 1.0)
    assert (same["delta_fid"], same["delta_fid_lo"], same["delta_fid_hi"]) == (0, 0, 0)
    # BiGain_TM vs its counterpart ToMe: 12 discordant pairs all one way -> exact p = 2 / 2**12
    pair = by["bigain_tm_ratio0.7"]
    assert pair["pair_with"] == "ToMe r=0.7" and pair["pair_acc"] == pytest.approx(-12 / 60)
    assert pair["pair_acc_p"] == pytest.approx(2 / 2 ** 12) and pair["pair_acc_hi"] < 0
    assert pair["pair_fid"] > 0 and pair["pair_fid_lo"] > 0  # the shifted images are resolved as worse
    assert "pair_with" not in by["tome_ratio0.7"] and "delta_acc" not in by["none"]
    assert list(per_class["dit"].index) == ["Baseline", "ToMe r=0.7", "BiGain_TM r=0.7"]


def test_tables_show_intervals_and_resolved_differences(bench):
    _, rows, *_ = bench
    table, diffs = format_table(rows), format_differences(rows)
    assert "[95% CI]" in table and "| dit | Baseline | " in table and " [" in table.splitlines()[2]
    assert "BiGain_TM r=0.7 − ToMe r=0.7" in diffs and "BiGain_TM r=0.7 − Baseline" in diffs
    line = next(row for row in diffs.splitlines() if "BiGain_TM r=0.7 − ToMe" in row)
    assert "**-20.0 [" in line and "p=0.00049" in line
    same = next(row for row in diffs.splitlines() if "ToMe r=0.7 − Baseline" in row)
    assert "+0.0 [+0.0, +0.0] p=1" in same and "**" not in same


def test_write_outputs_draws_grid_heatmap_and_error_bars(bench, tmp_path):
    out, rows, per_class, *_ = bench
    written = write_outputs(rows, tmp_path, "header", per_class)
    names = {p.name for p in written}
    assert {"benchmark.csv", "benchmark.md", "tradeoffs.png", "samples_dit.png", "per_class_dit.png"} <= names
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")
    assert "McNemar" in (tmp_path / "benchmark.md").read_text()


def test_classification_outcomes_skip_foreign_records_and_keep_expected_images(tmp_path):
    run = tmp_path / "run"
    write_classification(run, np.array([True, False, True, True]), np.arange(4))
    save_record(record_path(run, 9), ImageRecord(index=9, labels=[0], pred=0, errors=np.ones((10, 2, 1), np.float32),
                                                 timesteps=np.array([1, 2]), classidx=np.arange(10), calls=1,
                                                 model_time_s=0.0, fingerprint="other"))
    frame = rs.classification_outcomes(run).frame
    assert frame["index"].tolist() == [0, 1, 2, 3] and frame["correct"].tolist() == [True, False, True, True]
    (run / "result.json").write_text(json.dumps({"fingerprint": "fp", "expected": 2}))
    assert len(rs.classification_outcomes(run).frame) == 2


def test_generation_features_are_cached_and_invalidated_by_a_changed_image(bench, tmp_path):
    import shutil

    out, *_ = bench
    run = shutil.copytree(out / "generate" / "dit" / "none", tmp_path / "gen")
    first = rs.generation_outcomes(run)
    assert (run / rs.FEATURE_CACHE).is_file() and first.features.shape == (40, 128)
    again = rs.generation_outcomes(run)
    np.testing.assert_array_equal(first.features, again.features)
    stamp = (run / rs.FEATURE_CACHE).stat().st_mtime_ns
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(run / "images" / "000000.png")
    changed = rs.generation_outcomes(run)
    assert (run / rs.FEATURE_CACHE).stat().st_mtime_ns != stamp
    assert not np.allclose(changed.features[0], first.features[0])


def test_partner_tags():
    tags = ["none", "tome_ratio0.7", "todo_df2", "bigain_tm_ratio0.7", "bigain_td_alpha0.5_df2",
            "bigain_td_alpha0.5_df4"]
    assert rs.partner_tag("bigain_tm_ratio0.7", tags) == "tome_ratio0.7"
    assert rs.partner_tag("bigain_td_alpha0.5_df2", tags) == "todo_df2"
    assert rs.partner_tag("bigain_td_alpha0.5_df4", tags) is None  # no ToDo df=4 run
    assert rs.partner_tag("tome_ratio0.7", tags) is None


def test_plan_reuse_settings_are_paired_with_their_per_block_twin():
    from bigain.reduction import REUSE_SETTINGS, setting_tag

    tags = ["none"] + [setting_tag(m, o) for m, o in REUSE_SETTINGS]
    assert rs.partner_tag("tome_plan_reuselevel_ratio0.7", tags) == "tome_plan_reuseblock_ratio0.7"
    assert rs.partner_tag("bigain_tm_plan_every5_ratio0.7", tags) == "bigain_tm_plan_reuseblock_ratio0.7"
    # the per-block twins keep the paper's pair (BiGain_TM vs ToMe); ToMe's has none
    assert rs.partner_tag("bigain_tm_plan_reuseblock_ratio0.7", tags) == "tome_plan_reuseblock_ratio0.7"
    assert rs.partner_tag("tome_plan_reuseblock_ratio0.7", tags) is None
    # without an explicit per-block run, the default-options run is the twin
    assert rs.partner_tag("tome_max_downsample2_plan_reuselevel_ratio0.7",
                          ["tome_max_downsample2_ratio0.7"]) == "tome_max_downsample2_ratio0.7"
    assert rs.partner_tag("tome_plan_reuselevel_ratio0.7", ["tome_ratio0.5"]) is None


def test_eval_report_shows_intervals_paired_tests_and_per_class_heatmap(tmp_path):
    from eval.report.__main__ import main as report_main

    labels = np.arange(40) % 10
    base = np.arange(40) % 4 != 0  # 30 / 40
    worse = base.copy()
    worse[np.flatnonzero(base)[:10]] = False  # 20 / 40, 10 discordant pairs all one way
    for tag, method, correct in (("none", "none", base), ("tome_ratio0.7", "tome", base),
                                 ("bigain_tm_ratio0.7", "bigain_tm", worse)):
        run = tmp_path / "runs" / tag
        write_classification(run, correct, labels)
        result = {"fingerprint": "fp", "expected": 40, "images": 40, "accuracy": correct.mean(), "model": "m",
                  "dataset": "d", "method": method, "reduction": tag, "run_dir": str(run), "complete": True}
        (run / "result.json").write_text(json.dumps(result))
    out = tmp_path / "report"
    report_main([str(tmp_path / "runs"), "--out", str(out), "--formats", "md"])
    table = (out / "classify_accuracy.md").read_text()
    w = stats.wilson_interval(20, 40)
    assert f"| BiGain_TM r=0.7 | 50.0 [{100 * w.low:.1f}, {100 * w.high:.1f}] (-25.0 [" in table
    assert "| ToMe r=0.7 | 75.0 [" in table and "(+0.0 [+0.0, +0.0] p=1)" in table
    paired = (out / "paired.md").read_text()
    assert "BiGain_TM r=0.7 − ToMe r=0.7 | accuracy (points) | -25.00 [" in paired
    assert f"| {2 / 2 ** 10:.2g} |" in paired
    assert "Paired comparisons" in (out / "report.md").read_text()
    assert (out / "per_class_accuracy_m_d.png").stat().st_size > 1000
    plain = tmp_path / "plain"
    report_main([str(tmp_path / "runs"), "--out", str(plain), "--formats", "md", "--no_stats"])
    assert "[" not in (plain / "classify_accuracy.md").read_text() and not (plain / "paired.md").exists()


def test_setting_groups_and_unet_placement():
    from bigain import benchmark as b

    tags = [b.setting_tag(*s) for s in b.select_settings(["headline", "compression"], False, None)]
    assert tags[:5] == ["none", "tome_ratio0.7", "bigain_tm_ratio0.7", "todo_df2", "bigain_td_alpha0.5_df2"]
    assert len(tags) == len(set(tags)) and "tome_ratio0.1" in tags and "todo_df3" in tags
    compare = [b.setting_tag(*s) for s in b.select_settings(["compare"], False, ["sito"])]
    assert compare == ["none", "sito_ratio0.5", "sito_ratio0.7"]
    placed = b.place_settings("unet", b.select_settings(["headline"], False, ["todo"]), 2)
    assert placed == [("none", {}), ("todo", {"df": 2, "max_downsample": 2})]
    assert b.setting_label(*placed[1]) == "ToDo df=2 md=2"
    assert b.place_settings("dit", placed[:1], 2) == placed[:1]
