"""Flow matching with the rectified (straight-line) path (``policy/process=flow``).

``x_t = (1 - t) x0 + t eps`` with t in [0, 1] (t = 1 is noise); the network predicts the
velocity ``eps - x0``. Sampling integrates from each token's start level to 0 with Euler or
Heun steps of equal length: token levels go ``t_start * (1 - i / steps)``.
"""

from __future__ import annotations

import torch

from .base import PROCESSES, DenoisingProcess, expand_levels, heads_of, prediction_of, start_levels

SOLVERS = ("euler", "heun")
TIME_SAMPLING = ("uniform", "logit_normal")


@PROCESSES.register("flow")
class FlowMatchingProcess(DenoisingProcess):
    name = "flow"

    def __init__(self, solver: str, time_sampling: str):
        if solver not in SOLVERS:
            raise ValueError(f"policy.process.solver must be one of {SOLVERS}, got {solver!r}")
        if time_sampling not in TIME_SAMPLING:
            raise ValueError(f"policy.process.time_sampling must be one of {TIME_SAMPLING}, got {time_sampling!r}")
        self.solver = solver
        self.time_sampling = time_sampling

    def draw_levels(self, shape, device, dtype, generator=None):
        if self.time_sampling == "uniform":
            return torch.rand(shape, device=device, dtype=dtype, generator=generator)
        return torch.sigmoid(torch.randn(shape, device=device, dtype=dtype, generator=generator))

    def add_noise(self, x0, t, eps):
        tt = expand_levels(t, x0)
        return (1 - tt) * x0 + tt * eps

    def target(self, x0, eps, t):
        return eps - x0

    @torch.no_grad()
    def sample(self, fn, x_init, t_start=1.0, steps=10):
        steps = max(1, int(steps))
        x, heads = x_init, {}
        t0 = start_levels(t_start, x)
        clean = expand_levels(t0 == 0, x)  # tokens given clean stay exactly as they are
        hold = bool(clean.any())
        for i in range(steps):
            t_now, t_next = t0 * (1 - i / steps), t0 * (1 - (i + 1) / steps)
            dt = expand_levels(t_next - t_now, x)
            out = fn(x, t_now)
            v, heads = prediction_of(out), heads_of(out)
            x_next = x + dt * v
            if self.solver == "heun" and i < steps - 1:
                v_next = prediction_of(fn(x_next, t_next))
                x_next = x + dt * 0.5 * (v + v_next)
            x = torch.where(clean, x, x_next) if hold else x_next
        return x, heads
