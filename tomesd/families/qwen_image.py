"""Qwen-Image (`QwenImageTransformer2DModel`): double-stream blocks only, text first in the joint attention.

The image token grid comes from the call's `img_shapes` ((frames, rows, columns) per image, packed
2x2 latents); rotary positions on 3 axes (frame, row, column) as complex tables, image and text
tables separate. With `scale_rope` (every released checkpoint) rows and columns are centred: row r
of h sits at r - (h - h // 2). The text mask (`encoder_hidden_states_mask`) masks text keys only.
One image per sample, the same for the whole batch (as diffusers' rotary table assumes); edit-mode
calls with condition images (several shapes per sample) are refused.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tomesd.families.base import Family, register


class ComplexRope:
    """Qwen-Image's rotary tables: (image, text) complex tables (N, D/2), rotation by complex multiplication."""

    @staticmethod
    def split(table: Any, n_text: int) -> tuple[Tensor, Tensor]:
        image, text = table
        return text, image

    @staticmethod
    def rows(table: Tensor) -> int:
        return table.shape[0]

    @staticmethod
    def expand(table: Tensor, batch: int) -> Tensor:
        return table.expand(batch, -1, -1)

    @staticmethod
    def at(pos_embed: nn.Module, positions: Tensor, like: Tensor) -> Tensor:
        """Complex table (B, M, D/2) at float positions (B, M, 3): `QwenEmbedRope.rope_params` per axis."""
        angles = []
        for axis, dim in enumerate(pos_embed.axes_dim):
            exponent = torch.arange(0, dim, 2, device=positions.device).to(torch.float32).div(dim)
            angles.append(positions[..., axis, None] * (1.0 / torch.pow(pos_embed.theta, exponent)))
        angle = torch.cat(angles, dim=-1)
        return torch.polar(torch.ones_like(angle), angle).to(like.device)


def image_shape(img_shapes: Any, num_tokens: int) -> tuple[int, int]:
    """(rows, columns) of the one image of each sample in `img_shapes`; RuntimeError for anything else."""
    if not img_shapes:
        raise ValueError("a Qwen-Image forward without `img_shapes`: the image token grid is unknown")
    per_sample = img_shapes if isinstance(img_shapes, list) else [img_shapes]
    images = per_sample[0] if isinstance(per_sample[0], list) else [per_sample[0]]
    same = all((s if isinstance(s, list) else [s]) == images for s in per_sample)
    frames, rows, cols = (int(v) for v in images[0])
    if len(images) != 1 or frames != 1 or rows * cols != num_tokens or not same:
        raise RuntimeError(
            f"img_shapes {img_shapes} do not describe one {num_tokens}-token image per sample, the same for the "
            "batch (e.g. edit-mode condition images); token reduction on Qwen-Image needs one image grid")
    return rows, cols


def read_shapes(bound: dict, num_tokens: int, pos_embed: nn.Module) -> tuple[tuple[int, int], Tensor]:
    """The call's token grid and its image position ids (N, 3) = (frame, row, column) as the rotary table has them."""
    rows, cols = image_shape(bound.get("img_shapes"), num_tokens)
    device = bound["hidden_states"].device
    row = torch.arange(rows, device=device, dtype=torch.float32)
    col = torch.arange(cols, device=device, dtype=torch.float32)
    if getattr(pos_embed, "scale_rope", False):
        row, col = row - (rows - rows // 2), col - (cols - cols // 2)
    # The layered variant (`QwenEmbedLayer3DRope`) puts a lone image at frame -1 (its condition slot).
    frame = torch.full((1,), -1.0 if type(pos_embed).__name__ == "QwenEmbedLayer3DRope" else 0.0, device=device)
    ids = torch.stack(torch.meshgrid(frame, row, col, indexing="ij"), dim=-1)
    return (rows, cols), ids.reshape(-1, 3)


QWEN_IMAGE = register(Family(
    name="qwen_image", label="Qwen-Image", model="QwenImageTransformer2DModel",
    double_blocks=("QwenImageTransformerBlock",),
    text_first=True, grid="shapes", positions="rotary", rope_axes=("frame", "row", "column"), rope=ComplexRope,
    read_shapes=read_shapes, image_mlp="img_mlp", text_mask=True, processors=("QwenDoubleStreamAttnProcessor2_0",),
))
