"""The unpatched baseline as a method name, so sweeps and CLIs treat it like any other."""
from __future__ import annotations

from dataclasses import dataclass

from tomesd.reducers.base import Plan, ReductionContext
from tomesd.registry import register_reducer


@dataclass(frozen=True)
class NoOptions:
    """The baseline takes no options."""


@register_reducer("none", aliases=("baseline",), label="Baseline")
class NoReduction:
    """Never reduces; `apply_patch(method="none")` removes any patch and installs nothing."""

    Options = NoOptions
    plan_kind = "none"
    default_blocks = "all"

    @staticmethod
    def needs_host_timesteps(opts: NoOptions) -> bool:
        return False

    @staticmethod
    def plan(ctx: ReductionContext, opts: NoOptions) -> Plan:
        return None

    @staticmethod
    def kept_tokens(height: int, width: int, opts: NoOptions, level: int = 1) -> int:
        return height * width
