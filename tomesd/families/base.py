"""`Family`: the declared description of one MMDiT model family, and the registry that holds them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

# (grid, image position ids (N, axes) float) of one forward, read from its bound arguments.
ShapesReader = Callable[[dict, int, nn.Module], tuple[tuple[int, int], Tensor]]


class RealRope:
    """Rotary tables as (cos, sin) pairs over the concatenated [text, image] sequence (FLUX.1, FLUX.2):
    the model's `pos_embed(ids)` evaluated at (possibly fractional) position ids."""

    @staticmethod
    def split(table: Any, n_text: int) -> tuple[Any, Any]:
        """(text table, image table) of the table a block receives."""
        cos, sin = table
        return (cos[:n_text], sin[:n_text]), (cos[n_text:], sin[n_text:])

    @staticmethod
    def rows(table: Any) -> int:
        return table[0].shape[0]

    @staticmethod
    def expand(table: Any, batch: int) -> Any:
        """The shared image table as a per-sample (B, N, D) one."""
        return tuple(t.expand(batch, -1, -1) for t in table)

    @staticmethod
    def at(pos_embed: nn.Module, positions: Tensor, like: Any) -> Any:
        """(cos, sin), each (B, M, D), at float positions (B, M, axes), in `like`'s dtype/device."""
        cos, sin = pos_embed(positions.reshape(-1, positions.shape[-1]))
        shape = positions.shape[:2] + (cos.shape[-1],)
        return cos.reshape(shape).to(like[0]), sin.reshape(shape).to(like[0])


@dataclass(frozen=True)
class Family:
    """What the engine needs to know about one MMDiT family; see docs/families.md for each field's values."""

    name: str  # option-facing name ("flux2")
    label: str  # display name ("FLUX.2")
    model: str  # diffusers model class name
    double_blocks: tuple[str, ...]  # block classes whose image tokens are their own sequence (two streams, or
    #                                self-attention + cross-attention to text)
    single_blocks: tuple[str, ...] = ()  # block classes over one [text, image] sequence
    stacks: tuple[str, ...] = ("transformer_blocks", "single_transformer_blocks")  # model attributes holding them
    kind: str = "mmdit"  # machinery: "mmdit" (joint text-image attention, tomesd.mmdit) or "video" (tomesd.video)
    text_first: bool = True  # text tokens before image tokens in the joint attention sequence
    grid: str = "ids"  # image token grid from: "latent" (sample H x W / patch), "ids" (img_ids rows/cols),
    #                    "shapes" (per-image shapes), "frames" (video sample T x H x W / patch: per-frame H x W)
    positions: str = "rotary"  # "absolute" (added before the blocks: nothing moves) or "rotary"
    rope_axes: tuple[str, ...] = ()  # rotary axes, in the order of the position ids
    rope: Any = None  # table format (RealRope, or the family's own), None without rotary positions
    read_shapes: Optional[ShapesReader] = None  # grid and ids from the call's shapes (grid == "shapes")
    sigma_timesteps: bool = True  # the model takes sigma in [0, 1]: gates read timestep * 1000
    reference_grid: Optional[tuple[int, int]] = (64, 64)  # token grid at 1024 px (None: the config's sample_size)
    image_mlp: str = "ff"  # the double-stream block's image feed-forward (`merge_mlp`)
    text_mask: bool = False  # the processor takes a text mask (`encoder_hidden_states_mask`)
    processors: tuple[str, ...] = ()  # stock processors `joint_attention` (or `single_attention`) reproduces
    single_attention: Optional[Callable[..., Tensor]] = None  # own body for fused single-stream layers (FLUX.2)

    @property
    def blocks(self) -> tuple[str, ...]:
        return self.double_blocks + self.single_blocks

    @property
    def token_grid(self) -> bool:
        """Whether the grid read per call is already in tokens (no patch stride to apply)."""
        return self.grid != "latent"


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (its model class name is the key); returns it for module-level declarations."""
    _REGISTRY[family.model] = family
    return family


def registered() -> list[Family]:
    return list(_REGISTRY.values())


def family_of_model(model: nn.Module) -> Optional[Family]:
    """The family whose model class is `model`'s (matched by name up the MRO, no hard import), or None."""
    for cls in type(model).__mro__:
        if cls.__name__ in _REGISTRY:
            return _REGISTRY[cls.__name__]
    return None


def family_of_block(block: nn.Module) -> Optional[Family]:
    """The family declaring `block`'s exact class as reducible, or None (renamed subclasses are not trusted)."""
    name = type(block).__name__
    return next((f for f in _REGISTRY.values() if name in f.blocks), None)


def sigma_to_steps(timestep: Any, family: Family) -> Optional[Tensor]:
    """The call's timestep on the 0-1000 scale the reducers' gates use."""
    if timestep is None:
        return None
    return torch.as_tensor(timestep) * 1000 if family.sigma_timesteps else timestep
