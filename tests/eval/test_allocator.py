"""The steady CPU allocator for timing (eval.speed.allocator): freed activations are reused, not faulted in again."""
import statistics
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

# Allocate and free a 64 MiB tensor 12 times and print each time's minor page faults, in a fresh process (mallopt
# changes the whole process). Kept memory is reused once the heap has grown to fit, which takes a few allocations
# and may recur when small blocks land after the big one, so the test reads the median.
FAULTS = """
import resource, sys, torch
from eval.speed.allocator import keep_freed_memory
if sys.argv[1] == "steady":
    keep_freed_memory()
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 1024 * 1024).sum()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def median_faults(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return statistics.median(int(v) for v in out.stdout.split()[-12:])


@pytest.mark.skipif(_glibc_mallopt() is None, reason="needs glibc's mallopt")
def test_steady_allocator_stops_refaulting_freed_activations():
    """glibc unmaps a freed 64 MiB block, so each new one faults its 16,384 pages in again; kept, it mostly does not."""
    default, steady = median_faults("default"), median_faults("steady")
    assert default > 10_000  # 16,384 pages of 4 KiB each time
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
