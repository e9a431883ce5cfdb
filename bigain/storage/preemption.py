"""SIGTERM, the way clusters preempt jobs, as a prompt and resumable stop: inside :func:`sigterm_stops_run` the
signal raises :class:`Preempted` in the main thread (dropping the record in flight; finished records are kept, and
:func:`deferred` blocks such as an atomic write finish first), and `bigain.cli.run_cli` turns it into a message
saying how to resume and exit status 143 (128 + SIGTERM, what a shell reports for a job ended by SIGTERM)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["PREEMPTED_EXIT", "Preempted", "deferred", "sigterm_stops_run"]

PREEMPTED_EXIT = 128 + signal.SIGTERM

_state = {"depth": 0, "pending": False}


class Preempted(BaseException):
    """SIGTERM arrived; like KeyboardInterrupt it is no Exception, so no `except Exception` swallows it."""


def _on_sigterm(signum: int, frame: object) -> None:
    """Raise Preempted now, or when the current deferred block ends."""
    if _state["depth"]:
        _state["pending"] = True
        return
    raise Preempted(f"signal {signum}")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a SIGTERM until the block ends (an atomic write, an image's PNG and its record): never half done.
    Only the main thread's blocks count (the signal is handled there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["pending"]:
            _state["pending"] = False
            if completed:  # an exception already ending the block wins
                raise Preempted(f"signal {int(signal.SIGTERM)}")


@contextlib.contextmanager
def sigterm_stops_run() -> Iterator[None]:
    """SIGTERM raises Preempted for the duration of the block (main thread only; the old handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
