"""Chunk latency of a policy, measured through the control API's executor."""

from __future__ import annotations

import numpy as np
import torch

from .control import ChunkExecutor


def zero_observation(spec, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """An observation of the right shapes and dtypes: key -> per-step array, or (B, ...)."""
    lead = () if batch_size is None else (batch_size,)
    return {k: np.zeros(lead + tuple(spec.obs_shapes[k]), np.uint8 if k in spec.image_keys else np.float32)
            for k in spec.obs_keys}


def measure_chunk_latency(policy, calls: int, steps: int | None = None, threads: int | None = None,
                          warmup: int = 20, batch_size: int = 1, warm_start: float = 0.0, delay: int = 0,
                          rtc: str = "inpaint") -> np.ndarray:
    """Milliseconds of ``calls`` chunk predictions for ``batch_size`` episodes at once, after
    ``warmup`` untimed ones (graph building, caches, allocator). ``threads``: torch CPU
    threads to use (None: unchanged). ``warm_start`` / ``delay`` with ``rtc``: time the
    chunk as it runs with a plan from the previous chunk (warm start, real-time chunking)."""
    if threads:
        torch.set_num_threads(threads)
    executor = ChunkExecutor(policy, batch_size=batch_size, steps=steps, warm_start=warm_start, rtc=rtc)
    executor.reset(policy.goal_inputs(0 if policy.spec.tasks else None, batch_size))   # the policy's own executor stays untouched
    executor.observe(zero_observation(policy.spec, batch_size))
    spec = policy.spec
    plan = np.zeros((batch_size, spec.horizon - executor.n_action_steps, spec.action_dim), np.float32) \
        if (warm_start or delay) else None
    for _ in range(warmup):
        executor.predict(plan, delay)
    executor.latencies_ms.clear()
    for _ in range(calls):
        executor.predict(plan, delay)
    return np.asarray(executor.latencies_ms)
