"""Hugging Face hub access for checkpoints: the cache in effect, cached snapshots, and which files to fetch.

Hub repos differ in what they ship (safetensors, ``.bin`` only, extra fp16 / EMA / ``.ckpt`` copies);
:func:`select_repo_files` picks configs, the tokenizer and one full-precision weight set per component,
safetensors preferred and ``.bin`` otherwise. ``.bin`` files are loaded by diffusers / transformers
``from_pretrained``, which read them with ``torch.load(weights_only=True)`` (no pickled code runs).
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = [
    "WEIGHT_COMPONENTS",
    "CachedSnapshot",
    "cached_snapshot",
    "download_snapshot",
    "hub_cache_dir",
    "hub_offline",
    "missing_components",
    "select_repo_files",
    "weight_format",
]

# component folder -> weight-file stem per format (diffusers models / transformers models)
WEIGHT_COMPONENTS: dict[str, dict[str, str]] = {
    "unet": {"safetensors": "diffusion_pytorch_model", "bin": "diffusion_pytorch_model"},
    "vae": {"safetensors": "diffusion_pytorch_model", "bin": "diffusion_pytorch_model"},
    "transformer": {"safetensors": "diffusion_pytorch_model", "bin": "diffusion_pytorch_model"},
    "text_encoder": {"safetensors": "model", "bin": "pytorch_model"},
}
FORMATS = ("safetensors", "bin")  # order of preference
CONFIG_PATTERNS = ("model_index.json", "scheduler/*", "tokenizer/*", "*/config.json")


def hub_cache_dir() -> str:
    """The HF hub cache folder in effect (HF_HUB_CACHE / HF_HOME read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE / DIFFUSERS_OFFLINE) is set."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"))


def _weight_files(files: Iterable[str], component: str, fmt: str) -> list[str]:
    """`files` that are the component's weights in one format: single file, shards, shard index."""
    stem = f"{component}/{WEIGHT_COMPONENTS[component][fmt]}"
    return [f for f in files if f in (f"{stem}.{fmt}", f"{stem}.{fmt}.index.json")
            or fnmatch.fnmatchcase(f, f"{stem}-*-of-*.{fmt}")]


def weight_format(folder: str | Path, component: str) -> str | None:
    """'safetensors' or 'bin': the format a local component folder holds (safetensors preferred); None if neither."""
    comp_dir = Path(folder) / component
    if not comp_dir.is_dir():
        return None
    names = [f"{component}/{p.name}" for p in comp_dir.iterdir()]
    return next((fmt for fmt in FORMATS if _weight_files(names, component, fmt)), None)


def missing_components(folder: str | Path) -> list[str]:
    """Weight-bearing components model_index.json lists whose config or weights are absent (a partial download)."""
    import json

    index_file = Path(folder) / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    return [c for c in WEIGHT_COMPONENTS if isinstance(index.get(c), list) and index[c][0] is not None
            and (not (Path(folder) / c / "config.json").is_file() or weight_format(folder, c) is None)]


def select_repo_files(repo_files: Iterable[str]) -> list[str]:
    """Files a runner needs from a repo listing: configs, tokenizer, one full-precision weight set per component.

    Safetensors when the component has them, ``.bin`` otherwise; fp16 / non-EMA / ``.ckpt`` copies and
    unused components (safety checker) are left out.
    """
    files = list(repo_files)
    keep = [f for f in files if any(fnmatch.fnmatchcase(f, p) for p in CONFIG_PATTERNS)]
    for component in WEIGHT_COMPONENTS:
        for fmt in FORMATS:
            found = _weight_files(files, component, fmt)
            if found:
                keep += found
                break
    return sorted(set(keep))


@dataclass(frozen=True)
class CachedSnapshot:
    """A repo snapshot folder on disk and the revision (commit hash) it holds."""

    hub_id: str
    folder: Path
    revision: str
    origin: str  # "HF cache" or "downloaded"


def cached_snapshot(hub_id: str) -> CachedSnapshot | None:
    """The snapshot of `hub_id` that the HF cache's refs/main points to, if it holds model_index.json."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "model_index.json", cache_dir=hub_cache_dir())
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return CachedSnapshot(hub_id, folder, folder.name, "HF cache")


def download_snapshot(hub_id: str) -> CachedSnapshot:
    """List the repo, download the files :func:`select_repo_files` picks into the HF cache; errors propagate."""
    from huggingface_hub import HfApi, snapshot_download

    files = select_repo_files(HfApi().list_repo_files(hub_id))
    if "model_index.json" not in files:
        raise FileNotFoundError(f"hub repo {hub_id} has no model_index.json (not a diffusers pipeline)")
    folder = Path(snapshot_download(hub_id, allow_patterns=files, cache_dir=hub_cache_dir()))
    return CachedSnapshot(hub_id, folder, folder.name, "downloaded")
