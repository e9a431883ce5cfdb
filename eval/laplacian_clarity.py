"""Where BiGain_TM's destination choice can matter: Laplacian clarity of the 2x2 token blocks of a testbed's images.

    python -m eval.laplacian_clarity --output_dir docs/testbed/textures

BiGain_TM merges each 2x2 block into its smoothest token (lowest 3x3 Laplacian); ToMe into a random one. The
choice can only matter where a block's tokens differ and its minimum is clear. This scores the images themselves
(a stand-in for the model's hidden tokens, which are not available before a model is trained on the data) on the
two testbed token grids: the DiT's (2x2 pixel patches, 16x16 tokens of 4 values) and the U-Net's top level (pixels,
32x32 tokens of 1 value), with the method's own `laplacian_scores` (zero padding, l1 over channels). Per dataset:
the share of flat blocks (four identical tokens: any destination gives the same merged token), the share of clear
blocks (gap between the lowest and second-lowest score above `--clear_gap` times the image's mean score), and how
often a seeded uniform draw (ToMe's `use_rand`) picks the same token as the argmin, or a token with the same value.
Shares carry 95% bootstrap intervals over images.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bigain.storage import atomic_write_csv, atomic_write_text
from bigain.testbed.sources import TESTBED_DATA, testbed_data
from eval.report.plots import save_figure
from eval.stats import bootstrap_interval
from tomesd.reducers.bigain_tm import laplacian_scores

GRIDS = {"dit": 2, "unet": 1}  # token grid -> pixel patch size per token
FLAT_TOLERANCE = 1e-6


def patch_tokens(images: torch.Tensor, patch: int) -> tuple[torch.Tensor, int, int]:
    """(N, 1, H, W) images -> (N, (H/p)(W/p), p*p) tokens (row-major), with the grid's height and width."""
    tokens = F.unfold(images.float(), kernel_size=patch, stride=patch)  # (N, p*p, T)
    return tokens.transpose(1, 2).contiguous(), images.shape[-2] // patch, images.shape[-1] // patch


def block_scores(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, T) token scores -> (N, blocks, 4) scores of every 2x2 block."""
    grid = scores.view(-1, 1, height, width)
    return F.unfold(grid, kernel_size=2, stride=2).transpose(1, 2)


def block_statistics(images: torch.Tensor, patch: int, clear_gap: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-image shares of flat and clear blocks, and of random picks that agree with the argmin (index / value)."""
    tokens, height, width = patch_tokens(images, patch)
    scores = laplacian_scores(tokens, height, width)
    per_block = block_scores(scores, height, width)  # (N, D, 4)
    values = F.unfold(tokens.transpose(1, 2).reshape(len(images), -1, height, width), kernel_size=2, stride=2)
    values = values.view(len(images), tokens.shape[-1], 4, -1).permute(0, 3, 2, 1)  # (N, D, 4, C)
    ordered = per_block.sort(-1).values
    mean_score = scores.mean(1, keepdim=True).clamp_min(FLAT_TOLERANCE)
    flat = (values - values[:, :, :1]).abs().amax((-1, -2)) <= FLAT_TOLERANCE  # four identical tokens
    clear = (ordered[..., 1] - ordered[..., 0]) > clear_gap * mean_score
    argmin = per_block.argmin(-1)
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, 4, argmin.shape, generator=generator)
    rows = torch.arange(values.shape[1])
    same_index = pick == argmin
    chosen = torch.stack([values[i, rows, pick[i]] for i in range(len(images))])
    best = torch.stack([values[i, rows, argmin[i]] for i in range(len(images))])
    same_value = (chosen - best).abs().amax(-1) <= FLAT_TOLERANCE
    return {name: mask.float().mean(1).numpy() for name, mask in
            (("flat", flat), ("clear", clear), ("same_index", same_index), ("same_value", same_value))}


def summarise(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean share (%) of each statistic with a 95% bootstrap interval over images."""
    row: dict[str, float] = {}
    for name, shares in per_image.items():
        interval = bootstrap_interval([shares], np.mean, n_boot=1000)
        row.update({f"{name}_pct": 100 * interval.value, f"{name}_low": 100 * interval.low,
                    f"{name}_high": 100 * interval.high})
    return row


def clarity_table(datasets: Sequence[str], clear_gap: float,
                  load: Optional[Callable[[str], tuple[np.ndarray, np.ndarray]]] = None) -> pd.DataFrame:
    """One row per (dataset, token grid) over each dataset's shipped 1,000-image test subset."""
    rows = []
    for name in tqdm(datasets, desc="datasets"):
        images, _ = (load or (lambda n: testbed_data(n).load("subset")))(name)
        for grid, patch in GRIDS.items():
            stats = block_statistics(torch.from_numpy(images), patch, clear_gap)
            rows.append({"dataset": name, "grid": grid, "images": len(images), **summarise(stats)})
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, clear_gap: float) -> str:
    """The table as markdown, each share with its interval."""
    head = ("| dataset | token grid | images | flat blocks (%) | clear minimum (%) | random pick = argmin (%) "
            "| random pick = argmin's value (%) |\n|---|---|---|---|---|---|---|\n")

    def cell(row: pd.Series, name: str) -> str:
        return f"{row[f'{name}_pct']:.1f} [{row[f'{name}_low']:.1f}, {row[f'{name}_high']:.1f}]"

    body = "".join(f"| {r.dataset} | {r.grid} | {r.images} | {cell(r, 'flat')} | {cell(r, 'clear')} | "
                   f"{cell(r, 'same_index')} | {cell(r, 'same_value')} |\n" for _, r in table.iterrows())
    note = (f"\nClear: lowest-to-second-lowest gap > {clear_gap} x the image's mean token score. Intervals: 95% "
            "bootstrap over images. Scores on image patches (`python -m "
            "eval.laplacian_clarity`), not on a model's hidden tokens. Flat: four identical tokens.\n")
    return head + body + note


def plot(table: pd.DataFrame, path: Path) -> Path:
    """Bars of flat / clear / same-value shares per dataset and grid, with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["flat", "clear", "same_value"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{r.dataset}\n{r.grid}" for _, r in table.iterrows()]
    x = np.arange(len(table))
    for k, name in enumerate(names):
        value = table[f"{name}_pct"].to_numpy()
        err = np.stack([value - table[f"{name}_low"], table[f"{name}_high"] - value])
        ax.bar(x + (k - 1) * 0.27, value, 0.27, yerr=err, capsize=2, label=name.replace("_", " "))
    ax.set_xticks(x, labels)
    ax.set_ylabel("share of 2x2 blocks (%)")
    ax.legend(fontsize=8)
    ax.set_title("Laplacian clarity of token blocks (95% intervals over images)", fontsize=9)
    return save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(TESTBED_DATA), choices=list(TESTBED_DATA))
    parser.add_argument("--clear_gap", type=float, default=0.5, help="gap / mean score above which a minimum is clear")
    parser.add_argument("--output_dir", help="write clarity.csv, clarity.md and clarity.png here")
    args = parser.parse_args(argv)
    if args.clear_gap <= 0:
        parser.error(f"--clear_gap must be positive, got {args.clear_gap}")
    table = clarity_table(args.datasets, args.clear_gap)
    markdown = to_markdown(table, args.clear_gap)
    print(markdown)
    if args.output_dir:
        out = Path(args.output_dir)
        atomic_write_csv(out / "clarity.csv", list(table.columns), table.to_dict("records"))
        atomic_write_text(out / "clarity.md", markdown)
        plot(table, out / "clarity.png")
    return table


if __name__ == "__main__":
    main()
