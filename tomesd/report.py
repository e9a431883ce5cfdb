"""What `apply_patch` reports: the method, its validated options, the patched blocks and tokens kept per level."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from tomesd.backbones import Backbone, BlockSite
from tomesd.reducers.base import Reducer


@dataclass
class LevelSummary:
    """Tokens of one level at the model's default latent size, and how many the method keeps."""

    blocks: int
    tokens: Optional[int]
    kept: Optional[int]


@dataclass
class PatchReport:
    """What `apply_patch` did: method, validated options, patched blocks, tokens kept per level."""

    method: str
    options: dict[str, Any]
    model: str
    family: str
    blocks: list[str]
    levels: dict[int, LevelSummary]
    kept_label: str = "tokens kept"
    latent_size: Optional[tuple[int, int]] = None  # (H, W) the token counts refer to

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "options": self.options, "model": self.model, "family": self.family,
            "blocks": self.blocks, "kept_label": self.kept_label, "latent_size": self.latent_size,
            "levels": {str(k): vars(v) for k, v in self.levels.items()},
        }

    def __str__(self) -> str:
        at = f" at latent {self.latent_size[0]}x{self.latent_size[1]}" if self.latent_size else ""
        lines = [f"{self.method} on {self.model} ({len(self.blocks)} blocks{at}) options={self.options}"]
        for level, s in sorted(self.levels.items()):
            where = f"level ds={level}" if self.family == "unet" else "token grid"
            tokens = "?" if s.tokens is None else f"{s.kept}/{s.tokens} {self.kept_label}"
            lines.append(f"  {where}: {s.blocks} blocks, {tokens}")
        return "\n".join(lines)


def summarize_levels(backbone: Backbone, sites: list[BlockSite], reducer: Reducer, options: Any,
                     size: Optional[tuple[int, int]] = None) -> dict[int, LevelSummary]:
    """Blocks per level and tokens kept at latent `size` (default: the config's latent size, when known)."""
    size = size or backbone.reference_size
    summary: dict[int, LevelSummary] = {}
    for site in sites:
        tokens = kept = None
        if size is not None:
            stride = site.level * backbone.patch_size
            height = math.ceil(size[0] / stride)
            width = math.ceil(size[1] / stride)
            tokens, kept = height * width, reducer.kept_tokens(height, width, options, level=site.level)
        entry = summary.setdefault(site.level, LevelSummary(0, tokens, kept))
        entry.blocks += 1
    return summary
