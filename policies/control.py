"""Running a chunked policy one control step at a time: the chunk executor.

A robot or simulator loop observes every control step and executes one action per step:

    executor.reset(goal)            # new episode(s): empty history and action queue
    executor.observe(obs)           # every step: key -> (B, ...) arrays
    action = executor.act()         # (B, A): the next queued action; a new chunk when empty

The policy sees the last ``n_obs`` *consecutive* observations, exactly the history of a
training window (datasets/sampler.py), however many actions each chunk executes. A chunk
is predicted when the queue is empty and its first ``n_action_steps`` actions are queued.
Rollouts in simulation and the robot runtime share this class; ``DiffusionPolicy``'s
``reset`` / ``observe`` / ``select_action`` drive one with B = 1.

Warm start (``warm_start`` = a level in (0, 1)): the next chunk's sampler starts from the
not-yet-executed rest of the previous chunk noised to that level, instead of from pure
noise, and walks only from there: the truncated-diffusion idea applied to control.

Latency: each chunk prediction is timed. The first prediction at a new batch size builds
the traced graphs, so it is kept apart as warm-up (``warmup_ms``) and not mixed into
``latencies_ms``.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch


# Normalised training data lies in about [-1, 1]; a value a million times further out is a
# sensor fault or a unit error, and would overflow float32 inside the network (NaN actions).
MAX_NORMALIZED = 1e6


class ObservationError(ValueError):
    """An observation the policy cannot take; the history is left as it was."""


def check_observation(spec, obs: dict[str, np.ndarray], batch_size: int, normalizer=None) -> dict[str, np.ndarray]:
    """Each policy key of ``obs`` as an array (B, *shape): present, right shape, finite and,
    given the normaliser, within ``MAX_NORMALIZED`` of the training range.

    Raises an ObservationError naming the key before anything is stored."""
    missing = [k for k in spec.obs_keys if k not in obs]
    if missing:
        raise ObservationError(f"observation lacks keys {missing} (policy reads {spec.obs_keys})")
    out = {}
    for key in spec.obs_keys:
        value = np.asarray(obs[key])
        want = (batch_size, *spec.obs_shapes[key])
        if value.shape != want:
            raise ObservationError(f"observation {key!r} has shape {value.shape}, policy expects {want}")
        if key in spec.image_keys:
            if value.dtype != np.uint8:
                raise ObservationError(f"observation {key!r} has dtype {value.dtype}; camera frames are uint8")
        else:
            if not np.issubdtype(value.dtype, np.number):
                raise ObservationError(f"observation {key!r} has dtype {value.dtype}; expected numbers")
            flat = value.reshape(batch_size, -1)
            ok = np.isfinite(flat)
            if ok.all() and normalizer is not None and key in normalizer:
                ok = np.abs(normalizer.normalize(key, value.astype(np.float64)).reshape(batch_size, -1)) <= MAX_NORMALIZED
            if not ok.all():
                row, dim = np.argwhere(~ok)[0]
                raise ObservationError(f"observation {key!r} holds {flat[row, dim]} at row {row}, index {dim} "
                                       f"(not finite, or far outside the training range); refused, the history "
                                       f"is unchanged")
            value = value.astype(np.float32, copy=False)
        out[key] = value
    return out


class ChunkExecutor:
    """Observation history, action queue and chunk timing for B parallel episodes."""

    def __init__(self, policy, batch_size: int = 1, n_action_steps: int | None = None, steps: int | None = None,
                 warm_start: float = 0.0, rtc: str = "inpaint"):
        spec = policy.spec
        if not 0.0 <= float(warm_start) < 1.0:
            raise ValueError(f"warm_start is a noise level in [0, 1) (0: off), got {warm_start}")
        self.policy = policy
        self.batch_size = int(batch_size)
        self.n_action_steps = min(int(n_action_steps or spec.n_action_steps), spec.horizon)
        self.steps = steps
        self.warm_start = float(warm_start)
        self.rtc = rtc
        self._last_chunk: np.ndarray | None = None
        self._generators: list[torch.Generator] | None = None
        self.goal: dict[str, torch.Tensor] = {}
        self.latencies_ms: list[float] = []
        self.warmup_ms: list[float] = []
        self._warm_batch_sizes: set[int] = set()
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=spec.n_obs)
        self._queue: deque[np.ndarray] = deque()

    def reset(self, goal: dict[str, torch.Tensor] | None = None, seeds: list[int] | None = None) -> None:
        """Start new episodes: forget history and queued actions; ``goal`` tensors (B, ...).

        ``seeds`` (B,): each episode's sampling noise comes from its own generator, so its
        actions are the same whichever other episodes share the batch (sharded evaluation)."""
        if seeds is not None and len(seeds) != self.batch_size:
            raise ValueError(f"{len(seeds)} seeds for a batch of {self.batch_size} episodes")
        self._generators = None if seeds is None else [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.goal = dict(goal or {})
        self._history.clear()
        self._queue.clear()
        self._last_chunk = None

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add one control step's observation (key -> (B, ...)); the first fills the history."""
        step = check_observation(self.policy.spec, obs, self.batch_size, self.policy.normalizer)
        if not self._history:
            self._history.extend([step] * self._history.maxlen)
        else:
            self._history.append(step)

    def history(self) -> dict[str, np.ndarray]:
        """The network's view of the past: key -> (B, n_obs, ...), oldest first."""
        if not self._history:
            raise RuntimeError("no observation yet: call observe(obs) before act()")
        return {k: np.stack([h[k] for h in self._history], axis=1) for k in self.policy.spec.obs_keys}

    @property
    def queued(self) -> int:
        return len(self._queue)

    def act(self) -> np.ndarray:
        """The next action of every episode, (B, A); predicts a new chunk when the queue is empty."""
        if not self._queue:
            rest = None if self._last_chunk is None else self._last_chunk[:, self.n_action_steps:]
            chunk = self._last_chunk = self.predict(rest)
            self._queue.extend(chunk[:, i] for i in range(self.n_action_steps))
        return self._queue.popleft()

    def predict(self, prefix: np.ndarray | None = None, delay: int = 0,
                history: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """One timed chunk prediction from the current history (or a snapshot of it taken
        with ``history()``): (B, H, A).

        ``prefix`` (B, P, A): the actions the running chunk still plans for the new chunk's
        first P steps, ``delay`` of which run before it arrives. The new chunk starts from them
        when warm-starting, and keeps to the first ``delay`` (real-time chunking, ``rtc``)."""
        missing = [k for k in self.policy.goals.input_keys if k not in self.goal]
        if missing:
            raise RuntimeError(f"no goal {missing}: call reset(...) with the episode's goal before acting")
        device = self.policy.device
        batch = {k: torch.as_tensor(v).to(device) for k, v in (history or self.history()).items()}
        options = {}
        if self._generators is not None:
            spec = self.policy.spec
            options["noise"] = torch.stack([torch.randn(spec.horizon, spec.action_dim, generator=g)
                                            for g in self._generators])
        if prefix is not None and prefix.shape[1] > 0:
            prefix_t = torch.as_tensor(prefix, dtype=torch.float32)
            if delay > 0:
                options.update(prefix=prefix_t, delay=delay, rtc=self.rtc)
            if self.warm_start > 0:
                options.update(init=pad_chunk(prefix_t, self.policy.spec.horizon), t_start=self.warm_start)
        start = time.perf_counter()
        chunk = self.policy.predict_action_chunks({**batch, **self.goal}, steps=self.steps, **options).cpu().numpy()
        elapsed = (time.perf_counter() - start) * 1e3
        if self.batch_size in self._warm_batch_sizes:
            self.latencies_ms.append(elapsed)
        else:
            self._warm_batch_sizes.add(self.batch_size)
            self.warmup_ms.append(elapsed)
        return chunk


def pad_chunk(actions: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, P, A) actions as a (B, horizon, A) chunk: cut, or the last action repeated."""
    actions = actions[:, :horizon]
    return torch.cat([actions, actions[:, -1:].expand(-1, horizon - actions.shape[1], -1)], dim=1)
