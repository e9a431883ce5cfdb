"""Token reduction as the commands see it: the shared reducer flags and how they patch a model (`options`), and the
paper's settings with the one way to name a setting (`settings`)."""
from bigain.reduction.options import (
    REDUCTION_FLAGS,
    add_reduction_args,
    apply_reduction,
    reduction_kwargs,
    run_reduction_tag,
    validate_reduction,
)
from bigain.reduction.settings import (
    LABEL_SHORT,
    PAPER_METHODS,
    PAPER_SETTINGS,
    REUSE_SETTINGS,
    SETTING_GROUPS,
    declared_order,
    format_label,
    option_text,
    setting_label,
    setting_tag,
    speed_label,
)

__all__ = [
    "REDUCTION_FLAGS", "add_reduction_args", "apply_reduction", "reduction_kwargs", "run_reduction_tag",
    "validate_reduction", "LABEL_SHORT", "PAPER_METHODS", "PAPER_SETTINGS", "REUSE_SETTINGS", "SETTING_GROUPS",
    "declared_order", "format_label", "option_text", "setting_label", "setting_tag", "speed_label",
]
