"""Chunk latency of a policy at batch 1, measured through the control API's executor."""

from __future__ import annotations

import numpy as np
import torch


def zero_observation(spec) -> dict[str, np.ndarray]:
    """One observation of the right shapes and dtypes (key -> per-step array)."""
    return {k: np.zeros(spec.obs_shapes[k], np.uint8 if k in spec.image_keys else np.float32) for k in spec.obs_keys}


def measure_chunk_latency(policy, calls: int, steps: int | None = None, threads: int | None = None,
                          warmup: int = 20) -> np.ndarray:
    """Milliseconds of ``calls`` batch-1 chunk predictions after ``warmup`` untimed ones (graph
    building, allocator warm-up). ``threads``: torch CPU threads to use (None: unchanged)."""
    if threads:
        torch.set_num_threads(threads)
    executor = policy.executor
    executor.steps = steps
    policy.reset(task=0 if policy.spec.tasks else None)
    policy.observe(zero_observation(policy.spec))
    for _ in range(warmup):
        executor.predict()
    executor.latencies_ms.clear()
    for _ in range(calls):
        executor.predict()
    return np.asarray(executor.latencies_ms)
