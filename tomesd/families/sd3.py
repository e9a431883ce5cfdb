"""SD3 / SD3.5 (`SD3Transformer2DModel`): joint blocks, image tokens first, absolute positions.

The grid is the latent's H x W over the patch size; SD3.5's second (image-only) attention shares
its block's plan; the last block's text stream is pre-only.
"""
from tomesd.families.base import Family, register

SD3 = register(Family(
    name="sd3", label="SD3 / SD3.5", model="SD3Transformer2DModel",
    double_blocks=("JointTransformerBlock",),
    text_first=False, grid="latent", positions="absolute", sigma_timesteps=False, reference_grid=None,
    processors=("JointAttnProcessor2_0",),
))
