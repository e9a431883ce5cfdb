"""The reducer flags every CLI shares, and how they turn into one `tomesd.apply_patch` call.

All flags default to None so an unset flag keeps the method's own default; a flag the chosen
method does not take is an error (never silently ignored, unlike the published scripts).
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional

import tomesd
from bigain.cli import finite_float, nonneg_int, positive_int
from bigain.reduction.settings import setting_tag
from tomesd.options import build_options

# apply_patch keywords that are not reducer options (checked by the engine against the model's family)
PATCH_KEYWORDS = ("st",)
# flag -> (type, help). `None`-typed entries are booleans given as true/false.
REDUCTION_FLAGS: dict[str, tuple[Any, str]] = {
    "ratio": (finite_float, "fraction of tokens merged (tome, bigain_tm) or pruned (sito), in [0, 1)"),
    "df": (positive_int, "K/V downsample factor (todo, bigain_td), >= 1"),
    "df_level2": (positive_int, "K/V downsample factor at U-Net level 2 (default: df)"),
    "alpha": (finite_float, "bigain_td blend: 1 = nearest (ToDo), 0 = avg pool, >1 extrapolates"),
    "alpha_schedule": (None, "bigain_td: alpha follows the timestep (alpha_start at t=999 -> alpha_end at t=0)"),
    "alpha_start": (finite_float, "bigain_td schedule: alpha at t=999"),
    "alpha_end": (finite_float, "bigain_td schedule: alpha at t=0"),
    "mode": (str, "todo downsampling: nearest-exact, nearest, avg_pool, max_pool, area, bilinear, bicubic"),
    "stop_threshold": (finite_float, "todo/bigain_td: compress only samples with t/1000 > this"),
    "max_downsample": (positive_int, "U-Nets: reduce blocks at downsample level <= this (1: finest level only)"),
    "blocks": (str, "DiT/PixArt: 'all' or comma-separated block indices (default: the method's pattern)"),
    "sx": (positive_int, "block stride along width"),
    "sy": (positive_int, "block stride along height"),
    "use_rand": (None, "tome: random destination inside each block"),
    "laplacian_norm": (str, "bigain_tm: channel aggregation of the Laplacian, l1 or l2"),
    "strip_layout": (None, "bigain_tm: reproduce the published code's 1 x sx*sy strip view"),
    "noise_alpha": (finite_float, "sito: weight of the seeded score noise"),
    "sim_beta": (finite_float, "sito: weight of the similarity-graph degree"),
    "merge_attn": (None, "token methods: reduce self-attention"),
    "merge_crossattn": (None, "token methods: also reduce cross-attention"),
    "merge_mlp": (None, "token methods: also reduce the feed-forward"),
    "plan_reuse": (str, "block (plan every patched block), level (one plan per U-Net level / token grid per call) "
                        "or group<k> (one plan per k consecutive patched blocks of a level, e.g. group2)"),
    "st": (positive_int, "video families (Wan): frames per spatio-temporal block (tome, sito; image families: error)"),
    "plan_every": (int, "token methods: plan on every k-th denoiser call, reuse the last plans in between"),
}


def parse_bool(text: str) -> bool:
    """'true'/'false' (also 1/0, yes/no) -> bool."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_blocks(text: Any) -> Any:
    """'all' or '1,2,3' -> 'all' or [1, 2, 3]; lists pass through."""
    if text is None or isinstance(text, (list, tuple)):
        return text
    if text.strip().lower() == "all":
        return "all"
    try:
        blocks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"blocks={text!r}: expected 'all' or comma-separated integers") from err
    if not blocks:
        raise ValueError(f"blocks={text!r} names no block: expected 'all' or comma-separated integers")
    return blocks


def add_reduction_args(parser: argparse.ArgumentParser) -> None:
    """Add --method and every reducer option (all optional) to `parser`."""
    group = parser.add_argument_group("token reduction (tomesd.apply_patch)")
    group.add_argument("--method", default="none", type=str.lower,
                       choices=tomesd.list_methods(include_aliases=True), help="token reducer (default: none)")
    group.add_argument("--reduction_seed", type=nonneg_int, default=None,
                       help="seed of the reducer's own generator (default: the run's --seed)")
    for name, (kind, text) in REDUCTION_FLAGS.items():
        group.add_argument(f"--{name}", type=parse_bool if kind is None else kind, default=None, help=text)


def reduction_kwargs(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """The options to pass to `apply_patch`: set values only; ValueError for ones `method` lacks."""
    allowed = set(tomesd.method_options(method)) | set(PATCH_KEYWORDS)
    chosen = {k: v for k, v in values.items() if k in REDUCTION_FLAGS and v is not None}
    if "blocks" in chosen:
        chosen["blocks"] = parse_blocks(chosen["blocks"])
    foreign = sorted(set(chosen) - set(allowed))
    if foreign:
        raise ValueError(f"option(s) {foreign} do not apply to method {method!r}; it takes {sorted(allowed)}")
    return chosen


def validate_reduction(method: str, reduction: Mapping[str, Any]) -> dict[str, Any]:
    """Check a run's reducer options before any model work (unknown/foreign options, bad values); returns them."""
    method = tomesd.canonical_name(method)
    options = reduction_kwargs(method, dict(reduction))
    build_options(tomesd.get_reducer(method).Options, method,
                  {k: v for k, v in options.items() if k not in PATCH_KEYWORDS})
    return options


def apply_reduction(model: Any, method: str, reduction: Mapping[str, Any], seed: Optional[int] = None,
                    latent_size: Optional[int] = None) -> Optional[tomesd.PatchReport]:
    """Patch `model` (denoiser or pipeline) with `method` and its options, seeding the reducer with `seed`;
    None for the baseline. `latent_size` is the run's latent side, so the report counts tokens at the size that runs.
    """
    method = tomesd.canonical_name(method)
    options = reduction_kwargs(method, dict(reduction))
    if method == "none":
        tomesd.remove_patch(model)
        return None
    return tomesd.apply_patch(model, method=method, seed=seed, latent_size=latent_size, **options)


def run_reduction_tag(method: str, reduction: Mapping[str, Any], reduction_seed: Optional[int] = None) -> str:
    """Folder name of a run's reducer settings (method, explicit options, reducer seed)."""
    method = tomesd.canonical_name(method)
    tag = setting_tag(method, reduction_kwargs(method, dict(reduction)))
    if method != "none" and reduction_seed is not None:
        tag += f"_rseed{reduction_seed}"
    return tag

