"""One matrix cell: its status, how an exception becomes one, and the checks that make a run "ok".

Statuses: ok (runs, finite, and the patch still reduces: a reduce/kv phase ran and the output differs from the same
feature unpatched); refused (a component says no, loudly, before any output: the engine or the library);
failing (the patched run crashes where the unpatched one does not, or runs silently wrong); n/a (the feature does not
exist for this backbone here: diffusers lacks it, or a package or an accelerator is missing, unpatched too).
"""
from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

import tomesd

STATUSES = ("ok", "refused", "failing", "n/a")
ENGINE_DIR = Path(tomesd.__file__).resolve().parent
REFUSAL_TYPES = (ValueError, NotImplementedError, TypeError, RuntimeError)
REASON_CHARS = 300


@dataclass(frozen=True)
class Cell:
    """A measured outcome; `reason` says why (for ok: what was checked)."""

    status: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")


def describe(err: BaseException) -> str:
    """'Type: first line of the message' (clipped), the form every reason takes."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def raised_by_engine(err: BaseException) -> bool:
    """True when the innermost frame of `err` is engine code (tomesd/): a deliberate refusal, not a crash."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(ENGINE_DIR)


def from_patched_error(err: BaseException) -> Cell:
    """A patched run's exception: refused when the engine raised a clear error on purpose, else failing."""
    if isinstance(err, REFUSAL_TYPES) and raised_by_engine(err):
        return Cell("refused", describe(err))
    return Cell("failing", describe(err))


class ReductionCounter:
    """A `tomesd.trace_reducers` tracer counting the reducer phases that ran (plan, score, match, reduce, restore,
    kv)."""

    def __init__(self) -> None:
        self.phases: Counter[str] = Counter()

    def __call__(self, phase: str) -> ContextManager[None]:
        self.phases[phase] += 1
        return contextlib.nullcontext()

    @property
    def reductions(self) -> int:
        """Token reductions (merge/prune) plus K/V downsamples that ran."""
        return self.phases["reduce"] + self.phases["kv"]


def first_tensor(out: Any) -> torch.Tensor:
    """The sample of a denoiser's output (tuple, BaseOutput or tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    return first_tensor(out.to_tuple())


def judge(out: torch.Tensor, unpatched: torch.Tensor, counter: ReductionCounter, detail: str = "") -> Cell:
    """The "ok" rule: finite output, the patch reduced, and the output differs from the unpatched run's."""
    if not torch.isfinite(out).all():
        return Cell("failing", "non-finite output")
    if counter.reductions == 0:
        return Cell("failing", "the patch did not reduce: no reduce/kv phase ran")
    if out.shape == unpatched.shape and torch.equal(out, unpatched):
        return Cell("failing", "output equals the unpatched run's: the patch had no effect")
    delta = (out.float() - unpatched.float()).abs().max().item() if out.shape == unpatched.shape else float("nan")
    text = f"{counter.reductions} reductions, max |patched - unpatched| {delta:.3g}"
    return Cell("ok", f"{detail}; {text}" if detail else text)


def patched_vs_plain(build: Callable[[], Any], patch: Callable[[Any], Any], prepare: Callable[[Any], Any],
                     run: Callable[[Any], torch.Tensor], *, trace_target: Callable[[Any], Any] = lambda m: m,
                     patch_first: bool = True, plain_failure: str = "n/a") -> Cell:
    """Run a feature unpatched (`prepare` then `run`), then patched (`patch` before or after `prepare`) under a
    reduction counter, and judge. An unpatched failure gives `plain_failure` (the feature is absent here)."""
    try:
        reference = run(prepare(build()))
    except Exception as err:  # noqa: BLE001 - every failure becomes a cell
        return Cell(plain_failure, f"unpatched too: {describe(err)}")
    counter = ReductionCounter()
    try:
        subject = build()
        if patch_first:
            patch(subject)
            subject = prepare(subject)
        else:
            subject = prepare(subject)
            patch(subject)
        with tomesd.trace_reducers(trace_target(subject), counter):
            out = run(subject)
    except Exception as err:  # noqa: BLE001
        return from_patched_error(err)
    return judge(out, reference, counter)
