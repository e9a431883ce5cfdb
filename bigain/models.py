"""Load SD / DiT checkpoints (hub id, HF cache or local folder) behind one uniform interface.

``load_model(...)`` returns a :class:`LoadedModel` whatever the checkpoint is:

- an SD pipeline folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``),
- a DiT pipeline folder (``transformer/``, ``vae/``, ``scheduler/``; ``id2label`` in model_index.json),
- an embedded-testbed folder (``testbed.json`` + ``transformer/`` or ``unet/`` +
  ``class_embeddings.safetensors``, pixel space, no VAE).

Runners never branch on the kind of model: they call

    model.encode_images(x)                  # [-1,1] images -> latents (VAE mean * scale, or identity)
    cond = model.condition(prompts=..., class_ids=...)   # {kwarg: tensor with one row per class}
    eps = model.predict_eps(x_t, t, model.select(cond, rows))
    model.null_condition(n)                 # unconditional rows for classifier-free guidance

and patch ``model.denoiser`` (the U-Net or transformer) with ``tomesd.apply_patch``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .flow_models import FLOW_PATTERNS, FLOW_VERSIONS, is_flow_folder, load_flow_folder
from .loaded_model import LoadedModel

__all__ = [
    "MODEL_VERSIONS",
    "DTYPES",
    "LoadedModel",
    "ModelNotFoundError",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

# name -> hub id (or repo-relative folder for the embedded testbed). Used as argparse `choices`.
MODEL_VERSIONS: dict[str, str] = {
    "1-1": "CompVis/stable-diffusion-v1-1",
    "1-2": "CompVis/stable-diffusion-v1-2",
    "1-3": "CompVis/stable-diffusion-v1-3",
    "1-4": "CompVis/stable-diffusion-v1-4",
    "1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "2-0": "stabilityai/stable-diffusion-2-base",
    "2-1": "stabilityai/stable-diffusion-2-1-base",
    "dit-256": "facebook/DiT-XL-2-256",
    "dit-512": "facebook/DiT-XL-2-512",
    "testbed-dit": "bigain/assets/testbed/dit-fmnist",
    "testbed-unet": "bigain/assets/testbed/unet-fmnist",
    **FLOW_VERSIONS,  # SD3 / SD3.5 / Flux.1 (bigain.flow_models)
}
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
REPO_ROOT = Path(__file__).resolve().parent.parent


class ModelNotFoundError(FileNotFoundError):
    """A checkpoint that is neither a local folder nor in the HF cache (nor downloadable)."""


def resolve_device(device: str | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; anything else is passed to torch.device."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'fp16'|'bf16'|'fp32' or None/'auto' (fp16 on GPU, fp32 on CPU) -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def resolve_run_device(device: str, dtype: str, cpu_threads: int | None = None, n_procs: int = 1,
                       proc_idx: int = 0) -> tuple[torch.device, torch.dtype, str]:
    """(device, dtype, dtype name) of one run; under a multi-process launch each process takes its own GPU."""
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    resolved = resolve_device(device)
    if n_procs > 1 and device == "auto" and resolved.type == "cuda":
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", proc_idx)) % torch.cuda.device_count())
    torch_dtype = resolve_dtype(dtype, resolved)
    return resolved, torch_dtype, DTYPE_NAMES[torch_dtype]


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict:
    """JSON file contents, or {} when absent."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _hub_cache_dir() -> str:
    """The HF hub cache folder in effect (HF_HUB_CACHE / HF_HOME read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.path.expanduser("~/.cache/huggingface/hub")


def _hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE / DIFFUSERS_OFFLINE) is set."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"))


def _missing_message(name: str, tried: list[str], err: Exception | None) -> str:
    """Error text: where we looked and how to provide the weights."""
    lines = [f"could not load model {name!r}. Looked in:"] + [f"  - {t}" for t in tried]
    if err is not None:
        lines.append(f"last error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    lines += [
        "Provide it by one of:",
        "  * --model_path /path/to/folder  (a diffusers folder: model_index.json + unet/ vae/ text_encoder/ "
        "tokenizer/ scheduler/ for SD, or transformer/ vae/ scheduler/ for DiT)",
        "  * downloading it into the HF cache on a machine with internet: "
        "`huggingface-cli download <hub id>` (then copy ~/.cache/huggingface or set HF_HOME)",
        f"  * known versions: {', '.join(MODEL_VERSIONS)}",
    ]
    return "\n".join(lines)


def _resolve_folder(name_or_path: str) -> tuple[Path | None, str | None, list[str]]:
    """Map a version name / hub id / folder to (local folder or None, hub id or None, places tried)."""
    target = MODEL_VERSIONS.get(name_or_path, name_or_path)
    tried = []
    for cand in (Path(target), REPO_ROOT / target):
        tried.append(f"local folder {cand}")
        if cand.is_dir():
            return cand, None, tried
    is_hub_id = target.count("/") == 1 and not target.startswith((".", "/", "~", "bigain/"))
    return None, (target if is_hub_id else None), tried


def _weight_patterns() -> list[str]:
    """Files a runner needs from a hub repo: configs, tokenizer, and one full-precision weight file per component.

    Skips the repos' extra .ckpt / .bin / fp16 / non-EMA copies and the safety checker (several GB).
    """
    patterns = ["model_index.json", "scheduler/*", "tokenizer/*", "*/config.json"]
    for comp in ("unet", "vae", "transformer"):
        patterns += [f"{comp}/diffusion_pytorch_model.safetensors", f"{comp}/diffusion_pytorch_model-*-of-*.safetensors",
                     f"{comp}/diffusion_pytorch_model.safetensors.index.json"]
    patterns += ["text_encoder/model.safetensors", "text_encoder/model-*-of-*.safetensors",
                 "text_encoder/model.safetensors.index.json"]
    return patterns


def _snapshot(hub_id: str, tried: list[str], allow_patterns: list[str] | None = None) -> Path:
    """Local snapshot folder of a hub repo: HF cache first, then the hub unless offline."""
    from huggingface_hub import snapshot_download

    patterns = allow_patterns or _weight_patterns()
    tried.append(f"HF cache {_hub_cache_dir()} (repo {hub_id})")
    err: Exception | None = None
    try:
        return Path(snapshot_download(hub_id, local_files_only=True, allow_patterns=patterns,
                                      cache_dir=_hub_cache_dir()))
    except Exception as e:  # noqa: BLE001 - any failure means "not cached"
        err = e
    if _hub_offline():
        tried.append("the Hugging Face hub: skipped, HF_HUB_OFFLINE is set")
        raise ModelNotFoundError(_missing_message(hub_id, tried, err))
    tried.append(f"the Hugging Face hub (https://huggingface.co/{hub_id})")
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns, cache_dir=_hub_cache_dir()))
    except Exception as e:  # noqa: BLE001
        raise ModelNotFoundError(_missing_message(hub_id, tried, e)) from e


def _detect_kind(folder: Path) -> str:
    """'sd' or 'dit' from testbed.json / model_index.json / sub-folders."""
    meta = _read_json(folder / "testbed.json")
    if meta.get("kind") in ("dit", "transformer"):
        return "dit"
    if meta.get("kind") in ("unet", "sd"):
        return "sd"
    index = _read_json(folder / "model_index.json")
    if index:
        return "dit" if "transformer" in index else "sd"
    if (folder / "transformer").is_dir():
        return "dit"
    if (folder / "unet").is_dir():
        return "sd"
    raise ModelNotFoundError(
        f"{folder} is not a diffusers model folder: expected model_index.json, or unet/ or transformer/ "
        f"sub-folders (plus scheduler/, and testbed.json for the embedded testbed)")


def _load_scheduler(folder: Path):
    """The folder's scheduler (class from scheduler_config.json), or SD's DDPM schedule if it has none."""
    import diffusers

    cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    if not cfg:
        return diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000)
    cls = getattr(diffusers, cfg.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
    return cls.from_pretrained(folder, subfolder="scheduler")


def _load_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load every component present in a local diffusers / testbed folder."""
    import diffusers

    if is_flow_folder(folder):  # SD3 / Flux pipelines: their own loader
        return load_flow_folder(folder, name, device, dtype)
    kind = _detect_kind(folder)
    meta = _read_json(folder / "testbed.json")
    index = _read_json(folder / "model_index.json")
    common = {"torch_dtype": dtype}
    if kind == "dit":
        denoiser = diffusers.DiTTransformer2DModel.from_pretrained(folder, subfolder="transformer", **common)
    else:
        denoiser = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **common)
    vae = None
    if (folder / "vae").is_dir():
        vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", **common)
    text_encoder = tokenizer = None
    if (folder / "text_encoder").is_dir():
        import transformers

        text_encoder = transformers.CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **common)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    class_embeddings = None
    emb_file = folder / "class_embeddings.safetensors"
    if emb_file.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(emb_file))
        if "embeddings" not in tensors:
            raise ValueError(f"{emb_file} must hold a tensor named 'embeddings' (classes + 1, L, D); "
                             f"found {sorted(tensors)}")
        class_embeddings = tensors["embeddings"].to(device, dtype)
    if kind == "sd" and text_encoder is None and class_embeddings is None:
        raise ValueError(f"{folder}: a U-Net needs text_encoder/ + tokenizer/ or class_embeddings.safetensors")

    num_classes = meta.get("num_classes")
    null_class = meta.get("null_class", meta.get("null_class_index"))
    if kind == "dit" and num_classes is None:
        num_classes = int(denoiser.config.num_embeds_ada_norm)
    if class_embeddings is not None and num_classes is None:
        num_classes = class_embeddings.shape[0] - 1
    if null_class is None and num_classes is not None:
        null_class = num_classes
    names = meta.get("class_names")
    if names is None and isinstance(index.get("id2label"), dict):
        id2label = index["id2label"]
        names = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]

    model = LoadedModel(kind=kind, name=name, source=str(folder), denoiser=denoiser,
                        scheduler=_load_scheduler(folder), device=device, dtype=dtype, vae=vae,
                        text_encoder=text_encoder, tokenizer=tokenizer, class_embeddings=class_embeddings,
                        num_classes=num_classes, null_class=null_class, class_names=names,
                        meta=meta or {k: v for k, v in index.items() if k != "id2label"})
    for module in (model.denoiser, model.vae, model.text_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return model


def load_model(version: str = "2-0", model_path: str | os.PathLike | None = None, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "auto") -> LoadedModel:
    """Load a model by version name (`MODEL_VERSIONS`), hub id or local folder; `model_path` wins over `version`.

    Looks in the local folder, then the HF cache, then (unless HF_HUB_OFFLINE) the hub; raises
    :class:`ModelNotFoundError` saying where it looked and how to provide the weights.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if model_path is not None:
        folder = Path(model_path).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(_missing_message(str(model_path), [f"local folder {folder} (does not exist)"],
                                                      None))
        return _load_folder(folder, folder.resolve().name, dev, dt)
    if version not in MODEL_VERSIONS and "/" not in str(version):
        raise ValueError(f"unknown model version {version!r}; allowed: {', '.join(MODEL_VERSIONS)}, "
                         f"a hub id (owner/name) or --model_path")
    folder, hub_id, tried = _resolve_folder(str(version))
    if folder is None and hub_id is None:
        raise ModelNotFoundError(_missing_message(str(version), tried, None))
    if folder is None:
        folder = _snapshot(hub_id, tried, FLOW_PATTERNS if hub_id in FLOW_VERSIONS.values() else None)
        try:
            return _load_folder(folder, str(version), dev, dt)
        except (OSError, ValueError) as err:  # an incomplete cached snapshot
            raise ModelNotFoundError(_missing_message(hub_id, tried + [f"snapshot {folder} (incomplete)"], err)) from err
    return _load_folder(folder, str(version), dev, dt)
