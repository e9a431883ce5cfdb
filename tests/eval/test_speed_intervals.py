"""Speed-ups with intervals and the noise check against physics (eval.speed.reliability, eval.speed.check, the
tables of eval.speed / the main job / eval.report): pure functions on synthetic timings, no model timed."""
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from eval import report
from eval.report.benchmark_outputs import format_table
from eval.speed import check, reliability
from eval.speed.model_zoo import build_model, get_spec, make_inputs
from eval.speed.tables import COLUMNS, markdown_table, unreliable_rows, write_csv
from eval.speed.timing import reduced_sublayers, reduced_time_shares
from eval.stats import median_interval, median_interval_ranks


def lognormal_rounds(rng: np.random.Generator, n: int, base_ms: float, speedup: float, sigma: float):
    """n interleaved rounds: baseline and method times with independent lognormal noise; true ratio `speedup`."""
    base = base_ms * rng.lognormal(0.0, sigma, n)
    method = base_ms / speedup * rng.lognormal(0.0, sigma, n)
    return base, method


# ----------------------------------------------------------------------------------------------
# The interval
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [6, 7, 9, 12, 15, 20, 31, 40])
def test_median_interval_is_scipys_order_statistic_interval(n):
    x = np.random.default_rng(n).lognormal(size=n)
    ci = sps.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(0.95)
    interval, coverage = median_interval(x)
    assert (interval.low, interval.high) == (float(ci.low), float(ci.high))
    assert interval.value == pytest.approx(np.median(x)) and 0.95 <= coverage < 1


def test_few_rounds_fall_back_to_the_range_with_its_lower_coverage():
    assert median_interval_ranks(3) == (0, 2, 0.75)
    assert median_interval_ranks(5)[2] == pytest.approx(1 - 2 / 32)
    interval, coverage = median_interval([1.3, 1.1, 1.2])
    assert (interval.low, interval.value, interval.high, coverage) == (1.1, 1.2, 1.3, 0.75)
    one, cov = median_interval([1.2])
    assert math.isnan(one.low) and math.isnan(cov)


def test_interval_covers_the_true_ratio_on_lognormal_noise():
    """Seeded: 400 runs of 15 rounds with 10% lognormal noise on both timings; the 95% interval of the median
    per-round ratio holds the true 1.4x in at least 93% of them (exact coverage is 96.5%), and narrows with rounds."""
    rng = np.random.default_rng(0)
    hits, widths = 0, {15: [], 60: []}
    for trial in range(400):
        for n in widths if trial < 50 else (15,):
            base, method = lognormal_rounds(rng, n, 100.0, 1.4, 0.10)
            interval, _ = reliability.speedup_interval(base / method)
            widths[n].append(reliability.relative_halfwidth(interval))
            if n == 15:
                hits += interval.low <= 1.4 <= interval.high
    assert hits / 400 >= 0.93
    assert np.median(widths[60]) < 0.6 * np.median(widths[15])


# ----------------------------------------------------------------------------------------------
# The rounds
# ----------------------------------------------------------------------------------------------

class FakeClock:
    """A clock that advances by the milliseconds each fake timed call reports."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_timer(clock: FakeClock, true_ms: dict, sigma: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    order = []

    def time_one(key):
        ms = true_ms[key] * float(rng.lognormal(0.0, sigma))
        clock.now += ms / 1000
        order.append(key)
        return ms
    return time_one, order


def test_rounds_stop_at_the_target_halfwidth_with_paired_ratios():
    clock = FakeClock()
    time_one, order = fake_timer(clock, {"base": 100.0, "tome": 70.0}, 0.01)
    rounds = reliability.run_rounds(["base", "tome"], time_one, "base", min_rounds=3, target=0.03, max_seconds=600,
                                    max_rounds=50, clock=clock)
    assert rounds.stop == "target" and rounds.n >= 6  # 95% needs 6 rounds
    assert order[:4] == ["base", "tome", "tome", "base"]  # the order rotates every round
    assert rounds.ratios["tome"] == [b / t for b, t in zip(rounds.times["base"], rounds.times["tome"])]
    interval, _ = reliability.speedup_interval(rounds.ratios["tome"])
    assert reliability.relative_halfwidth(interval) <= 0.03 and interval.low <= 100 / 70 <= interval.high


def test_rounds_stop_at_the_time_cap_or_round_cap_or_after_fixed_rounds():
    clock = FakeClock()
    noisy, _ = fake_timer(clock, {"base": 1000.0, "tome": 700.0}, 0.3)
    capped = reliability.run_rounds(["base", "tome"], noisy, "base", min_rounds=3, target=0.01, max_seconds=12,
                                    max_rounds=50, clock=clock)
    assert capped.stop == "time" and capped.seconds <= 12 + 1e-9 and capped.n >= 3
    counted = reliability.run_rounds(["base", "tome"], noisy, "base", min_rounds=3, target=0.01, max_seconds=None,
                                     max_rounds=7, clock=clock)
    assert (counted.stop, counted.n) == ("rounds", 7)
    fixed = reliability.run_rounds(["base", "tome"], noisy, "base", min_rounds=4, target=None, clock=clock)
    assert (fixed.stop, fixed.n) == ("rounds", 4)
    with pytest.raises(ValueError, match="baseline"):
        reliability.run_rounds(["tome"], noisy, "base", min_rounds=1)


def test_stop_reason_needs_the_nominal_confidence_before_the_target_can_end_the_rounds():
    kw = dict(target=0.03, elapsed_s=1.0, last_round_s=0.1, max_seconds=100, max_rounds=50)
    assert reliability.stop_reason(2, [0.01], 0.5, min_rounds=3, **kw) is None
    assert reliability.stop_reason(5, [0.01], 0.9375, min_rounds=3, **kw) is None  # narrow, but only 94%
    assert reliability.stop_reason(6, [0.01, 0.02], 0.97, min_rounds=3, **kw) == "target"
    assert reliability.stop_reason(6, [0.01, 0.05], 0.97, min_rounds=3, **kw) is None
    assert reliability.stop_reason(6, [0.05], 0.97, min_rounds=3, **{**kw, "elapsed_s": 99.95}) == "time"


# ----------------------------------------------------------------------------------------------
# The noise check
# ----------------------------------------------------------------------------------------------

def test_removed_layers_bound():
    assert reliability.removed_layers_bound(0.15) == pytest.approx(1 / 0.85)
    assert reliability.removed_layers_bound(0.0) == 1.0 and reliability.removed_layers_bound(1.0) == math.inf
    assert math.isnan(reliability.removed_layers_bound(float("nan")))
    with pytest.raises(ValueError):
        reliability.removed_layers_bound(-0.1)


def test_a_speedup_above_the_removed_layers_bound_is_marked_and_one_within_it_is_not():
    """The issue's case: the reduced layers take 15% of the baseline (bound 1.18x); a measured 1.39x is impossible."""
    rng = np.random.default_rng(1)
    base, method = lognormal_rounds(rng, 12, 6000.0, 1.39, 0.02)
    above = reliability.speedup_columns(base / method, base, 0.15)
    assert above["speedup_lo"] > above["bound_speedup"] == pytest.approx(1 / 0.85)
    assert "above removed-layers bound 1.18x" in above["unreliable"]
    base, method = lognormal_rounds(rng, 12, 6000.0, 1.12, 0.02)
    within = reliability.speedup_columns(base / method, base, 0.15)
    assert within["unreliable"] == "" and within["speedup_hi"] < within["bound_speedup"]


def test_only_an_interval_entirely_above_the_bound_is_marked():
    ratios = [1.10, 1.15, 1.19, 1.21, 1.22, 1.25, 1.30]  # median 1.21 above 1.18, but the interval reaches below
    row = reliability.speedup_columns(ratios, [100.0] * 7, 0.15)
    assert row["speedup"] > row["bound_speedup"] > row["speedup_lo"] and row["unreliable"] == ""
    # without an interval (an old table), the point estimate is held against the bound
    assert "speed-up above" in reliability.noise_check(1.21, float("nan"), 1 / 0.85, float("nan"))


def test_baseline_drift_is_detected():
    creeping = np.linspace(100.0, 125.0, 9)  # a machine getting busier: +18% from the first to the last third
    assert reliability.baseline_drift(creeping) == pytest.approx(np.median(creeping[-3:]) / np.median(creeping[:3]) - 1)
    row = reliability.speedup_columns([1.1] * 9, creeping, 0.3)
    assert "baseline drifted +18%" in row["unreliable"] and "bound" not in row["unreliable"]
    steady = 100.0 * np.random.default_rng(2).lognormal(0.0, 0.02, 9)
    assert abs(reliability.baseline_drift(steady)) < 0.1
    assert reliability.speedup_columns([1.1] * 9, steady, 0.3)["unreliable"] == ""
    assert math.isnan(reliability.baseline_drift([100.0, 120.0]))


def test_machine_load_reads_steal_from_proc_stat():
    before = reliability.parse_cpu_times("cpu  100 0 50 800 10 0 5 20 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
    after = reliability.parse_cpu_times("cpu  150 0 60 900 10 0 5 40 0 0\n")
    assert before == {"steal_ticks": 20, "idle_ticks": 810, "total_ticks": 985}
    load = reliability.machine_load({**before, "loadavg": [0.1, 0.2, 0.3]}, after)
    assert load["steal_share"] == pytest.approx(20 / 180, abs=1e-4) and load["idle_before"] is True
    assert reliability.machine_load({**before, "loadavg": [3.0, 2.0, 1.0]}, after)["idle_before"] is False
    snap = reliability.machine_snapshot()
    assert "cpu_count" in snap and "loadavg" in snap
    with pytest.raises(ValueError):
        reliability.parse_cpu_times("intr 1 2 3")


def test_others_cpu_share_separates_this_process_from_the_rest():
    """Over 10 s on 2 CPUs (2,000 ticks at 100/s): 1,500 busy ticks = 15 CPU-s, of which this process used 10 s,
    so others used 5 of 20 CPU-s (25%: not alone); when the process used all 15 s, the machine ran it alone."""
    before = {"time": 0.0, "cpu_count": 2, "own_cpu_s": 1.0, "idle_ticks": 0, "total_ticks": 0, "steal_ticks": 0}
    after = {"time": 10.0, "cpu_count": 2, "own_cpu_s": 11.0, "idle_ticks": 500, "total_ticks": 2000,
             "steal_ticks": 0}
    busy = reliability.machine_load(before, after, ticks_per_s=100.0)
    assert busy["others_cpu_share"] == pytest.approx(0.25) and busy["alone"] is False
    alone = reliability.machine_load(before, {**after, "own_cpu_s": 16.0}, ticks_per_s=100.0)
    assert alone["others_cpu_share"] == 0.0 and alone["alone"] is True
    assert "other processes used 25.0%" in reliability.load_note(busy)
    assert reliability.machine_load({"cpu_count": 2}, {"cpu_count": 2})["others_cpu_share"] is None
    # a real snapshot pair: a busy loop in this process is not counted as others
    first = reliability.machine_snapshot()
    end = time.time() + 0.3
    while time.time() < end:
        pass
    share = reliability.machine_load(first, reliability.machine_snapshot())["others_cpu_share"]
    assert share is None or 0.0 <= share <= 1.0


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_reduced_time_share_counts_the_sublayers_a_setting_reduces(name, one_thread):
    """s comes from timed baseline calls: 0 for the baseline, in (0, 1) for attention, more when the MLP is merged."""
    spec = get_spec(name)
    model = build_model(spec)
    args, kwargs = make_inputs(spec, 1, 64)
    block = next(m for m in model.modules() if hasattr(m, "attn1"))
    assert reduced_sublayers(block, {}) == ["attn1"]
    cross = ["attn2"] if isinstance(getattr(block, "attn2", None), torch.nn.Module) else []
    assert reduced_sublayers(block, {"merge_mlp": True, "merge_crossattn": True}) == ["attn1", *cross, "ff"]
    shares = reduced_time_shares(model, lambda: model(*args, **kwargs),
                                 [("none", {}), ("tome", {"ratio": 0.5}), ("todo", {"df": 2}),
                                  ("tome", {"ratio": 0.5, "merge_mlp": True})], torch.device("cpu"), calls=2)
    assert shares[0] == 0.0 and 0 < shares[1] < 1 and shares[2] == shares[1]
    assert shares[1] < shares[3] < 1


# ----------------------------------------------------------------------------------------------
# Tables: eval.speed, the main job, eval.report, the checker of published tables
# ----------------------------------------------------------------------------------------------

def speed_row(setting: str, method: str, speedup: float, share: float = 0.15, **extra) -> dict:
    """A speed.csv row as `eval.speed` writes it (NaN for what the table does not use here)."""
    row = {c: float("nan") for c in COLUMNS}
    row.update(model="sd2", model_note="", family="unet", resolution=512, latent="64x64", batch=1, dtype="float32",
               device="cpu", attention="sdpa(cpu)", engine="baseline" if method == "none" else "bigain",
               method=method, setting=setting, options=json.dumps({"ratio": 0.7} if method != "none" else {}),
               blocks=16, tokens="", reduced_tokens="", latency_ms=6000 / speedup, baseline_ms=6000.0,
               speedup=speedup, ideal_speedup=1.14, measured_over_ideal=speedup / 1.14, attn_share=share,
               repeats=12, cuda_graphs=False, upstream_speedup=float("nan"))
    row.update(extra)
    return row


def new_rows() -> list[dict]:
    rng = np.random.default_rng(3)
    rows = [speed_row("baseline (SDPA)", "none", 1.0, 0.0)]
    base = None
    for setting, true in (("tome r=0.7", 1.12), ("bigain_tm r=0.7", 1.39)):
        b, m = lognormal_rounds(rng, 12, 6000.0, true, 0.02)
        base = b if base is None else base
        cols = reliability.speedup_columns(b / m, b, 0.15)
        rows.append(speed_row(setting, setting.split()[0], cols.pop("speedup"), **cols, stop="target"))
    rows[0].update(reliability.speedup_columns([1.0] * 12, base, 0.0), stop="target")
    return rows


def test_speed_table_shows_interval_bound_and_mark():
    rows = new_rows()
    text = markdown_table(rows)
    assert "| speed-up [95% CI] | FLOP-ideal | bound |" in text
    tome = next(line for line in text.splitlines() if "| tome r=0.7 |" in line)
    assert "[" in tome and "1.18x" in tome and tome.rstrip(" |").endswith("ok")
    assert "UNRELIABLE: interval above removed-layers bound 1.18x" in text
    assert "12 rounds (interval narrower than the target)" in text
    assert [r["setting"] for r in unreliable_rows(rows)] == ["bigain_tm r=0.7"]
    old = {k: v for k, v in rows[1].items() if k not in COLUMNS[COLUMNS.index("speedup_lo"):]}
    assert "| n/a |" in markdown_table([old])  # rows without the new fields still render


def test_main_job_table_shows_interval_bound_and_mark():
    rows = [{"model": "dit", "setting": "Baseline", "method": "none", "ms_per_call": 160.0, "speedup": 1.0,
             "flop_ratio": 1.0, "gflops_per_call": 20.5},
            {"model": "dit", "setting": "BiGain_TD", "method": "bigain_td", "ms_per_call": 84.0, "speedup": 1.91,
             "speedup_lo": 1.85, "speedup_hi": 1.97, "speedup_conf": 0.96, "bound_speedup": 1.52,
             "flop_ratio": 1.34, "gflops_per_call": 15.3, "unreliable": "interval above removed-layers bound 1.52x"},
            {"model": "dit", "setting": "ToDo", "method": "todo", "ms_per_call": 120.0, "speedup": 1.3,
             "speedup_lo": 1.2, "speedup_hi": 1.4, "speedup_conf": 0.75, "bound_speedup": 1.52, "flop_ratio": 1.34,
             "gflops_per_call": 15.3, "unreliable": ""}]
    text = format_table(rows)
    assert "1.91x [1.85, 1.97] UNRELIABLE | 1.34x | 1.52x |" in text
    assert "1.30x [1.20, 1.40; 75%] | 1.34x | 1.52x |" in text
    assert "dit BiGain_TD: interval above removed-layers bound 1.52x" in text
    assert "| 1.00x | 1.00x |  |" in text  # an old row without interval or bound


def test_report_shows_the_interval_and_marks_unreliable_speedups(tmp_path):
    write_csv(tmp_path / "speed.csv", new_rows(), COLUMNS)
    df = report.collect_rows([tmp_path])
    table = report.build_table(df, "speedup")
    cells = dict(zip(table.index, table.iloc[:, 0]))
    marked = next(v for k, v in cells.items() if "BiGain" in k)
    fine = next(v for k, v in cells.items() if "ToMe" in k)
    assert marked.endswith("!") and "[" in marked
    assert "[" in fine and not fine.endswith("!")
    bound = report.build_table(df, "bound_speedup")
    assert set(bound.iloc[:, 0]) == {"1.00x", "1.18x"}  # the bound sits next to the FLOP-ideal in the report too
    stems = [stem for stem, _, _ in report.iter_tables(df)]
    assert stems[:3] == ["speed_speedup", "speed_ideal_speedup", "speed_bound_speedup"]


def write_old_table(folder: Path) -> Path:
    """A speed.csv as written before the noise check: no interval, no bound, only attn_share."""
    folder.mkdir(parents=True)
    old = COLUMNS[: COLUMNS.index("speedup_lo")]
    rows = [speed_row("baseline (SDPA)", "none", 1.0, 0.0), speed_row("tome r=0.7", "tome", 1.39),
            speed_row("tome r=0.7 plans=level", "tome", 1.12),
            speed_row("tome r=0.7 merge_mlp=True", "tome", 1.80, options=json.dumps({"ratio": 0.7, "merge_mlp": True}))]
    write_csv(folder / "speed.csv", rows, old)
    (folder / "meta.json").write_text(json.dumps({"command": "python -m eval.speed --preset x"}))
    return folder


def test_checker_marks_old_tables_above_the_bound(tmp_path, capsys):
    folder = write_old_table(tmp_path / "old")
    results, meta = check.check_folder(folder)
    verdicts = {r["setting"]: r["verdict"] for r in results}
    assert verdicts["tome r=0.7"] == "speed-up above removed-layers bound 1.18x"
    assert verdicts["tome r=0.7 plans=level"] == ""
    assert verdicts["tome r=0.7 merge_mlp=True"].startswith("not judged")  # attn_share bounds attention only
    assert check.main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 rows above the removed-layers bound" in out and "python -m eval.speed --preset x" in out
    new = tmp_path / "new"
    new.mkdir()
    rows = [r for r in new_rows() if r["setting"] != "bigain_tm r=0.7"]
    write_csv(new / "speed.csv", rows, COLUMNS)
    assert check.main([str(new)]) == 0


def test_checker_rejects_a_folder_without_speed_csv(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        check.main([str(tmp_path)])
    assert err.value.code == 2 and "error: no speed.csv in" in capsys.readouterr().err


def test_published_tables_are_readable_by_the_checker():
    """Every speed.csv under docs/benchmarks parses and every reducing row gets a verdict (the result itself is
    reported in docs/speed_method.md, not asserted: old tables were run on a shared machine)."""
    root = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
    folders = sorted(p.parent for p in root.glob("*/speed.csv"))
    assert folders
    for folder in folders:
        results, _ = check.check_folder(folder)
        assert results and all(isinstance(r["verdict"], str) for r in results)
        frame = pd.read_csv(folder / "speed.csv")
        assert len(results) == int((frame["method"] != "none").sum())


def test_unpaired_interval_of_compiled_rows_covers_the_true_ratio():
    """Settings timed one after another (compiled graphs) get a bootstrap interval of the ratio of medians that
    covers the true speed-up on seeded lognormal noise most of the time, and no bound (none is measured)."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(100):
        base = 100.0 * rng.lognormal(0.0, 0.05, 10)
        fast = 80.0 * rng.lognormal(0.0, 0.05, 10)
        row = reliability.unpaired_speedup_columns(base, fast, n_boot=500, seed=1)
        assert row["speedup_lo"] <= row["speedup"] <= row["speedup_hi"] and math.isnan(row["bound_speedup"])
        hits += row["speedup_lo"] <= 1.25 <= row["speedup_hi"]
    assert hits >= 85
    single = reliability.unpaired_speedup_columns([100.0], [50.0])
    assert single["speedup_lo"] == single["speedup_hi"] == 2.0 and math.isnan(single["speedup_conf"])
