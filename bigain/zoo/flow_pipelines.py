"""Tiny, offline, randomly initialised SD3 and Flux pipelines saved like real checkpoints.

SD3: two CLIP text encoders with projection (T5 omitted, as SD3 allows), 32 px images, 16x16 latents,
8x8 tokens. Flux: CLIP-L-style pooled encoder and a tiny T5 encoder (fed by a CLIP BPE tokenizer,
since no T5 vocabulary ships offline), 32 px images packed into 8x8 tokens; `guidance=True` builds
a Flux.1-dev-style model (guidance embedding, dynamic shifting).
"""
from __future__ import annotations

from pathlib import Path

import torch

from bigain.zoo.pipelines import build_clip_tokenizer

TEXT_DIM, PROJ_DIM = 16, 8


def tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32,
                         shift_factor=0.1, scaling_factor=1.5).eval()


def clip_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                          vocab_size=vocab_size, projection_dim=PROJ_DIM, max_position_embeddings=77)


def build_tiny_sd3(out: str | Path, seed: int = 0) -> Path:
    """StableDiffusion3Pipeline folder (shift-3 flow-matching scheduler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(out / "_tok")
    encoders = [CLIPTextModelWithProjection(clip_config(len(tokenizer))).eval() for _ in range(2)]
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=2 * TEXT_DIM, caption_projection_dim=16, pooled_projection_dim=2 * PROJ_DIM,
        out_channels=4, pos_embed_max_size=16).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(),
        text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(out)
    return out


def build_tiny_flux(out: str | Path, seed: int = 0, guidance: bool = False) -> Path:
    """FluxPipeline folder (schnell-style; `guidance=True`: dev-style guidance embedding + dynamic shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(out / "_tok")
    clip = CLIPTextModel(clip_config(len(tokenizer))).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1,
                                 num_heads=2)).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4)).eval()
    scheduler = (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                 max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
                 if guidance else FlowMatchEulerDiscreteScheduler(shift=1.0))
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_vae(), text_encoder=clip, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer, transformer=transformer)
    pipe.save_pretrained(out)
    return out
