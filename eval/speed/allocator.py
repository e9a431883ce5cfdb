"""CPU timing with a steady allocator: keep freed memory in the process instead of handing it back to the OS.

glibc serves large blocks (activations of a 50-row batch are tens of MB) with `mmap` and unmaps them when freed,
so every call page-faults its activations in again; on the testbed DiT that is about a fifth of a call, and how
much depends on what ran just before (the other settings of an interleaved round), which the noise check then
reads as baseline drift. A GPU caching allocator keeps such blocks; `keep_freed_memory` makes glibc do the same
(`mallopt`: no mmap below 2 GiB, no trimming), for the rest of the process. docs/speed_method.md has the numbers.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable, Optional

__all__ = ["ALLOCATORS", "ALLOCATOR_DEFAULT", "ALLOCATOR_STEADY", "keep_freed_memory", "set_allocator"]

ALLOCATORS = ("steady", "default")  # the choices of --allocator
ALLOCATOR_DEFAULT = "default"
ALLOCATOR_STEADY = "glibc: freed memory kept (mallopt mmap and trim thresholds 2 GiB)"
# mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 2**31 - 1  # the largest value mallopt's int takes


def _glibc_mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's `mallopt`, or None on a C library without it (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return None


def keep_freed_memory(mallopt: Optional[Callable[[int, int], int]] = None) -> str:
    """Raise glibc's mmap and trim thresholds so freed activations are reused, not unmapped and faulted in again;
    returns the allocator setting in force (recorded next to the timings): `ALLOCATOR_STEADY` or why not."""
    mallopt = mallopt if mallopt is not None else _glibc_mallopt()
    if mallopt is None:
        return f"{ALLOCATOR_DEFAULT} (no glibc mallopt)"
    accepted = [mallopt(param, KEEP_BELOW) == 1 for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)]
    return ALLOCATOR_STEADY if all(accepted) else f"{ALLOCATOR_DEFAULT} (mallopt refused the thresholds)"


def set_allocator(choice: str, device_type: str) -> str:
    """Apply `--allocator` (steady: `keep_freed_memory`, on CPU only; a GPU has its caching allocator) and return
    the setting in force, for the table header and meta.json."""
    if choice not in ALLOCATORS:
        raise ValueError(f"unknown allocator {choice!r}; choose from {list(ALLOCATORS)}")
    if choice == "default" or device_type != "cpu":
        return ALLOCATOR_DEFAULT
    return keep_freed_memory()
