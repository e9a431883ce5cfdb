"""Shared pytest setup: tests import helpers from this folder; `slow` marks long tests (CI runs them)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still run in CI)")
