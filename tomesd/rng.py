"""The patch's random numbers: counter-based, a pure function of (seed, call counter, stream, index).

A `torch.Generator` cannot be traced by `torch.compile` (a graph break) and its state lives on the
host. Here a draw is an integer hash of the patch seed (a Python constant), a per-patch call counter
(an int64 tensor on the model's device, advanced in place once per denoiser call) and the stream of
the planning block, so a patched forward stays one graph, has no host sync and can be captured in a
CUDA graph; draws do not depend on the order blocks ask for them. 31-bit constants keep every product
of 32-bit values below 2**63, so the same int64 arithmetic gives the same bits on every device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence, Union

import torch
from torch import Tensor

from tomesd.reducers.grid import static_tensor

MASK32 = 0xFFFFFFFF
MUL1, MUL2 = 0x7FEB352D, 0x1B873593  # odd, < 2**31
GOLDEN = 0x9E3779B9

IntOrTensor = Union[int, Tensor]


def mix32(x: IntOrTensor) -> IntOrTensor:
    """A 32-bit integer hash (xor-shift-multiply rounds); works on Python ints and int64 tensors."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * MUL1) & MASK32
    x = x ^ (x >> 15)
    x = (x * MUL2) & MASK32
    return x ^ (x >> 16)


def call_key(seed: int, counter: Optional[Tensor]) -> IntOrTensor:
    """The key of one call: a hash of the seed and the call counter (a Python int for call 0 without one)."""
    base = mix32(mix32(seed) ^ GOLDEN)
    return mix32(base) if counter is None else mix32(counter + base)


@dataclass(frozen=True)
class CounterRandom:
    """Random numbers of one stream (a block or level) for the current call; shared by the batch.

    Value i of stream s for a draw of `count` values is `mix32(key + mix32(count) + s * count + i)`:
    every stream of a call reads a disjoint window of one hash sequence. With `tables` (a dict the
    patch clears every call) the first stream to draw `count` values draws them for all `streams` at
    once and the others slice it (fewer launches); without, each stream hashes its own window.
    """

    seed: int
    counter: Optional[Tensor] = None  # () int64; None counts as call 0
    stream: int = 0
    key: Optional[IntOrTensor] = None  # `call_key(seed, counter)` if already known
    streams: int = 1
    tables: Optional[dict] = None

    def bits(self, count: int, device: torch.device) -> Tensor:
        """`count` hashed 32-bit values (int64 in [0, 2**32)) on `device`."""
        if self.tables is None:
            return self.window(self.stream * count, count, count, device)
        table = self.tables.get((count, str(device)))
        if table is None:
            table = self.tables[(count, str(device))] = self.window(0, self.streams * count, count, device)
        return table[self.stream * count:(self.stream + 1) * count]

    def window(self, start: int, length: int, count: int, device: torch.device) -> Tensor:
        """Values start .. start + length - 1 of the sequence for draws of `count` values."""
        key = self.key
        if key is None and self.tables is not None:  # hashed once per call, on the first draw
            key = self.tables.get("key")
            if key is None:
                key = self.tables["key"] = call_key(self.seed, self.counter)
        elif key is None:
            key = call_key(self.seed, self.counter)
        if isinstance(key, Tensor):
            key = key.to(device)
        index = static_tensor(("arange", start, length, str(device)),
                              lambda: torch.arange(start, start + length, device=device, dtype=torch.int64))
        return mix32(index + (key + mix32(count)))

    def uniform(self, shape: Sequence[int], device: torch.device) -> Tensor:
        """float32 uniform on [0, 1) in steps of 2**-24."""
        bits = self.bits(math.prod(shape), device)
        return ((bits >> 8).to(torch.float32) * 2.0 ** -24).view(*shape)

    def randint(self, high: int, shape: Sequence[int], device: torch.device) -> Tensor:
        """int64 uniform on {0, ..., high - 1} (exact for powers of two, e.g. the 4 slots of a 2x2 block)."""
        count = math.prod(shape)
        if self.tables is None:
            return (self.bits(count, device) % high).view(*shape)
        return self.all_streams_randint(high, count, device)[self.stream].view(*shape)

    def all_streams_randint(self, high: int, count: int, device: torch.device) -> Tensor:
        """(streams, count) draws of every stream of the call (row s: stream s), reduced once per call."""
        key = ("randint", high, count, str(device))
        table = self.tables.get(key) if self.tables is not None else None
        if table is None:
            table = (CounterRandom(self.seed, self.counter, 0, self.key, 1).window(
                0, self.streams * count, count, device) % high).view(self.streams, count)
            if self.tables is not None:
                self.tables[key] = table
        return table

    def derived_randint(self, high: int, count: int, device: torch.device, name: Hashable,
                        derive: Callable[[Tensor], Tensor]) -> Tensor:
        """`derive(self.randint(high, (count,)))`, made once per call for all streams when `tables` is shared.

        `derive` maps (..., count) int64 draws to (..., K) values row by row (e.g. ToMe's destination
        indices; `name` keys it with whatever else it depends on): applied to the (streams, count)
        draws of the call, after which each stream only selects its row (fewer launches per block).
        """
        if self.tables is None:
            return derive(self.randint(high, (count,), device))
        key = ("derived", name, high, count, str(device))
        table = self.tables.get(key)
        if table is None:
            table = self.tables[key] = derive(self.all_streams_randint(high, count, device))
        return table[self.stream]

    def normal(self, shape: Sequence[int], device: torch.device) -> Tensor:
        """float32 standard normal (Box-Muller on two uniform draws per value)."""
        n = math.prod(shape)
        u = self.uniform((2, n), device)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[0]))
        return (radius * torch.cos((2.0 * math.pi) * u[1])).view(*shape)


def draw_normal(random: Optional[CounterRandom], shape: Sequence[int], device: torch.device) -> Tensor:
    """`random.normal`, or torch's global RNG when no stream is given."""
    if random is None:
        return torch.randn(tuple(shape), device=device)
    return random.normal(shape, device)
