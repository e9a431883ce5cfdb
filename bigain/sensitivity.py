"""Why a testbed model's classification accuracy moves, or does not, under a token reducer.

    python -m bigain.sensitivity                # both shipped models, the paper settings (+ U-Net max_downsample=2)

Two measurements per setting, both against the unpatched model:

* FLOPs: the share of one denoiser call spent in the blocks the reducer patches, in their self-attention
  (what merging / K/V downsampling acts on), and the share the reducer actually removes
  (`torch.utils.flop_counter`, SDPA counted);
* the classifier's metric: the diffusion classifier ranks classes by the noise-prediction error
  E[c] = ||eps - eps_theta(x_t, t, c)||^2 (averaged over timesteps). A reducer changes E for every class;
  only the class-dependent part of that change can flip the ranking. Reported per image: the relative change
  of E, and `shift/gap` = std over classes of (E_reduced - E_base) / std over classes of E_base (how large
  the class-dependent perturbation is next to the class signal the classifier reads), plus how often the
  argmin class differs from the unpatched model's.

Noise is seeded per image and shared by all classes and settings, as in `bigain.classify`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import tomesd
from bigain.cli import add_max_images_arg, add_output_args
from bigain.models import load_model
from bigain.reduction import PAPER_SETTINGS, setting_label
from bigain.storage import atomic_write_text
from bigain.testbed import shipped_model_dirs
from bigain.testbed.data import load_test_subset
from eval.flops import count_flops

MODELS = shipped_model_dirs("fmnist")  # the Fashion-MNIST testbed's DiT and U-Net
TIMESTEPS = (100, 300, 500, 700, 900)


def flop_shares(model: Any, method: str, options: dict, x: torch.Tensor, t: torch.Tensor, cond: dict) -> dict:
    """Baseline FLOP shares of the patched blocks and of their self-attention, and the share the reducer removes."""

    class Call(torch.nn.Module):
        def forward(self, x, t, cond):
            return model.predict_eps(x, t, cond)

    base = count_flops(Call(), (x, t, cond))
    if method == "none":
        return {"blocks_share": 0.0, "self_attn_share": 0.0, "removed_share": 0.0}
    report = tomesd.apply_patch(model.denoiser, method=method, seed=0, **options)
    try:
        reduced = count_flops(Call(), (x, t, cond)).total
    finally:
        tomesd.remove_patch(model.denoiser)
    blocks = [b.removeprefix("denoiser.") for b in report.blocks]
    in_blocks = base.sum_where(lambda n: n in blocks)
    attn1 = base.sum_where(lambda n: n in {f"{b}.attn1" for b in blocks})
    return {"blocks_share": in_blocks / base.total, "self_attn_share": attn1 / base.total,
            "removed_share": 1 - reduced / base.total, "patched_blocks": len(blocks)}


def class_errors(model: Any, images: torch.Tensor, timesteps: Sequence[int], seed: int) -> np.ndarray:
    """E[image, class] = mean over `timesteps` of the squared noise-prediction error (per-image seeded noise)."""
    n_cls = model.num_classes or 10
    cond_all = model.condition(class_ids=list(range(n_cls)))
    alphas = model.alphas_cumprod
    out = np.zeros((len(images), n_cls))
    rows_t = torch.tensor(timesteps).repeat_interleave(n_cls)
    rows_c = torch.arange(n_cls).repeat(len(timesteps))
    a = alphas[rows_t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        for i, x0 in enumerate(images):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            eps = torch.randn((len(timesteps), *x0.shape), generator=g).repeat_interleave(n_cls, 0)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            pred = model.predict_eps(x_t, rows_t, model.select(cond_all, rows_c)).float().cpu()
            err = ((pred - eps) ** 2).flatten(1).mean(1).view(len(timesteps), n_cls)
            out[i] = err.mean(0).numpy()
    return out


def perturbation(base: np.ndarray, reduced: np.ndarray, labels: np.ndarray) -> dict:
    """How the reducer changes the class errors: relative size, class-dependent part vs class gap, flipped argmins."""
    delta = reduced - base
    return {"rel_error_change": float(np.median(np.abs(delta).mean(1) / base.mean(1))),
            "shift_over_gap": float(np.median(delta.std(1) / base.std(1))),
            "argmin_changed": float((reduced.argmin(1) != base.argmin(1)).mean()),
            "acc_base": float((base.argmin(1) == labels).mean()), "acc": float((reduced.argmin(1) == labels).mean())}


def analyse(name: str, path: Path, settings: Sequence[tuple[str, dict]], n_images: int, seed: int) -> list[dict]:
    """Rows of FLOP shares and error perturbation for each setting of one testbed model."""
    model = load_model(model_path=str(path), dtype="fp32", device="cpu")
    imgs, labels = load_test_subset()
    images, labels = torch.from_numpy(imgs[:n_images]), labels[:n_images]
    n_cls = model.num_classes or 10
    t = torch.tensor(TIMESTEPS).repeat_interleave(n_cls)
    x = torch.randn(len(t), *images.shape[1:], generator=torch.Generator().manual_seed(seed))
    cond = model.select(model.condition(class_ids=list(range(n_cls))), torch.arange(len(t)) % n_cls)
    base = class_errors(model, images, TIMESTEPS, seed)
    rows = []
    for method, options in tqdm(settings, desc=f"sensitivity {name}", file=sys.stdout):
        row = {"model": name, "setting": setting_label(method, options),
               **flop_shares(model, method, options, x, t, cond)}
        if method != "none":
            tomesd.apply_patch(model.denoiser, method=method, seed=seed, **options)
            try:
                row.update(perturbation(base, class_errors(model, images, TIMESTEPS, seed), labels))
            finally:
                tomesd.remove_patch(model.denoiser)
        rows.append(row)
    return rows


def default_settings(model: str) -> list[tuple[str, dict]]:
    """The paper settings, plus ToMe/ToDo at max_downsample=2 on the U-Net (both transformer levels)."""
    extra = [("tome", {"ratio": 0.7, "max_downsample": 2}),
             ("todo", {"df": 2, "max_downsample": 2})] if model == "unet" else []
    return list(PAPER_SETTINGS[:5]) + extra


def format_rows(rows: list[dict]) -> str:
    """Markdown table of the analysis."""
    lines = ["| model | setting | FLOPs in patched blocks | in their self-attention | removed | rel. change of E | "
             "class-dependent shift / class gap | argmin changed | acc base -> reduced |",
             "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "" if v is None or v != v else f"{100 * v:.0f}%"  # noqa: E731
    for r in rows:
        acc = f"{100 * r['acc_base']:.0f} -> {100 * r['acc']:.0f}" if "acc" in r else ""
        ratio = f"{r['shift_over_gap']:.2f}" if "shift_over_gap" in r else ""
        lines.append(f"| {r['model']} | {r['setting']} | {pct(r['blocks_share'])} | {pct(r['self_attn_share'])} | "
                     f"{pct(r['removed_share'])} | {pct(r.get('rel_error_change'))} | {ratio} | "
                     f"{pct(r.get('argmin_changed'))} | {acc} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m bigain.sensitivity", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_max_images_arg(p, "test images (default 30)", default=30, dest="n_images")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p, "outputs/sensitivity", dest="out", run_files=False)
    args = p.parse_args(argv)
    if args.n_images < 2:
        print("error: --n_images must be >= 2", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    rows = [r for m in args.models for r in analyse(m, Path(MODELS[m]), default_settings(m), args.n_images, args.seed)]
    out = Path(args.out)
    text = (f"Sensitivity of the diffusion classifier's metric, {args.n_images} test images, timesteps {TIMESTEPS}\n\n"
            + format_rows(rows) + "\n")
    atomic_write_text(out / "sensitivity.md", text)
    atomic_write_text(out / "sensitivity.csv", pd.DataFrame(rows).to_csv(index=False))
    print(text)
    return rows


if __name__ == "__main__":
    main()
