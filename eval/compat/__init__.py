"""Compatibility matrix: does the patch compose with torch.compile, attention backends, cache hooks, offloading,
quantization, low precision, LoRA and custom processors? Every cell is measured by running tiny models.

Command line: `python -m eval.compat` (see `eval/compat/__main__.py`). Modules: `subjects` (backbones, tiny
pipelines), `cells` (statuses and the "ok" rule), `features` (one function per feature), `matrix` (run, write).
"""
from eval.compat.cells import STATUSES, Cell, ReductionCounter
from eval.compat.features import RunOptions, all_features
from eval.compat.matrix import Result, run_matrix, select_features, summary, write_matrix
from eval.compat.subjects import BACKBONES, Backbone, build_pipeline

__all__ = ["BACKBONES", "Backbone", "Cell", "ReductionCounter", "Result", "RunOptions", "STATUSES", "all_features",
           "build_pipeline", "run_matrix", "select_features", "summary", "write_matrix"]
