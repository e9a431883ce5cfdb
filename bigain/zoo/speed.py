"""Configs of the tiny denoisers behind eval.speed's `tiny-*` models (tests): each full-size layout of
eval/speed/model_zoo.py at a few channels, spelt out (diffusers config keys, defaults included)."""
from __future__ import annotations

from typing import Any

TINY_SPEED_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-sd": {
        "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (16, 32),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 16, "attention_head_dim": (2, 4),
        "norm_num_groups": 8, "norm_eps": 1e-05, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
        "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
        "use_linear_projection": True, "upcast_attention": False, "dual_cross_attention": False,
    },
    "tiny-sdxl": {
        "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": (16, 32, 32),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 1, 2), "attention_head_dim": (2, 4, 4), "cross_attention_dim": 16,
        "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 4,
        "projection_class_embeddings_input_dim": 40, "norm_num_groups": 8, "norm_eps": 1e-05, "act_fn": "silu",
        "flip_sin_to_cos": True, "freq_shift": 0, "upcast_attention": False,
    },
    "tiny-dit": {
        "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8, "num_layers": 2,
        "sample_size": 16, "patch_size": 2, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 10,
        "norm_type": "ada_norm_zero", "norm_elementwise_affine": False, "norm_eps": 1e-05, "attention_bias": True,
        "upcast_attention": False,
    },
    "tiny-pixart": {
        "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8, "num_layers": 2,
        "sample_size": 16, "patch_size": 2, "cross_attention_dim": 16, "caption_channels": 16,
        "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False, "norm_eps": 1e-06, "attention_bias": True, "upcast_attention": False,
        "use_additional_conditions": False,
    },
    "tiny-sd3": {
        "sample_size": 16, "patch_size": 2, "in_channels": 4, "num_layers": 3, "attention_head_dim": 8,
        "num_attention_heads": 2, "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 8,
        "out_channels": 4, "pos_embed_max_size": 32, "dual_attention_layers": (0,), "qk_norm": "rms_norm",
    },
    "tiny-flux": {
        "patch_size": 1, "in_channels": 16, "num_layers": 2, "num_single_layers": 3, "attention_head_dim": 8,
        "num_attention_heads": 2, "joint_attention_dim": 16, "pooled_projection_dim": 8, "guidance_embeds": True,
        "axes_dims_rope": (2, 2, 4),
    },
    "tiny-flux2": {
        "patch_size": 1, "in_channels": 16, "out_channels": None, "num_layers": 2, "num_single_layers": 2,
        "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 16, "timestep_guidance_channels": 16,
        "mlp_ratio": 2.0, "axes_dims_rope": (2, 2, 2, 2), "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": True,
    },
    "tiny-qwen-image": {
        "patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 3, "attention_head_dim": 8,
        "num_attention_heads": 2, "joint_attention_dim": 16, "guidance_embeds": False, "axes_dims_rope": (2, 2, 4),
    },
    "tiny-wan": {
        "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 4,
        "out_channels": 4, "text_dim": 16, "freq_dim": 16, "ffn_dim": 32, "num_layers": 3, "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None,
        "rope_max_seq_len": 32,
    },
}
