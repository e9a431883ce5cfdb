"""Find the transformer blocks a reducer can act on, and their U-Net level, in diffusers models.

U-Net levels come from the architecture (count of down/up-samplers before a block), not from
channel widths, so SDXL (no attention at full resolution) and custom U-Nets are read correctly.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from tomesd.families import Family, family_of_block, family_of_model, registered


def supported() -> str:
    """What `apply_patch` accepts, naming every declared family (`tomesd.families`)."""
    families = ", ".join(f"{f.model} ({f.label})" for f in registered())
    return (f"a diffusers UNet2DConditionModel, DiTTransformer2DModel, PixArtTransformer2DModel or a declared "
            f"family's model: {families}, or a pipeline with `.unet` / `.transformer`")


SUPPORTED = supported()
# MMDiT blocks (joint text-image attention) of every declared family (`tomesd.families`).
MMDIT_BLOCKS = tuple(name for f in registered() for name in f.blocks)

# The published DiT setting: 10 of DiT-XL/2's 28 blocks.
PUBLISHED_DIT_BLOCKS = (1, 2, 3, 4, 5, 7, 8, 9, 10, 11)


@dataclass(frozen=True)
class BlockSite:
    """One `BasicTransformerBlock`: its module path, U-Net level (1 on DiT) and running index."""

    name: str
    block: nn.Module
    level: int
    index: int


@dataclass(frozen=True)
class Backbone:
    """A denoiser and the blocks in it, as the patcher needs them."""

    model: nn.Module
    family: str  # "unet", "transformer" (DiT/PixArt), or a declared family's kind: "mmdit", "video"
    sites: tuple[BlockSite, ...]
    patch_size: int  # latent pixels per token side (1 where the grid is read in tokens)
    signature: inspect.Signature
    reference_size: Optional[tuple[int, int]]
    spec: Optional[Family] = None  # the declared family (`tomesd.families`; None on U-Net / DiT / PixArt)

    @property
    def levels(self) -> list[int]:
        return sorted({site.level for site in self.sites})


def is_transformer_block(module: nn.Module) -> bool:
    """A diffusers `BasicTransformerBlock` (matched by name up the MRO, no hard import)."""
    return any(cls.__name__ == "BasicTransformerBlock" for cls in type(module).__mro__) and hasattr(module, "attn1")


def mmdit_kind(module: nn.Module) -> Optional[str]:
    """The MMDiT block class name of `module` (a block a declared family can reduce), or None."""
    return type(module).__name__ if family_of_block(module) is not None else None


def family_blocks(model: nn.Module) -> list[nn.Module]:
    """Blocks a declared family can reduce, in forward order: each family's stacks (`transformer_blocks`, then
    FLUX's `single_transformer_blocks`; Wan's `blocks`)."""
    names = dict.fromkeys(name for f in registered() for name in f.stacks)
    stacks = [getattr(model, name, None) or [] for name in names]
    stacks = [s for s in stacks if isinstance(s, (nn.ModuleList, nn.Sequential, list, tuple))]
    return [b for stack in stacks for b in stack if mmdit_kind(b) is not None]


def is_unet(module: Any) -> bool:
    return isinstance(module, nn.Module) and hasattr(module, "down_blocks") and hasattr(module, "up_blocks")


def is_patch_transformer(module: Any) -> bool:
    """A transformer with `transformer_blocks` and a patch size (DiT, PixArt, MMDiT), or a declared family's model."""
    if isinstance(module, nn.Module) and family_of_model(module) is not None:
        return True
    config = getattr(module, "config", None)
    return (
        isinstance(module, nn.Module)
        and hasattr(module, "transformer_blocks")
        and getattr(config, "patch_size", None) is not None
    )


def resolve_denoiser(obj: Any) -> nn.Module:
    """The model inside `obj` (itself, `obj.unet` or `obj.transformer`); ValueError otherwise."""
    if is_unet(obj) or is_patch_transformer(obj):
        return obj
    for attr in ("unet", "transformer"):
        inner = getattr(obj, attr, None)
        if is_unet(inner) or is_patch_transformer(inner):
            return inner
    raise ValueError(f"cannot patch {type(obj).__name__}: expected {SUPPORTED}")


def blocks_in(module: Optional[nn.Module]) -> list[nn.Module]:
    """Transformer blocks inside `module`, in forward order."""
    return [] if module is None else [m for m in module.modules() if is_transformer_block(m)]


def unet_block_levels(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """(block, downsample level) for every transformer block of a U-Net, walking down, mid, up."""
    found: list[tuple[nn.Module, int]] = []
    level = 1
    for down in unet.down_blocks:
        found += [(b, level) for b in blocks_in(down)]
        if getattr(down, "downsamplers", None):
            level *= 2
    found += [(b, level) for b in blocks_in(getattr(unet, "mid_block", None))]
    for up in unet.up_blocks:
        found += [(b, level) for b in blocks_in(up)]
        if getattr(up, "upsamplers", None):
            level = max(1, level // 2)
    return found


def config_latent_size(model: nn.Module) -> Optional[tuple[int, int]]:
    """Default latent (H, W) from the config's `sample_size`, if it has one."""
    size = getattr(model.config, "sample_size", None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def mmdit_family(model: nn.Module, blocks: list[nn.Module]) -> Optional[Family]:
    """The declared family of an MMDiT model: by its class, else by its blocks' (a custom model of known blocks)."""
    return family_of_model(model) or (family_of_block(blocks[0]) if blocks else None)


def find_backbone(obj: Any) -> Backbone:
    """Locate the denoiser and its transformer blocks; ValueError when there are none."""
    model = resolve_denoiser(obj)
    names = {id(m): n for n, m in model.named_modules()}
    spec = None
    if is_unet(model):
        pairs, family = unet_block_levels(model), "unet"
    elif family_blocks(model):
        pairs = [(b, 1) for b in family_blocks(model)]
        spec = mmdit_family(model, [b for b, _ in pairs])
        family = spec.kind
    else:
        stack = getattr(model, "transformer_blocks", None) or []
        pairs, family = [(b, 1) for b in stack if is_transformer_block(b)], "transformer"
    if not pairs:
        raise ValueError(f"{type(model).__name__} has no block this engine can reduce (BasicTransformerBlock, "
                         f"{', '.join(MMDIT_BLOCKS)}); expected {SUPPORTED}")
    patch = 1 if family == "unet" or (spec is not None and spec.token_grid) else int(model.config.patch_size)
    sites = tuple(BlockSite(names[id(b)], b, lvl, i) for i, (b, lvl) in enumerate(pairs))
    reference = config_latent_size(model)
    if reference is None and spec is not None:
        reference = spec.reference_grid
    return Backbone(model, family, sites, patch, inspect.signature(model.forward), reference, spec)


def select_sites(backbone: Backbone, max_downsample: int, blocks: Any, default_blocks: str) -> list[BlockSite]:
    """The blocks a method acts on: U-Net by level, transformers (DiT, PixArt, MMDiT) by running index."""
    if backbone.family == "unet":
        if blocks is not None:
            raise ValueError("`blocks` selects DiT/PixArt blocks; on a U-Net use max_downsample (1, 2, ...)")
        chosen = [s for s in backbone.sites if s.level <= max_downsample]
        if not chosen:
            raise ValueError(
                f"no attention block at downsample level <= {max_downsample} in {type(backbone.model).__name__}; "
                f"levels with attention: {backbone.levels} (e.g. SDXL starts at 2) - "
                f"pass max_downsample={backbone.levels[0]} or more"
            )
        return chosen
    depth = len(backbone.sites)
    if blocks == "all" or (blocks is None and default_blocks == "all"):
        return list(backbone.sites)
    if blocks is None:  # published pattern, clipped to shallow models
        indices = [i for i in PUBLISHED_DIT_BLOCKS if i < depth] or [0]
    else:
        bad = [i for i in blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"block indices {bad} out of range: the model has {depth} blocks (0..{depth - 1})")
        indices = sorted(set(blocks))
    return [backbone.sites[i] for i in indices]
