"""BiGain token-reduction engine, a drop-in superset of the `tomesd` API.

    import tomesd
    report = tomesd.apply_patch(pipe, method="bigain_tm", ratio=0.7)
    tomesd.remove_patch(pipe)
"""
from tomesd.options import option_defaults
from tomesd.patch import PatchReport, apply_patch, get_patch, patched, remove_patch, reseed, trace_reducers
from tomesd.registry import canonical_name, get_reducer, list_methods, method_label, register_reducer

__version__ = "0.2.0"


def method_options(method: str) -> dict:
    """Option name -> default for `method` (what `apply_patch` accepts besides `seed`)."""
    return option_defaults(get_reducer(method).Options)


__all__ = [
    "PatchReport", "apply_patch", "canonical_name", "get_patch", "get_reducer", "list_methods", "method_label",
    "method_options", "patched", "register_reducer", "remove_patch", "reseed", "trace_reducers",
]
