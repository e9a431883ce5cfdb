"""Speed-ups you can trust: interleaved rounds until the interval is narrow, and a noise check against physics.

Pure functions (numbers in, numbers out), shared by `eval.speed` and the main job (`bigain.benchmark`):

* `run_rounds`: time every setting once per round (rotated order), until the speed-ups' 95% intervals have a
  relative half-width <= a target, or a time cap, or a round cap; `Rounds.stop` says which ended it;
* `speedup_interval`: the median of the per-round paired ratios (baseline / setting, same round) with its
  distribution-free order-statistic interval (`eval.stats.median_interval`);
* `removed_layers_bound`: 1 / (1 - s), the most a reduction can gain when the layers it reduces take the share s
  of the baseline's time, even if they took no time at all;
* `baseline_drift`: last-third vs first-third median of the baseline's round times;
* `noise_check`: why a row is unreliable (interval above the bound, baseline drift), or '';
* `machine_snapshot` / `machine_load`: load average and CPU steal (/proc/stat) before and after a run.

docs/speed_method.md explains the method and the rules.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

import numpy as np

from eval.stats import CONFIDENCE, Interval, median_interval

TARGET_HALFWIDTH = 0.03  # relative half-width of the speed-up interval that ends the rounds
MAX_DRIFT = 0.10  # |last-third / first-third median baseline time - 1| above this marks the case
IDLE_LOAD = 0.5  # 1-minute load average below which a machine counts as idle before a run
OTHERS_IDLE = 0.05  # share of all CPUs' time used by other processes during a run below which it ran alone
STOP_REASONS = {"target": "interval narrower than the target", "time": "time cap reached",
                "rounds": "round count reached", "compiled": "compiled: settings timed one after another, no interval"}


@dataclass
class Rounds:
    """Per-setting times (ms) and paired ratios (baseline / setting, same round) of interleaved rounds."""

    times: dict[Hashable, list[float]] = field(default_factory=dict)
    ratios: dict[Hashable, list[float]] = field(default_factory=dict)
    stop: str = "rounds"
    seconds: float = 0.0

    @property
    def n(self) -> int:
        """Rounds timed."""
        return len(next(iter(self.times.values()), []))


def speedup_interval(ratios: Sequence[float], confidence: float = CONFIDENCE) -> tuple[Interval, float]:
    """Median per-round ratio with its order-statistic interval, and the interval's actual coverage."""
    return median_interval(ratios, confidence)


def relative_halfwidth(interval: Interval) -> float:
    """Half the interval's width over its point value (NaN without an interval)."""
    if not all(math.isfinite(v) for v in (interval.value, interval.low, interval.high)) or interval.value == 0:
        return float("nan")
    return (interval.high - interval.low) / 2 / abs(interval.value)


def stop_reason(rounds: int, halfwidths: Sequence[float], coverage: float, *, min_rounds: int,
                target: Optional[float], elapsed_s: float, last_round_s: float, max_seconds: Optional[float],
                max_rounds: int, confidence: float = CONFIDENCE) -> Optional[str]:
    """Why the rounds end now ('target', 'time', 'rounds'), or None to time another round.

    Never before `min_rounds`; 'target' once every interval reaches `confidence` with a relative half-width <= target;
    'time' when another round (as long as the last one) would pass `max_seconds`; without a target, `min_rounds` rounds.
    """
    if rounds < min_rounds:
        return None
    if not target or not halfwidths:
        return "rounds"
    if coverage >= confidence and all(h <= target for h in halfwidths):
        return "target"
    if rounds >= max_rounds:
        return "rounds"
    if max_seconds is not None and elapsed_s + last_round_s > max_seconds:
        return "time"
    return None


def run_rounds(keys: Sequence[Hashable], time_one: Callable[[Hashable], float], baseline: Hashable, *,
               min_rounds: int, target: Optional[float] = TARGET_HALFWIDTH, max_seconds: Optional[float] = None,
               max_rounds: int = 50, confidence: float = CONFIDENCE,
               clock: Callable[[], float] = time.perf_counter) -> Rounds:
    """Interleaved rounds: each times `time_one(key)` for every key (order rotated by one per round, so no setting
    always follows another), until `stop_reason` ends them. `baseline` is the key the ratios divide."""
    keys = list(keys)
    if baseline not in keys:
        raise ValueError(f"the baseline {baseline!r} is not among the keys timed")
    out = Rounds({k: [] for k in keys}, {k: [] for k in keys})
    start = clock()
    while True:
        begun = clock()
        shift = out.n % len(keys)
        measured = {k: time_one(k) for k in keys[shift:] + keys[:shift]}
        for k in keys:
            out.times[k].append(measured[k])
            out.ratios[k].append(measured[baseline] / measured[k])
        now = clock()
        intervals = [speedup_interval(out.ratios[k], confidence) for k in keys if k != baseline]
        coverage = min((c for _, c in intervals), default=float("nan"))
        reason = stop_reason(out.n, [relative_halfwidth(iv) for iv, _ in intervals], coverage, min_rounds=min_rounds,
                             target=target, elapsed_s=now - start, last_round_s=now - begun, max_seconds=max_seconds,
                             max_rounds=max_rounds, confidence=confidence)
        if reason is not None:
            out.stop, out.seconds = reason, now - start
            return out


# ----------------------------------------------------------------------------------------------
# The noise check
# ----------------------------------------------------------------------------------------------

def removed_layers_bound(share: float) -> float:
    """1 / (1 - s): the speed-up if the reduced layers (share s of the baseline's time) took no time at all."""
    if share is None or math.isnan(share):
        return float("nan")
    if share < 0:
        raise ValueError(f"a time share cannot be negative, got {share}")
    return math.inf if share >= 1 else 1.0 / (1.0 - share)


def baseline_drift(times: Sequence[float]) -> float:
    """Relative change of the baseline's time over the run: median of the last third of rounds over the first's - 1
    (NaN below 3 rounds)."""
    k = len(times) // 3
    if k < 1:
        return float("nan")
    return statistics.median(times[-k:]) / statistics.median(times[:k]) - 1.0


def noise_check(speedup: float, speedup_lo: float, bound: float, drift: float, max_drift: float = MAX_DRIFT) -> str:
    """Why a timing row is unreliable ('' when it is not).

    Above the bound: the interval's lower end (the point estimate when there is no interval, e.g. an old table)
    exceeds `removed_layers_bound`, which no reduction can do; drift: the baseline changed by more than `max_drift`.
    """
    reasons = []
    has_interval = speedup_lo is not None and math.isfinite(speedup_lo)
    low = speedup_lo if has_interval else speedup
    if low is not None and math.isfinite(low) and bound is not None and not math.isnan(bound) and low > bound:
        reasons.append(f"{'interval' if has_interval else 'speed-up'} above removed-layers bound {bound:.2f}x")
    if drift is not None and math.isfinite(drift) and abs(drift) > max_drift:
        reasons.append(f"baseline drifted {100 * drift:+.0f}% (limit {100 * max_drift:.0f}%)")
    return "; ".join(reasons)


def speedup_columns(ratios: Sequence[float], baseline_times: Sequence[float], share: float,
                    confidence: float = CONFIDENCE, max_drift: float = MAX_DRIFT) -> dict[str, float | str]:
    """A row's speed-up, its interval, the removed-layers bound, the baseline drift and the noise check's verdict."""
    interval, coverage = speedup_interval(ratios, confidence)
    bound, drift = removed_layers_bound(share), baseline_drift(baseline_times)
    return {"speedup": interval.value, "speedup_lo": interval.low, "speedup_hi": interval.high,
            "speedup_conf": coverage, "reduced_share": share, "bound_speedup": bound, "baseline_drift": drift,
            "unreliable": noise_check(interval.value, interval.low, bound, drift, max_drift)}


def unpaired_speedup_columns(baseline_times: Sequence[float], times: Sequence[float], confidence: float = CONFIDENCE,
                             max_drift: float = MAX_DRIFT, n_boot: int = 2000, seed: int = 0) -> dict[str, float | str]:
    """Like `speedup_columns` for settings that cannot be interleaved (each compiled into its own graph, timed one
    after another): speed-up = median baseline time / median time, interval = seeded percentile bootstrap that
    resamples each setting's calls independently (unpaired, so wider than a paired one). No reduced-layer share
    is measured, so the bound is n/a; the baseline's own calls still give the drift check."""
    base, mine = np.asarray(baseline_times, dtype=float), np.asarray(times, dtype=float)
    value = float(np.median(base) / np.median(mine))
    low = high = value
    coverage = float("nan")
    if len(base) > 1 and len(mine) > 1:
        rng = np.random.default_rng(seed)
        ratios = (np.median(rng.choice(base, (n_boot, len(base))), axis=1)
                  / np.median(rng.choice(mine, (n_boot, len(mine))), axis=1))
        low, high = (float(v) for v in np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2]))
        coverage = confidence
    drift = baseline_drift(list(base))
    return {"speedup": value, "speedup_lo": low, "speedup_hi": high, "speedup_conf": coverage,
            "reduced_share": float("nan"), "bound_speedup": float("nan"), "baseline_drift": drift,
            "unreliable": noise_check(value, low, float("nan"), drift, max_drift)}


# ----------------------------------------------------------------------------------------------
# Machine load
# ----------------------------------------------------------------------------------------------

def parse_cpu_times(text: str) -> dict[str, int]:
    """Steal, idle (idle + iowait) and total ticks of the aggregate `cpu` line of /proc/stat (user nice system idle
    iowait irq softirq steal ...; guest time is already inside user)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(v) for v in fields[1:9]]
            return {"steal_ticks": ticks[7] if len(ticks) > 7 else 0, "idle_ticks": sum(ticks[3:5]),
                    "total_ticks": sum(ticks)}
    raise ValueError("no aggregate 'cpu' line in /proc/stat text")


def machine_snapshot(stat_path: str = "/proc/stat") -> dict[str, object]:
    """Load averages (1, 5, 15 min), CPU count, this process's CPU seconds and the CPU tick counters now (where the
    OS has them)."""
    times = os.times()
    snap: dict[str, object] = {"time": time.time(), "cpu_count": os.cpu_count(),
                               "own_cpu_s": round(times.user + times.system, 3)}
    try:
        snap["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        snap["loadavg"] = None
    try:
        with open(stat_path, encoding="ascii") as fh:
            snap.update(parse_cpu_times(fh.read()))
    except (OSError, ValueError):
        pass
    return snap


def others_cpu_share(before: dict, after: dict, ticks_per_s: float) -> Optional[float]:
    """Share of all CPUs' time between two snapshots that other processes used: busy ticks (not idle, not stolen)
    minus this process's own CPU seconds, over wall time x CPUs. None without the counters."""
    keys = ("idle_ticks", "total_ticks", "steal_ticks", "own_cpu_s", "time", "cpu_count")
    if not all(k in before and k in after for k in keys) or not before["cpu_count"]:
        return None
    busy = ((after["total_ticks"] - before["total_ticks"]) - (after["idle_ticks"] - before["idle_ticks"])
            - (after["steal_ticks"] - before["steal_ticks"])) / ticks_per_s
    capacity = (after["time"] - before["time"]) * before["cpu_count"]
    if capacity <= 0:
        return None
    return round(max(0.0, busy - (after["own_cpu_s"] - before["own_cpu_s"])) / capacity, 4)


def clock_ticks_per_s() -> float:
    """The kernel's /proc/stat tick rate (USER_HZ, 100 on Linux)."""
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


def machine_load(before: dict, after: dict, ticks_per_s: Optional[float] = None) -> dict[str, object]:
    """Both snapshots, the share of CPU time stolen by the hypervisor between them (None when unknown), the share
    other processes used (`others_cpu_share`; `alone` when below `OTHERS_IDLE`: what "run on an idle machine"
    means) and whether the 1-minute load average was below `IDLE_LOAD` before (it lags and counts this process's
    own start-up, so `alone` is the check to read)."""
    steal = total = float("nan")
    if "total_ticks" in before and "total_ticks" in after:
        steal = after["steal_ticks"] - before["steal_ticks"]
        total = after["total_ticks"] - before["total_ticks"]
    share = steal / total if total and total > 0 else float("nan")
    avg = before.get("loadavg")
    others = others_cpu_share(before, after, ticks_per_s or clock_ticks_per_s())
    return {"before": before, "after": after, "steal_share": None if math.isnan(share) else round(share, 4),
            "others_cpu_share": others, "alone": None if others is None else others < OTHERS_IDLE,
            "idle_before": None if not avg else bool(avg[0] < IDLE_LOAD)}


def load_note(load: dict) -> str:
    """'load average 0.1 before, 1.2 after (2 CPUs); CPU steal 0.0%' for a table's footnote."""
    def one(snap: dict) -> str:
        avg = snap.get("loadavg")
        return "n/a" if not avg else f"{avg[0]:.2f}"
    steal, others = load.get("steal_share"), load.get("others_cpu_share")
    return (f"load average (1 min) {one(load['before'])} before, {one(load['after'])} after "
            f"({load['before'].get('cpu_count')} CPUs); CPU steal "
            + ("n/a" if steal is None else f"{100 * steal:.1f}%")
            + ("" if others is None else f"; other processes used {100 * others:.1f}% of the CPUs"))
