"""Whether the diffusion classifier's class rows could share token-reduction plans, and what it would save.

Rows of a classifier batch with the same image, timestep and noise differ only in their class. Where
the plan's metric precedes every class input (an SD-style U-Net's first transformer block; with
`plan_reuse="level"` and `max_downsample=1` that is the only plan of a call), those rows get equal
plans, so planning only one row per distinct noisy input would give the same outputs. This measures,
on the shipped testbed models (real first-block inputs, one torch thread):

* whether the first transformer block's input is equal across the ten class rows of one noisy input
  (U-Net: class enters by cross-attention, after it; DiT: adaLN puts the class into every block);

* how many distinct noisy inputs a batch holds under the classifier's row order (class-major: every
  timestep of one class, then the next class) and under a timestep-major order;
* the planning time of ToMe and BiGain_TM (ratio 0.7) on a whole batch and on its distinct rows, next
  to the time of one patched denoiser call of that batch (`plan_reuse="level"`).

    python -m eval.speed.shared_plans [--output_dir DIR]     # prints a JSON report (also DIR/shared_plans.json)

Only a measurement: the engine does not share plans across rows (see docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

import tomesd
from bigain.diffusion import StageSchedule
from bigain.storage import atomic_write_json
from bigain.testbed import ASSETS_DIR
from eval.speed.sito_precision import first_block_metrics, test_images
from eval.speed.timing import median, timed_call
from tomesd.reducers.base import ReductionContext
from tomesd.reducers.bigain_tm import LGTM, LGTMOptions
from tomesd.reducers.tome import ToMe, ToMeOptions
from tomesd.rng import CounterRandom

UNET_DIR = Path(ASSETS_DIR) / "unet-fmnist"
NUM_CLASSES = 10
BATCH_SIZE = 32  # the classifier's default batch
REPEATS = 15
ORDERS = ("class-major", "timestep-major")


def stage_rows(schedule: StageSchedule, num_classes: int, order: str) -> list[list[tuple[int, int, int]]]:
    """Per stage, the (class, slot, trial) rows in evaluation order, assuming the first `to_keep` classes
    survive each stage (which classes survive does not change how many rows share an input)."""
    alive, stages = list(range(num_classes)), []
    for new_slots, keep in zip(schedule.stage_slots(), schedule.to_keep):
        inputs = [(s, k) for s in new_slots for k in range(schedule.n_trials)]
        if order == "class-major":  # the classifier's order (bigain.diffusion.classifier.classify_image)
            rows = [(r, s, k) for r in alive for s, k in inputs]
        else:
            rows = [(r, s, k) for s, k in inputs for r in alive]
        stages.append(rows)
        alive = alive[:keep]
    return stages


def batch_sizes_and_distinct(schedule: StageSchedule, num_classes: int, batch_size: int,
                             order: str) -> list[tuple[int, int]]:
    """(rows, distinct noisy inputs) of every denoiser call for one image under `order`."""
    calls = []
    for rows in stage_rows(schedule, num_classes, order):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            calls.append((len(chunk), len({(s, k) for _, s, k in chunk})))
    return calls


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of `fn()` in milliseconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append((time.perf_counter() - tic) * 1e3)
    return median(times)


def plan_times(metric: torch.Tensor, side: int, distinct: Sequence[int]) -> dict[str, dict[str, float]]:
    """Median planning ms of ToMe and BiGain_TM (ratio 0.7) on all rows of `metric` and on its first k rows."""
    reducers = {"tome": (ToMe, ToMeOptions(ratio=0.7)), "bigain_tm": (LGTM, LGTMOptions(ratio=0.7))}
    out = {}
    for name, (reducer, opts) in reducers.items():
        def plan_rows(k: int, reducer=reducer, opts=opts) -> Callable[[], object]:
            ctx = ReductionContext(metric[:k].contiguous(), side, side, None, CounterRandom(0))
            return lambda: reducer.plan(ctx, opts)
        out[name] = {f"plan_ms_{k}_rows": median_ms(plan_rows(k)) for k in sorted({metric.shape[0], *distinct})}
    return out


def call_times(model: UNet2DConditionModel, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
               repeats: int = REPEATS) -> dict[str, float]:
    """Median ms of one denoiser call: unpatched, and with ToMe / BiGain_TM 0.7 at `plan_reuse="level"`.

    The three models are timed in interleaved rounds, so load on a shared machine hits them alike.
    """
    models = {"none": model}
    for method in ("tome", "bigain_tm"):
        models[method] = copy.deepcopy(model)
        tomesd.apply_patch(models[method], ratio=0.7, method=method, plan_reuse="level", seed=0)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for round_index in range(repeats + 1):  # round 0 warms up
            for name, m in models.items():
                ms = timed_call(m, (x_t, t), {"encoder_hidden_states": cond}, x_t.device)
                if round_index:
                    times[name].append(ms)
    return {name: median(v) for name, v in times.items()}


def measure(schedule: StageSchedule | None = None, batch_size: int = BATCH_SIZE) -> dict:
    """The whole report (see the module docstring); `schedule` defaults to the paper's `StageSchedule()`."""
    schedule = StageSchedule() if schedule is None else schedule
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # Does it hold? One test image, one timestep and noise, all ten classes: first-block metrics per model.
    one_image = test_images(1).expand(NUM_CLASSES, -1, -1, -1)
    equal_rows = {kind: bool((rows == rows[:1]).all()) for kind in ("unet", "dit")
                  for rows in [first_block_metrics(kind, one_image, torch.arange(NUM_CLASSES), 500, share_noise=True)]}
    # What does it save? Planning on real first-block inputs of a whole batch vs its distinct rows.
    metric = first_block_metrics("unet", test_images(batch_size), torch.arange(batch_size) % NUM_CLASSES, 500)
    model = UNet2DConditionModel.from_pretrained(UNET_DIR / "unet").eval()
    embeddings = load_file(UNET_DIR / "class_embeddings.safetensors")["embeddings"]
    side = model.config.sample_size
    x_t = torch.randn(batch_size, model.config.in_channels, side, side)
    t = torch.full((batch_size,), 500)
    cond = embeddings[torch.arange(batch_size) % NUM_CLASSES]
    grid_side = int(metric.shape[1] ** 0.5)
    calls = {order: batch_sizes_and_distinct(schedule, NUM_CLASSES, batch_size, order) for order in ORDERS}
    per_order = {order: {"calls": len(c), "rows": sum(r for r, _ in c), "distinct_inputs": sum(d for _, d in c),
                         "mean_distinct_per_full_batch": statistics.mean(d for r, d in c if r == batch_size)
                         if any(r == batch_size for r, _ in c) else float("nan")}
                 for order, c in calls.items()}
    distinct = sorted({round(v["mean_distinct_per_full_batch"]) for v in per_order.values()})
    return {"model": "testbed unet-fmnist", "batch_size": batch_size,
            "schedule": {"n_samples": list(schedule.n_samples),
            "to_keep": list(schedule.to_keep)}, "first_block_tokens": metric.shape[1], "channels": metric.shape[2],
            "first_metric_equal_across_class_rows": equal_rows, "orders": per_order,
            "plan": plan_times(metric, grid_side, distinct), "call_ms": call_times(model, x_t, t, cond)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m eval.speed.shared_plans", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=None, help="also write DIR/shared_plans.json")
    args = parser.parse_args(argv)
    report = measure()
    text = json.dumps(report, indent=1)
    print(text)
    if args.output_dir is not None:
        atomic_write_json(args.output_dir / "shared_plans.json", report)
    return report


if __name__ == "__main__":
    main()
