"""Per-item outcomes of finished runs and the statistics over them that every report shows.

Classification: the per-image records of a run (prediction, labels) give one correct/wrong per image;
generation: the domain classifier's features and predictions of each generated image (extracted once,
cached beside the images as safetensors). From these, for every setting of one model:

* accuracy and class consistency with Wilson intervals; domain FID with a bootstrap interval;
* the difference from the baseline, and from the paired method (BiGain_TM vs ToMe at the same ratio,
  BiGain_TD vs ToDo at the same df), on the same images / the same (seed, class) samples: paired
  bootstrap intervals plus exact McNemar p-values for rates.

Used by `bigain.benchmark` (its table) and `eval.report` (`add_intervals`). The numbers are `eval.stats`.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from bigain.storage import atomic_save_safetensors, load_record
from eval import stats
from eval.metrics import extractors as ext
from eval.metrics.compute import extract_features, metric_options, reference_features
from eval.metrics.prerequisites import read_records
from eval.metrics.references import ImageSource, list_images, resolve_reference
from eval.report.tags import reduction_label, short_model

__all__ = [
    "ClassificationOutcomes", "GenerationOutcomes", "classification_outcomes", "generation_outcomes",
    "domain_reference_stats", "partner_tag", "setting_statistics", "PAIRS",
]

# (method, the method it is compared with at the same compression): the paper's two claims
PAIRS = {"bigain_tm": "tome", "lgtm": "tome", "bigain_td": "todo", "iekvd": "todo"}
FEATURE_CACHE = "domain_features.safetensors"


@dataclass(frozen=True)
class ClassificationOutcomes:
    """One row per classified image: dataset index, label, prediction, correct."""

    frame: pd.DataFrame  # columns index, label, pred, correct; sorted by index


@dataclass(frozen=True)
class GenerationOutcomes:
    """Per generated image (row order = file order): item key, requested label, domain prediction, features."""

    keys: list[str]
    labels: np.ndarray
    pred: np.ndarray
    features: np.ndarray


def classification_outcomes(run_dir: str | Path) -> Optional[ClassificationOutcomes]:
    """The valid records of a classification run (its fingerprint, its first `expected` images); None if none."""

    run_dir = Path(run_dir)
    result = _read_json(run_dir / "result.json") or _read_json(run_dir / "config.json")
    fingerprint = result.get("fingerprint")
    rows = []
    for path in sorted((run_dir / "records").glob("*.npz")):
        rec = load_record(path, fingerprint)
        if rec is not None:
            rows.append({"index": rec.index, "label": int(rec.labels[0]), "pred": rec.pred, "correct": rec.correct})
    if not rows:
        return None
    frame = pd.DataFrame(rows).sort_values("index").reset_index(drop=True)
    expected = result.get("expected") or result.get("expected_images")
    if expected:
        frame = frame.iloc[: int(expected)]
    return ClassificationOutcomes(frame)


def _read_json(path: Path) -> dict:
    """A JSON object or {} when missing/unreadable."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _files_digest(files: list[Path]) -> str:
    """Hash of the generated files' names and bytes (a changed or added image invalidates the feature cache)."""
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def generation_outcomes(gen_dir: str | Path, extractor: str = "fmnist-reference",
                        device: str = "cpu") -> Optional[GenerationOutcomes]:
    """Domain features, predictions and requested labels of a generation run's images (cached); None if no images."""
    import torch
    from safetensors.torch import load_file


    gen_dir = Path(gen_dir)
    images = gen_dir / "images" if (gen_dir / "images").is_dir() else gen_dir
    files = [f for f in list_images(images) if f.with_suffix(".json").is_file()]
    if not files:
        return None
    key = json.dumps({"extractor": extractor, "files": _files_digest(files)})
    cache = gen_dir / FEATURE_CACHE
    if cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as fh:
            fresh = (fh.metadata() or {}).get("key") == key
        if fresh:
            t = load_file(str(cache))
            return GenerationOutcomes([f.stem for f in files], t["labels"].numpy(), t["pred"].numpy(),
                                      t["features"].double().numpy())
    from PIL import Image

    with Image.open(files[0]) as im:
        size = min(im.size)
    labels = torch.tensor([int(r.get("label", -1)) for r in read_records(files)])
    fd = extract_features(ImageSource(files, size), ext.build_domain_extractor(extractor, ["features", "logits"]), 64,
                          device, False)
    tensors = {"features": fd["features"].float().contiguous(), "pred": fd["logits"].argmax(1).contiguous(),
               "labels": labels}
    atomic_save_safetensors(tensors, cache, metadata={"key": key})
    return GenerationOutcomes([f.stem for f in files], labels.numpy(), tensors["pred"].numpy(),
                              tensors["features"].double().numpy())


def domain_reference_stats(reference: str = "fmnist-test", extractor: str = "fmnist-reference",
                           size: int = 32) -> stats.ReferenceStats:
    """Fixed reference statistics of the domain FID (features from eval.metrics' cached reference extraction)."""

    ref = resolve_reference(reference, None)
    fd = reference_features(ref, size, ext.build_domain_extractor(extractor, ["features"]),
                            ext.fidelity_name(extractor), ["features"], metric_options({}))
    return stats.reference_stats(fd["features"].double().numpy())


PLAN_OPTION = re.compile(r"_plan_(?:reuse[a-z0-9]+|every\d+)")  # a plan-reuse option inside a setting tag


def plan_partner(tag: str, tags: list[str]) -> Optional[str]:
    """The per-block-planning setting a plan-reuse setting is compared with: tome_plan_reuselevel_ratio0.7 ->
    tome_plan_reuseblock_ratio0.7 (or tome_ratio0.7), tome_plan_every5_ratio0.7 -> the same; None otherwise."""
    if not PLAN_OPTION.search(tag) or "_plan_reuseblock" in tag:
        return None
    candidates = (PLAN_OPTION.sub("_plan_reuseblock", tag, count=1), PLAN_OPTION.sub("", tag))
    return next((c for c in candidates if c in tags), None)


def partner_tag(tag: str, tags: list[str]) -> Optional[str]:
    """The setting `tag` is paired with among `tags`: a plan-reuse setting with its per-block-planning twin
    (`plan_partner`); otherwise the paired method's setting: bigain_tm_ratio0.7 -> tome_ratio0.7,
    bigain_td_alpha0.5_df2 -> todo_df2."""
    twin = plan_partner(tag, tags)
    if twin is not None:
        return twin
    method = next((m for m in sorted(PAIRS, key=len, reverse=True) if tag == m or tag.startswith(m + "_")), None)
    if method is None:
        return None
    options = [p for p in tag[len(method):].split("_") if p and not p.startswith("alpha")]
    candidate = "_".join([PAIRS[method]] + options)
    return candidate if candidate in tags else None


def _paired_rows(a: ClassificationOutcomes, b: ClassificationOutcomes) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of A and B on the images both classified."""
    both = a.frame.merge(b.frame, on="index", suffixes=("_a", "_b"))
    return both["correct_a"].to_numpy(bool), both["correct_b"].to_numpy(bool)


def _paired_samples(a: GenerationOutcomes, b: GenerationOutcomes) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into A and B of the generated items both have (same key = same seed and class)."""
    pos_b = {k: i for i, k in enumerate(b.keys)}
    common = [(i, pos_b[k]) for i, k in enumerate(a.keys) if k in pos_b]
    return np.array([i for i, _ in common], int), np.array([j for _, j in common], int)


def _compare(prefix: str, a_cls, b_cls, a_gen, b_gen, ref, n_boot: int, seed: int) -> dict:
    """Columns `<prefix>_acc*`, `<prefix>_fid*`, `<prefix>_cons*`: A minus B, paired."""
    out: dict = {}
    if a_cls is not None and b_cls is not None:
        x, y = _paired_rows(a_cls, b_cls)
        if len(x):
            out.update(stats.paired_difference(x, y, n_boot, seed=seed).to_dict(f"{prefix}_acc"))
            out[f"{prefix}_acc_n"] = len(x)
    if a_gen is not None and b_gen is not None:
        ia, ib = _paired_samples(a_gen, b_gen)
        if len(ia) > 1:
            ca, cb = a_gen.pred[ia] == a_gen.labels[ia], b_gen.pred[ib] == b_gen.labels[ib]
            out.update(stats.paired_difference(ca, cb, n_boot, seed=seed).to_dict(f"{prefix}_cons"))
            if ref is not None:
                out.update(stats.fid_difference_interval(a_gen.features[ia], b_gen.features[ib], ref,
                                                         max(200, n_boot // 2), seed=seed).to_dict(f"{prefix}_fid"))
    return out


def setting_statistics(cls: dict[str, Optional[ClassificationOutcomes]], gen: dict[str, Optional[GenerationOutcomes]],
                       ref: Optional[stats.ReferenceStats], baseline: str = "none", n_boot: int = 2000,
                       seed: int = 0) -> dict[str, dict]:
    """Statistics columns per setting tag of one model (see module doc); `delta_*` vs baseline, `pair_*` vs partner."""
    tags = list(dict.fromkeys([*cls, *gen]))
    out: dict[str, dict] = {}
    for tag in tags:
        c, g = cls.get(tag), gen.get(tag)
        row: dict = {}
        if c is not None:
            row.update(stats.wilson_interval(int(c.frame["correct"].sum()), len(c.frame)).to_dict("acc"))
            row["acc_n"] = len(c.frame)
        if g is not None:
            consistent = g.pred == g.labels
            row.update(stats.wilson_interval(int(consistent.sum()), len(consistent)).to_dict("cons"))
            if ref is not None and len(g.features) > 1:
                row.update(stats.fid_interval(g.features, ref, max(200, n_boot // 2), seed=seed).to_dict("fid"))
        if tag != baseline:
            row.update(_compare("delta", c, cls.get(baseline), g, gen.get(baseline), ref, n_boot, seed))
        partner = partner_tag(tag, tags)
        if partner is not None:
            row["pair_with"] = partner
            row.update(_compare("pair", c, cls.get(partner), g, gen.get(partner), ref, n_boot, seed))
        out[tag] = row
    return out


def per_class_accuracy(cls: dict[str, Optional[ClassificationOutcomes]]) -> pd.DataFrame:
    """Accuracy per true class (columns) for each setting (rows), over each setting's own images."""
    rows = {tag: o.frame.groupby("label")["correct"].mean() for tag, o in cls.items() if o is not None}
    return pd.DataFrame(rows).T.sort_index(axis=1)


# ----------------------------------------------------------------------------------------------
# eval.report: interval columns on the collected rows
# ----------------------------------------------------------------------------------------------

# setting_statistics key -> report column
REPORT_COLUMNS = {"acc": "accuracy", "fid": "domain_fid", "cons": "class_consistency"}


def _domain_extractor_of(run_dir: Path) -> Optional[str]:
    """The domain extractor a generation run was scored with (its metrics.json report), or None."""
    for path in (run_dir / "metrics.json", run_dir / "images" / "metrics.json"):
        report = _read_json(path).get("report")
        if isinstance(report, dict) and report.get("domain_extractor"):
            return str(report["domain_extractor"]).split(":")[0]
    return None


def _report_columns(stats_row: dict) -> dict:
    """`acc_lo` -> `accuracy_lo`, `delta_acc_p` -> `accuracy_delta_p`, `pair_fid` -> `domain_fid_pair`, ..."""
    out = {}
    for key, value in stats_row.items():
        head, _, rest = key.partition("_")
        kind = head if head in ("delta", "pair") else ""
        if kind:
            head, _, rest = rest.partition("_")
        if head not in REPORT_COLUMNS:
            continue
        name = REPORT_COLUMNS[head] + (f"_{kind}" if kind else "") + (f"_{rest}" if rest else "")
        if name != REPORT_COLUMNS[head]:  # the point value itself is already in the row
            out[name] = value
    if "pair_with" in stats_row:
        out["pair_with"] = stats_row["pair_with"]
    return out


def add_intervals(df: pd.DataFrame, baseline: str = "none", reference: str = "fmnist-test",
                  n_boot: int = 1000) -> pd.DataFrame:
    """Interval, baseline-difference and paired-method columns for every run whose folder holds per-item outcomes.

    Classification runs need their per-image records; generation runs need their images and a domain extractor
    in their metrics.json (domain FID against `reference`). Other rows are left as they are.
    """
    if "run_dir" not in df.columns:
        return df
    df = df.copy()
    ref_cache: dict[str, stats.ReferenceStats] = {}
    for (task, _, _), part in df.groupby(["task", "model", "dataset"], sort=False):
        if task not in ("classify", "generate"):
            continue
        dirs = {str(r.reduction): Path(str(r.run_dir)) for r in part.itertuples()
                if isinstance(r.run_dir, str) and Path(r.run_dir).is_dir()}
        if task == "classify":
            cls = {tag: classification_outcomes(d) for tag, d in dirs.items()}
            columns = setting_statistics(cls, {}, None, baseline, n_boot)
        else:
            extractor = next((e for e in map(_domain_extractor_of, dirs.values()) if e), None)
            if extractor is None:
                continue
            gen = {tag: generation_outcomes(d, extractor) for tag, d in dirs.items()}
            if extractor not in ref_cache:
                ref_cache[extractor] = domain_reference_stats(reference, extractor)
            columns = setting_statistics({}, gen, ref_cache[extractor], baseline, n_boot)
        for idx, tag in zip(part.index, part["reduction"].astype(str)):
            for name, value in _report_columns(columns.get(tag, {})).items():
                if name not in df.columns:
                    df[name] = np.nan if name != "pair_with" else None
                df.at[idx, name] = value
    return df


def paired_markdown(df: pd.DataFrame) -> str:
    """Markdown table of the paired-method comparisons (rows with `pair_with`); '' when there are none."""
    if "pair_with" not in df.columns:
        return ""
    lines = []
    for r in df[df["pair_with"].notna()].to_dict("records"):
        for column, label, scale in (("accuracy", "accuracy (points)", 100.0), ("domain_fid", "domain FID", 1.0),
                                     ("class_consistency", "class consistency (points)", 100.0)):
            v, lo, hi = (r.get(f"{column}_pair{s}") for s in ("", "_lo", "_hi"))
            if any(x is None or pd.isna(x) for x in (v, lo, hi)):
                continue
            p = r.get(f"{column}_pair_p")
            p_text = "" if p is None or pd.isna(p) else f"{p:.2g}"
            lines.append(f"| {short_model(r['model'])} | {r['dataset']} | {reduction_label(r['reduction'])} − "
                         f"{reduction_label(r['pair_with'])} | {label} | {scale * v:+.2f} [{scale * lo:+.2f}, "
                         f"{scale * hi:+.2f}] | {p_text} |")
    if not lines:
        return ""
    head = ["| model | dataset | comparison | metric | paired difference [95% CI] | McNemar p |",
            "|---|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"
