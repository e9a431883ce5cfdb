"""FLOPs per call of full-size SD3 / Flux transformers without running them at full depth.

A transformer is a stack of blocks whose FLOPs do not depend on each other (a patched block takes
and returns full-length tokens), and whose blocks of one kind are identical. So the full model's
count is: FLOPs outside the blocks + the sum, over its blocks, of one block of that kind, patched
or not. Each kind's two counts come from a *full-width* model holding one block of every kind
(SD3: a block, plus the last, context-pre-only block; SD3.5 adds a dual-attention block; Flux: one
double- and one single-stream block), counted with `eval.flops.count_flops` (PyTorch's counter,
CPU SDPA included) on random weights. `tests/test_full_flops.py` checks the sum against a direct
count on tiny models.

    python -m eval.full_flops --models sd3-medium flux-dev --resolution 1024
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional, Sequence

import torch

import tomesd
from eval.flops import count_flops
from eval.speed.cases import Setting, paper_settings
from eval.speed.model_zoo import ModelSpec, build_model, get_spec, make_inputs, model_class

Kind = tuple


def block_kinds(spec: ModelSpec) -> list[tuple[str, Kind]]:
    """(module path, kind) of every block of the full model, in forward order."""
    cfg = spec.config
    if spec.kind == "flux":
        return ([(f"transformer_blocks.{i}", ("double",)) for i in range(cfg["num_layers"])]
                + [(f"single_transformer_blocks.{i}", ("single",)) for i in range(cfg["num_single_layers"])])
    depth, dual = cfg["num_layers"], set(cfg.get("dual_attention_layers", ()))
    return [(f"transformer_blocks.{i}", ("joint", i in dual, i == depth - 1)) for i in range(depth)]


def probe_spec(spec: ModelSpec) -> tuple[ModelSpec, dict[Kind, str]]:
    """A full-width copy with one block of every kind (kinds in forward order), and kind -> its block path."""
    kinds = list(dict.fromkeys(kind for _, kind in block_kinds(spec)))
    if spec.kind == "flux":
        config = {**spec.config, "num_layers": 1, "num_single_layers": 1}
        where = {("double",): "transformer_blocks.0", ("single",): "single_transformer_blocks.0"}
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
    with torch.device("meta"):
        model = model_class(spec)(**spec.config)
    report = tomesd.apply_patch(model, method=setting.method, **setting.kwargs)
    tomesd.remove_patch(model)
    return list(report.blocks)


def full_depth_flops(spec: ModelSpec, settings: Sequence[Setting], resolution: Optional[int] = None,
                     batch: int = 1, probe: Optional[torch.nn.Module] = None) -> dict[Setting, int]:
    """FLOPs of one call of the full-size model for each setting (baseline: Setting("none"))."""
    probe_s, where = probe_spec(spec)
    model = probe if probe is not None else build_model(probe_s)
    args, kwargs = make_inputs(probe_s, batch, resolution)
    base = count_flops(model, args, kwargs)
    outside = base.total - sum(base.by_module[path] for path in where.values())
    out = {}
    for setting in settings:
        per_kind = {kind: base.by_module[path] for kind, path in where.items()}
        patched_kind = dict(per_kind)
        if setting.method != "none":
            options = {k: v for k, v in setting.kwargs.items() if k != "blocks"}
            with tomesd.patched(model, method=setting.method, blocks="all", seed=0, **options):
                counted = count_flops(model, args, kwargs)
            patched_kind = {kind: counted.by_module[path] for kind, path in where.items()}
        chosen = set(patched_blocks(spec, setting))
        out[setting] = outside + sum((patched_kind if path in chosen else per_kind)[kind]
                                     for path, kind in block_kinds(spec))
    return out


# ToMe at the upstream default 0.5, the paper's other four reducing settings, two with every block patched.
DEFAULT_SETTINGS = (Setting("none"), Setting("tome", (("ratio", 0.5),)), *paper_settings()[1:],
                    Setting("tome", (("ratio", 0.5), ("blocks", "all"))),
                    Setting("todo", (("df", 2), ("blocks", "all"))))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of FLOP counts and FLOP-ideal speed-ups."""
    lines = ["| model | px | setting | blocks | GFLOPs/call | FLOP-ideal |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['resolution']} | {r['setting']} | {r['blocks']} | {r['gflops']:.0f} | "
              f"{r['ideal_speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd3-medium", "sd3.5-medium", "flux-schnell", "flux-dev"])
    parser.add_argument("--resolution", type=int, default=None, help="image side in px (default: the model's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        spec = get_spec(name)
        res = args.resolution or spec.resolution
        flops = full_depth_flops(spec, DEFAULT_SETTINGS, res)
        base = flops[DEFAULT_SETTINGS[0]]
        for setting, value in flops.items():
            rows.append({"model": name, "resolution": res, "setting": setting.label,
                         "blocks": len(patched_blocks(spec, setting)), "gflops": value / 1e9,
                         "ideal_speedup": base / value})
        print(table([r for r in rows if r["model"] == name]), flush=True)
    return rows


if __name__ == "__main__":
    main()
