"""Tiny, offline, randomly initialised FLUX.2, Qwen-Image and Wan 2.1 pipelines saved like real checkpoints.

Each is the real pipeline class with its real component classes at the smallest sizes transformers and
diffusers accept, saved with `save_pretrained` (model_index.json + one subfolder per component):

* FLUX.2: Mistral-3 text encoder (31 text layers, since the pipeline stacks layers 10, 20, 30; a
  one-layer Pixtral vision tower) behind a `PixtralProcessor` with a byte-level tokenizer and a
  plain chat template; `AutoencoderKLFlux2`; guidance embedding as FLUX.2-dev.
* Qwen-Image: Qwen2.5-VL text encoder (one layer) with a byte-level `Qwen2Tokenizer`;
  `AutoencoderKLQwenImage`; the hub's exponential dynamic shift.
* Wan 2.1: UMT5 encoder with a byte-level tokenizer; `AutoencoderKLWan`; the hub's UniPC scheduler config.

No vocabulary ships offline, so the tokenizers know the 256 bytes plus the special tokens the
pipelines' templates use; prompts still tokenise (one token per byte).
"""
from __future__ import annotations

from pathlib import Path

import torch

from bigain.zoo.pipelines import _bytes_to_unicode

__all__ = ["build_tiny_flux2", "build_tiny_qwen_image", "build_tiny_wan"]

HIDDEN = 16
FLUX2_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}"
                  "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
                  "{% endfor %}{% endif %}{{ eos_token }}{% endfor %}")


def byte_level_tokenizer(specials: list[str], **tokens: str):
    """A `PreTrainedTokenizerFast` over the 256 bytes after `specials` (ids 0..len(specials)-1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {v: i for i, v in enumerate(specials + list(_bytes_to_unicode().values()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=tokens.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def build_tiny_flux2(out: str | Path, seed: int = 0) -> Path:
    """Flux2Pipeline folder, FLUX.2-dev style (guidance embedding, dynamic shift), 32 px -> 8x8 tokens."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    out = Path(out)
    torch.manual_seed(seed)
    tok = byte_level_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"],
                               unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tok, chat_template=FLUX2_TEMPLATE,
                                 patch_size=16, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                                 image_end_token="[IMG_END]")
    config = Mistral3Config(
        text_config=dict(model_type="mistral", hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=31,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, vocab_size=len(tok),
                         bos_token_id=1, eos_token_id=2, pad_token_id=3),
        vision_config=dict(model_type="pixtral", hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, patch_size=16, image_size=64),
        image_token_index=4, spatial_merge_size=2, vision_feature_layer=-1)
    encoder = Mistral3ForConditionalGeneration(config).eval()
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=3 * HIDDEN, timestep_guidance_channels=16, mlp_ratio=2.0, axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=True).eval()
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                             norm_num_groups=4, sample_size=32).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=processor,
                  transformer=transformer).save_pretrained(out)
    return out


def build_tiny_qwen_image(out: str | Path, seed: int = 0) -> Path:
    """QwenImagePipeline folder, 32 px -> 8x8 latents -> 4x4 packed tokens."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    out = Path(out)
    torch.manual_seed(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {v: i for i, v in enumerate(_bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    n = len(tok)
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=n, bos_token_id=n - 2, eos_token_id=n - 1,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
        vision_config=dict(depth=1, hidden_size=HIDDEN, intermediate_size=16, num_heads=2, out_hidden_size=HIDDEN),
        vocab_size=n, image_token_id=n - 1, video_token_id=n - 1, vision_start_token_id=n - 1,
        vision_end_token_id=n - 1)
    encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=HIDDEN, axes_dims_rope=(2, 2, 4)).eval()
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.1, -0.1, 0.0, 0.2],
                                 latents_std=[1.5, 0.5, 1.0, 2.0]).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=8192, base_shift=0.5, max_shift=0.9,
                                                shift_terminal=0.02, time_shift_type="exponential")
    QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tok,
                      transformer=transformer).save_pretrained(out)
    return out


def build_tiny_wan(out: str | Path, seed: int = 0) -> Path:
    """WanPipeline folder (Wan 2.1 text-to-video), 32 px frames -> 8x8 latents -> 4x4 tokens per frame; the VAE
    halves time (frames 2k + 1, where the hub's quarters it: 4k + 1); the hub's scheduler (UniPC, flow shift 3)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    out = Path(out)
    torch.manual_seed(seed)
    tok = byte_level_tokenizer(["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=HIDDEN, d_kv=8, d_ff=32, num_layers=1,
                                          num_heads=2, relative_attention_num_buckets=8)).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=HIDDEN, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                           temperal_downsample=[False, True], latents_mean=[0.1, -0.1, 0.0, 0.2],
                           latents_std=[1.5, 0.5, 1.0, 2.0], scale_factor_temporal=2, scale_factor_spatial=4).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    WanPipeline(tokenizer=tok, text_encoder=encoder, vae=vae, transformer=transformer,
                scheduler=scheduler).save_pretrained(out)
    return out
