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
    "WEIGHT_STEMS",
    "CachedSnapshot",
    "cached_snapshot",
    "download_snapshot",
    "hub_cache_dir",
    "hub_offline",
    "missing_components",
    "select_repo_files",
    "weight_format",
]

# weight-file stems per format: diffusers models, transformers models
WEIGHT_STEMS: dict[str, tuple[str, ...]] = {"safetensors": ("diffusion_pytorch_model", "model"),
                                            "bin": ("diffusion_pytorch_model", "pytorch_model")}
FORMATS = tuple(WEIGHT_STEMS)  # order of preference
SKIPPED_COMPONENTS = ("safety_checker",)  # never used by the runners (about 1.2 GB in SD 1.x repos)
CONFIG_PATTERNS = ("model_index.json", "scheduler/*", "tokenizer*/*", "*/config.json")
NO_WEIGHTS = ("Tokenizer", "TokenizerFast", "Scheduler", "Processor", "FeatureExtractor")  # class-name endings


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
    out = []
    for stem in (f"{component}/{name}" for name in WEIGHT_STEMS[fmt]):
        out += [f for f in files if f in (f"{stem}.{fmt}", f"{stem}.{fmt}.index.json")
                or fnmatch.fnmatchcase(f, f"{stem}-*-of-*.{fmt}")]
    return out


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
    wanted = [c for c, v in index.items() if isinstance(v, list) and len(v) == 2 and v[1]
              and not str(v[1]).endswith(NO_WEIGHTS) and c not in SKIPPED_COMPONENTS]
    return [c for c in wanted if not (Path(folder) / c / "config.json").is_file() or weight_format(folder, c) is None]


def select_repo_files(repo_files: Iterable[str]) -> list[str]:
    """Files a runner needs from a repo listing: configs, tokenizers, one full-precision weight set per component.

    Safetensors when the component has them, ``.bin`` otherwise; fp16 / non-EMA / ``.ckpt`` copies and
    the safety checker are left out.
    """
    files = list(repo_files)
    keep = [f for f in files if any(fnmatch.fnmatchcase(f, p) for p in CONFIG_PATTERNS)
            and f.split("/")[0] not in SKIPPED_COMPONENTS]
    for component in sorted({f.split("/")[0] for f in files if "/" in f} - set(SKIPPED_COMPONENTS)):
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
