"""The real-time loop that runs a chunked policy on a robot, with no ROS and no simulator in it.

Two threads share a chunk schedule (scheduler.py):

- the control loop ticks at ``rate_hz``: it reads the robot's observation, records it
  (a rejected one is counted and never enters the history), takes the schedule's action for
  this step, passes it through the safety filter (safety.py) and sends it; then it sleeps to
  the next tick. Every ``n_action_steps`` steps it posts a request to the inference thread
  with a snapshot of the last ``n_obs`` consecutive observations and what the schedule
  still plans (the prefix for real-time chunking and warm start).
- the inference thread turns each request into a timestamped chunk; the control loop adds it
  to the schedule at the first tick after it is ready: actions for steps already run are
  dropped, and counted.

The inference delay used for real-time chunking is estimated from the measured latencies
(the slowest of the last few chunks, in control periods). ``synchronous`` predicts in the tick
that asks, on the control thread (inference in the loop, as a latency benchmark needs). Everything that bends the plan is
counted: late requests (inference still busy), dropped and blended actions, starved steps
(no chunk: the last action held), safety holds and clamps, rejected observations, deadline
misses (a tick that started more than half a period late). ``report()`` gives latency p50 /
p99, control-period jitter and the achieved rate.

A robot is any object with ``read() -> (obs: dict[str, np.ndarray], stamp_s: float)``,
``send(command: np.ndarray (A,))`` and ``stop()``; stamps are on the runtime's clock.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..policies.control import ChunkExecutor, ObservationError
from .scheduler import ChunkScheduler


class MonotonicClock:
    """Wall time for the control loop; tests pass a clock of their own."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@dataclass
class RuntimeSettings:
    rate_hz: float = 10.0              # control rate
    blending: str = "naive"            # naive | ensemble (scheduler.py)
    ensemble_m: float = 0.01
    rtc: str | None = None             # None | inpaint | train (real-time chunking)
    warm_start: float = 0.0            # sampler start level from the running plan (0: off)
    steps: int | None = None           # sampler steps (None: the checkpoint's)
    n_action_steps: int | None = None  # steps between chunk requests (None: the checkpoint's)
    latency_window: int = 5            # chunks whose slowest latency sets the delay estimate
    synchronous: bool = False          # predict in the tick that asks, on the control thread (no overlap)

    def check(self) -> None:
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {self.rate_hz}")
        if self.rtc not in (None, "inpaint", "train"):
            raise ValueError(f"rtc must be null, inpaint or train, got {self.rtc!r}")


@dataclass
class _Request:
    step: int
    history: dict[str, np.ndarray]
    prefix: np.ndarray | None
    delay: int


class Runtime:
    """Runs ``policy`` on ``robot`` at a fixed control rate (see the module docstring)."""

    def __init__(self, policy, robot, settings: RuntimeSettings | None = None, safety=None, clock=None,
                 goal: dict | None = None):
        self.settings = settings or RuntimeSettings()
        self.settings.check()
        self.policy, self.robot, self.safety = policy, robot, safety
        self.clock = clock or MonotonicClock()
        s = self.settings
        self.executor = ChunkExecutor(policy, 1, s.n_action_steps, s.steps, s.warm_start, s.rtc or "inpaint")
        self.executor.reset(goal if goal is not None else policy.goal_inputs(0 if policy.spec.tasks else None, 1))
        self.scheduler = ChunkScheduler(s.blending, s.ensemble_m)
        self.period = 1.0 / s.rate_hz
        self.counts = {"late_requests": 0, "rejected_observations": 0, "deadline_misses": 0, "safety_holds": 0,
                       "safety_clamps": 0, "safety_stops": 0}
        self.tick_times: list[float] = []
        self.stopped_by: str | None = None
        self._requests: queue.Queue[_Request | None] = queue.Queue(maxsize=1)
        self._results: queue.Queue[tuple[np.ndarray, int] | BaseException] = queue.Queue()
        self._busy = threading.Event()
        self._last_obs_time = -math.inf

    # ------------------------------------------------------------------ inference thread
    def _infer_forever(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            try:
                chunk = self.executor.predict(request.prefix, request.delay, history=request.history)
                self._results.put((chunk, request.step))
            except BaseException as exc:   # noqa: BLE001  (handed to the control loop, which stops)
                self._results.put(exc)
            finally:
                self._busy.clear()

    def delay_estimate(self) -> int:
        """Control steps a chunk is expected to take: the slowest of the last few, rounded up."""
        lat = self.executor.latencies_ms[-self.settings.latency_window:]
        if not lat:
            return 0
        limit = self.policy.spec.horizon - self.executor.n_action_steps
        return min(limit, math.ceil(max(lat) / 1e3 / self.period))

    def _post(self, step: int) -> bool:
        if self._busy.is_set():
            self.counts["late_requests"] += 1
            return False
        s = self.settings
        prefix = self.scheduler.planned(step, self.policy.spec.horizon) if (s.rtc or s.warm_start) else None
        if s.synchronous:                 # in this tick, on this thread: no hand-over
            self.scheduler.add(self.executor.predict(prefix, 0), step, step)
            return True
        self._busy.set()
        self._requests.put(_Request(step, self.executor.history(), prefix, self.delay_estimate() if s.rtc else 0))
        return True

    def _collect(self, step: int, block: bool) -> None:
        while True:
            try:
                item = self._results.get(block=block)
            except queue.Empty:
                return
            if isinstance(item, BaseException):
                raise item
            chunk, start = item
            self.scheduler.add(chunk, start, step)
            block = False

    # ------------------------------------------------------------------ control loop
    def _observe(self) -> bool:
        obs, stamp = self.robot.read()
        try:
            self.executor.observe({k: np.asarray(v)[None] for k, v in obs.items()})
        except ObservationError:
            self.counts["rejected_observations"] += 1
            return False
        self._last_obs_time = stamp
        return True

    def _send(self, action: np.ndarray, now: float) -> bool:
        """Safety-filter and send one action; False when the robot must stop."""
        if self.safety is None:
            self.robot.send(action)
            return True
        decision = self.safety.filter(action, now, self._last_obs_time, dt=self.period)
        if decision.kind == "stop":
            self.counts["safety_stops"] += 1
            self.stopped_by = "safety: " + ", ".join(decision.reasons)
            self.robot.stop()
            return False
        if decision.kind == "hold":
            self.counts["safety_holds"] += 1
        elif decision.kind == "clamped":
            self.counts["safety_clamps"] += 1
        self.robot.send(decision.command)
        return True

    def run(self, steps: int | None, should_stop=None) -> dict:
        """Run ``steps`` control ticks (None: until stopped), or until ``should_stop()`` or a
        safety stop; the report."""
        should_stop = should_stop or (lambda: False)
        worker = threading.Thread(target=self._infer_forever, name="ditpolicy-inference", daemon=True)
        worker.start()
        try:
            while not self._observe():                        # the first chunk needs one good observation
                if should_stop():
                    self.stopped_by = "should_stop"
                    return self.report()
                self.clock.sleep_until(self.clock.now() + self.period)
            self.executor.predict()                           # builds the graphs: warm-up, timed apart
            self._observe()
            self._post(0)
            self._collect(0, block=not self.settings.synchronous)   # the robot waits for its first chunk
            start = self.clock.now()
            next_request = self.executor.n_action_steps
            for step in (range(steps) if steps is not None else itertools.count()):
                deadline = start + step * self.period
                self.clock.sleep_until(deadline)
                now = self.clock.now()
                self.tick_times.append(now)
                if now - deadline > 0.5 * self.period:
                    self.counts["deadline_misses"] += 1
                if step > 0:                                  # step 0's observation made the first chunk
                    self._observe()
                self._collect(step, block=False)
                if step >= next_request and self._post(step):
                    next_request = step + self.executor.n_action_steps
                if not self._send(self.scheduler.action(step)[0], now):
                    break
                if should_stop():
                    self.stopped_by = "should_stop"
                    break
        finally:
            self._requests.put(None)
            worker.join(timeout=5.0)
        return self.report()

    def report(self, window: int | None = None) -> dict:
        """Counts since the start; rate, latency and jitter over the last ``window`` ticks
        (None: all), so that a long-running node reports what it does now."""
        n_lat = None if window is None else max(1, window // self.executor.n_action_steps)
        lat = np.asarray(self.executor.latencies_ms[-n_lat if n_lat else 0:] or [0.0])
        ticks = np.asarray(self.tick_times[-window if window else 0:])
        periods = np.diff(ticks) if len(ticks) > 1 else np.zeros(1)
        jitter_ms = np.abs(periods - self.period) * 1e3
        rate = (len(ticks) - 1) / (ticks[-1] - ticks[0]) if len(ticks) > 1 and ticks[-1] > ticks[0] else 0.0
        return {
            "ticks": len(self.tick_times), "rate_hz": float(rate), "target_rate_hz": self.settings.rate_hz,
            "inference_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                             "calls": len(self.executor.latencies_ms), "warmup": list(self.executor.warmup_ms)},
            "period_jitter_ms": {"p50": float(np.percentile(jitter_ms, 50)), "p99": float(np.percentile(jitter_ms, 99))},
            "delay_estimate_steps": self.delay_estimate(), "schedule": self.scheduler.stats.as_dict(),
            **self.counts, "safety": dict(getattr(self.safety, "counts", {})), "stopped_by": self.stopped_by,
        }
