"""Generation under token compression (docs/protocol.md §2): SD and rectified-flow text-to-image (SD3, FLUX.1,
FLUX.2, Qwen-Image), Wan 2.x text-to-video, DiT class-conditional.

    python -m bigain.generate --version 2-0 --dataset imagenet --method bigain_tm --ratio 0.7
    python -m bigain.generate --version dit-512 --dataset imagenet100 --method todo --df 2
    python -m bigain.generate --model_path bigain/assets/testbed/dit-fmnist --classes 0 1 2 --images_per_class 8
    python -m bigain.generate --version qwen-image --prompts_file p.txt --height 768 --width 1344
    python -m bigain.generate --version wan2.1-t2v-1.3b --prompts_file p.txt --num_frames 33 --method tome --st 3
    accelerate launch -m bigain.generate ...                                       # multi-GPU

One image (or video) per evaluation item: the class prompt of its label (classification datasets), the
first caption (coco2017), a line of ``--prompts_file``, or ``--classes`` x ``--images_per_class``.
Defaults: SD (U-Net) 50 Euler steps, guidance 7.5; DiT 50 DDIM steps (eta 0), guidance 4.0 with
the null class; SD3 flow Euler, CFG 7.0; FLUX.1 / FLUX.2 flow Euler on linear sigmas, distilled guidance
inside the model; Qwen-Image the same sampler, true CFG 4.0 (the pipeline's norm-rescaled form); Wan flow
Euler at its scheduler's shift, CFG 5.0 against the empty negative prompt, 81 frames at 480 x 832. Batch ``b``
starts from noise drawn with seed ``seed + b`` and reseeds the reducer with ``reduction_seed + b`` (default
``seed + b``), so an item depends only on the settings and its position, never on sharding or resumption.
Size: the model's native one, or ``--height`` / ``--width`` on the rectified-flow families (a multiple of the
model's pixels per token) and ``--num_frames`` (4k + 1) on Wan; options a family does not take are errors
naming the option and the family, before loading. Outputs, as they are made: an image's PNG and JSON record
go to ``<run_dir>/images/<index>.png|json``; a video's frames and GIF to ``<run_dir>/images/<index>/``
(``frame0000.png`` ..., ``video.gif``; the folder appears whole) and then its record ``<index>.json``. A rerun
skips finished items and redoes interrupted or damaged ones; one row per invocation goes to the summary
CSV. In Python: ``run_generation(GenerateRun(...))`` (bigain.runs).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from bigain.cli import (
    add_config_arg,
    add_data_args,
    add_max_images_arg,
    add_model_args,
    add_output_args,
    add_shard_args,
    batch_size,
    finite_float,
    nonneg_int,
    parse_args_with_config,
    positive_float,
    positive_int,
    run_cli,
)
from bigain.diffusion import SAMPLERS
from bigain.reduction import add_reduction_args
from bigain.runs import GenerateRun, run_generation
from bigain.runs.sampling import DEFAULT_STEPS, DEFAULTS_BY_KIND

__all__ = ["build_parser", "validate_args", "main", "DEFAULT_STEPS", "DEFAULTS_BY_KIND"]


def build_parser() -> argparse.ArgumentParser:
    """Every flag of ``python -m bigain.generate``."""
    p = argparse.ArgumentParser(prog="python -m bigain.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to generate (one of)")
    g.add_argument("--dataset", default=None,
                   help="one image per evaluation item: class prompt / class of its label, first COCO caption")
    g.add_argument("--prompts_file", default=None, help=".txt (one prompt per line) or .csv with a prompt column")
    g.add_argument("--classes", type=nonneg_int, nargs="+", default=None, help="class ids (class-conditional models)")
    g.add_argument("--images_per_class", type=positive_int, default=1, help="with --classes (default: 1)")
    g = p.add_argument_group("data")
    add_data_args(g)
    add_max_images_arg(g, "only this many items, spread evenly")
    g.add_argument("--real_dir", default=None, help="real-image folder the run will be scored against (checked)")
    add_model_args(p)

    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", default=None, choices=sorted(SAMPLERS),
                   help="default: euler (SD), ddim (DiT), flow (SD3, Wan), flow-linear (Flux, FLUX.2, Qwen-Image)")
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps (default: {DEFAULT_STEPS})")
    g.add_argument("--guidance", type=finite_float, default=None,
                   help="classifier-free guidance (SD 7.5, DiT 4.0, SD3 7.0, Qwen-Image 4.0, Wan 5.0; Flux: 1)")
    g.add_argument("--negative_prompt", default=None,
                   help="text the guidance steers away from (text models with CFG: SD, SD3, Qwen-Image, Wan; "
                        "default: the empty prompt, the pipelines' default)")
    g.add_argument("--batch_size", type=batch_size, default=4,
                   help="images per batch (seeds follow batches), or auto: the largest that fits (default: 4)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="batch b uses seed + b")
    g = p.add_argument_group("output size (default: the model's native size)")
    g.add_argument("--height", type=positive_int, default=None,
                   help="image / frame height in pixels (SD3, Flux, FLUX.2, Qwen-Image, Wan; a multiple of the "
                        "model's pixels per token, e.g. 16)")
    g.add_argument("--width", type=positive_int, default=None, help="image / frame width in pixels (as --height)")
    g.add_argument("--num_frames", type=positive_int, default=None,
                   help="video models (Wan): frames per video, 4k + 1 (default: the pipeline's, 81)")
    g.add_argument("--fps", type=positive_float, default=16.0, help="video models: GIF frame rate (default: 16)")
    add_reduction_args(p)

    g = p.add_argument_group("outputs, resumption, sharding")
    add_output_args(g, "results/generation")
    add_shard_args(g, "the batches")
    g.add_argument("--no_flops", action="store_true", help="skip the FLOPs measurement")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g.add_argument("--dry_run", "--dry-run", action="store_true", help="validate, print the plan, exit")
    add_config_arg(p)
    return p


def validate_args(args: argparse.Namespace) -> None:
    """Check every input that needs no model; raises ValueError / FileNotFoundError."""
    GenerateRun.from_args(args).validate()


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Generate a run's images (this shard's share, skipping finished ones); returns the summary row."""
    args = parse_args_with_config(build_parser(), argv)
    return run_generation(GenerateRun.from_args(args))


if __name__ == "__main__":
    run_cli(main)
