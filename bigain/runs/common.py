"""What the typed runs share: reducer options carried as one mapping, the CLI namespace view of a run, and the
run-folder plumbing (logging, git commit, barrier of a multi-process launch)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch.distributed as dist

from bigain.cli import model_label
from bigain.reduction import REDUCTION_FLAGS, run_reduction_tag

__all__ = ["RunFields", "barrier", "git_commit", "refuse_auto_with_shards", "setup_logging"]


@dataclass(frozen=True)
class RunFields:
    """The settings every run kind shares (data source, model, reducer, outputs and sharding; same names as the CLI
    flags). List values become tuples, reducer options (`reduction`, the values of
    bigain.reduction.options.REDUCTION_FLAGS
    that are set) one mapping; `namespace()` is the CLI's view of the run. Each run kind sets its own `output_dir`
    default."""

    # data
    dataset_root: Optional[str] = None
    split: Optional[str] = None
    data_dir: Optional[str] = None
    skip_bad_images: bool = False
    prompts_csv: Optional[str] = None
    max_images: Optional[int] = None
    # model
    version: str = "2-0"
    model_path: Optional[str] = None
    dtype: str = "auto"
    device: str = "auto"
    tf32: bool = False
    cpu_threads: Optional[int] = None
    # seed of the run (noise, timesteps)
    seed: int = 0
    # token reduction: the method, the reducer's seed and its options (bigain.reduction.options.REDUCTION_FLAGS)
    method: str = "none"
    reduction_seed: Optional[int] = None
    reduction: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # outputs, resumption, sharding
    output_dir: str = "results"
    run_dir: Optional[str] = None
    summary_csv: Optional[str] = None
    n_workers: int = 1
    worker_idx: int = 0
    no_flops: bool = False
    dry_run: bool = False
    config: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        reduction = {k: v for k, v in dict(self.reduction or {}).items() if v is not None}
        unknown = sorted(set(reduction) - set(REDUCTION_FLAGS))
        if unknown:
            raise ValueError(f"unknown reducer option(s) {unknown}; allowed: {sorted(REDUCTION_FLAGS)}")
        for key, value in reduction.items():  # an int for a float option is a float, as on the command line
            if getattr(REDUCTION_FLAGS[key][0], "base", None) is float and type(value) is int:
                reduction[key] = float(value)
        object.__setattr__(self, "reduction", reduction)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Any:
        """The run a parsed (and validated) command line describes; reducer flags are gathered into `reduction`."""
        values = vars(args)
        names = {f.name for f in dataclasses.fields(cls)} - {"reduction"}
        missing = sorted(names - set(values))
        if missing:
            raise ValueError(f"{cls.__name__}.from_args: the namespace lacks {missing}")
        reduction = {k: values[k] for k in REDUCTION_FLAGS if values.get(k) is not None}
        return cls(**{k: values[k] for k in names}, reduction=reduction)

    def namespace(self) -> argparse.Namespace:
        """The run as the CLI's parsed namespace (every dest, reducer flags unset as None, lists as lists)."""
        values = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                  for f in dataclasses.fields(self) if f.name != "reduction"}
        return argparse.Namespace(**values, **{k: self.reduction.get(k) for k in REDUCTION_FLAGS})

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def model_label(self) -> str:
        """Folder name of the model."""
        return model_label(self.model_path, self.version)

    @property
    def reduction_tag(self) -> str:
        """Folder name of the reducer settings (method, explicit options, reducer seed)."""
        return run_reduction_tag(self.method, self.reduction, self.reduction_seed)

    @property
    def summary_path(self) -> Path:
        """The summary CSV a run appends its row to: --summary_csv; else, with --run_dir and --output_dir left at
        its default, <run_dir>/summary.csv (the summary stays with the run); else <output_dir>/summary.csv."""
        if self.summary_csv:
            return Path(self.summary_csv)
        default_output = next(f.default for f in dataclasses.fields(self) if f.name == "output_dir")
        if self.run_dir and self.output_dir == default_output:
            return Path(self.run_dir) / "summary.csv"
        return Path(self.output_dir) / "summary.csv"


def refuse_auto_with_shards(n_shards: int) -> None:
    """Shards probing separately could find different sizes (other seeds per batch, other fingerprints)."""
    if n_shards > 1:
        raise ValueError("--batch_size auto with several shards (--n_workers or a multi-process launch): each shard "
                         "could find another size; run one shard with auto first (its --run_dir then records the "
                         "size), or give every shard the same fixed --batch_size")


def setup_logging(log: logging.Logger, run_dir: Path, tag: str) -> None:
    """Log to stderr and <run_dir>/log<tag>.txt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for h in (logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / f"log{tag}.txt")):
        h.setFormatter(fmt)
        log.addHandler(h)
    log.propagate = False


def barrier(n_procs: int) -> None:
    """Wait for every process of a multi-process launch (gloo works on CPU and GPU hosts alike)."""
    if n_procs <= 1:
        return
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    dist.barrier()
    dist.destroy_process_group()


def git_commit() -> str:
    """Current commit of the repository ('' outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except Exception:  # noqa: BLE001
        return ""
