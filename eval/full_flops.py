"""FLOPs per call of full-size SD3 / Flux / FLUX.2 / Qwen-Image / Wan transformers without running them at full depth.

A transformer is a stack of blocks whose FLOPs do not depend on each other (a patched block takes
and returns full-length tokens), and whose blocks of one kind are identical. So the full model's
count is: FLOPs outside the blocks + the sum, over its blocks, of one block of that kind, patched
or not. Each kind's two counts come from a *full-width* model holding one block of every kind
(SD3: a block, plus the last, context-pre-only block; SD3.5 adds a dual-attention block; Flux: one
double- and one single-stream block; FLUX.2 the same; Qwen-Image and Wan one block), counted with
`eval.flops.count_flops` (PyTorch's counter, SDPA included) on the meta device: shapes only, no weights, no
arithmetic, so a 32B model at 1024 px counts in seconds. `tests/eval/test_full_flops.py` checks the sum against a
direct CPU count on tiny models, and meta counts against CPU counts.

    python -m eval.full_flops --models sd3-medium flux-dev --resolution 1024
    python -m eval.full_flops --models flux2-dev qwen-image wan2.1-t2v-1.3b --settings paper-vs-all
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Any, Iterator, Optional, Sequence
from unittest import mock

import torch

import tomesd
import tomesd.mmdit
from eval.flops import count_flops
from eval.speed.cases import Setting, paper_settings
from eval.speed.model_zoo import ModelSpec, build_model, get_spec, list_models, make_inputs, model_class

Kind = tuple


# Models whose blocks are stacks of identical blocks: (model attribute, config key of its depth, kind) per stack,
# in forward order. SD3 (a dual-attention prefix and a context-pre-only last block) is handled on its own.
STACKS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "flux": (("transformer_blocks", "num_layers", "double"), ("single_transformer_blocks", "num_single_layers",
                                                              "single")),
    "flux2": (("transformer_blocks", "num_layers", "double"), ("single_transformer_blocks", "num_single_layers",
                                                               "single")),
    "qwen_image": (("transformer_blocks", "num_layers", "double"),),
    "wan": (("blocks", "num_layers", "block"),),
}


def block_kinds(spec: ModelSpec) -> list[tuple[str, Kind]]:
    """(module path, kind) of every block of the full model, in forward order."""
    cfg = spec.config
    if spec.kind in STACKS:
        return [(f"{stack}.{i}", (kind,)) for stack, depth, kind in STACKS[spec.kind] for i in range(cfg[depth])]
    depth, dual = cfg["num_layers"], set(cfg.get("dual_attention_layers", ()))
    return [(f"transformer_blocks.{i}", ("joint", i in dual, i == depth - 1)) for i in range(depth)]


def probe_spec(spec: ModelSpec) -> tuple[ModelSpec, dict[Kind, str]]:
    """A full-width copy with one block of every kind (kinds in forward order), and kind -> its block path."""
    kinds = list(dict.fromkeys(kind for _, kind in block_kinds(spec)))
    if spec.kind in STACKS:
        config = {**spec.config, **{depth: 1 for _, depth, _ in STACKS[spec.kind]}}
        where = {(kind,): f"{stack}.0" for stack, _, kind in STACKS[spec.kind]}
    else:
        config = {**spec.config, "num_layers": len(kinds),
                  "dual_attention_layers": tuple(i for i, k in enumerate(kinds) if k[1])}
        where = {k: f"transformer_blocks.{i}" for i, k in enumerate(kinds)}
        if [k for k in kinds if k[1]] != kinds[:sum(k[1] for k in kinds)] or not kinds[-1][2]:
            raise ValueError(f"{spec.name}: dual-attention blocks must come first and the last block last")
    return dataclasses.replace(spec, name=spec.name + "-probe", config=config), where


def patched_blocks(spec: ModelSpec, setting: Setting) -> list[str]:
    """The blocks `setting` patches in the full model (built on the meta device: no memory, no weights)."""
    if setting.method == "none":
        return []
    model = meta_model(spec)
    report = tomesd.apply_patch(model, method=setting.method, **setting.kwargs)
    tomesd.remove_patch(model)
    return list(report.blocks)


@contextlib.contextmanager
def known_image_grid(spec: ModelSpec, resolution: Optional[int], device: str) -> Iterator[None]:
    """On the meta device the engine cannot read FLUX.1 / FLUX.2 token grids from the `img_ids` values: it gets the
    grid the inputs were built on instead (the ids are that grid; tests check meta counts equal CPU counts)."""
    if device != "meta" or spec.kind not in ("flux", "flux2"):
        yield
        return
    height, width = spec.size(resolution)
    grid = (height // 16, width // 16)  # FLUX.1: VAE 8 + 2x2 packing; FLUX.2: VAE 8 + 2x2 patchify
    with mock.patch.object(tomesd.mmdit, "flux_image_grid", lambda img_ids, num_tokens: grid):
        yield


def full_depth_flops(spec: ModelSpec, settings: Sequence[Setting], resolution: Optional[int] = None,
                     batch: int = 1, probe: Optional[torch.nn.Module] = None, device: str = "meta"
                     ) -> dict[Setting, int]:
    """FLOPs of one call of the full-size model for each setting (baseline: Setting("none")), counted on the meta
    device by default (shapes only: no memory, no arithmetic) or on `device`."""
    probe_s, where = probe_spec(spec)
    if probe is None:
        probe = build_model(probe_s) if device != "meta" else meta_model(probe_s)
    model = probe
    args, kwargs = make_inputs(probe_s, batch, resolution, device=device)
    base = count_flops(model, args, kwargs)
    outside = base.total - sum(base.by_module[path] for path in where.values())
    out = {}
    for setting in settings:
        per_kind = {kind: base.by_module[path] for kind, path in where.items()}
        patched_kind = dict(per_kind)
        if setting.method != "none":
            options = {k: v for k, v in setting.kwargs.items() if k != "blocks"}
            with (tomesd.patched(model, method=setting.method, blocks="all", seed=0, **options),
                  known_image_grid(spec, resolution, device)):
                counted = count_flops(model, args, kwargs)
            patched_kind = {kind: counted.by_module[path] for kind, path in where.items()}
        chosen = set(patched_blocks(spec, setting))
        out[setting] = outside + sum((patched_kind if path in chosen else per_kind)[kind]
                                     for path, kind in block_kinds(spec))
    return out


def meta_model(spec: ModelSpec) -> torch.nn.Module:
    """The architecture on the meta device (no weights, no memory), in eval mode."""
    with torch.device("meta"):
        return model_class(spec)(**spec.config).eval().requires_grad_(False)


# ToMe at the upstream default 0.5, the paper's other four reducing settings, two with every block patched.
DEFAULT_SETTINGS = (Setting("none"), Setting("tome", (("ratio", 0.5),)), *paper_settings()[1:],
                    Setting("tome", (("ratio", 0.5), ("blocks", "all"))),
                    Setting("todo", (("df", 2), ("blocks", "all"))))
# The paper's five settings at each family's default blocks, then the same five with every block patched.
PAPER_VS_ALL = (Setting("none"), *paper_settings(), *paper_settings(("blocks", "all")))
SETTING_GROUPS = {"default": DEFAULT_SETTINGS, "paper-vs-all": PAPER_VS_ALL}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of FLOP counts and FLOP-ideal speed-ups."""
    lines = ["| model | px | setting | blocks | GFLOPs/call | FLOP-ideal |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['resolution']} | {r['setting']} | {r['blocks']} | {r['gflops']:.0f} | "
              f"{r['ideal_speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd3-medium", "sd3.5-medium", "flux-schnell", "flux-dev"],
                        choices=list_models(), metavar="MODEL", help="model_zoo names (default: %(default)s)")
    parser.add_argument("--settings", choices=list(SETTING_GROUPS), default="default",
                        help="default: ToMe 0.5, the paper's other four, ToMe / ToDo on all blocks; paper-vs-all: "
                             "the paper's five at the default blocks, then on every block")
    parser.add_argument("--resolution", type=int, default=None, help="image side in px (default: the model's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        spec = get_spec(name)
        res = args.resolution or spec.resolution
        height, width = spec.size(res)
        size = f"{height}x{width}" + (f"x{spec.frames}f" if spec.frames else "") if width != height else str(res)
        flops = full_depth_flops(spec, SETTING_GROUPS[args.settings], res)
        base = flops[Setting("none")]
        for setting, value in flops.items():
            rows.append({"model": name, "resolution": size, "setting": setting.label,
                         "blocks": len(patched_blocks(spec, setting)), "gflops": value / 1e9,
                         "ideal_speedup": base / value})
        print(table([r for r in rows if r["model"] == name]), flush=True)
    return rows


if __name__ == "__main__":
    main()
