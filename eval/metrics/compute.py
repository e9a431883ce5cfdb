"""Generation metrics for a folder of images: FID / KID / IS through torch-fidelity, domain FID and
class consistency through a registered domain classifier, CLIP score through torchmetrics.

Features are extracted with torch-fidelity's feature extractors and turned into metrics with
torch-fidelity's own metric functions (the ones ``torch_fidelity.calculate_metrics`` runs);
reference features are cached on disk as safetensors (never pickles) and reused. Every requested
metric's prerequisites are checked first (`eval.metrics.prerequisites`); a metric that cannot be
computed is skipped with its reason under ``"skipped"``. Command line: ``python -m eval.metrics``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch_fidelity
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_featuresdict_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import (
    KEY_METRIC_ISC_MEAN,
    KEY_METRIC_ISC_STD,
    isc_featuresdict_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_featuresdict_to_metric,
)
from torch_fidelity.utils import get_featuresdict_from_dataset

from bigain.storage import atomic_save_safetensors
from eval.metrics import extractors as ext
from eval.metrics.clip_score import compute_clip_score
from eval.metrics.inception import (
    INCEPTION_EXTRACTOR,
    FeatureExtractorInceptionV3Local,
    cache_dir,
)
from eval.metrics.prerequisites import MetricPlan, MetricsUnavailableError, plan_metrics
from eval.metrics.references import ImageSource, Reference, check_images, list_images

__all__ = [
    "frechet_distance", "KEY_FID", "KEY_KID_MEAN", "KEY_KID_STD", "KEY_IS_MEAN", "KEY_IS_STD", "KEY_DOMAIN_FID",
    "KEY_CLASS_CONSISTENCY", "KEY_CLIP_SCORE", "KEY_REPORT", "KEY_SKIPPED", "EXIT_SKIPPED", "METRICS", "DEFAULTS",
    "check_metrics", "compute_metrics", "extract_features", "metric_options", "reference_features",
]

# ----------------------------------------------------------------------------------------------
# Keys of the returned dict
# ----------------------------------------------------------------------------------------------
KEY_FID = KEY_METRIC_FID
KEY_KID_MEAN = KEY_METRIC_KID_MEAN
KEY_KID_STD = KEY_METRIC_KID_STD
KEY_IS_MEAN = KEY_METRIC_ISC_MEAN
KEY_IS_STD = KEY_METRIC_ISC_STD
KEY_DOMAIN_FID = "domain_frechet_distance"
KEY_CLASS_CONSISTENCY = "class_consistency"
KEY_CLIP_SCORE = "clip_score"
KEY_REPORT = "report"
KEY_SKIPPED = "skipped"  # {metric: why it was not computed and how to provide what it needs}
EXIT_SKIPPED = 3  # CLI exit status when some requested metrics were skipped (0: all computed, 2: bad input)

METRICS = ("fid", "kid", "is", "domain_fid", "class_consistency", "clip")

DEFAULTS: dict[str, Any] = {
    "metrics": ("fid", "kid", "is"),
    "resize": None,  # None: the generated images' size
    "batch_size": 32,
    "device": "cuda" if torch.cuda.is_available() else "cpu",
    "inception_weights": None,
    "domain_extractor": None,
    "clip_model": None,
    "dataset_root": None,
    "max_reference": None,
    "kid_subsets": 100,
    "kid_subset_size": 1000,
    "isc_splits": 10,
    "require_is": False,
    "cache_root": None,
    "use_cache": True,
    "rng_seed": 2020,
    "verbose": False,
    "skip_unavailable": True,  # False: a metric whose prerequisites are missing is an error (nothing computed)
}


# ----------------------------------------------------------------------------------------------
# Feature extraction with an on-disk cache for reference features
# ----------------------------------------------------------------------------------------------
def extract_features(source: Dataset, extractor: torch.nn.Module, batch_size: int, device: str,
                     verbose: bool) -> dict:
    """torch-fidelity feature extraction over a dataset of uint8 images: {feature name: (n, d) tensor}.
    Shared by the metrics and the report's per-image outcomes, so both see the same features."""
    cuda = device.startswith("cuda")
    extractor = extractor.to(device)
    return get_featuresdict_from_dataset(source, extractor, batch_size, cuda, save_cpu_ram=not cuda, verbose=verbose)


def reference_features(
    ref: Reference, size: int, extractor: torch.nn.Module, extractor_id: str, features: list[str], opts: dict
) -> dict[str, torch.Tensor]:
    """Reference features, read from the cache when present, else extracted and cached (keyed by reference,
    image count, size, extractor and torch-fidelity version); `opts` as :func:`metric_options` returns them."""
    items = ref.source_items
    if opts["max_reference"] and opts["max_reference"] < len(items):  # evenly spread (folders are class-sorted)
        step = len(items) / opts["max_reference"]
        items = [items[int(i * step)] for i in range(opts["max_reference"])]
    key = json.dumps({"ref": ref.identity, "n": len(items), "size": size, "extractor": extractor_id,
                      "features": sorted(features), "torch_fidelity": torch_fidelity.__version__}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    path = Path(opts["cache_root"] or cache_dir() / "fid_stats") / f"ref-{digest}.safetensors"
    if opts["use_cache"] and path.is_file():
        return load_file(str(path))
    fd = extract_features(ImageSource(items, size, ref.load), extractor, opts["batch_size"], opts["device"],
                          opts["verbose"])
    fd = {k: fd[k].float().contiguous() for k in features}
    if opts["use_cache"]:
        atomic_save_safetensors(fd, path, metadata={"key": key})
    return fd


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    Large sets go through torch-fidelity (``fid_featuresdict_to_statistics`` + ``fid_statistics_to_metric``,
    an eigen-decomposition of a d x d matrix). When both sets have at most d samples the same value is
    computed exactly from the n1 x n2 cross matrix: with centred features A, B,
    ``tr sqrt(S1 S2) = ||A B^T||_* / sqrt((n1 - 1)(n2 - 1))`` (nonzero eigenvalues of ``A^T A B^T B`` are
    the squared singular values of ``A B^T``), which is much cheaper for small test sets.
    """
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    if max(n1, n2) > d:
        stats = [fid_featuresdict_to_statistics({"f": f.float()}, "f") for f in (f1, f2)]
        return float(fid_statistics_to_metric(stats[0], stats[1], False)[KEY_FID])
    a, b = f1.double(), f2.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    A, B = a - mu_a, b - mu_b
    trace = (A * A).sum() / (n1 - 1) + (B * B).sum() / (n2 - 1)
    tr_covmean = torch.linalg.svdvals(A @ B.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    return float(((mu_a - mu_b) ** 2).sum() + trace - 2 * tr_covmean)


def _fd_metrics(gen: dict, ref: dict, layer: str, want_kid: bool, opts: dict) -> dict[str, float]:
    """FID (and KID through torch-fidelity) between two feature dicts."""
    out = {KEY_FID: frechet_distance(gen[layer], ref[layer])}
    if want_kid:
        subset = min(opts["kid_subset_size"], len(gen[layer]), len(ref[layer]))
        out.update(kid_featuresdict_to_metric(gen, ref, layer, kid_subsets=opts["kid_subsets"],
                                              kid_subset_size=subset, rng_seed=opts["rng_seed"], verbose=False))
    return out


# ----------------------------------------------------------------------------------------------
# Generated-image records (written by bigain.generate: one JSON beside each PNG)
# ----------------------------------------------------------------------------------------------
def _labels(records: list[dict]) -> torch.Tensor:
    """Requested class of each generated image (record key ``label``)."""
    labels = [r.get("label") for r in records]
    if any(label is None for label in labels):
        raise ValueError("class consistency needs a 'label' in every metadata record")
    return torch.tensor([int(label) for label in labels])


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def metric_options(overrides: dict[str, Any]) -> dict[str, Any]:
    """The metric options: DEFAULTS updated with ``overrides`` (None values keep the default); unknown keys or
    metrics are ValueErrors."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    bad = sorted(set(opts["metrics"]) - set(METRICS))
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {list(METRICS)}")
    return opts


def compute_metrics(generated_dir: str | Path, reference: str | Path | None, **options: Any) -> dict[str, Any]:
    """Score a folder of generated images against a reference; a flat dict keyed by the KEY_* constants.

    ``reference`` is a folder of real images or a registered name (``fmnist-test``, ``imagenet``, ...);
    it may be None when only CLIP score is asked for. The ``report`` entry states library, feature
    extractors, weights, reference set, image counts and resizing.
    """
    opts = metric_options(options)
    gen_files = list_images(generated_dir)
    if not gen_files:
        raise FileNotFoundError(f"no generated images under {generated_dir}")
    check_images(gen_files)
    with Image.open(gen_files[0]) as im:
        size = int(opts["resize"] or min(im.size))
    plan = check_metrics(reference, gen_files=gen_files, **opts)
    metrics, ref, records = plan.to_compute, plan.reference, plan.records
    gen_source = ImageSource(gen_files, size)

    out: dict[str, Any] = {}
    report: dict[str, Any] = {
        "library": f"torch-fidelity {torch_fidelity.__version__} (feature extractors, FID statistics, KID, IS)",
        "generated": str(Path(generated_dir).resolve()),
        "n_generated": len(gen_files),
        "reference": ref.description if ref else None,
        "requested": plan.requested,
        "resize": f"short side -> {size} (bicubic, antialias) + center crop {size}x{size}, both sets, "
                  "skipped when already that size; then each extractor's own resize",
        "metrics": metrics,
    }

    # --- Inception: FID, KID, IS --------------------------------------------------------------
    want_is = "is" in metrics
    if "is" in plan.skipped:
        report["inception_score"] = "skipped: " + plan.skipped["is"]
    if any(m in metrics for m in ("fid", "kid", "is")):
        weights = plan.inception
        want_fd = "fid" in metrics or "kid" in metrics
        gen_feats = ["2048"] + (["logits_unbiased"] if want_is else [])
        extractor = FeatureExtractorInceptionV3Local(INCEPTION_EXTRACTOR, gen_feats, str(weights.path))
        report["feature_extractor"] = ("torch-fidelity FeatureExtractorInceptionV3 (inception-v3-compat, 2048-d pool, "
                                       "TF1 bilinear resize to 299)")
        report["inception_weights"] = weights.source
        gen_fd = (extract_features(gen_source, extractor, opts["batch_size"], opts["device"], opts["verbose"])
                  if (want_is or want_fd) else {})
        if want_is:
            splits = min(opts["isc_splits"], max(1, len(gen_files) // 2))  # >= 2 images per split
            report["isc_splits"] = splits
            out.update(isc_featuresdict_to_metric(gen_fd, "logits_unbiased", isc_splits=splits, samples_shuffle=True,
                                                  rng_seed=opts["rng_seed"], verbose=False))
        if want_fd:
            ref_extractor = FeatureExtractorInceptionV3Local(INCEPTION_EXTRACTOR, ["2048"], str(weights.path))
            ref_fd = reference_features(ref, size, ref_extractor, f"{INCEPTION_EXTRACTOR}:{weights.source}",
                                         ["2048"], opts)
            report["n_reference"] = int(len(ref_fd["2048"]))
            res = _fd_metrics(gen_fd, ref_fd, "2048", "kid" in metrics, opts)
            out.update({k: v for k, v in res.items() if k != KEY_FID or "fid" in metrics})
            if "kid" in metrics:
                report["kid_subset_size"] = min(opts["kid_subset_size"], len(gen_files), report["n_reference"])
        del extractor

    # --- Domain classifier: domain FID, class consistency ------------------------------------
    if any(m in metrics for m in ("domain_fid", "class_consistency")):
        spec = ext.get_domain_extractor(opts["domain_extractor"])
        feats = ["features"] + (["logits"] if "class_consistency" in metrics else [])
        dom = ext.build_domain_extractor(spec.name, feats)
        report["domain_extractor"] = f"{spec.name}: {spec.description} (input {spec.in_channels}x{spec.image_size}^2)"
        gen_fd = extract_features(gen_source, dom, opts["batch_size"], opts["device"], opts["verbose"])
        if "class_consistency" in metrics:
            labels = _labels(records)
            pred = gen_fd["logits"].argmax(dim=1)
            out[KEY_CLASS_CONSISTENCY] = float((pred == labels).float().mean())
        if "domain_fid" in metrics:
            ref_fd = reference_features(ref, size, ext.build_domain_extractor(spec.name, ["features"]),
                                         ext.fidelity_name(spec.name), ["features"], opts)
            report["n_reference_domain"] = int(len(ref_fd["features"]))
            out[KEY_DOMAIN_FID] = _fd_metrics(gen_fd, ref_fd, "features", False, opts)[KEY_FID]

    # --- CLIP score ------------------------------------------------------------------------------
    if "clip" in metrics:
        prompts = [r["prompt"] for r in records]
        try:
            score, desc = compute_clip_score(gen_files, prompts, opts["clip_model"], opts["batch_size"],
                                             opts["device"])
        except RuntimeError as err:  # the model passed the check but does not load: still keep the other metrics
            if not opts["skip_unavailable"]:
                raise
            plan.skip(["clip"], str(err))
            print(f"eval.metrics: skipped clip: {err}", file=sys.stderr)
        else:
            out[KEY_CLIP_SCORE] = score
            report["clip_model"] = desc
            import torchmetrics

            report["library"] += f"; torchmetrics {torchmetrics.__version__} (CLIP score)"

    out[KEY_SKIPPED] = dict(plan.skipped)
    out[KEY_REPORT] = report
    return out


def check_metrics(reference: str | Path | None, gen_files: Sequence[Path] | None = None, **options: Any) -> MetricPlan:
    """Check every requested metric's prerequisites before computing anything; print what will be skipped.

    Raises :class:`MetricsUnavailableError` listing every missing prerequisite when
    ``skip_unavailable`` is False; `gen_files` None checks before generation (records unchecked).
    """
    opts = metric_options(options)
    plan = plan_metrics(opts["metrics"], reference, opts, gen_files)
    if plan.skipped:
        if not opts["skip_unavailable"]:
            raise MetricsUnavailableError(f"metrics unavailable:\n{plan.summary()}")
        print(f"eval.metrics: {plan.summary()}", file=sys.stderr)
    return plan
