"""What every CLI shares: the model/data/output/shard flag groups, output-path checks, the launch shard, the model
label, the TF32 switch, and `run_cli` (clean errors). The checked argparse types live in bigain.cli.argtypes.

Bad input ends as ``error: <message>`` on stderr with exit status 2, before any model is loaded; SIGTERM ends a run
promptly with a message saying how to resume and exit status 143 (bigain.storage.preemption);
``--debug`` (or ``BIGAIN_DEBUG=1``) re-raises instead, for a traceback.

    p.add_argument("--steps", type=positive_int)       # checked types: from bigain.cli.argtypes import positive_int
    check_output_dir(args.output_dir, "--output_dir")     # before loading anything
    add_model_args(p); add_output_args(p.add_argument_group("outputs"), "results/x")   # shared flag groups
    if __name__ == "__main__":
        run_cli(main)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml

from bigain.cli import argtypes
from bigain.models import MODEL_VERSIONS
from bigain.storage.preemption import PREEMPTED_EXIT, Preempted, sigterm_stops_run

__all__ = ["BAD_INPUT", "add_data_args", "add_max_images_arg", "add_model_args", "add_output_args", "add_shard_args",
           "add_threads_arg", "check_output_dir", "check_output_file", "enable_tf32", "launch_shard", "model_label",
           "run_cli"]

# exceptions that mean "bad input" (FileNotFoundError covers DatasetLayoutError and ModelNotFoundError)
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                              PermissionError, argparse.ArgumentTypeError, yaml.YAMLError)




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


# ----------------------------------------------------------------------------- shared flag groups
# One spelling per flag across the CLIs: --threads, --output_dir, --max_images. The older spellings
# (--cpu_threads, --out, --n_images) stay as aliases; a config file may use either name (bigain.cli.config).

def add_threads_arg(group: Any, dest: str = "cpu_threads") -> None:
    """`--threads` (alias `--cpu_threads`): torch intra-op CPU threads."""
    group.add_argument("--threads", "--cpu_threads", dest=dest, type=argtypes.positive_int, default=None,
                       help="torch intra-op CPU threads (default: torch's choice; 1 on busy shared machines)")


def add_model_args(parser: argparse.ArgumentParser) -> Any:
    """The `model` group: --version, --model_path, --dtype, --device, --tf32, --threads."""
    g = parser.add_argument_group("model")
    g.add_argument("--version", default="2-0",
                   help=f"model: {', '.join(MODEL_VERSIONS)} or a hub id (default: 2-0 = SD 2 base)")
    g.add_argument("--model_path", default=os.environ.get("MODEL_PATH") or None,
                   help="local diffusers/testbed folder; overrides --version (default: $MODEL_PATH)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                   help="weights/activations dtype (auto: fp16 on GPU, fp32 on CPU)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (auto: GPU when present)")
    g.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on Ampere+ GPUs (recorded)")
    add_threads_arg(g)
    return g


def add_data_args(group: Any) -> None:
    """Dataset location flags: --dataset_root, --split, --data_dir, --skip_bad_images, --prompts_csv."""
    group.add_argument("--dataset_root", default=None, help="root of the datasets (default: $DATASET_ROOT)")
    group.add_argument("--split", default=None, help="split used (default: the dataset's test/val split)")
    group.add_argument("--data_dir", default=None, help="--dataset folder: folder with one sub-folder per class")
    group.add_argument("--skip_bad_images", action="store_true",
                       help="--dataset folder: leave out files that do not decode as images "
                            "(default: error naming them)")
    group.add_argument("--prompts_csv", default=None,
                       help="prompt CSV (prompt,classname,classidx) replacing the shipped one")


def add_max_images_arg(group: Any, help: str, default: Optional[int] = None, dest: str = "max_images") -> None:
    """`--max_images` (alias `--n_images`): how many items a run covers."""
    group.add_argument("--max_images", "--n_images", dest=dest, type=argtypes.positive_int, default=default,
                       help=help)


def add_output_args(group: Any, default: Optional[str], dest: str = "output_dir", run_files: bool = True) -> None:
    """`--output_dir` (alias `--out`), and with `run_files` --run_dir and --summary_csv."""
    group.add_argument("--output_dir", "--out", dest=dest, default=default, help="base folder of the outputs")
    if run_files:
        group.add_argument("--run_dir", default=None, help="explicit run folder (default: derived from every setting)")
        group.add_argument("--summary_csv", default=None,
                           help="summary CSV (default: <output_dir>/summary.csv; with --run_dir and no --output_dir: "
                                "<run_dir>/summary.csv)")


def add_shard_args(group: Any, what: str = "the work") -> None:
    """--n_workers / --worker_idx: independent jobs splitting the work (combined with a launch's processes)."""
    group.add_argument("--n_workers", type=argtypes.positive_int, default=1,
                       help=f"number of independent jobs sharing {what}")
    group.add_argument("--worker_idx", type=argtypes.nonneg_int, default=0, help="this job's index in [0, n_workers)")


# ----------------------------------------------------------------------------- runs


def launch_shard(environ: Optional[dict[str, str]] = None) -> tuple[int, int]:
    """(process rank, process count) of a multi-process launch; (0, 1) for a plain `python -m ...`.

    `accelerate launch` and `torchrun` both export RANK and WORLD_SIZE to every process, so reading
    them covers both without starting a process group. Inconsistent values are a ValueError.
    """
    env = os.environ if environ is None else environ
    try:
        world, rank = int(env.get("WORLD_SIZE", "1") or 1), int(env.get("RANK", "0") or 0)
    except ValueError:
        raise ValueError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r}: expected integers "
                         "(set by accelerate launch / torchrun)") from None
    world = max(1, world)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} outside [0, WORLD_SIZE={world}) (set by accelerate launch / torchrun)")
    return rank, world


def model_label(model_path: Optional[str | os.PathLike], version: str) -> str:
    """Folder name of a model in run paths: the model folder's name, else the version with '/' -> '--'."""
    return Path(model_path).resolve().name if model_path else str(version).replace("/", "--")


def enable_tf32(enabled: bool, device: torch.device) -> None:
    """Allow TF32 matmuls and convolutions when asked for and on a CUDA device (no effect elsewhere)."""
    if enabled and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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
        with sigterm_stops_run():
            return main(args)
    except Preempted:
        if debug:
            raise
        print("error: stopped by SIGTERM (preempted); every finished record is kept and the one in flight was "
              "dropped: run the same command again to resume", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT) from None
    except BAD_INPUT as err:
        if debug:
            raise
        message = str(err) or type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
