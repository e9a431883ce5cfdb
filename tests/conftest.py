"""Shared pytest setup: the thread count, the `slow` marker (CI runs slow tests too), the `one_thread` fixture and
the attention spies (`sdpa_calls`, `dispatch_calls`) the engine tests share."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, dispatch_attention_fn

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


@pytest.fixture
def sdpa_calls(monkeypatch):
    """(query length, key length) of every `torch.nn.functional.scaled_dot_product_attention` call, in order."""
    calls, original = [], F.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        calls.append((query.shape[-2], key.shape[-2]))
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.fixture
def dispatch_calls(monkeypatch):
    """Backend (an `AttentionBackendName` or None) of every `dispatch_attention_fn` call, in order: the spy replaces
    it in every loaded module that imported it (diffusers' processors, the engine's attention bodies). diffusers'
    process-wide active backend (which `set_attention_backend` also sets) is restored after the test."""
    calls, original = [], dispatch_attention_fn

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "dispatch_attention_fn", None) is original:
            monkeypatch.setattr(module, "dispatch_attention_fn", spy)
    active = _AttentionBackendRegistry._active_backend
    yield calls
    _AttentionBackendRegistry._active_backend = active
