"""Report tool: paper-style tables (md/csv/tex), trade-off plots and intervals from any set of runs.

Command line: `python -m eval.report` (see `eval/report/__main__.py`). Modules: `rows` (reading runs into
one table), `tags` (tasks, methods, reduction tags, metrics), `tables` (cells with baseline deltas and their
rendering), `plots` (trade-off and per-class PNGs), `outcomes` (per-item outcomes and intervals, `eval.stats`).
"""
from eval.report.outcomes import (
    add_intervals,
    classification_outcomes,
    generation_outcomes,
    paired_markdown,
    partner_tag,
    setting_statistics,
)
from eval.report.plots import per_class_heatmap, per_class_plots, sample_grid, save_figure, tradeoff_plots
from eval.report.rows import add_derived, collect_rows
from eval.report.tables import (
    build_table,
    format_cell,
    iter_tables,
    table_values,
    to_csv,
    to_latex,
    to_markdown,
    write_table,
    write_tables,
)
from eval.report.tags import (
    DEFAULT_METRICS,
    METHOD_NAMES,
    METRICS,
    TASKS,
    Metric,
    ReportError,
    get_metric,
    is_baseline,
    parse_reduction,
    reduction_label,
    reduction_sort_key,
    short_model,
)

__all__ = [
    "TASKS", "METRICS", "DEFAULT_METRICS", "METHOD_NAMES", "Metric", "ReportError", "get_metric", "is_baseline",
    "parse_reduction", "reduction_label", "reduction_sort_key", "short_model", "collect_rows", "add_derived",
    "build_table", "table_values", "iter_tables", "format_cell", "to_markdown", "to_latex", "to_csv",
    "write_table", "write_tables", "tradeoff_plots", "per_class_plots", "per_class_heatmap", "sample_grid",
    "save_figure", "add_intervals", "paired_markdown", "classification_outcomes", "generation_outcomes",
    "setting_statistics", "partner_tag",
]
