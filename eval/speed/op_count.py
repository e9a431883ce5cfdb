"""ATen ops the reducers dispatch: a CPU-measurable stand-in for GPU kernel launches.

Every op a reducer's `plan`, `reduce`/`restore` or K/V source dispatches is counted by a
`TorchDispatchMode`; view ops (reshape, expand, slicing: no kernel, no launch) are counted
separately. On a GPU each non-view op is roughly one kernel launch, so fewer ops means less launch
overhead; the count itself needs no GPU.

    python -m eval.speed.op_count --model tiny-sd --methods tome bigain_tm
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tomesd
from eval.speed.cases import parse_model
from eval.speed.model_zoo import build_model, make_inputs

OP_PHASES = ("plan", "reduce", "restore", "kv")


class CountingMode(TorchDispatchMode):
    """Counts dispatched ATen ops (and, among them, views) while `active`."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.views = 0
        self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active:
            self.ops += 1
            self.views += int(getattr(func, "is_view", False))
        return func(*args, **(kwargs or {}))


class OpSpans:
    """A reducer-phase tracer for `tomesd.trace_reducers` (as `eval.speed.timing` uses): phase -> (ops, views).

    Only the top-level phases (plan, reduce, restore, kv) count; nested scoring/matching spans are
    part of `plan` already.
    """

    def __init__(self, mode: CountingMode) -> None:
        self.block: str = ""
        self.mode = mode
        self.counts: dict[str, list[int]] = {}

    @contextlib.contextmanager
    def span(self, phase: str, block: Optional[str] = None) -> Iterator[None]:
        if phase not in OP_PHASES or self.mode.active:
            yield
            return
        ops, views = self.mode.ops, self.mode.views
        self.mode.active = True
        try:
            with self.mode:  # only inside reducer spans: the rest of the forward runs at full speed
                yield
        finally:
            self.mode.active = False
            entry = self.counts.setdefault(phase, [0, 0])
            entry[0] += self.mode.ops - ops
            entry[1] += self.mode.views - views


def count_reducer_ops(model: torch.nn.Module, method: str, options: dict, args: tuple, kwargs: dict,
                      seed: int = 0) -> dict[str, float]:
    """Per patched block and call: ATen ops of the reducer (`ops`), of which non-view (`kernels`)."""
    mode = CountingMode()
    spans = OpSpans(mode)
    report = tomesd.apply_patch(model, method=method, seed=seed, **options)
    try:
        with torch.no_grad(), tomesd.trace_reducers(model, spans.span):
            model(*args, **kwargs)
    finally:
        tomesd.remove_patch(model)
    blocks = max(1, len(report.blocks))
    ops = sum(v[0] for v in spans.counts.values())
    views = sum(v[1] for v in spans.counts.values())
    return {"ops": ops / blocks, "kernels": (ops - views) / blocks, "blocks": blocks}


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m eval.speed.op_count", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd2@w0.25")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["tome", "bigain_tm", "todo", "bigain_td", "sito"])
    p.add_argument("--plan_reuse", choices=["block", "level"], default="block")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    spec = parse_model(args.model)
    model = build_model(spec, dtype=torch.float32, device=torch.device("cpu"), seed=0)
    margs, mkwargs = make_inputs(spec, args.batch, args.resolution, dtype=torch.float32, device=torch.device("cpu"),
                                 seed=0)
    rows = []
    print("| method | plan_reuse | ATen ops per block | of which non-view (kernel-launch proxy) |\n|---|---|---|---|")
    for method in args.methods:
        options = {} if args.plan_reuse == "block" else {"plan_reuse": args.plan_reuse}
        counts = count_reducer_ops(model, method, options, margs, mkwargs)
        rows.append({"method": method, "plan_reuse": args.plan_reuse, **counts})
        print(f"| {method} | {args.plan_reuse} | {counts['ops']:.1f} | {counts['kernels']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
