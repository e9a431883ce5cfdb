"""Sweeps: expand a grid (tasks x models x datasets x methods x settings) into runs and execute them.

    python -m bigain.sweep configs/sweeps/testbed.yaml --plan        # print the plan, run nothing
    python -m bigain.sweep configs/sweeps/testbed.yaml               # run what is not finished
    python -m bigain.sweep SWEEP.yaml --n_workers 4 --worker_idx 0   # one of four shards (e.g. per GPU)

Sweep file keys: `name`, `output_dir`, `tasks` (classify, generate), `models` and `methods` (each
a preset file or an inline mapping; list values inside a method mapping expand into a grid,
e.g. `{method: tome, ratio: [0.3, 0.5, 0.7]}`), `datasets`, and optional `experiment` (preset
file or mapping applied to every run) and `options` (mapping applied last). Each run's options
are validated against its task's CLI before anything runs; a finished run (marker file with
the hash of its options) is skipped, so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tqdm.auto import tqdm

from bigain import classify, generate
from bigain.cli import (
    check_output_dir,
    nonneg_int,
    option_actions,
    option_dest,
    positive_int,
    read_yaml_mapping,
    run_cli,
    validate_config,
)
from bigain.models import model_identity
from bigain.reduction import run_reduction_tag
from bigain.runs import ClassifyRun, GenerateRun, run_classification, run_generation
from bigain.storage import atomic_write_text, file_digest


@dataclass(frozen=True)
class Task:
    """A task a sweep can run: its CLI's parser (the schema of its options), its typed run and run function."""

    build_parser: Callable[[], argparse.ArgumentParser]
    run_type: type
    run: Callable[[Any], dict]


TASKS: dict[str, Task] = {
    "classify": Task(classify.build_parser, ClassifyRun, run_classification),
    "generate": Task(generate.build_parser, GenerateRun, run_generation),
}
SWEEP_KEYS = {"name", "output_dir", "tasks", "models", "datasets", "methods", "experiment", "options"}
DONE_MARKER = "sweep_done.json"


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the grid: which CLI, with which options, into which folder."""

    task: str
    model: str
    dataset: str
    tag: str
    options: dict[str, Any]
    run_dir: Path

    @property
    def options_hash(self) -> str:
        """Hash of the options and of the content of the files they name (model folder weights, prompt files)."""
        inputs = {"options": self.options, "inputs": input_identities(self.options)}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        marker = self.run_dir / DONE_MARKER
        try:
            return json.loads(marker.read_text()).get("options_hash") == self.options_hash
        except (OSError, ValueError):
            return False


PATH_OPTIONS = ("model_path", "prompts_csv", "prompts_file", "config")


def input_identities(options: dict[str, Any]) -> dict[str, Any]:
    """Content identity of the local inputs a run's options name: a model folder's weights (bigain.models.identity), a
    file's sha256; so a sweep cell whose model or prompts changed since it finished is run again."""
    out: dict[str, Any] = {}
    for key in PATH_OPTIONS:
        values = options.get(key)
        for value in values if isinstance(values, list) else [values]:
            path = Path(str(value)).expanduser() if value is not None else None
            if path is not None and path.is_dir():
                out[f"{key}:{value}"] = model_identity(path) if key == "model_path" else str(path)
            elif path is not None and path.is_file():
                out[f"{key}:{value}"] = file_digest(path)
    return out


def load_part(entry: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A preset file (name = its stem) or an inline mapping (name from `name:` or its values)."""
    if isinstance(entry, str):
        return Path(entry).stem, read_yaml_mapping(entry)
    if isinstance(entry, dict):
        data = dict(entry)
        name = str(data.pop("name", "")) or "_".join(f"{k}{v}" for k, v in sorted(data.items()))
        return name, data
    raise ValueError(f"{where}: expected a preset file path or a mapping, got {entry!r}")


def expand_grid(options: dict[str, Any]) -> list[dict[str, Any]]:
    """{a: [1, 2], b: 3} -> [{a: 1, b: 3}, {a: 2, b: 3}] (lists of list-valued CLI options stay whole)."""
    keys = [k for k, v in options.items() if isinstance(v, list) and k not in ("n_samples", "to_keep", "blocks")]
    if not keys:
        return [dict(options)]
    combos = itertools.product(*(options[k] for k in keys))
    return [{**options, **dict(zip(keys, combo))} for combo in combos]


def method_tag(options: dict[str, Any]) -> str:
    """Folder-safe name of a method setting, e.g. `bigain_tm_ratio0.7` (baseline: `none`): a run's reduction tag."""
    return run_reduction_tag(options.get("method", "none"), options)


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and shape-check a sweep file."""
    spec = read_yaml_mapping(path)
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown sweep key(s) {unknown}; allowed: {sorted(SWEEP_KEYS)}")
    for key in ("tasks", "models", "datasets", "methods"):
        if not isinstance(spec.get(key), list) or not spec[key]:
            raise ValueError(f"{path}: `{key}` must be a non-empty list")
    bad = [t for t in spec["tasks"] if t not in TASKS]
    if bad:
        raise ValueError(f"{path}: unknown task(s) {bad}; allowed: {sorted(TASKS)}")
    return spec


def task_parser(task: str) -> argparse.ArgumentParser:
    """The argparse parser of a task's CLI (the schema its options are validated against)."""
    return TASKS[task].build_parser()


def plan_sweep(path: str | Path, output_dir: Optional[str] = None) -> list[PlannedRun]:
    """Every run of the sweep, in a fixed order, each validated against its task's CLI."""
    spec = load_sweep(path)
    base = Path(output_dir or spec.get("output_dir") or Path("runs") / spec.get("name", Path(path).stem))
    experiment = load_part(spec["experiment"], f"{path}: experiment")[1] if spec.get("experiment") else {}
    extra = dict(spec.get("options") or {})
    models = [load_part(m, f"{path}: models") for m in spec["models"]]
    methods = [(name, setting) for m in spec["methods"] for name, data in [load_part(m, f"{path}: methods")]
               for setting in expand_grid(data)]
    runs = []
    for task in spec["tasks"]:
        parser = task_parser(task)
        for (model_name, model_opts), dataset, (_, method_opts) in itertools.product(models, spec["datasets"], methods):
            options = {**experiment, **model_opts, **method_opts, "dataset": dataset, **extra}
            validate_config(options, parser, f"{path} [{task}/{model_name}/{dataset}]")
            tag, data_name = method_tag(options), "classes" if dataset is None else str(dataset)
            runs.append(PlannedRun(task, model_name, data_name, tag, options,
                                   base / task / model_name / data_name / tag))
    return runs


def options_to_argv(options: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    """Explicit command-line flags for validated options (booleans as flags, lists as nargs)."""
    actions = option_actions(parser)
    argv: list[str] = []
    for key, value in options.items():
        action = actions[option_dest(parser, key) or key]
        flag = next(s for s in action.option_strings if s.startswith("--"))
        if action.nargs == 0:
            if bool(value) != bool(action.default):
                argv.append(flag)
        elif value is None:
            continue
        elif isinstance(value, list) and key != "blocks":
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def run_argv(run: PlannedRun, summary_csv: Path) -> list[str]:
    """The command line of one run (recorded in its done marker; `python -m bigain.<task>` with it does the same)."""
    return options_to_argv(run.options, task_parser(run.task)) + [
        "--run_dir", str(run.run_dir), "--summary_csv", str(summary_csv)]


def typed_run(run: PlannedRun, summary_csv: Path) -> Any:
    """The ClassifyRun / GenerateRun of one cell: its options through the task CLI's types and checks (as a config
    file's would be), unset values at the CLI's defaults, output into the cell's folder."""
    parser = task_parser(run.task)
    values = validate_config(run.options, parser, f"sweep run {run.task}/{run.model}/{run.dataset}/{run.tag}")
    parser.set_defaults(**{k: v for k, v in values.items() if v is not None},
                        run_dir=str(run.run_dir), summary_csv=str(summary_csv))
    return TASKS[run.task].run_type.from_args(parser.parse_args([]))


def execute(run: PlannedRun, summary_csv: Path, runner: Optional[Callable[[str, Any], Any]] = None) -> None:
    """Run one cell (its typed run through the task's run function, or `runner(task, typed run)`) and mark it done."""
    typed = typed_run(run, summary_csv)
    if runner is None:
        TASKS[run.task].run(typed)
    else:
        runner(run.task, typed)
    atomic_write_text(run.run_dir / DONE_MARKER, json.dumps(
        {"options_hash": run.options_hash, "options": run.options, "argv": run_argv(run, summary_csv),
         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2, default=str))


def print_plan(runs: Sequence[PlannedRun], mine: Sequence[int]) -> None:
    """One line per run with its status and command."""
    for i, run in enumerate(runs):
        status = "done" if run.is_done() else ("pending" if i in mine else "other worker")
        print(f"[{i:3d}] {status:12s} {run.task:8s} {run.model:20s} {run.dataset:12s} {run.tag}")
    print(f"{sum(r.is_done() for r in runs)}/{len(runs)} runs done")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bigain.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--plan", "--dry-run", dest="plan", action="store_true", help="print the runs; run nothing")
    parser.add_argument("--output_dir", default=None, help="override the sweep's output_dir")
    parser.add_argument("--n_workers", type=positive_int, default=1, help="number of workers sharing the sweep")
    parser.add_argument("--worker_idx", type=nonneg_int, default=0, help="this worker's index in [0, n_workers)")
    parser.add_argument("--keep_going", action="store_true", help="continue after a failed run")
    return parser


def main(argv: Optional[Sequence[str]] = None, runner: Optional[Callable[[str, Any], Any]] = None) -> list[PlannedRun]:
    """Plan (and unless --plan, execute) a sweep; returns the planned runs."""
    args = build_parser().parse_args(argv)
    if not 0 <= args.worker_idx < args.n_workers:
        raise ValueError(f"--worker_idx must be in [0, {args.n_workers}), got {args.worker_idx}")
    check_output_dir(args.output_dir, "--output_dir")
    runs = plan_sweep(args.sweep, args.output_dir)
    if not args.plan:
        for base in {r.run_dir.parents[3] for r in runs}:
            check_output_dir(base, "sweep output_dir")
    mine = [i for i in range(len(runs)) if i % args.n_workers == args.worker_idx]
    if args.plan:
        print_plan(runs, mine)
        return runs
    pending = [i for i in mine if not runs[i].is_done()]
    failures = []
    for i in tqdm(pending, desc="sweep", unit="run"):
        run = runs[i]
        summary_csv = run.run_dir.parents[2] / "summary.csv"
        try:
            execute(run, summary_csv, runner)
        except Exception as err:  # noqa: BLE001 - reported, and re-raised unless --keep_going
            failures.append((run, err))
            print(f"run {i} ({run.task}/{run.model}/{run.dataset}/{run.tag}) failed: {err}", file=sys.stderr)
            if not args.keep_going:
                raise
    print(f"{len(pending) - len(failures)} run(s) finished, {len(failures)} failed, "
          f"{len(mine) - len(pending)} already done")
    return runs


if __name__ == "__main__":
    run_cli(main)
