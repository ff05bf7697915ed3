"""The runtime's chunk timing, stepped synchronously with a simulator: a fixed inference delay.

On a robot a chunk requested at control step s arrives ``delay`` steps later, while the
previous chunk keeps running. This executor reproduces that exactly and deterministically
in simulation, so the chunk-switching strategies can be compared on success and smoothness
with the same envs and seeds as ``envs.rollout.evaluate`` (pass it as ``executor=``):

- a chunk is requested every ``n_action_steps`` steps from the latest observation;
- it joins the schedule ``delay`` steps later; its first ``delay`` actions have passed and
  are dropped (counted), the schedule (deploy/scheduler.py) blends or switches;
- ``rtc="inpaint"`` / ``"train"`` make the new chunk agree with what the schedule still
  plans (policy.predict_action_chunks); ``warm_start`` starts its sampler from that plan.

The first chunk of an episode is waited for (a robot does not move before it has one).
``seams`` measures smoothness: mean |a(t+1) - a(t)| where the supplying chunk changes
against where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..policies.control import ChunkExecutor
from .scheduler import ChunkScheduler, ScheduleStats

RTC_MODES = (None, "inpaint", "train")


@dataclass
class SeamStats:
    """Action jumps |a(t+1) - a(t)| (mean over action dims) at chunk seams and within chunks."""
    seam: list[float] = field(default_factory=list)
    within: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        seam = float(np.mean(self.seam)) if self.seam else 0.0
        within = float(np.mean(self.within)) if self.within else 0.0
        return {"seam_jump": seam, "within_jump": within, "ratio": seam / within if within else 0.0,
                "seams": len(self.seam), "within_steps": len(self.within)}


class DelayedChunkExecutor(ChunkExecutor):
    """A ChunkExecutor whose chunks arrive ``delay`` control steps after they are requested."""

    def __init__(self, policy, batch_size: int = 1, delay: int = 0, blending: str = "naive",
                 rtc: str | None = None, warm_start: float = 0.0, n_action_steps: int | None = None,
                 steps: int | None = None, ensemble_m: float = 0.01):
        super().__init__(policy, batch_size, n_action_steps, steps, warm_start, rtc or "inpaint")
        if rtc not in RTC_MODES:
            raise ValueError(f"rtc must be one of {RTC_MODES}, got {rtc!r}")
        horizon = policy.spec.horizon
        if not 0 <= int(delay) <= horizon - self.n_action_steps:
            raise ValueError(f"delay={delay} steps: the running chunk covers only horizon - n_action_steps = "
                             f"{horizon - self.n_action_steps} steps after the next request")
        self.delay = int(delay)
        self.use_prefix = rtc is not None
        self.scheduler = ChunkScheduler(blending, ensemble_m)
        self.seams = SeamStats()
        self._finished = ScheduleStats()        # schedules of episodes before the current ones
        self.reset()

    @property
    def schedule_stats(self) -> ScheduleStats:
        """Chunks, drops, blends and starved steps over every episode since construction."""
        return self._finished + self.scheduler.stats

    def reset(self, goal=None, seeds=None) -> None:
        super().reset(goal, seeds)
        self._finished = self._finished + self.scheduler.stats
        self.scheduler.reset()
        self.step = 0
        self._next_request = 0
        self._pending: tuple[np.ndarray, int, int] | None = None     # (chunk, start step, arrival step)
        self._prev: tuple[np.ndarray, int] | None = None            # (last action (B, A), its chunk)

    def act(self) -> np.ndarray:
        t = self.step
        if self._pending is not None and self._pending[2] <= t:
            chunk, start, _ = self._pending
            self.scheduler.add(chunk, start, t)
            self._pending = None
        if t >= self._next_request:
            self._request(t)
            self._next_request = t + self.n_action_steps
        action = self.scheduler.action(t)
        self._record(action, self.scheduler.last_source)
        self.step += 1
        return action

    def _request(self, t: int) -> None:
        if self.scheduler.empty:                                   # first chunk: waited for
            self.scheduler.add(self.predict(), t, t)
            return
        plan = self.scheduler.planned(t, self.policy.spec.horizon) if (self.use_prefix or self.warm_start) else None
        chunk = self.predict(plan, delay=self.delay if self.use_prefix else 0)
        if self.delay == 0:
            self.scheduler.add(chunk, t, t)
        else:
            self._pending = (chunk, t, t + self.delay)

    def _record(self, action: np.ndarray, source: int) -> None:
        if self._prev is not None:
            jump = np.abs(action - self._prev[0]).mean(axis=1)                       # (B,)
            (self.seams.seam if source != self._prev[1] else self.seams.within).extend(jump.tolist())
        self._prev = (action.copy(), source)
