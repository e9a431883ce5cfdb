"""The main job: joint generation + classification benchmark of every method on the embedded testbed.

    python -m bigain.benchmark                 # default: offline, shipped models, <= ~15 min on 2 CPU cores
    python -m bigain.benchmark --full          # the whole 1,000-image shipped test subset
    python -m bigain.benchmark --sweep         # add the ratio sweep (0.3/0.5/0.7 merging, df 2/4)
    python -m bigain.benchmark --compare       # every method at two strengths + the compression sweep
    python -m bigain.benchmark --models dit --settings headline compression --n_images 100   # any groups
    python -m bigain.benchmark --testbed textures  # the same on the natural-texture testbed (docs/testbed/textures.md)

For each shipped model (a DiT and an SD-style U-Net trained on Fashion-MNIST, or with `--testbed textures`
on natural textures) and each method at
the paper's settings it runs the adaptive diffusion classifier (`bigain.classify`) on the test
subset, generates a fixed class-balanced sample set (`bigain.generate`), scores it with a domain
FID and class consistency (`eval.metrics`, the shipped reference CNN), and times the denoiser on
the classifier's mixed-timestep batch, interleaving methods in one process: median per-round speed-up
with its 95% interval, the removed-layers bound and a noise check (`eval.speed.reliability`,
docs/speed_method.md; meta.json records the machine's load and any row the check marks).
Prints one table with 95% intervals and a table of paired differences (vs baseline, BiGain vs its
counterpart; `eval.report.benchmark_outputs`), writes CSV/markdown, trade-off plots with error bars, a
sample grid and a per-class accuracy heatmap per model. Every stage resumes: finished images and
samples are reused on a rerun.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

import tomesd
from bigain.cli import (
    AUTO,
    add_config_arg,
    add_max_images_arg,
    add_output_args,
    add_threads_arg,
    batch_size,
    check_output_dir,
    fraction,
    nonneg_float,
    nonneg_int,
    parse_args_with_config,
    positive_int,
    run_cli,
)
from bigain.models import check_device, load_model
from bigain.reduction import PAPER_METHODS, SETTING_GROUPS, setting_label, setting_tag
from bigain.runs import ClassifyRun, GenerateRun, run_classification, run_generation
from bigain.storage import atomic_write_json, atomic_write_text
from bigain.testbed import shipped_model_dirs
from bigain.testbed.sources import TESTBED_DATA, testbed_data
from eval.flops import count_flops
from eval.metrics import compute_metrics, list_images
from eval.report.benchmark_outputs import add_statistics, format_differences, format_table, write_outputs
from eval.speed.allocator import ALLOCATORS, set_allocator
from eval.speed.reliability import (
    MAX_DRIFT,
    STOP_REASONS,
    load_note,
    machine_load,
    machine_snapshot,
    run_rounds,
    speedup_columns,
)
from eval.speed.timing import reduced_time_shares, timed_call

MODELS = {kind: Path(path) for kind, path in shipped_model_dirs("fmnist").items()}  # the default testbed's


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
        dataset=args.testbed, split=args.split, model_path=str(model_path), dtype="fp32", device=args.device,
        batch_size=args.cls_batch_size, n_samples=tuple(args.n_samples), to_keep=tuple(args.to_keep), seed=args.seed,
        allow_stages_without_new_timesteps=args.allow_stages_without_new_timesteps, max_images=args.n_images,
        run_dir=str(out), summary_csv=str(out.parent.parent / "summary.csv"), method=method, reduction=options))


def metric_settings(testbed: str) -> dict[str, Any]:
    """What scores a testbed's samples: its test subset as reference and its reference CNN as domain extractor."""
    source = testbed_data(testbed)
    return {"reference": source.reference, "metrics": ["domain_fid", "class_consistency"],
            "domain_extractor": source.domain_extractor}



def generation_run_dir(out: Path, args: argparse.Namespace) -> Path:
    """Folder of a setting's sample set, one per item count (a smaller rerun never scores a bigger run's leftovers)."""
    return out / f"n{10 * args.images_per_class}"


def metrics_key(generation_fingerprint: str, n_images: int, testbed: str = "fmnist") -> dict[str, Any]:
    """What cached metrics must match to be reused: the images' generation fingerprint and the metric settings."""
    return {"generation_fingerprint": generation_fingerprint, "n_images": n_images, **metric_settings(testbed)}


def image_set_digest(images: Sequence[Path]) -> str:
    """Names and sizes of a sample set's files: cached metrics are reused only for exactly these images."""
    text = "\n".join(f"{p.name}:{p.stat().st_size}" for p in images)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


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
    images = list_images(run_dir / "images") if (run_dir / "images").is_dir() else []
    if len(images) < 10 * args.images_per_class:  # another process still writes this set: score it when complete
        print(f"{run_dir}: {len(images)} of {10 * args.images_per_class} images so far; metrics left to the process "
              "that completes the set (rerun to score it)", flush=True)
        return {**row, "generation_dir": str(run_dir)}
    key = {**metrics_key(row["fingerprint"], 10 * args.images_per_class, args.testbed),
           "images": image_set_digest(images)}
    try:
        cached = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get("cache_key") != key:
        scores = compute_metrics(run_dir / "images", key["reference"], metrics=tuple(key["metrics"]),
                                 domain_extractor=key["domain_extractor"], device=args.metrics_device,
                                 skip_unavailable=False)  # never cache a result missing a metric
        cached = {"cache_key": key, "n_images": key["n_images"], **{k: v for k, v in scores.items() if k != "report"},
                  "report": scores.get("report")}
        atomic_write_text(metrics_file, json.dumps(cached, indent=2, default=str))
    return {**row, **cached, "generation_dir": str(run_dir)}


def timing_batch(model: Any, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The classifier's batch shape: noisy inputs at mixed timesteps, classes cycling."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_channels, model.sample_size, model.sample_size, generator=g).to(model.device)
    t = torch.linspace(25, 975, batch).round().long().to(model.device)
    cond = model.select(model.condition(class_ids=list(range(10))), torch.arange(batch) % 10)
    return x, t, cond


def time_settings(model: Any, settings: Sequence[tuple[str, dict]], args: argparse.Namespace) -> dict[str, dict]:
    """Per setting tag: ms per denoiser call (median), speed-up (median per-round ratio) with its 95% interval,
    the removed-layers bound and the noise check (`eval.speed.reliability`), rounds and what ended them.

    Settings are interleaved within every round (after one warm-up call each); rounds continue past
    `--timing_repeats` until the intervals are narrow (`--target_halfwidth`) or `--max_seconds` / `--max_rounds`.
    """
    allocator = set_allocator(args.allocator, torch.device(model.device).type)
    x, t, cond = timing_batch(model, args.timing_batch, args.seed)
    by_tag = {setting_tag(m, o): (m, o) for m, o in settings}
    base = setting_tag("none", {})

    def time_one(tag: str) -> float:
        method, options = by_tag[tag]
        if method != "none":
            tomesd.apply_patch(model.denoiser, method=method, seed=args.seed, **options)
        try:
            return timed_call(model.predict_eps, (x, t, cond), {}, torch.device(model.device))
        finally:
            tomesd.remove_patch(model.denoiser)

    with torch.no_grad():
        for tag in by_tag:  # warm-up
            time_one(tag)
        rounds = run_rounds(list(by_tag), time_one, base, min_rounds=args.timing_repeats,
                            target=args.target_halfwidth or None, max_seconds=args.max_seconds,
                            max_rounds=max(args.max_rounds, args.timing_repeats))
    shares = reduced_time_shares(model.denoiser, lambda: model.predict_eps(x, t, cond), list(by_tag.values()),
                                 torch.device(model.device))
    return {tag: {"ms_per_call": statistics.median(rounds.times[tag]), "timing_rounds": rounds.n,
                  "timing_stop": rounds.stop, "allocator": allocator,
                  **speedup_columns(rounds.ratios[tag], rounds.times[base], share, max_drift=args.max_drift)}
            for tag, share in zip(by_tag, shares)}


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
    args = argparse.Namespace(**vars(args))  # batch sizes `auto` are pinned per model by its first (baseline) setting
    for method, options in tqdm(settings, desc=f"benchmark {name}", unit="setting", file=sys.stdout):
        tag = setting_tag(method, options)
        print(f"\n=== {name}: {setting_label(method, options)}", flush=True)
        cls = classify_setting(model_path, method, options, out / "classify" / name / tag, args)
        gen_dir = out / "generate" / name / tag
        gen = generate_setting(model_path, method, options, gen_dir, args) if args.images_per_class else {}
        if args.cls_batch_size == AUTO:  # every setting then runs with the size the baseline found
            args.cls_batch_size = int(cls["batch_size"])
        if gen and args.gen_batch_size == AUTO:  # same batches, so same seeds, for every setting
            args.gen_batch_size = int(gen["batch_size"])
        rows.append({"model": name, "method": method, "options": dict(options),
                     "setting": setting_label(method, options), "tag": tag,
                     "accuracy": cls.get("accuracy"), "images": cls.get("images"),
                     "calls_per_image": cls.get("calls_per_image"),
                     "domain_fid": gen.get("domain_frechet_distance"),
                     "class_consistency": gen.get("class_consistency"),
                     "generated": gen.get("n_images"), "generation_dir": gen.get("generation_dir")})
    model = load_model(model_path=str(model_path), dtype="fp32", device=args.device)
    timing = time_settings(model, settings, args)
    base_flops = None
    for row, (method, options) in zip(rows, settings):
        flops = flops_per_call(model, method, options, args.timing_batch, args.seed)
        base_flops = flops if method == "none" else base_flops
        row.update({**timing[row["tag"]], "gflops_per_call": flops / 1e9, "flop_ratio": (base_flops or flops) / flops})
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bigain.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--testbed", default="fmnist", choices=list(TESTBED_DATA),
                   help="testbed: fmnist (Fashion-MNIST, default) or textures (natural textures, "
                        "docs/testbed/textures.md); picks the shipped models, the test images, the reference CNN "
                        "and the default --out")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="testbed models")
    p.add_argument("--model_dir", action="append", default=[], metavar="NAME=PATH",
                   help="use another model folder for NAME (e.g. dit=/path); tests use tiny models")
    p.add_argument("--full", action="store_true", help="classify all 1,000 shipped test images; 200 samples, 20 steps")
    p.add_argument("--split", default="subset", choices=["subset", "test"],
                   help="images to classify: the shipped 1,000-image subset, or the full test set (fmnist: 10,000 "
                        "images from the Debian package dataset-fashion-mnist or a torchvision download; textures: "
                        "5,000 crops)")
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
    p.add_argument("--cls_batch_size", type=batch_size, default=125,
                   help="classifier (class, timestep) batch, or auto: the largest that fits for the baseline, then "
                        "used by every setting")
    p.add_argument("--images_per_class", type=nonneg_int, default=5,
                   help="generated images per class (0: skip generation)")
    p.add_argument("--steps", type=positive_int, default=10, help="sampling steps (default: 10)")
    p.add_argument("--guidance", type=nonneg_float, default=None, help="CFG scale (default: the model kind's)")
    p.add_argument("--gen_batch_size", type=batch_size, default=50,
                   help="images per sampling batch, or auto (found for the baseline, then used by every setting)")
    p.add_argument("--timing_batch", type=positive_int, default=50, help="rows of the timed denoiser call")
    p.add_argument("--timing_repeats", type=positive_int, default=7,
                   help="timed rounds at least (median per-round ratio), after one warm-up call per setting")
    p.add_argument("--target_halfwidth", type=nonneg_float, default=0.03,
                   help="more timed rounds until every speed-up's 95%% interval has this relative half-width "
                        "(0: exactly --timing_repeats rounds)")
    p.add_argument("--max_seconds", type=nonneg_float, default=30.0, help="time cap on one model's timed rounds")
    p.add_argument("--max_rounds", type=positive_int, default=60, help="round cap per model")
    p.add_argument("--max_drift", type=fraction, default=MAX_DRIFT,
                   help="baseline drift (last- vs first-third median round time) that marks a model's rows unreliable")
    p.add_argument("--allocator", choices=ALLOCATORS, default="steady",
                   help="CPU timing: steady keeps freed memory in the process (glibc mallopt), so interleaved "
                        "calls do not page-fault their activations in again (docs/speed_method.md); default: glibc's")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--n_boot", type=nonneg_int, default=1000,
                   help="bootstrap resamples of the intervals and paired tests (0: plain table without statistics)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--metrics_device", default="cpu", help="device of the metric feature extractor")
    add_threads_arg(p, dest="threads")
    add_output_args(p, None, dest="out", run_files=False)
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
    args.out = args.out or ("outputs/benchmark" + ("" if args.testbed == "fmnist" else f"-{args.testbed}"))
    paths = {kind: Path(path) for kind, path in shipped_model_dirs(args.testbed).items()}
    for item in args.model_dir:
        name, _, path = item.partition("=")
        if name not in MODELS or not path:
            raise ValueError(f"--model_dir expects NAME=PATH with NAME in {list(MODELS)}, got {item!r}")
        paths[name] = Path(path)
    missing = [str(paths[m]) for m in args.models if not paths[m].exists()]
    if missing:
        raise FileNotFoundError(f"testbed model folder(s) missing: {missing} (train them with python -m "
                                f"bigain.testbed.train --dataset {args.testbed}, docs/testbed.md)")
    check_output_dir(args.out, "--out")
    for flag, device in (("--device", args.device), ("--metrics_device", args.metrics_device)):
        if device != "auto":  # before any model loads
            check_device(device, flag)
    settings = select_settings(args.settings, args.sweep, args.methods)
    start, before = time.perf_counter(), machine_snapshot()
    rows = [row for name in args.models
            for row in benchmark_model(name, paths[name], place_settings(name, settings, args.unet_max_downsample),
                                       args)]
    wall, load = time.perf_counter() - start, machine_load(before, machine_snapshot())
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    title = testbed_data(args.testbed).title
    header = (f"Testbed benchmark ({title}, shipped models), {rows[0]['images'] if rows else 0} images "
              f"classified per setting (adaptive {args.n_samples}/{args.to_keep}), {10 * args.images_per_class} "
              f"samples per setting ({args.steps} steps); timing: {timing_note(rows, args)}, "
              f"batch {args.timing_batch}, device {device}, torch {torch.__version__}, {torch.get_num_threads()} "
              f"threads; wall {wall / 60:.1f} min; {load_note(load)}.")
    out = Path(args.out)
    scoring = metric_settings(args.testbed)  # the testbed's own reference set and CNN, also for the intervals
    per_class = (add_statistics(rows, out, args.n_boot, extractor=scoring["domain_extractor"],
                                reference=scoring["reference"]) if args.n_boot else None)
    written = write_outputs(rows, out, header, per_class, class_names=list(testbed_data(args.testbed).class_names))
    written.append(write_meta(rows, args, out, load, wall, argv))
    print(f"\n{header}\n\n{format_table(rows)}\n\n{format_differences(rows)}\n\nwrote "
          + ", ".join(str(p) for p in written))
    marked = [r for r in rows if r.get("unreliable")]
    if marked:
        names = ", ".join(f"{r['model']} {r['setting']}" for r in marked)
        print(f"warning: {len(marked)} timing row(s) marked UNRELIABLE by the noise check (speed-up interval above the "
              f"removed-layers bound, or baseline drift): {names}; rerun on an idle machine (docs/speed_method.md)",
              file=sys.stderr)
    return rows


def timing_note(rows: Sequence[dict], args: argparse.Namespace) -> str:
    """'median of per-round ratios over 12 (dit: target) / 30 (unet: time cap) interleaved rounds, 95% intervals'."""
    per_model = {r["model"]: (r.get("timing_rounds"), r.get("timing_stop")) for r in rows}
    rounds = ", ".join(f"{m} {n} ({STOP_REASONS.get(stop, stop)})" for m, (n, stop) in per_model.items())
    return (f"median of per-round paired ratios, 95% order-statistic interval; rounds: {rounds} (at least "
            f"{args.timing_repeats}; target half-width {args.target_halfwidth:.0%}, cap {args.max_seconds:.0f} s); "
            f"allocator: {', '.join(sorted({str(r.get('allocator')) for r in rows}))}")


def write_meta(rows: Sequence[dict], args: argparse.Namespace, out: Path, load: dict, wall: float,
               argv: Optional[Sequence[str]]) -> Path:
    """meta.json: the command, the timing rules, the machine's load before/after and the rows the noise check marked."""
    marked = [{"model": r["model"], "setting": r["setting"], "why": r["unreliable"]}
              for r in rows if r.get("unreliable")]
    meta = {"command": "python -m bigain.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
            "wall_s": wall, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "timing": {"batch": args.timing_batch, "min_rounds": args.timing_repeats,
                       "target_halfwidth": args.target_halfwidth, "max_seconds_per_model": args.max_seconds,
                       "max_rounds": args.max_rounds, "rounds": {r["model"]: r.get("timing_rounds") for r in rows},
                       "stop": {r["model"]: r.get("timing_stop") for r in rows},
                       "allocator": {r["model"]: r.get("allocator") for r in rows}},
            "noise_check": {"max_drift": args.max_drift, "unreliable": marked}, "machine_load": load}
    return atomic_write_json(out / "meta.json", meta)


if __name__ == "__main__":
    run_cli(main)
