"""Names in the report: tasks, methods and reduction tags, model names, column aliases and table metrics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import tomesd
from bigain.reduction import REDUCTION_FLAGS, format_label, option_text

TASKS = ("classify", "generate", "speed")
BASELINE_TAGS = ("none", "baseline")
KEY = ("task", "model", "dataset", "reduction")

# Method tag (name or alias) -> display name, from the registry's labels; upstream tomesd's ToMe besides.
METHOD_NAMES: dict[str, str] = {
    **{m: tomesd.method_label(m) for m in tomesd.list_methods(include_aliases=True)}, "upstream": "upstream ToMe",
}
# Row order of every table.
METHOD_ORDER = ("none", "baseline", "tome", "upstream", "bigain_tm", "lgtm", "todo", "bigain_td", "iekvd", "sito")
# Option names a reduction tag may carry: the commands' reducer flags, plus the reducer seed.
OPTION_KEYS = (*REDUCTION_FLAGS, "rseed")
MODEL_NAMES = {
    "stable-diffusion-2-base": "SD 2.0", "stable-diffusion-2-1-base": "SD 2.1", "stable-diffusion-v1-5": "SD 1.5",
    "stable-diffusion-v1-4": "SD 1.4", "DiT-XL-2-512": "DiT-XL/2-512", "DiT-XL-2-256": "DiT-XL/2-256",
}
# Keys written by eval.metrics (torch-fidelity names) -> report column names.
COLUMN_ALIASES = {
    "frechet_inception_distance": "fid", "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std", "inception_score_mean": "inception_score",
    "inception_score_std": "inception_score_std", "domain_frechet_distance": "domain_fid",
    "flops_g": "gflops",
}
GENERATION_METRICS = ("fid", "kid_mean", "inception_score", "clip_score", "domain_fid", "class_consistency")


class ReportError(ValueError):
    """Bad input to the report (no rows, unknown metric, missing path)."""


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """How one table cell is read (`column`), scaled, printed and compared with the baseline."""

    name: str
    column: str
    label: str
    scale: float = 1.0
    digits: Optional[int] = None  # None: three significant digits
    delta: str = "abs"  # abs: value - baseline; rel: percent change; none: no delta
    suffix: str = ""
    higher_is_better: bool = True


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "accuracy", "Top-1 accuracy (%)", scale=100.0, digits=1),
    Metric("fid", "fid", "FID", digits=2, higher_is_better=False),
    Metric("kid_mean", "kid_mean", "KID (x1e3)", scale=1e3, digits=2, higher_is_better=False),
    Metric("inception_score", "inception_score", "Inception Score", digits=2),
    Metric("clip_score", "clip_score", "CLIP score", digits=2),
    Metric("domain_fid", "domain_fid", "Domain FID", digits=2, higher_is_better=False),
    Metric("class_consistency", "class_consistency", "Class consistency (%)", scale=100.0, digits=1),
    Metric("speedup", "speedup", "Speed-up (x)", digits=2, delta="none", suffix="x"),
    Metric("ideal_speedup", "ideal_speedup", "FLOP-ideal speed-up (x)", digits=2, delta="none", suffix="x"),
    Metric("bound_speedup", "bound_speedup", "Removed-layers bound (x)", digits=2, delta="none", suffix="x"),
    Metric("flops", "gflops", "GFLOPs per call", delta="rel", higher_is_better=False),
    Metric("time_per_image", "time_per_image_s", "Model time per image (s)", delta="rel", higher_is_better=False),
    Metric("calls_per_image", "calls_per_image", "Denoiser calls per image", digits=1, delta="rel"),
    Metric("images_per_s", "images_per_s", "Images per second", delta="rel"),
)}
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "classify": ("accuracy", "speedup", "flops"),
    "generate": (*GENERATION_METRICS, "speedup", "flops"),
    "speed": ("speedup", "ideal_speedup", "bound_speedup", "flops"),
}


def get_metric(name: str) -> Metric:
    """A named metric, or a plain one for any other numeric column."""
    if name in METRICS:
        return METRICS[name]
    column = COLUMN_ALIASES.get(name, name)
    return Metric(name, column, column)


# ----------------------------------------------------------------------------------------------
# Reduction tags
# ----------------------------------------------------------------------------------------------

def parse_reduction(tag: Any) -> tuple[str, list[tuple[str, str]]]:
    """`bigain_td_alpha0.5_df2` -> ('bigain_td', [('alpha', '0.5'), ('df', '2')]); unknown tags -> (tag, [])."""
    text = str(tag).strip()
    low = text.lower()
    method = next((m for m in sorted(METHOD_NAMES, key=len, reverse=True) if low == m or low.startswith(m + "_")),
                  None)
    if method is None:
        return text, []
    tokens = [t for t in text[len(method) + 1:].split("_")] if len(text) > len(method) else []
    options: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        for k in range(1, len(tokens) - i + 1):
            part = "_".join(tokens[i:i + k])
            names = [n for n in OPTION_KEYS if part.startswith(n) and len(part) > len(n)]
            if names:
                name = max(names, key=len)
                options.append((name, part[len(name):]))
                i += k
                break
        else:  # not an option we know: keep the rest verbatim
            options.append(("", "_".join(tokens[i:])))
            break
    return method, options


def reduction_label(tag: Any) -> str:
    """Display name of a reduction tag, in the commands' label format (`bigain.reduction.format_label`):
    `bigain_tm_ratio0.7` -> `BiGain_TM r=0.7`, `none` -> `Baseline`; unknown option text is kept verbatim."""
    method, options = parse_reduction(tag)
    verbatim = [v for k, v in options if not k]  # at most one, last
    return " ".join([format_label(METHOD_NAMES.get(method, method), [(k, v) for k, v in options if k]), *verbatim])


def tag_options_text(tag: Any) -> str:
    """The options of a tag as a short point label (`r=0.7 md=2`), or the method's display name."""
    method, options = parse_reduction(tag)
    parts = [option_text(k, v) if k else v for k, v in options]
    return " ".join(parts) if parts else METHOD_NAMES.get(method, method)


def _sort_value(value: str) -> tuple[int, float, str]:
    """Numbers sort numerically, before text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def reduction_sort_key(tag: Any) -> tuple:
    """Baseline first, then the paper's method order, then option values."""
    method, options = parse_reduction(tag)
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, method, tuple((k, _sort_value(v)) for k, v in options))


def is_baseline(tag: Any, baseline: str = "none") -> bool:
    """True for the baseline's reduction tag (`none`/`baseline`, or the one asked for)."""
    text = str(tag).strip().lower()
    return text == baseline.lower() or (baseline.lower() in BASELINE_TAGS and text in BASELINE_TAGS)


def short_model(name: Any) -> str:
    """Display name of a model id or path (`stabilityai/stable-diffusion-2-base` -> `SD 2.0`)."""
    text = str(name).rstrip("/")
    last = text.replace("--", "/").split("/")[-1] or text
    return MODEL_NAMES.get(last, last)
