"""Shared pytest setup: tests import helpers from this folder; `slow` marks long tests (CI runs them)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still run in CI)")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a shared CPU two contended threads are much slower than one.

    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
