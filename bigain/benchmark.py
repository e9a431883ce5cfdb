"""The main job: joint generation + classification benchmark of every method on the embedded testbed.

    python -m bigain.benchmark                 # default: offline, shipped models, <= ~15 min on 2 CPU cores
    python -m bigain.benchmark --full          # the whole 1,000-image shipped test subset
    python -m bigain.benchmark --sweep         # add the ratio sweep (0.3/0.5/0.7 merging, df 2/4)
    python -m bigain.benchmark --compare       # every method at two strengths + the compression sweep
    python -m bigain.benchmark --models dit --settings headline compression --n_images 100   # any groups

For each shipped model (a DiT and an SD-style U-Net trained on Fashion-MNIST) and each method at
the paper's settings it runs the adaptive diffusion classifier (`bigain.classify`) on the test
subset, generates a fixed class-balanced sample set (`bigain.generate`), scores it with a domain
FID and class consistency (`eval.metrics`, the shipped reference CNN), and times the denoiser on
the classifier's mixed-timestep batch, interleaving methods in one process (median of repeats).
Prints one table with 95% intervals and a table of paired differences (vs baseline, BiGain vs its
counterpart; `eval.report.benchmark_outputs`), writes CSV/markdown, trade-off plots with error bars, a
sample grid and a per-class accuracy heatmap per model. Every stage resumes: finished images and
samples are reused on a rerun.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

import tomesd
from eval.report.benchmark_outputs import add_statistics, format_differences, format_table, write_outputs
from bigain.cli import nonneg_float, nonneg_int, positive_int
from bigain.cli import add_max_images_arg, add_output_args, add_threads_arg, check_output_dir, run_cli
from bigain.cli import add_config_arg, parse_args_with_config
from bigain.models import load_model
from bigain.storage import atomic_write_text
from bigain.runs import ClassifyRun, GenerateRun
from bigain.runs import run_classification, run_generation
from bigain.reduction import PAPER_METHODS, SETTING_GROUPS, setting_label, setting_tag
from eval.flops import count_flops
from eval.metrics import compute_metrics

TESTBED = Path(__file__).resolve().parent / "assets" / "testbed"
MODELS = {"dit": TESTBED / "dit-fmnist", "unet": TESTBED / "unet-fmnist"}


def select_settings(groups: Sequence[str], sweep: bool, methods: Optional[Sequence[str]]) -> list[tuple[str, dict]]:
    """The settings of the named groups (in order, duplicates dropped), baseline first, filtered to `methods`."""
    chosen: dict[str, tuple[str, dict]] = {setting_tag("none", {}): ("none", {})}
    for group in list(groups) + (["sweep"] if sweep else []):
        for method, options in SETTING_GROUPS[group]:
            chosen.setdefault(setting_tag(method, options), (method, options))
    return [s for s in chosen.values() if s[0] == "none" or not methods or s[0] in methods]


def place_settings(model_name: str, settings: Sequence[tuple[str, dict]], unet_max_downsample: Optional[int]) -> list:
    """Add the U-Net placement (`max_downsample`) to every reducing setting of the U-Net; other models unchanged."""
    if model_name != "unet" or unet_max_downsample is None:
        return list(settings)
    return [(m, o if m == "none" else {**o, "max_downsample": unet_max_downsample}) for m, o in settings]


def classify_setting(model_path: Path, method: str, options: dict, out: Path, args: argparse.Namespace) -> dict:
    """Adaptive diffusion classification of the first images of the shipped subset (resumable: records carry the
    run's fingerprint, so changed settings or weights are recomputed)."""
    return run_classification(ClassifyRun(
        dataset="fmnist", split=args.split, model_path=str(model_path), dtype="fp32", device=args.device,
        batch_size=args.cls_batch_size, n_samples=tuple(args.n_samples), to_keep=tuple(args.to_keep), seed=args.seed,
        allow_stages_without_new_timesteps=args.allow_stages_without_new_timesteps, max_images=args.n_images,
        run_dir=str(out), summary_csv=str(out.parent.parent / "summary.csv"), method=method, reduction=options))


METRIC_SETTINGS = {"reference": "fmnist-test", "metrics": ["domain_fid", "class_consistency"],
                   "domain_extractor": "fmnist-reference"}


def generation_run_dir(out: Path, args: argparse.Namespace) -> Path:
    """Folder of a setting's sample set, one per item count (a smaller rerun never scores a bigger run's leftovers)."""
    return out / f"n{10 * args.images_per_class}"


def metrics_key(generation_fingerprint: str, n_images: int) -> dict[str, Any]:
    """What cached metrics must match to be reused: the images' generation fingerprint and the metric settings."""
    return {"generation_fingerprint": generation_fingerprint, "n_images": n_images, **METRIC_SETTINGS}


def generate_setting(model_path: Path, method: str, options: dict, out: Path, args: argparse.Namespace) -> dict:
    """A fixed, class-balanced sample set (`--images_per_class` per class), then its metrics, cached under the
    generation run's fingerprint and the metric settings (any change recomputes them)."""
    run_dir = generation_run_dir(out, args)
    row = run_generation(GenerateRun(
        model_path=str(model_path), classes=tuple(range(10)), images_per_class=args.images_per_class, steps=args.steps,
        dtype="fp32", device=args.device, batch_size=args.gen_batch_size, seed=args.seed, guidance=args.guidance,
        run_dir=str(run_dir), summary_csv=str(out.parent.parent / "summary.csv"), no_progress=True,
        method=method, reduction=options))
    metrics_file = run_dir / "metrics.json"
    key = metrics_key(row["fingerprint"], 10 * args.images_per_class)
    try:
        cached = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get("cache_key") != key:
        scores = compute_metrics(run_dir / "images", METRIC_SETTINGS["reference"],
                                 metrics=tuple(METRIC_SETTINGS["metrics"]),
                                 domain_extractor=METRIC_SETTINGS["domain_extractor"], device=args.metrics_device,
                                 skip_unavailable=False)  # never cache a result missing a metric
        cached = {"cache_key": key, "n_images": key["n_images"], **{k: v for k, v in scores.items() if k != "report"},
                  "report": scores.get("report")}
        atomic_write_text(metrics_file, json.dumps(cached, indent=2, default=str))
    return {**row, **cached}


def timing_batch(model: Any, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The classifier's batch shape: noisy inputs at mixed timesteps, classes cycling."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_channels, model.sample_size, model.sample_size, generator=g).to(model.device)
    t = torch.linspace(25, 975, batch).round().long().to(model.device)
    cond = model.select(model.condition(class_ids=list(range(10))), torch.arange(batch) % 10)
    return x, t, cond


def time_settings(model: Any, settings: Sequence[tuple[str, dict]], batch: int, repeats: int, seed: int) -> dict:
    """Median seconds per denoiser call for each setting, methods interleaved within every round."""
    x, t, cond = timing_batch(model, batch, seed)
    samples: dict[str, list[float]] = {setting_tag(m, o): [] for m, o in settings}
    with torch.no_grad():
        for round_idx in range(repeats + 1):  # round 0 warms up
            for method, options in settings:
                if method != "none":
                    tomesd.apply_patch(model.denoiser, method=method, seed=seed, **options)
                start = time.perf_counter()
                model.predict_eps(x, t, cond)
                if model.device.type == "cuda":
                    torch.cuda.synchronize(model.device)
                elapsed = time.perf_counter() - start
                tomesd.remove_patch(model.denoiser)
                if round_idx:
                    samples[setting_tag(method, options)].append(elapsed)
    return {tag: statistics.median(v) for tag, v in samples.items()}


def flops_per_call(model: Any, method: str, options: dict, batch: int, seed: int) -> float:
    """FLOPs of one denoiser call on the timing batch (torch.utils.flop_counter, SDPA counted)."""
    class Call(torch.nn.Module):
        def forward(self, x, t, cond):
            return model.predict_eps(x, t, cond)

    x, t, cond = timing_batch(model, batch, seed)
    if method != "none":
        tomesd.apply_patch(model.denoiser, method=method, seed=seed, **options)
    try:
        return float(count_flops(Call(), (x, t, cond)).total)
    finally:
        tomesd.remove_patch(model.denoiser)


def benchmark_model(name: str, model_path: Path, settings: Sequence[tuple[str, dict]],
                    args: argparse.Namespace) -> list[dict]:
    """All settings on one model: classification, generation + metrics, timing, FLOPs."""
    out = Path(args.out)
    rows = []
    for method, options in tqdm(settings, desc=f"benchmark {name}", unit="setting", file=sys.stdout):
        tag = setting_tag(method, options)
        print(f"\n=== {name}: {setting_label(method, options)}", flush=True)
        cls = classify_setting(model_path, method, options, out / "classify" / name / tag, args)
        gen_dir = out / "generate" / name / tag
        gen = generate_setting(model_path, method, options, gen_dir, args) if args.images_per_class else {}
        rows.append({"model": name, "method": method, "options": dict(options),
                     "setting": setting_label(method, options), "tag": tag,
                     "accuracy": cls.get("accuracy"), "images": cls.get("images"),
                     "calls_per_image": cls.get("calls_per_image"),
                     "domain_fid": gen.get("domain_frechet_distance"),
                     "class_consistency": gen.get("class_consistency"),
                     "generated": gen.get("n_images")})
    model = load_model(model_path=str(model_path), dtype="fp32", device=args.device)
    seconds = time_settings(model, settings, args.timing_batch, args.timing_repeats, args.seed)
    base_time = seconds[setting_tag("none", {})]
    base_flops = None
    for row, (method, options) in zip(rows, settings):
        flops = flops_per_call(model, method, options, args.timing_batch, args.seed)
        base_flops = flops if method == "none" else base_flops
        row.update({"ms_per_call": 1000 * seconds[row["tag"]], "speedup": base_time / seconds[row["tag"]],
                    "gflops_per_call": flops / 1e9, "flop_ratio": (base_flops or flops) / flops})
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bigain.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="testbed models")
    p.add_argument("--model_dir", action="append", default=[], metavar="NAME=PATH",
                   help="use another model folder for NAME (e.g. dit=/path); tests use tiny models")
    p.add_argument("--full", action="store_true", help="classify all 1,000 shipped test images; 200 samples, 20 steps")
    p.add_argument("--split", default="subset", choices=["subset", "test"],
                   help="fmnist images to classify: the shipped 1,000-image subset, or the full 10,000-image test "
                        "set (Debian package dataset-fashion-mnist or torchvision download)")
    p.add_argument("--sweep", action="store_true", help="also run the ratio sweep (0.3/0.5 merging, df 4)")
    p.add_argument("--settings", nargs="+", default=["paper"], choices=list(SETTING_GROUPS),
                   help="setting groups: paper (the six paper settings, default), compare (ratios 0.5/0.7, df 2/4 for "
                        "every method), compression (ToMe ratio 0.1-0.75, ToDo df 2/3/4), headline (baseline + the "
                        "two paired comparisons at the paper's settings), reuse (ToMe/BiGain_TM 0.7 with per-block "
                        "plans, plan_reuse=level and plan_every=5; each reuse setting paired with per-block plans), "
                        "sweep")
    p.add_argument("--compare", action="store_true", help="shorthand for --settings compare compression")
    p.add_argument("--unet_max_downsample", type=int, default=None, choices=[1, 2],
                   help="U-Net placement: reduce transformer blocks at levels <= this (default: the method's, 1)")
    p.add_argument("--methods", nargs="+", default=None, choices=list(PAPER_METHODS),
                   help="only these methods (default: all six; the baseline is always included)")
    add_max_images_arg(p, "test images classified per setting (default: 50; --full: all)", default=50, dest="n_images")
    p.add_argument("--n_samples", type=positive_int, nargs="+", default=[5, 20], help="adaptive protocol timesteps")
    p.add_argument("--allow_stages_without_new_timesteps", action="store_true",
                   help="passed to bigain.classify: accept --n_samples whose later stages add no timestep")
    p.add_argument("--to_keep", type=positive_int, nargs="+", default=[5, 1], help="adaptive protocol classes kept")
    p.add_argument("--cls_batch_size", type=positive_int, default=125, help="classifier (class, timestep) batch")
    p.add_argument("--images_per_class", type=nonneg_int, default=5,
                   help="generated images per class (0: skip generation)")
    p.add_argument("--steps", type=positive_int, default=10, help="sampling steps (default: 10)")
    p.add_argument("--guidance", type=nonneg_float, default=None, help="CFG scale (default: the model kind's)")
    p.add_argument("--gen_batch_size", type=positive_int, default=50, help="images per sampling batch")
    p.add_argument("--timing_batch", type=positive_int, default=50, help="rows of the timed denoiser call")
    p.add_argument("--timing_repeats", type=positive_int, default=7, help="timed rounds (median), after one warm-up")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--n_boot", type=nonneg_int, default=1000,
                   help="bootstrap resamples of the intervals and paired tests (0: plain table without statistics)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--metrics_device", default="cpu", help="device of the metric feature extractor")
    add_threads_arg(p, dest="threads")
    add_output_args(p, "outputs/benchmark", dest="out", run_files=False)
    add_config_arg(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    args = parse_args_with_config(build_parser(), argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        args.settings = list(dict.fromkeys(list(args.settings) + ["compare", "compression"]))
    if args.full:  # the whole shipped subset, 20 samples per class, 20 steps
        args.n_images, args.images_per_class, args.steps = None, 20, 20
    paths = dict(MODELS)
    for item in args.model_dir:
        name, _, path = item.partition("=")
        if name not in MODELS or not path:
            raise ValueError(f"--model_dir expects NAME=PATH with NAME in {list(MODELS)}, got {item!r}")
        paths[name] = Path(path)
    missing = [str(paths[m]) for m in args.models if not paths[m].exists()]
    if missing:
        raise FileNotFoundError(f"testbed model folder(s) missing: {missing} "
                                "(train them with python -m bigain.testbed.train)")
    check_output_dir(args.out, "--out")
    settings = select_settings(args.settings, args.sweep, args.methods)
    start = time.perf_counter()
    rows = [row for name in args.models
            for row in benchmark_model(name, paths[name], place_settings(name, settings, args.unet_max_downsample),
                                       args)]
    wall = time.perf_counter() - start
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    header = (f"Testbed benchmark (Fashion-MNIST, shipped models), {rows[0]['images'] if rows else 0} images "
              f"classified per setting (adaptive {args.n_samples}/{args.to_keep}), {10 * args.images_per_class} "
              f"samples per setting ({args.steps} steps); timing: median of {args.timing_repeats} interleaved calls, "
              f"batch {args.timing_batch}, device {device}, torch {torch.__version__}, {torch.get_num_threads()} "
              f"threads; wall {wall / 60:.1f} min.")
    out = Path(args.out)
    per_class = add_statistics(rows, out, args.n_boot) if args.n_boot else None
    written = write_outputs(rows, out, header, per_class)
    print(f"\n{header}\n\n{format_table(rows)}\n\n{format_differences(rows)}\n\nwrote "
          + ", ".join(str(p) for p in written))
    return rows


if __name__ == "__main__":
    run_cli(main)
