"""Engine demo: patch small diffusers models built from configs and show what each method does.

Runs offline in seconds: for an SD-style U-Net, an SDXL-style U-Net, a DiT and a PixArt
transformer (random weights, built from configs), print the patch report of every method and
how far its output moves from the unpatched baseline.
"""
from __future__ import annotations

import argparse

import torch

import tomesd
from bigain.cli import nonneg_int, run_cli
from bigain.reduction import PAPER_SETTINGS
from bigain.zoo import demo_models

DEMO_METHODS = {method: options for method, options in PAPER_SETTINGS if method != "none"}  # the paper's settings


def relative_change(out: torch.Tensor, base: torch.Tensor) -> float:
    """||out - base|| / ||base||."""
    return float((out - base).norm() / base.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bigain.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=nonneg_int, default=0)
    args = parser.parse_args(argv)
    print("Random-weight models built from configs (a code-path demo, not a quality measurement).\n")
    for name, (model, inputs, placement) in demo_models(args.seed).items():
        model.eval()
        with torch.no_grad():
            base = model(**inputs).sample
            print(f"== {name}")
            for method, options in DEMO_METHODS.items():
                with tomesd.patched(model, method=method, seed=args.seed, **options, **placement) as report:
                    out = model(**inputs).sample
                print(f"{report}\n  relative output change vs baseline: {relative_change(out, base):.4f}")
            assert torch.equal(model(**inputs).sample, base), "remove_patch must restore the model exactly"
        print()


if __name__ == "__main__":
    run_cli(main)
