"""Flow matching with the rectified (straight-line) path.

``x_t = (1 - t) x0 + t eps`` with t in [0, 1] (t = 1 is noise); the network predicts the
velocity ``eps - x0``. Sampling integrates from t = 1 to 0 with Euler or Heun steps.
"""

from __future__ import annotations

import torch

SOLVERS = ("euler", "heun")


class FlowMatchingProcess:
    name = "flow"

    def __init__(self, solver: str = "euler", time_sampling: str = "uniform"):
        if solver not in SOLVERS:
            raise ValueError(f"flow solver must be one of {SOLVERS}, got {solver!r}")
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"flow time_sampling must be uniform or logit_normal, got {time_sampling!r}")
        self.solver = solver
        self.time_sampling = time_sampling

    def training_pair(self, x0, generator=None):
        b = x0.shape[0]
        if self.time_sampling == "uniform":
            t = torch.rand((b,), device=x0.device, dtype=x0.dtype, generator=generator)
        else:
            t = torch.sigmoid(torch.randn((b,), device=x0.device, dtype=x0.dtype, generator=generator))
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        tt = t.view(-1, *([1] * (x0.dim() - 1)))
        return (1 - tt) * x0 + tt * eps, t, eps - x0

    @torch.no_grad()
    def sample(self, fn, noise, steps):
        steps = max(1, int(steps))
        x = noise
        b = noise.shape[0]
        times = torch.linspace(1.0, 0.0, steps + 1).tolist()
        for t_now, t_next in zip(times[:-1], times[1:]):
            t = torch.full((b,), t_now, device=x.device, dtype=x.dtype)
            v = fn(x, t)
            x_next = x + (t_next - t_now) * v
            if self.solver == "heun" and t_next > 0:
                v_next = fn(x_next, torch.full_like(t, t_next))
                x_next = x + (t_next - t_now) * 0.5 * (v + v_next)
            x = x_next
        return x
