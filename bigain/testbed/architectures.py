"""Model builders for the embedded testbed (configs are plain dicts, recorded in testbed.json).

* ``dit``: diffusers ``DiTTransformer2DModel``, 1 channel, 32x32, patch 2 (16x16 token grid),
  ``num_embeds_ada_norm=10`` -> the label tables have 11 rows, row 10 is the null class used
  for classifier-free guidance.  ``out_channels=1``: predicts eps only.
* ``unet``: diffusers ``UNet2DConditionModel`` (SD-style: cross-attention transformer blocks at
  the 32x32 level (1,024 tokens) and at the 16x16 level (down, mid and up), conditioned via
  ``encoder_hidden_states`` on a learned per-class prompt-embedding table
  (:class:`ClassPromptEmbeddings`, shape (11, L, D), row 10 = null "prompt").
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
from torch import nn

NUM_CLASSES = 10
NULL_CLASS = 10  # index of the null / unconditional class (diffusers' LabelEmbedding uses num_classes)

DIT_CONFIGS: Dict[str, dict] = {
    "default": dict(num_attention_heads=6, attention_head_dim=16, in_channels=1, out_channels=1,
                    num_layers=5, sample_size=32, patch_size=2, num_embeds_ada_norm=NUM_CLASSES,
                    norm_num_groups=32, attention_bias=True, activation_fn="gelu-approximate",
                    norm_type="ada_norm_zero", norm_elementwise_affine=False, dropout=0.0),
    "tiny": dict(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1,
                 num_layers=1, sample_size=32, patch_size=2, num_embeds_ada_norm=NUM_CLASSES,
                 norm_type="ada_norm_zero", norm_elementwise_affine=False),
}

UNET_CONFIGS: Dict[str, dict] = {
    "default": dict(sample_size=32, in_channels=1, out_channels=1,
                    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                    mid_block_type="UNetMidBlock2DCrossAttn",
                    block_out_channels=[16, 48], layers_per_block=1, transformer_layers_per_block=1,
                    norm_num_groups=8, cross_attention_dim=48,
                    # diffusers' UNet2DConditionModel reads ``attention_head_dim`` as the number of
                    # heads (as in SD 1.x); 1 and 3 heads -> 16 channels per head at both levels.
                    attention_head_dim=[1, 3]),
    "tiny": dict(sample_size=32, in_channels=1, out_channels=1,
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                 mid_block_type="UNetMidBlock2DCrossAttn",
                 block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
                 cross_attention_dim=8, attention_head_dim=[1, 2]),
}

EMBED_CONFIGS: Dict[str, dict] = {
    "default": dict(num_classes=NUM_CLASSES, seq_len=4, dim=48, init_std=1.0),
    "tiny": dict(num_classes=NUM_CLASSES, seq_len=2, dim=8, init_std=1.0),
}


class ClassPromptEmbeddings(nn.Module):
    """Learned per-class "prompt embeddings": a (num_classes + 1, L, D) table; the last row is
    the null prompt used for classifier-free guidance.  ``forward(labels)`` -> (B, L, D)."""

    def __init__(self, num_classes: int = NUM_CLASSES, seq_len: int = 4, dim: int = 64, init_std: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.null_index = num_classes
        self.embeddings = nn.Parameter(torch.randn(num_classes + 1, seq_len, dim) * init_std)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embeddings[labels]


def build_dit(config: Optional[dict] = None):
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(**copy.deepcopy(config or DIT_CONFIGS["default"]))
    disable_builtin_label_dropout(model)
    return model


def disable_builtin_label_dropout(model: nn.Module) -> None:
    """diffusers' DiT blocks each own a ``LabelEmbedding`` that drops labels *independently per
    block* in train mode (p=0.1); the testbed instead drops the label once per sample (to the
    null class 10) so that the unconditional model is trained consistently.  Only the runtime
    ``dropout_prob`` attribute changes (the table keeps its null row)."""
    from diffusers.models.embeddings import LabelEmbedding

    for m in model.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0


def build_unet(config: Optional[dict] = None, embed_config: Optional[dict] = None):
    from diffusers import UNet2DConditionModel

    cfg = copy.deepcopy(config or UNET_CONFIGS["default"])
    ecfg = copy.deepcopy(embed_config or EMBED_CONFIGS["default"])
    if ecfg["dim"] != cfg["cross_attention_dim"]:
        raise ValueError("embedding dim must equal cross_attention_dim")
    return UNet2DConditionModel(**cfg), ClassPromptEmbeddings(**ecfg)


def build_scheduler(config: Optional[dict] = None):
    from diffusers import DDPMScheduler

    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
               prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)
    cfg.update(config or {})
    return DDPMScheduler(**cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
