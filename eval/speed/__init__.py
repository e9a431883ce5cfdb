"""Speed tool: latency, FLOPs, memory and reducer overhead of every method against the unpatched SDPA baseline.

Command line: `python -m eval.speed` (see `eval/speed/__main__.py`). Modules: `cases` (settings, models,
presets), `timing` (instruments, one case, a whole run), `tables` (CSV/markdown/plot outputs),
`reliability` (speed-up intervals, rounds until narrow, the removed-layers bound and drift check; see
docs/speed_method.md), `check` (that check on published speed.csv files, `python -m eval.speed.check DIR`),
`model_zoo` (full-size architectures with random weights), `op_count` (ATen ops per reducer), `upstream`
(upstream tomesd 0.1.3 side by side), `sito_precision` and `shared_plans` (one-off measurements).
"""
import warnings

from eval.speed.cases import (
    BASELINE,
    METHODS,
    PRESET_FLAGS,
    PRESETS,
    Case,
    Setting,
    grid,
    make_settings,
    parse_model,
    preset_cases,
)
from eval.speed.model_zoo import MODEL_SPECS, ModelSpec, build_model, get_spec, list_models, make_inputs
from eval.speed.op_count import count_reducer_ops
from eval.speed.tables import BLOCK_COLUMNS, COLUMNS, RANDOM_WEIGHTS_NOTE, block_markdown, markdown_table, write_outputs
from eval.speed.timing import benchmark_case, count_reducer_flops, patched, run_benchmark, timed_reducers
from eval.speed.upstream import install_upstream, load_upstream

__all__ = [
    "BASELINE", "METHODS", "PRESETS", "PRESET_FLAGS", "Case", "Setting", "grid", "make_settings", "parse_model",
    "preset_cases", "MODEL_SPECS", "ModelSpec", "build_model", "get_spec", "list_models", "make_inputs",
    "count_reducer_ops", "benchmark_case", "run_benchmark", "COLUMNS", "BLOCK_COLUMNS", "RANDOM_WEIGHTS_NOTE",
    "markdown_table", "block_markdown", "write_outputs", "count_reducer_flops", "patched", "timed_reducers",
    "install_upstream", "load_upstream",
]

# `python -m eval.speed.op_count` / `python -m eval.speed.upstream` run a module this package has already imported
# (its API needs them); runpy warns about that, but the module then runs as a script normally.
warnings.filterwarnings("ignore", message=r"'eval\.speed\.\w+' found in sys\.modules after import of package "
                        r"'eval\.speed'", category=RuntimeWarning)
