"""Identity of a model folder's weights, for run fingerprints (two folders named alike never share results).

What it covers: every weight, config and tokenizer file under the folder (suffixes in
`IDENTITY_SUFFIXES`: *.safetensors, *.bin, *.pt, *.pth, *.ckpt, *.json, *.txt, *.model, *.yaml
— so diffusion weights, class_embeddings.safetensors, model_index.json, scheduler and
testbed configs), by relative path and content:

* a Hugging Face hub snapshot (``.../snapshots/<revision>/``, files are links to content-addressed
  blobs) -> the revision plus each file's blob name (the hub's own content hash; nothing is read);
* any other folder -> the sha256 of each file, cached in ``<cache>/weight_digests.json`` by
  (resolved path, size, mtime_ns) so a rerun reads no weights (cache: ``$BIGAIN_CACHE`` or
  ~/.cache/bigain; written atomically under a file lock, shared safely by concurrent runs).

Not covered: hidden files and other suffixes (README, images), and the code that loads the weights.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bigain.storage import atomic_write_json, file_digest

__all__ = ["IDENTITY_SUFFIXES", "cache_file", "model_identity"]

IDENTITY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model", ".yaml")


def cache_file() -> Path:
    """Where per-file digests are cached (``$BIGAIN_CACHE`` or ~/.cache/bigain)."""
    return Path(os.environ.get("BIGAIN_CACHE", Path.home() / ".cache" / "bigain")) / "weight_digests.json"


def _identity_files(folder: Path) -> list[Path]:
    """Weight/config files under `folder` (sorted, hidden parts skipped)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IDENTITY_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file())


def _hub_revision(folder: Path) -> str | None:
    """The revision of a hub snapshot folder (``.../models--o--n/snapshots/<rev>``), else None."""
    in_snapshots = folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")
    return folder.name if in_snapshots else None


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _file_digests(files: list[Path]) -> dict[Path, str]:
    """sha256 of each file, reusing cached digests keyed by (path, size, mtime_ns)."""
    from filelock import FileLock


    cache_path = cache_file()
    cache = _load_cache(cache_path)
    out, fresh = {}, {}
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(key) or file_digest(f)
        if key not in cache:
            fresh[key] = digest
        out[f] = digest
    if fresh:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(cache_path) + ".lock", timeout=60):
                merged = {**_load_cache(cache_path), **fresh}  # entries of deleted files are dropped
                atomic_write_json(cache_path, {k: v for k, v in merged.items() if os.path.exists(k.rsplit("|", 2)[0])})
        except OSError:  # a read-only cache only costs re-hashing next time
            pass
    return out


def model_identity(folder: str | os.PathLike) -> dict[str, Any]:
    """{"revision": hub revision or None, "weights": digest over (relative path, content hash) of every file}."""
    folder = Path(folder).expanduser()
    files = _identity_files(folder)
    if not files:
        raise FileNotFoundError(f"model folder {folder} holds no weight or config files "
                                f"({', '.join(IDENTITY_SUFFIXES)})")
    revision = _hub_revision(folder)
    linked = [f for f in files if revision is not None and f.is_symlink()]  # hub blobs: named by content hash
    per_file = {f: "blob:" + Path(os.path.realpath(f)).name for f in linked}
    per_file.update(_file_digests([f for f in files if f not in per_file]))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\0{per_file[f]}\n".encode())
    return {"revision": revision, "weights": h.hexdigest()[:32]}
