"""The reducer interface: what a reducer receives and the plan it hands back to the hooks."""
from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from typing import Any, Callable, ClassVar, ContextManager, Literal, Optional, Protocol, TypeVar, Union, get_args

from torch import Tensor

from tomesd.rng import CounterRandom

TensorFn = Callable[[Tensor], Tensor]
Tracer = Callable[[str], ContextManager[Any]]  # phase name -> a context manager around that phase
PlanKind = Literal["token", "kv", "none"]  # TokenPlan (shrink the sequence), KVPlan (shrink K/V), never plans
DefaultBlocks = Literal["published", "all"]  # blocks patched when `blocks=None`: the method's published pattern, or all
PHASES = ("plan", "score", "match", "reduce", "restore", "kv")  # the phases a tracer sees
R = TypeVar("R")


@dataclass(frozen=True)
class ReductionContext:
    """Everything a reducer may look at for one layer call.

    `metric` is (B, N, C) on an `height x width` row-major token grid; `timesteps` are per
    sample (B,), float, on the metric's device (on the host when the reducer asks for that);
    `level` is the U-Net downsample level (1 on DiT); `trace` is None unless a tracer is attached.
    """

    metric: Tensor
    height: int
    width: int
    timesteps: Optional[Tensor]
    random: Optional[CounterRandom] = None
    level: int = 1
    trace: Optional[Tracer] = None  # set by `tomesd.trace_reducers`; reducers run scoring/matching through `run_phase`

    @property
    def num_tokens(self) -> int:
        return self.metric.shape[1]


@dataclass(frozen=True)
class TokenPlan:
    """Shrink the token sequence before a layer (`reduce`) and restore it after (`restore`).

    ToMe/BiGain_TM (merge/unmerge) and SiTo (prune/recover) return this.
    """

    reduce: TensorFn
    restore: TensorFn
    kept_tokens: int


@dataclass(frozen=True)
class KVPlan:
    """Keep all queries; attend to keys/values built from `kv_source(hidden_states)`.

    `active` (B,) bool marks the samples that are compressed (None = all); the others run
    the unmodified attention. ToDo and BiGain_TD return this.
    """

    kv_source: TensorFn
    kv_tokens: int
    active: Optional[Tensor] = None


Plan = Union[TokenPlan, KVPlan, None]


def run_phase(trace: Optional[Tracer], phase: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """`fn(*args, **kwargs)`, inside `trace(phase)` when a tracer is attached (None: a plain call, so
    untraced forwards pay nothing and still compile to one graph)."""
    if trace is None:
        return fn(*args, **kwargs)
    with trace(phase):
        return fn(*args, **kwargs)


def traced_plan(plan: Plan, trace: Optional[Tracer]) -> Plan:
    """`plan` with its closures run inside `trace("reduce" | "restore" | "kv")` (unchanged without a tracer)."""
    if trace is None or plan is None:
        return plan

    def phase(name: str, fn: TensorFn) -> TensorFn:
        def run(x: Tensor) -> Tensor:
            return run_phase(trace, name, fn, x)
        return run

    if isinstance(plan, TokenPlan):
        return TokenPlan(reduce=phase("reduce", plan.reduce), restore=phase("restore", plan.restore),
                         kept_tokens=plan.kept_tokens)
    return KVPlan(kv_source=phase("kv", plan.kv_source), kv_tokens=plan.kv_tokens, active=plan.active)


class Reducer(Protocol):
    """What a registered reducer class provides (`register_reducer` checks it with `check_reducer`).

    Reducers are stateless classes of static methods: the options object carries every setting.
    """

    Options: ClassVar[type]  # frozen dataclass of validated options (`tomesd.options`)
    plan_kind: ClassVar[PlanKind]
    default_blocks: ClassVar[DefaultBlocks]
    name: ClassVar[str]  # set by `register_reducer`
    label: ClassVar[str]  # display label, set by `register_reducer`

    @staticmethod
    def needs_host_timesteps(opts: Any) -> bool:
        """Whether `plan` branches on timesteps in Python (then `ctx.timesteps` is a CPU copy, one device
        sync per forward); False keeps them on the device (no sync, CUDA-graph capturable)."""
        ...

    @staticmethod
    def plan(ctx: ReductionContext, opts: Any) -> Plan:
        """The plan for one layer call (None: leave this call unchanged)."""
        ...

    @staticmethod
    def kept_tokens(height: int, width: int, opts: Any, level: int = 1) -> int:
        """Tokens (or K/V tokens) kept on an `height x width` grid at U-Net `level`, for reports."""
        ...


REDUCER_METHODS = ("needs_host_timesteps", "plan", "kept_tokens")


def check_reducer(cls: type) -> None:
    """TypeError naming every way `cls` falls short of the `Reducer` protocol."""
    problems = []
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and is_dataclass(options) and options.__dataclass_params__.frozen):
        problems.append(f"Options must be a frozen dataclass type (got {options!r})")
    for attr, kind in (("plan_kind", PlanKind), ("default_blocks", DefaultBlocks)):
        value = getattr(cls, attr, None)
        if value not in get_args(kind):
            problems.append(f"{attr} must be one of {list(get_args(kind))} (got {value!r})")
    problems += [f"{name}(...) must be a static method or classmethod" for name in REDUCER_METHODS
                 if not callable(getattr(cls, name, None))]
    if problems:
        raise TypeError(f"{cls.__name__} is not a tomesd Reducer: " + "; ".join(problems)
                        + " (see tomesd.reducers.base.Reducer)")
