"""FLUX.1 (`FluxTransformer2DModel`): double-stream blocks, then single-stream blocks on [text, image].

Image tokens follow the text; their grid is read from `img_ids` (axis 1 = row, axis 2 = column);
rotary positions on 3 axes, one (cos, sin) table over the concatenated sequence.
"""
from tomesd.families.base import Family, RealRope, register

FLUX = register(Family(
    name="flux", label="FLUX.1", model="FluxTransformer2DModel",
    double_blocks=("FluxTransformerBlock",), single_blocks=("FluxSingleTransformerBlock",),
    text_first=True, grid="ids", positions="rotary", rope_axes=("index", "row", "column"), rope=RealRope,
    processors=("FluxAttnProcessor", "FluxAttnProcessor2_0"),
))
