"""What every CLI shares: checked numeric argparse types, output-path checks, and `run_cli` (clean errors).

Bad input ends as ``error: <message>`` on stderr with exit status 2, before any model is loaded;
``--debug`` (or ``BIGAIN_DEBUG=1``) re-raises instead, for a traceback.

    p.add_argument("--steps", type=positive_int)
    check_output_dir(args.output_dir, "--output_dir")     # before loading anything
    if __name__ == "__main__":
        run_cli(main)
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

__all__ = ["BAD_INPUT", "check_output_dir", "check_output_file", "finite_float", "fraction", "nonneg_float", "nonneg_int",
           "positive_float", "positive_int", "run_cli"]

# exceptions that mean "bad input" (FileNotFoundError covers DatasetLayoutError and ModelNotFoundError)
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                              PermissionError, argparse.ArgumentTypeError, yaml.YAMLError)


def _checked(base: type, name: str, allowed: str, ok: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """An argparse `type`: parse with `base`, reject NaN/inf and values failing `ok` with a message saying what is allowed."""

    def parse(text: Any) -> Any:
        try:
            value = base(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if (base is float and not math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    parse.__name__ = name
    parse.base = base  # config files check values with the same function (bigain.config)
    return parse


positive_int = _checked(int, "positive_int", "an integer >= 1", lambda v: v >= 1)
nonneg_int = _checked(int, "nonneg_int", "an integer >= 0", lambda v: v >= 0)
finite_float = _checked(float, "finite_float", "a finite number", lambda v: True)
nonneg_float = _checked(float, "nonneg_float", "a finite number >= 0", lambda v: v >= 0)
positive_float = _checked(float, "positive_float", "a finite number > 0", lambda v: v > 0)
fraction = _checked(float, "fraction", "a number in [0, 1)", lambda v: 0 <= v < 1)


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest existing ancestor."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: Optional[str | os.PathLike], flag: str) -> None:
    """ValueError unless `path` is (or can be created as) a writable folder; checked before any work."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {target} exists and is not a folder")
    base = _nearest_existing(target)
    if not base.is_dir():
        raise ValueError(f"{flag} {target}: {base} is a file, so the folder cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {target} is not writable ({base} denies write access)")


def check_output_file(path: Optional[str | os.PathLike], flag: str) -> None:
    """ValueError unless `path` is a writable file, or can be created as one (not a folder)."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"{flag} {target} is a folder; give a file path")
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"{flag} {target} is not writable")
    check_output_dir(target.parent, f"{flag} {target}: folder")


def _debug_requested(argv: list[str]) -> bool:
    """`--debug` on the command line (removed from argv) or BIGAIN_DEBUG=1."""
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return flag or os.environ.get("BIGAIN_DEBUG", "").lower() in ("1", "true", "yes", "on")


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> Any:
    """Run a CLI's `main(argv)`: bad input -> `error: ...` on stderr and exit 2; --debug / BIGAIN_DEBUG=1 re-raises."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return main(args)
    except BAD_INPUT as err:
        if debug:
            raise
        message = str(err) or type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
