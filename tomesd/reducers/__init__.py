"""Token reducers. Importing this package registers every built-in method, in this order.

A new method is one module here (an `Options` dataclass, `plan(ctx, opts)`, `kept_tokens`)
decorated with `@register_reducer`, plus its import below.
"""
# registration side effects, in listing order (kept out of import sorting)
# isort: off
from tomesd.reducers import none  # noqa: F401
from tomesd.reducers import tome  # noqa: F401
from tomesd.reducers import bigain_tm  # noqa: F401
from tomesd.reducers import todo  # noqa: F401
from tomesd.reducers import bigain_td  # noqa: F401
from tomesd.reducers import sito  # noqa: F401
# isort: on
from tomesd.reducers.base import KVPlan, Plan, ReductionContext, TokenPlan

__all__ = ["KVPlan", "Plan", "ReductionContext", "TokenPlan"]
