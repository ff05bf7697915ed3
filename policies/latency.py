"""Chunk latency of a policy, or of several compared in one run, measured through the
control API's executor."""

from __future__ import annotations

import numpy as np
import torch

from .control import ChunkExecutor


def zero_observation(spec, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """An observation of the right shapes and dtypes: key -> per-step array, or (B, ...)."""
    lead = () if batch_size is None else (batch_size,)
    return {k: np.zeros(lead + tuple(spec.obs_shapes[k]), np.uint8 if k in spec.image_keys else np.float32)
            for k in spec.obs_keys}


def ready_executor(policy, batch_size: int = 1, steps: int | None = None, warmup: int = 20, warm_start: float = 0.0,
                   delay: int = 0, rtc: str = "inpaint") -> tuple[ChunkExecutor, tuple]:
    """An executor of its own (the policy's stays untouched) holding one observation, after
    ``warmup`` untimed predictions (graph building, caches, allocator), and the arguments of
    its ``predict``: a plan from a previous chunk when warm-starting or chunking in real time."""
    executor = ChunkExecutor(policy, batch_size=batch_size, steps=steps, warm_start=warm_start, rtc=rtc)
    executor.reset(policy.goal_inputs(0 if policy.spec.tasks else None, batch_size))
    executor.observe(zero_observation(policy.spec, batch_size))
    spec = policy.spec
    plan = np.zeros((batch_size, spec.horizon - executor.n_action_steps, spec.action_dim), np.float32) \
        if (warm_start or delay) else None
    for _ in range(warmup):
        executor.predict(plan, delay)
    executor.latencies_ms.clear()
    return executor, (plan, delay)


def measure_chunk_latency(policy, calls: int, steps: int | None = None, threads: int | None = None,
                          warmup: int = 20, batch_size: int = 1, warm_start: float = 0.0, delay: int = 0,
                          rtc: str = "inpaint") -> np.ndarray:
    """Milliseconds of ``calls`` chunk predictions for ``batch_size`` episodes at once, after
    ``warmup`` untimed ones. ``threads``: torch CPU threads to use (None: unchanged).
    ``warm_start`` / ``delay`` with ``rtc``: time the chunk as it runs with a plan from the
    previous chunk (warm start, real-time chunking)."""
    if threads:
        torch.set_num_threads(threads)
    executor, args = ready_executor(policy, batch_size, steps, warmup, warm_start, delay, rtc)
    for _ in range(calls):
        executor.predict(*args)
    return np.asarray(executor.latencies_ms)


def measure_interleaved(policies: dict, calls: int, steps: int | None = None, warmup: int = 20,
                        batch_size: int = 1, block: int = 1) -> dict[str, np.ndarray]:
    """Milliseconds of ``calls`` chunk predictions of each policy (any key -> policy: a torch
    policy or any with the same interface, e.g. OnnxPolicy), taken in turn: each repetition
    runs every policy once, in an order rotated per repetition, so that load from other
    processes and the CPU's clock changes fall on all of them alike. ``warmup`` untimed
    calls of each first. Threads are the caller's to set (torch and each runtime's own).
    ``block`` > 1 times that many calls of one policy in a row before the next one's, as a
    robot running one backend would (caches and runtime threads stay its own), still taking
    the backends in turn so machine load falls on all alike."""
    executors = {name: ready_executor(policy, batch_size, steps, warmup)[0] for name, policy in policies.items()}
    order = list(executors)
    for rep in range(max(1, calls // block)):
        shift = rep % len(order)
        for name in order[shift:] + order[:shift]:
            for _ in range(block):
                executors[name].predict()
    return {name: np.asarray(executor.latencies_ms) for name, executor in executors.items()}
