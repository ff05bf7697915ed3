"""Flow matching with the rectified (straight-line) path (``policy/process=flow``).

``x_t = (1 - t) x0 + t eps`` with t in [0, 1] (t = 1 is noise); the network predicts the
velocity ``eps - x0``. Sampling integrates from each token's start level to 0 with Euler or
Heun steps of equal length: token levels go ``t_start * (1 - i / steps)``.
"""

from __future__ import annotations

import torch

from .. import batch_random
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
            return batch_random.rand(shape, device, dtype, generator)
        return torch.sigmoid(batch_random.randn(shape, device, dtype, generator))

    def add_noise(self, x0, t, eps):
        tt = expand_levels(t, x0)
        return (1 - tt) * x0 + tt * eps

    def target(self, x0, eps, t):
        return eps - x0

    def x0_estimate(self, x_t, t, pred):
        return x_t - expand_levels(t, x_t) * pred

    def prediction_for(self, x_t, t, x0):
        # a token at level 0 is held fixed by the sampler: any finite velocity does
        return (x_t - x0) / expand_levels(t, x_t).clamp_min(1e-6)

    def noise_estimate(self, x_t, t, x0):
        tt = expand_levels(t, x_t)
        return torch.where(tt > 0, (x_t - (1 - tt) * x0) / tt.clamp_min(1e-6), torch.zeros_like(x_t))

    @staticmethod
    def _plan(t_start, x: torch.Tensor, steps: int) -> tuple[list[tuple], torch.Tensor | None]:
        """Per step: (t now, t next, step length dt broadcastable to x); plus the mask of
        tokens held fixed (level 0) or None. One level for the batch keeps dt a float."""
        if not torch.is_tensor(t_start):
            levels = [float(t_start) * (1 - i / steps) for i in range(steps + 1)]
            ts = [torch.full(x.shape[:1], level, device=x.device, dtype=x.dtype) for level in levels]
            return [(ts[i], ts[i + 1], levels[i + 1] - levels[i]) for i in range(steps)], None
        t0 = start_levels(t_start, x)
        ts = [t0 * (1 - i / steps) for i in range(steps + 1)]
        clean = expand_levels(t0 == 0, x)
        return [(ts[i], ts[i + 1], expand_levels(ts[i + 1] - ts[i], x)) for i in range(steps)], \
            (clean if bool(clean.any()) else None)

    @torch.no_grad()
    def sample(self, fn, x_init, t_start=1.0, steps=10):
        steps = max(1, int(steps))
        x, heads = x_init, {}
        plan, clean = self._plan(t_start, x, steps)
        for i, (t_now, t_next, dt) in enumerate(plan):
            out = fn(x, t_now)
            v, heads = prediction_of(out), heads_of(out)
            x_next = x + dt * v
            if self.solver == "heun" and i < steps - 1:
                v_next = prediction_of(fn(x_next, t_next))
                x_next = x + dt * 0.5 * (v + v_next)
            x = x_next if clean is None else torch.where(clean, x, x_next)   # clean tokens stay as given
        return x, heads
