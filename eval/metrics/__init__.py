"""Metrics tool: FID / KID / IS (torch-fidelity), domain FID and class consistency, CLIP score for a folder of images.

Command line: `python -m eval.metrics` (see `eval/metrics/__main__.py`). Modules: `compute` (compute_metrics),
`prerequisites` (what each metric needs, checked first), `references` (real image sets), `inception` (offline
Inception weights), `extractors` (domain classifiers as torch-fidelity extractors), `clip_score`.
"""
from eval.metrics.clip_score import compute_clip_score, load_clip
from eval.metrics.compute import (
    DEFAULTS,
    EXIT_SKIPPED,
    KEY_CLASS_CONSISTENCY,
    KEY_CLIP_SCORE,
    KEY_DOMAIN_FID,
    KEY_FID,
    KEY_IS_MEAN,
    KEY_IS_STD,
    KEY_KID_MEAN,
    KEY_KID_STD,
    KEY_REPORT,
    KEY_SKIPPED,
    METRICS,
    check_metrics,
    compute_metrics,
    frechet_distance,
)
from eval.metrics.extractors import (
    build_domain_extractor,
    get_domain_extractor,
    list_domain_extractors,
    register_domain_extractor,
)
from eval.metrics.inception import InceptionWeights, build_inception, resolve_inception_weights
from eval.metrics.prerequisites import MetricPlan, MetricsUnavailableError, plan_metrics, read_records
from eval.metrics.references import (
    IMAGE_EXTS,
    REFERENCES,
    ImageSource,
    Reference,
    list_images,
    register_reference,
    resolve_reference,
)

__all__ = [
    "compute_metrics", "check_metrics", "frechet_distance", "DEFAULTS", "METRICS", "EXIT_SKIPPED", "KEY_FID",
    "KEY_KID_MEAN", "KEY_KID_STD", "KEY_IS_MEAN", "KEY_IS_STD", "KEY_DOMAIN_FID", "KEY_CLASS_CONSISTENCY",
    "KEY_CLIP_SCORE", "KEY_REPORT", "KEY_SKIPPED", "MetricPlan", "MetricsUnavailableError", "plan_metrics",
    "read_records", "IMAGE_EXTS", "REFERENCES", "Reference", "ImageSource", "list_images", "register_reference",
    "resolve_reference", "InceptionWeights", "build_inception", "resolve_inception_weights",
    "register_domain_extractor", "get_domain_extractor", "list_domain_extractors", "build_domain_extractor",
    "compute_clip_score", "load_clip",
]
