"""The steady CPU allocator for timing (eval.speed.allocator): freed activations are reused, not faulted in again."""
import subprocess
import sys

import pytest

from eval.speed.allocator import (
    ALLOCATOR_DEFAULT,
    ALLOCATOR_STEADY,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    _glibc_mallopt,
    keep_freed_memory,
    set_allocator,
)

# Allocate and free a 64 MiB tensor 7 times; print the minor page faults of the last 5 (the heap grows to fit during
# the first two), in a fresh process, since mallopt changes the whole process.
FAULTS = """
import resource, sys, torch
from eval.speed.allocator import keep_freed_memory
if sys.argv[1] == "steady":
    keep_freed_memory()
def once():
    torch.ones(16 * 1024 * 1024).sum()
once()
once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    once()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc_mallopt() is None, reason="needs glibc's mallopt")
def test_steady_allocator_stops_refaulting_freed_activations():
    """glibc unmaps a freed 64 MiB block, so each new one faults its 16,384 pages in again; kept, it does not."""
    default, steady = minor_faults("default"), minor_faults("steady")
    assert default > 5 * 10_000  # 5 x 16,384 pages expected
    assert steady < 1_000


def test_keep_freed_memory_sets_both_thresholds_and_reports_refusal():
    calls = []
    assert keep_freed_memory(lambda p, v: calls.append((p, v)) or 1) == ALLOCATOR_STEADY
    assert {p for p, _ in calls} == {M_MMAP_THRESHOLD, M_TRIM_THRESHOLD} and all(v >= 2**30 for _, v in calls)
    assert keep_freed_memory(lambda p, v: 0).startswith(ALLOCATOR_DEFAULT + " (mallopt refused")


def test_set_allocator_applies_only_to_cpu_steady_and_rejects_unknown_choices():
    assert set_allocator("default", "cpu") == ALLOCATOR_DEFAULT
    assert set_allocator("steady", "cuda") == ALLOCATOR_DEFAULT
    with pytest.raises(ValueError, match="choose from"):
        set_allocator("jemalloc", "cpu")
