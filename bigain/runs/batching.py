"""`--batch_size auto`: the largest batch that fits in memory, found the field's way (accelerate's
`find_executable_batch_size`: try a large batch, halve on an out-of-memory error). The runs probe it once, with the
largest call the run will make, and then behave exactly like `--batch_size N` for the N found (same run folder,
fingerprint and records), so `auto` and fixed-size runs resume each other."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

from accelerate.utils import find_executable_batch_size

__all__ = ["find_batch_size", "recorded_batch_size"]

LOG = logging.getLogger("bigain.runs.batching")


def find_batch_size(probe: Callable[[int], object], start: int, what: str = "samples") -> int:
    """The first of start, start // 2, ..., 1 at which `probe(n)` raises no out-of-memory error (accelerate's test);
    ValueError when not even 1 fits. Other errors propagate."""
    current = {"n": max(1, int(start))}

    def halve() -> int:
        LOG.warning("--batch_size auto: %d %s ran out of memory; trying %d", current["n"], what, current["n"] // 2)
        current["n"] //= 2
        return current["n"]

    @find_executable_batch_size(starting_batch_size=current["n"], reduce_batch_size_fn=halve)
    def fits(batch_size: int) -> int:
        probe(batch_size)
        return batch_size

    try:
        found = fits()
    except RuntimeError as err:
        if "No executable batch size" not in str(err):
            raise
        raise ValueError(f"--batch_size auto: even a batch of 1 ({what}) runs out of memory on this device") from None
    LOG.warning("--batch_size auto: %d %s per call fit (started at %d)", found, what, start)
    return found


def recorded_batch_size(run_dir: Optional[str | Path]) -> Optional[int]:
    """The batch size an existing run folder's config.json records (a classification's `result_config`, a
    generation's settings), so `auto` resumes a run with the size it started with; None when there is none."""
    if not run_dir:
        return None
    try:
        data = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = data.get("result_config", {}).get("batch_size", data.get("batch_size"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None
