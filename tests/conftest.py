"""Shared pytest setup: the thread count, the `slow` marker (CI runs slow tests too) and the `one_thread` fixture."""
import os

import pytest
import torch

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
