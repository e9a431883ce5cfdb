"""Files on disk: the atomic writers, locks, digests and fingerprints, and per-image result records (`records`);
generated media: PNG bytes and video items of frame PNGs plus a GIF (`media`); SIGTERM deferred around writes and
turned into a resumable stop (`preemption`)."""
from bigain.storage.media import GIF_NAME, gif_bytes, png_bytes, video_files, video_finished, write_video_item
from bigain.storage.preemption import PREEMPTED_EXIT, Preempted, deferred, sigterm_stops_run
from bigain.storage.records import (
    RECORD_VERSION,
    ImageRecord,
    MergeResult,
    append_csv_row,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    check_record_paths,
    clean_stale_tmp,
    config_fingerprint,
    file_digest,
    load_record,
    merge_records,
    read_csv_rows,
    record_digest,
    record_path,
    save_record,
    try_lock,
)

__all__ = [
    "RECORD_VERSION", "ImageRecord", "MergeResult", "append_csv_row", "atomic_save_safetensors", "atomic_write_bytes",
    "atomic_write_csv", "atomic_write_json", "atomic_write_text", "clean_stale_tmp", "config_fingerprint",
    "file_digest", "load_record", "merge_records", "record_path", "save_record", "try_lock", "check_record_paths",
    "read_csv_rows", "record_digest", "PREEMPTED_EXIT", "Preempted", "deferred", "sigterm_stops_run",
    "GIF_NAME", "gif_bytes", "png_bytes", "video_files", "video_finished", "write_video_item",
]
