"""Timestamped action chunks turned into one action per control step.

A chunk predicted from the observation of control step s holds the actions for steps
s, s+1, ..., s+H-1. It arrives some steps later (the inference delay); its actions for steps
that have already run are dropped, and from then on it supplies the robot:

    scheduler.add(chunk, start_step=s, now_step=k)     # chunk (B, H, A); k - s actions dropped
    action = scheduler.action(k)                        # (B, A) for control step k
    plan = scheduler.planned(k, n)                      # (B, P, A): what steps k.. will execute

Blending of overlapping chunks:
- ``naive``: the newest chunk that covers a step supplies it (switch at the seam);
- ``ensemble``: temporal ensembling, every chunk covering the step contributes with weight
  exp(-m * i), i = 0 for the oldest (ACT's rule: older predictions are trusted a bit more,
  which damps jumps).
Real-time chunking needs no blending here: its chunks are made to agree with ``planned``.

Nothing is dropped or held silently: ``stats`` counts the chunks, the actions dropped
because their step had passed, the steps blended from several chunks, and the steps no
chunk covered (starved: the last action is held).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BLENDINGS = ("naive", "ensemble")


@dataclass
class ScheduleStats:
    chunks: int = 0          # chunks added
    dropped: int = 0         # actions of arriving chunks whose step had already run
    executed: int = 0        # control steps supplied
    blended: int = 0         # steps averaged from more than one chunk
    starved: int = 0         # steps no chunk covered: the last action was held

    def as_dict(self) -> dict:
        return asdict(self)

    def __add__(self, other: "ScheduleStats") -> "ScheduleStats":
        return ScheduleStats(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


@dataclass
class _Chunk:
    ident: int
    start: int               # control step of the chunk's first action
    actions: np.ndarray      # (B, H, A)

    @property
    def end(self) -> int:    # first step after the chunk
        return self.start + self.actions.shape[1]


class ChunkScheduler:
    """Action chunks of B robots (or simulated envs) on one control-step timeline."""

    def __init__(self, blending: str = "naive", ensemble_m: float = 0.01):
        if blending not in BLENDINGS:
            raise ValueError(f"blending must be one of {BLENDINGS}, got {blending!r}")
        if ensemble_m < 0:
            raise ValueError(f"ensemble_m must be >= 0, got {ensemble_m}")
        self.blending = blending
        self.ensemble_m = float(ensemble_m)
        self.reset()

    def reset(self) -> None:
        self._chunks: list[_Chunk] = []
        self._last: np.ndarray | None = None
        self._next_id = 0
        self.stats = ScheduleStats()
        self.last_source = -1

    @property
    def empty(self) -> bool:
        return not self._chunks

    def add(self, chunk: np.ndarray, start_step: int, now_step: int) -> int:
        """Schedule ``chunk`` (B, H, A) from ``start_step``; returns how many of its actions
        were dropped because their step (before ``now_step``) has already run."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 3:
            raise ValueError(f"a chunk is (B, H, A), got shape {chunk.shape}")
        dropped = int(np.clip(now_step - start_step, 0, chunk.shape[1]))
        self._chunks.append(_Chunk(self._next_id, int(start_step), chunk))
        self._next_id += 1
        self.stats.chunks += 1
        self.stats.dropped += dropped
        self._chunks = [c for c in self._chunks if c.end > now_step]
        return dropped

    def covering(self, step: int) -> list[_Chunk]:
        """Chunks holding an action for ``step``, oldest first."""
        return [c for c in self._chunks if c.start <= step < c.end]

    def _blend(self, chunks: list[_Chunk], step: int) -> np.ndarray:
        if self.blending == "naive" or len(chunks) == 1:
            return chunks[-1].actions[:, step - chunks[-1].start]
        weights = np.exp(-self.ensemble_m * np.arange(len(chunks)))
        stacked = np.stack([c.actions[:, step - c.start] for c in chunks])       # (C, B, A)
        return np.tensordot(weights / weights.sum(), stacked, axes=1).astype(np.float32)

    def action(self, step: int) -> np.ndarray:
        """The action (B, A) of control step ``step``; the last one held when nothing covers it."""
        chunks = self.covering(step)
        if not chunks and self._last is None:
            raise RuntimeError(f"no chunk covers control step {step} and no action has run yet: "
                               f"add the first chunk before asking for actions")
        self.stats.executed += 1
        if not chunks:
            self.stats.starved += 1
            return self._last
        if len(chunks) > 1 and self.blending == "ensemble":
            self.stats.blended += 1
        self._last = self._blend(chunks, step)
        self.last_source = chunks[-1].ident
        self._chunks = [c for c in self._chunks if c.end > step + 1]
        return self._last

    def planned(self, step: int, length: int) -> np.ndarray | None:
        """What the schedule will execute at steps ``step``, ``step + 1``, ... as far as it is
        covered without a gap, at most ``length`` steps: (B, P, A), or None when P = 0."""
        rows = []
        for s in range(step, step + length):
            chunks = self.covering(s)
            if not chunks:
                break
            rows.append(self._blend(chunks, s))
        return np.stack(rows, axis=1) if rows else None
