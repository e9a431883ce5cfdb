"""The reducer interface: what a reducer receives and the plan it hands back to the hooks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from torch import Tensor

from ..rng import CounterRandom

TensorFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ReductionContext:
    """Everything a reducer may look at for one layer call.

    `metric` is (B, N, C) on an `height x width` row-major token grid; `timesteps` are per
    sample (B,), float, on the metric's device; `level` is the U-Net downsample level (1 on DiT).
    """

    metric: Tensor
    height: int
    width: int
    timesteps: Optional[Tensor]
    random: Optional[CounterRandom] = None
    level: int = 1

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


def do_nothing(x: Tensor) -> Tensor:
    """Identity, so callers never branch on an idle plan."""
    return x
