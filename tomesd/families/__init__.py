"""Declared descriptions of the transformer families the engine reduces beyond U-Nets, DiT and PixArt (one file
per family): the MMDiTs (SD3, FLUX.1, FLUX.2, Qwen-Image) and the video transformer Wan 2.x.

A `Family` says which blocks can be reduced (and in which model attributes they sit), where the image (or
video) tokens sit in each block's sequence (text first or last, one joint sequence or two streams), where
the token grid is read from (the latent's shape, position ids, per-image shapes, or the video's frames x
rows x columns), how positions are carried (absolute before the blocks, or rotary with named axes, and in
which table format) and which diffusers processors the engine's attention bodies reproduce.
`tomesd.backbones`, `tomesd.mmdit` and `tomesd.video` read these descriptions; block choice is the engine's
one rule (docs/families.md). Adding a family is one file here that calls `register`, plus its tests.
"""
from __future__ import annotations

from tomesd.families.base import Family, RealRope, family_of_block, family_of_model, register, registered

__all__ = ["Family", "RealRope", "family_of_block", "family_of_model", "register", "registered"]

# Registration order is the order `registered()` lists (and error messages name) the families.
from tomesd.families import sd3, flux, flux2, qwen_image, wan  # noqa: E402,F401,I001
