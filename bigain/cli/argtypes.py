"""Checked argparse types: parse a flag's text, reject NaN/inf and out-of-range values with a message saying what
is allowed. Config files check their values with the same functions (bigain.cli.config reads each type's `base`)."""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable

__all__ = ["AUTO", "batch_size", "finite_float", "fraction", "nonneg_float", "nonneg_int", "positive_float",
           "positive_int"]


def _checked(base: type, name: str, allowed: str, ok: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """An argparse `type`: parse with `base`, reject NaN/inf and values failing `ok` with a message saying what is
    allowed."""

    def parse(text: Any) -> Any:
        try:
            value = base(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if (base is float and not math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    parse.__name__ = name
    parse.base = base  # config files check values with the same function (bigain.cli.config)
    return parse


positive_int = _checked(int, "positive_int", "an integer >= 1", lambda v: v >= 1)
nonneg_int = _checked(int, "nonneg_int", "an integer >= 0", lambda v: v >= 0)
finite_float = _checked(float, "finite_float", "a finite number", lambda v: True)
nonneg_float = _checked(float, "nonneg_float", "a finite number >= 0", lambda v: v >= 0)
positive_float = _checked(float, "positive_float", "a finite number > 0", lambda v: v > 0)
fraction = _checked(float, "fraction", "a number in [0, 1)", lambda v: 0 <= v < 1)

AUTO = "auto"


def batch_size(text: Any) -> int | str:
    """A batch size: an integer >= 1, or 'auto' (the largest that fits in memory, found by halving:
    bigain.runs.batching)."""
    if isinstance(text, str) and text.strip().lower() == AUTO:
        return AUTO
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}") from None


batch_size.accepts_auto = True  # config files: an int, or the string 'auto' (bigain.cli.config)
