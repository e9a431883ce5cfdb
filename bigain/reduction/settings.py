"""The paper's method settings and the names of a setting (display label, folder tag), in one place.

A setting is `(method, options)`: a registered `tomesd` method name and the options given to
`tomesd.apply_patch`. Every Python caller (benchmark, demo, speed presets, tests) takes the paper's
six settings from `PAPER_SETTINGS`; `configs/methods/*.yaml` and the drivers' example blocks are
checked against it by tests/test_paper_settings.py.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterable, Mapping

import tomesd

MethodSetting = tuple[str, dict[str, Any]]

# The six settings of the paper's tables, in table order.
PAPER_SETTINGS: list[MethodSetting] = [
    ("none", {}),
    ("tome", {"ratio": 0.7}),
    ("bigain_tm", {"ratio": 0.7}),
    ("todo", {"df": 2}),
    ("bigain_td", {"alpha": 0.5, "df": 2}),
    ("sito", {"ratio": 0.7}),
]
PAPER_METHODS: tuple[str, ...] = tuple(method for method, _ in PAPER_SETTINGS)

# Further groups of the testbed benchmark (`bigain.benchmark --settings`).
SWEEP_SETTINGS: list[MethodSetting] = (
    [(m, {"ratio": r}) for m in ("tome", "bigain_tm", "sito") for r in (0.3, 0.5)]
    + [("todo", {"df": 4}), ("bigain_td", {"alpha": 0.5, "df": 4})]
)
# the paired comparison at two strengths per method (headline pairs: BiGain_TM vs ToMe, BiGain_TD vs ToDo)
COMPARE_SETTINGS: list[MethodSetting] = (
    [("none", {})]
    + [(m, {"ratio": r}) for r in (0.5, 0.7) for m in ("tome", "bigain_tm")]
    + [(m, {"alpha": 0.5, "df": d} if m == "bigain_td" else {"df": d}) for d in (2, 4) for m in ("todo", "bigain_td")]
    + [("sito", {"ratio": r}) for r in (0.5, 0.7)]
)
# how classification and generation degrade as compression grows (merging ratio, K/V downsampling)
COMPRESSION_SETTINGS: list[MethodSetting] = (
    [("none", {})] + [("tome", {"ratio": r}) for r in (0.1, 0.3, 0.5, 0.7, 0.75)]
    + [("todo", {"df": d}) for d in (2, 3, 4)]
)
# plan reuse next to per-block planning (spelled out as plan_reuse="block", so each reuse setting has a partner)
REUSE_SETTINGS: list[MethodSetting] = (
    [(m, {"ratio": 0.7, "plan_reuse": p}) for m in ("tome", "bigain_tm") for p in ("block", "level")]
    + [(m, {"ratio": 0.7, "plan_every": 5}) for m in ("tome", "bigain_tm")]
)
SETTING_GROUPS: dict[str, list[MethodSetting]] = {
    "paper": PAPER_SETTINGS, "sweep": SWEEP_SETTINGS, "compare": COMPARE_SETTINGS, "compression": COMPRESSION_SETTINGS,
    "headline": PAPER_SETTINGS[:5], "reuse": REUSE_SETTINGS,
}

# option -> its name in a label
LABEL_SHORT = {"ratio": "r", "df": "df", "alpha": "a", "max_downsample": "md", "plan_reuse": "plans",
               "plan_every": "every"}


def option_text(name: str, value: Any) -> str:
    """One option as a label shows it: `r=0.7`, `md=2`, `merge_mlp=True`."""
    return f"{LABEL_SHORT.get(name, name)}={value}"


def format_label(display_name: str, options: Iterable[tuple[str, Any]]) -> str:
    """The one label format: display name, then each option as `option_text`: `BiGain_TM r=0.7 md=2`."""
    return " ".join([display_name, *(option_text(k, v) for k, v in options)])


def setting_label(method: str, options: Mapping[str, Any]) -> str:
    """Display label, options in the given order: `BiGain_TM r=0.7`, `ToDo df=2 md=2`, `Baseline`."""
    return format_label(tomesd.method_label(method), options.items())


def speed_label(method: str, options: Mapping[str, Any]) -> str:
    """Row label of `eval.speed` tables: `format_label` with the method's name, not its display label, and
    `max_downsample=1` implied: `tome r=0.7`, `bigain_td df=2 a=0.5 md=2`, `baseline (SDPA)`."""
    if method == "none":
        return "baseline (SDPA)"
    return format_label(method, [(k, v) for k, v in options.items() if not (k == "max_downsample" and v == 1)])


def setting_tag(method: str, options: Mapping[str, Any]) -> str:
    """Folder name of a setting: canonical method, then `<option><value>` sorted by option name, `_`-joined;
    list values `-`-joined; filesystem-safe (`bigain_td_alpha0.5_df2`, `none`)."""
    method = tomesd.canonical_name(method)
    parts = [method] + [f"{k}{'-'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                        for k, v in sorted(options.items())]
    return "_".join(parts).replace("/", "-").replace(" ", "")


def declared_order(method: str, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """`options` as (name, value) pairs in the method's declared option order (`df` before `alpha`)."""
    order = [f.name for f in fields(tomesd.get_reducer(method).Options)]
    return tuple(sorted(options.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
