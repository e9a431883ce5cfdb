"""Declared descriptions of the MMDiT model families the engine reduces (one file per family).

A `Family` says which blocks can be reduced, where the image tokens sit in each block's sequence
(text first or last, one joint sequence or two streams), where the image token grid is read from
(the latent's shape, position ids or per-image shapes), how positions are carried (absolute
before the blocks, or rotary with named axes, and in which table format) and which diffusers
processors the engine's joint attention reproduces. `tomesd.backbones` and `tomesd.mmdit` read
these descriptions; nothing else in the engine names a family. Adding a family is one file here
that calls `register`, plus its tests.
"""
from __future__ import annotations

from tomesd.families.base import Family, RealRope, family_of_block, family_of_model, register, registered

__all__ = ["Family", "RealRope", "family_of_block", "family_of_model", "register", "registered"]

# Registration order is the order `registered()` lists (and error messages name) the families.
from tomesd.families import sd3, flux, flux2, qwen_image, wan  # noqa: E402,F401,I001
