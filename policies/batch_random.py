"""Random draws of a training loss that do not depend on how the batch is split.

A global batch of B samples may be computed in one piece, in micro-batches (gradient
accumulation) or across ranks (DDP/FSDP). Inside ``shard_of_batch(seed, start, stop, total)``
every draw made through this module is taken for the *whole* batch from a generator seeded
with ``seed`` and cut to rows ``start:stop``; each piece of one step enters with the same
seed, so sample i gets the same noise, noise level and augmentation whichever piece holds
it, and the loss of a split batch is the loss of the whole one.

A draw whose leading size is a multiple k of the piece's rows is read as batch-major
(e.g. (B * T, ...) frames of B samples) and cut to rows ``start * k:stop * k``. Outside the
context the functions are plain torch draws (inference, tests).

    with shard_of_batch(seed, 64, 128, 256):        # rows 64..127 of a batch of 256
        eps = randn((64, 16, 4), device)          # = randn((256, 16, 4))[64:128] of that seed
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch


@dataclass
class _Shard:
    seed: int
    start: int
    stop: int
    total: int
    generators: dict[str, torch.Generator] = field(default_factory=dict)

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self.generators:
            self.generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[key]

    def rows(self, leading: int) -> tuple[int, int, int] | None:
        """(global leading size, start, stop) of a draw of ``leading`` rows, or None when the
        draw is not batch-major (it is then drawn as asked, from the shard's generator)."""
        n = self.stop - self.start
        if n <= 0 or leading % n:
            return None
        k = leading // n
        return self.total * k, self.start * k, self.stop * k


_ACTIVE: ContextVar[_Shard | None] = ContextVar("ditpolicy_batch_shard", default=None)


@contextmanager
def shard_of_batch(seed: int, start: int, stop: int, total: int):
    """Draws inside are rows ``start:stop`` of draws for a batch of ``total`` (seeded)."""
    if not 0 <= start < stop <= total:
        raise ValueError(f"shard rows {start}:{stop} do not lie in a batch of {total}")
    token = _ACTIVE.set(_Shard(int(seed), int(start), int(stop), int(total)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _draw(make, shape: tuple[int, ...], device, generator):
    shard = _ACTIVE.get()
    device = torch.device(device) if device is not None else torch.device("cpu")
    if shard is None or generator is not None or not shape:
        return make(tuple(shape), device, generator)
    cut = shard.rows(int(shape[0]))
    gen = shard.generator(device)
    if cut is None:
        return make(tuple(shape), device, gen)
    total, start, stop = cut
    return make((total, *shape[1:]), device, gen)[start:stop]


def randn(shape, device=None, dtype=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal draws of ``shape``; rows of the whole batch inside ``shard_of_batch``."""
    return _draw(lambda s, d, g: torch.randn(s, device=d, dtype=dtype, generator=g), tuple(shape), device, generator)


def rand(shape, device=None, dtype=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape``; rows of the whole batch inside ``shard_of_batch``."""
    return _draw(lambda s, d, g: torch.rand(s, device=d, dtype=dtype, generator=g), tuple(shape), device, generator)


def randint(low: int, high: int, shape, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integers in [low, high) of ``shape``; rows of the whole batch inside ``shard_of_batch``."""
    return _draw(lambda s, d, g: torch.randint(low, high, s, device=d, generator=g), tuple(shape), device, generator)


def in_shard() -> bool:
    """Whether draws are being cut from a whole batch's (a training step is running)."""
    return _ACTIVE.get() is not None
