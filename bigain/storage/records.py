"""Per-image result records (.npz, written atomically), resume checks, and the merge of shards into accuracy; the
project's one set of atomic writers (bytes, text, JSON, CSV, safetensors: temp file, fsync, rename).

A run directory holds ``records/<index>.npz`` (one per image, any shard may have written it),
``config.json`` and logs. A record is reused only when it loads, is complete, carries the
run's config fingerprint and matches its own content digest (records older than digests: accepted);
anything else (missing, half-written, corrupt, edited, other config) is recomputed
(docs/failures.md). No pickles: arrays plus a JSON string.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from bigain.storage.preemption import deferred

__all__ = [
    "ImageRecord",
    "MergeResult",
    "append_csv_row",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "check_record_paths",
    "clean_stale_tmp",
    "config_fingerprint",
    "load_record",
    "merge_records",
    "read_csv_rows",
    "record_digest",
    "record_path",
    "save_record",
    "try_lock",
    "usual_mode",
]

RECORD_VERSION = 1
LOG = logging.getLogger("bigain.storage.records")


# ----------------------------------------------------------------------------- atomic files

def process_umask() -> int:
    """This process's umask (Linux: read from /proc, which leaves it untouched; elsewhere set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(directory: bool = False) -> int:
    """The mode `open` / `mkdir` would give a new file / folder (0o666 / 0o777 less the umask): temp files and
    folders are private (0o600 / 0o700), and a result renamed into place must not stay unreadable to the group."""
    return (0o777 if directory else 0o666) & ~process_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file in the same folder, fsync, then os.replace (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred():  # a SIGTERM waits for the rename (or the cleanup): no temp file left behind
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(fd, usual_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (temp file in the same folder, then rename)."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Write a whole CSV atomically: `header`, then each row's values in header order (missing: '', extra keys
    ignored), csv-module quoting and line ends; the text is built before the file is touched."""
    text = _csv_line(header, {k: k for k in header})
    text += "".join(_csv_line(header, r) for r in rows)
    return atomic_write_bytes(path, text.encode())


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: Optional[dict[str, str]] = None) -> Path:
    """Save tensors (detached, on CPU, contiguous) as a safetensors file atomically, like `safetensors.torch.save_file`
    but through :func:`atomic_write_bytes` (never a half-written weights file)."""
    data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON-dump `obj` atomically (indented, sorted keys)."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_fingerprint(config: dict) -> str:
    """Short stable hash of the settings that change a result."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def append_csv_row(path: str | Path, row: dict[str, Any]) -> Path:
    """Append one row (header written when the file is new; columns are the union, in first-seen order).

    Safe for concurrent writers: the whole read-modify-write holds `<csv>.lock`; a file whose last
    line lacks its newline (a killed writer) gets one first, so the new row never glues onto it.
    """
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=600):
        if not (path.is_file() and path.stat().st_size > 0):
            atomic_write_csv(path, list(row), [row])
            return path
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if set(row) - set(header):  # new columns: rewrite the file with the wider header (malformed rows dropped)
            old = read_csv_rows(path)[1]
            header = header + [k for k in row if k not in header]
            atomic_write_csv(path, header, old + [row])
            return path
        line = _csv_line(header, row)
        if not _drop_cut_last_row(path, len(header)):
            line = "\n" + line  # a complete last row missing only its newline
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    return path


def _drop_cut_last_row(path: Path, n_fields: int) -> bool:
    """Make `path` end with a line end before an append (caller holds the lock): True when it does (or now does
    because a cut last row, one without `n_fields` fields or with an open quote, was removed with a warning naming
    it); False when the last row is complete but lacks its newline (the caller adds one)."""
    data = path.read_bytes()
    if not data or data.endswith((b"\n", b"\r")):
        return True
    start = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    tail = data[start:].decode("utf-8", "replace")
    try:
        fields = next(csv.reader(io.StringIO(tail), strict=True), [])
    except csv.Error:
        fields = None
    if fields is not None and len(fields) == n_fields:
        return False
    LOG.warning("%s line %d: a cut row (%s fields, expected %d; a writer killed mid-row) is removed before "
                "appending: %r", path, data[:start].count(b"\n") + 1, "?" if fields is None else len(fields),
                n_fields, tail[:200])
    atomic_write_bytes(path, data[:start])
    return True


def read_csv_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a summary CSV; a row without the header's field count (cut or damaged) is named in a
    warning and skipped, so no reader builds on it."""
    path = Path(path)
    rows: list[dict[str, str]] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                LOG.warning("%s line %d: %d fields, expected %d (a cut or damaged row): skipped", path,
                            reader.line_num, len(values), len(header))
                continue
            rows.append(dict(zip(header, values)))
    return header, rows


def clean_stale_tmp(folder: str | Path, max_age_s: float = 3600.0) -> int:
    """Delete temp files and folders (`.<name>.*.tmp`: `atomic_write_bytes`, `media.write_video_item`) older than
    `max_age_s` left by killed runs; returns the count."""
    import shutil
    import time

    folder, removed, now = Path(folder), 0, time.time()
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                if tmp.is_dir():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                removed += 1
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed


@contextlib.contextmanager
def try_lock(path: str | Path) -> Iterator[bool]:
    """Non-blocking exclusive lock on `path` (a lock file): yields True when this process holds it, False when
    another does."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _csv_line(header: Sequence[str], row: dict[str, Any]) -> str:
    """One CSV line for `row` in `header` order."""
    buf = io.StringIO()
    csv.writer(buf).writerow([row.get(k, "") for k in header])
    return buf.getvalue()


# ----------------------------------------------------------------------------- records


@dataclass
class ImageRecord:
    """Result of one image: errors[class row, timestep slot, trial] (NaN = not evaluated), prediction, label."""

    index: int
    labels: list[int]  # one entry, or several for multi-label datasets
    pred: int  # predicted classidx
    errors: np.ndarray  # float32 (num_classes, num_slots, n_trials)
    timesteps: np.ndarray  # int64 (num_slots,) the timestep grid
    classidx: np.ndarray  # int64 (num_classes,) classidx of each row
    calls: int  # denoiser evaluations (samples, not batches)
    model_time_s: float
    wall_time_s: float = 0.0
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        """Prediction is (one of) the label(s)."""
        return int(self.pred) in set(int(v) for v in self.labels)

    def scores(self) -> np.ndarray:
        """Mean error per class over everything evaluated (inf for rows never evaluated)."""
        with np.errstate(invalid="ignore"), _quiet():
            flat = self.errors.reshape(self.errors.shape[0], -1)
            counts = np.isfinite(flat).sum(1)
            sums = np.where(np.isfinite(flat), flat, 0).sum(1)
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


class _quiet:
    """Context manager silencing numpy RuntimeWarnings."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def record_path(run_dir: str | Path, index: int) -> Path:
    """Where the record of dataset image `index` lives."""
    return Path(run_dir) / "records" / f"{int(index):08d}.npz"


RECORD_ARRAYS = ("errors", "timesteps", "classidx")  # digest order


def record_digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """sha256 of a record's contents: each array's name, dtype, shape and bytes in RECORD_ARRAYS order, then the
    metadata JSON (sorted keys) without the digest itself; an edited record no longer matches it."""
    h = hashlib.sha256()
    for name in RECORD_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    return h.hexdigest()


def save_record(path: str | Path, rec: ImageRecord) -> Path:
    """Write a record atomically as .npz (arrays + a JSON string with the contents' digest, no pickles)."""
    meta = {"version": RECORD_VERSION, "index": int(rec.index), "labels": [int(v) for v in rec.labels],
            "pred": int(rec.pred), "calls": int(rec.calls), "model_time_s": float(rec.model_time_s),
            "wall_time_s": float(rec.wall_time_s), "fingerprint": rec.fingerprint, "extra": rec.meta}
    arrays = {"errors": np.asarray(rec.errors, np.float32), "timesteps": np.asarray(rec.timesteps, np.int64),
              "classidx": np.asarray(rec.classidx, np.int64)}
    meta["digest"] = record_digest(arrays, meta)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, meta=np.array(json.dumps(meta)))
    return atomic_write_bytes(path, buf.getvalue())


def check_record_paths(paths: Iterable[str | Path]) -> None:
    """IsADirectoryError naming the first record path that is a folder: checked when a run starts, not when its
    record is finally written."""
    for path in paths:
        if Path(path).is_dir():
            raise IsADirectoryError(f"{path} is a folder where a record file belongs; remove it and rerun")


def load_record(path: str | Path, fingerprint: str | None = None) -> ImageRecord | None:
    """A valid record, or None when missing, corrupt, incomplete, of another version or another config."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            errors, timesteps, classidx = f["errors"], f["timesteps"], f["classidx"]
            meta = json.loads(str(f["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
    if meta.get("version") != RECORD_VERSION or (fingerprint is not None and meta.get("fingerprint") != fingerprint):
        return None
    arrays = {"errors": errors, "timesteps": timesteps, "classidx": classidx}
    if "digest" in meta and record_digest(arrays, meta) != meta["digest"]:  # records written before digests: kept
        LOG.warning("%s: contents do not match the record's digest (edited or damaged): it is not counted and "
                    "is recomputed", path)
        return None
    if errors.ndim != 3 or errors.shape[0] != classidx.shape[0] or errors.shape[1] != timesteps.shape[0]:
        return None
    if int(meta["pred"]) not in set(classidx.tolist()) or not np.isfinite(errors).any():
        return None
    return ImageRecord(index=int(meta["index"]), labels=list(meta["labels"]), pred=int(meta["pred"]), errors=errors,
                       timesteps=timesteps, classidx=classidx, calls=int(meta["calls"]),
                       model_time_s=float(meta["model_time_s"]), wall_time_s=float(meta.get("wall_time_s", 0.0)),
                       fingerprint=str(meta.get("fingerprint", "")), meta=meta.get("extra", {}))


# ----------------------------------------------------------------------------- merge


@dataclass
class MergeResult:
    """Accuracy and cost over every valid record of a run (all shards)."""

    images: int
    correct: int
    expected: int
    missing: list[int]
    calls_per_image: float
    model_time_s: float  # summed over images
    image_wall_time_s: float  # summed per-image wall time

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in [0, 1] (NaN with no images)."""
        return self.correct / self.images if self.images else math.nan

    @property
    def complete(self) -> bool:
        """Every expected image has a valid record."""
        return not self.missing

    def to_dict(self) -> dict:
        """JSON-able summary."""
        return {"images": self.images, "correct": self.correct, "accuracy": self.accuracy, "expected": self.expected,
                "missing": len(self.missing), "complete": self.complete, "calls_per_image": self.calls_per_image,
                "model_time_s": self.model_time_s, "image_wall_time_s": self.image_wall_time_s}


def merge_records(run_dir: str | Path, indices: Sequence[int], fingerprint: str | None = None) -> MergeResult:
    """Read the records of `indices` (written by any shard) and total accuracy and cost."""
    correct = images = calls = 0
    model_time = wall = 0.0
    missing = []
    for i in indices:
        rec = load_record(record_path(run_dir, i), fingerprint)
        if rec is None:
            missing.append(int(i))
            continue
        images += 1
        correct += int(rec.correct)
        calls += rec.calls
        model_time += rec.model_time_s
        wall += rec.wall_time_s
    return MergeResult(images=images, correct=correct, expected=len(indices), missing=missing,
                       calls_per_image=calls / images if images else math.nan, model_time_s=model_time,
                       image_wall_time_s=wall)
