"""Generated media on disk: PNG bytes of one image, and a video item: its frames as PNGs plus an animated GIF in one
folder that appears whole (written aside, then renamed into place), then its JSON record, written last, which lists
every file's size and sha256; an item is finished only when its record and every listed file agree."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from bigain.storage.preemption import deferred
from bigain.storage.records import atomic_write_json, file_digest, usual_mode

__all__ = ["GIF_NAME", "gif_bytes", "png_bytes", "video_files", "video_finished", "write_video_item"]

GIF_NAME = "video.gif"


def _pil(image: np.ndarray) -> Image.Image:
    """A PIL image of one uint8 (H, W, C) array (grey when C == 1)."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of one uint8 (H, W, C) image (grey when C == 1)."""
    buf = io.BytesIO()
    _pil(image).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Animated GIF (looping, PIL's palette per frame) of uint8 frames (F, H, W, C) shown at `fps`."""
    images = [_pil(frame) for frame in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def video_files(frames: np.ndarray, fps: float) -> dict[str, bytes]:
    """A video item's files: `frame0000.png`, ... (one per frame) and the GIF."""
    files = {f"frame{i:04d}.png": png_bytes(frame) for i, frame in enumerate(frames)}
    files[GIF_NAME] = gif_bytes(frames, fps)
    return files


def write_video_item(folder: Path, files: dict[str, bytes], record_path: Path, record: dict) -> dict:
    """Write `files` into `folder` whole (a temp folder renamed into place; an older folder there is replaced), then
    `record` plus every file's size and sha256 to `record_path`; returns the record written. A SIGTERM waits."""
    folder = Path(folder)
    record = {**record, "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                  for name, data in files.items()}}
    with deferred():
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            os.chmod(tmp, usual_mode(directory=True))
            for name, data in files.items():
                with open(tmp / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            if folder.exists():  # an interrupted or outdated item: moved aside, then removed
                old = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
                os.replace(folder, old)
                if old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink()
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_json(record_path, record)
    return record


def video_finished(folder: Path, record_path: Path, fingerprint: str) -> bool:
    """The record carries `fingerprint` and lists files, and each file in `folder` has the listed size and sha256."""
    try:
        record = json.loads(Path(record_path).read_text())
        if record.get("fingerprint") != fingerprint or not record.get("files"):
            return False
        for name, entry in record["files"].items():
            path = Path(folder) / name
            if path.stat().st_size != entry["bytes"] or file_digest(path) != entry["sha256"]:
                return False
        return True
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False
