"""DDPM training on a cosine (squaredcos_cap_v2) or scaled-linear schedule, DDIM sampling
(``policy/process=ddpm``).

Training draws an integer step k in [0, T) and noises x0 as
``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps``; the network sees t = (k + 1) / T and
predicts eps (``epsilon``) or x0 (``sample``). Level t = 0 is the clean sample (abar = 1),
so a token given clean stays fixed. Sampling walks ``steps`` levels from each token's start
level down to the first training step with the DDIM update, then returns the predicted x0;
eta = 0 is deterministic, eta = 1 matches DDPM's ancestral noise.
"""

from __future__ import annotations

import math

import torch

from .. import batch_random
from .base import PROCESSES, DenoisingProcess, expand_levels, heads_of, prediction_of, start_levels

PREDICTIONS = ("epsilon", "sample")
SCHEDULES = ("cosine", "scaled_linear")


def cosine_alphas_cumprod(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """abar_k for k = 0..T-1 of the squared-cosine schedule (Nichol & Dhariwal)."""
    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), 0)


def scaled_linear_alphas_cumprod(num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """abar_k for k = 0..T-1 of the scaled-linear schedule (betas linear in sqrt, Stable Diffusion's)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


@PROCESSES.register("ddpm")
class DDPMProcess(DenoisingProcess):
    name = "ddpm"

    def __init__(self, num_train_steps: int, prediction: str, eta: float, clip_sample: float,
                 beta_schedule: str = "cosine"):
        if beta_schedule not in SCHEDULES:
            raise ValueError(f"policy.process.beta_schedule must be one of {SCHEDULES}, got {beta_schedule!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"policy.process.prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if int(num_train_steps) < 1:
            raise ValueError(f"policy.process.num_train_steps must be >= 1, got {num_train_steps}")
        self.num_train_steps = int(num_train_steps)
        self.prediction = prediction
        self.eta = float(eta)
        self.clip_sample = float(clip_sample)
        self.alphas_cumprod = (cosine_alphas_cumprod if beta_schedule == "cosine"
                               else scaled_linear_alphas_cumprod)(self.num_train_steps)
        # abar by level index j = round(t * T): j = 0 is clean, j = k + 1 is training step k
        self.abar_table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])

    def level_index(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.num_train_steps).round().long().clamp(0, self.num_train_steps)

    def _abar(self, j: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return expand_levels(self.abar_table.to(like.device)[j].to(like.dtype), like)

    def draw_levels(self, shape, device, dtype, generator=None):
        k = batch_random.randint(0, self.num_train_steps, shape, device, generator)
        return (k.to(dtype) + 1) / self.num_train_steps

    def add_noise(self, x0, t, eps):
        abar = self._abar(self.level_index(t), x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def target(self, x0, eps, t):
        return eps if self.prediction == "epsilon" else x0

    def x0_estimate(self, x_t, t, pred):
        if self.prediction == "sample":
            return pred
        abar = self._abar(self.level_index(t), x_t)
        return (x_t - (1 - abar).sqrt() * pred) / abar.sqrt()

    def prediction_for(self, x_t, t, x0):
        return x0 if self.prediction == "sample" else self.noise_estimate(x_t, t, x0)

    def noise_estimate(self, x_t, t, x0):
        abar = self._abar(self.level_index(t), x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).clamp_min(1e-12).sqrt()

    def _walk(self, j0, i: int, steps: int):
        """Level index of evaluation i: from j0 down to 1 (training step 0); 0 stays 0.
        j0 is an int (one level for the batch) or a long tensor (per sample or token)."""
        frac = i / (steps - 1) if steps > 1 else 0.0
        if not torch.is_tensor(j0):
            return round((j0 - 1) * (1 - frac)) + 1 if j0 > 0 else 0
        walked = ((j0 - 1).clamp_min(0).double() * (1 - frac)).round().long() + 1
        return torch.where(j0 > 0, walked, j0)

    def _plan(self, t_start, x: torch.Tensor, steps: int) -> list[tuple]:
        """Per evaluation: (t for the denoiser, abar, abar of the next level or None, mask of
        tokens held fixed or None). One level for the batch keeps abar as plain floats, so
        the latency-critical common case costs no schedule tensors per step."""
        table, T = self.abar_table, self.num_train_steps
        if not torch.is_tensor(t_start):
            j0 = min(max(round(float(t_start) * T), 0), T)
            js = [self._walk(j0, i, steps) for i in range(steps)]
            fixed = torch.ones_like(x, dtype=torch.bool) if j0 == 0 else None
            levels = [(torch.full(x.shape[:1], j / T, device=x.device, dtype=x.dtype), float(table[j])) for j in js]
        else:
            j0 = self.level_index(start_levels(t_start, x))
            js = [self._walk(j0, i, steps) for i in range(steps)]
            fixed = expand_levels(j0 == 0, x) if bool((j0 == 0).any()) else None
            levels = [(j.to(x.dtype) / T, self._abar(j, x)) for j in js]
        nexts = [abar for _, abar in levels[1:]] + [None]
        return [(t, abar, abar_next, fixed) for (t, abar), abar_next in zip(levels, nexts)]

    @torch.no_grad()
    def sample(self, fn, x_init, t_start=1.0, steps=10):
        steps = max(1, min(int(steps), self.num_train_steps))
        x, heads = x_init, {}
        for t, abar, abar_next, fixed in self._plan(t_start, x, steps):
            out = fn(x, t)
            pred, heads = prediction_of(out), heads_of(out)
            x0 = (x - (1 - abar) ** 0.5 * pred) / abar ** 0.5 if self.prediction == "epsilon" else pred
            if self.clip_sample:
                x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            if fixed is not None:
                x0 = torch.where(fixed, x, x0)
            if abar_next is None:
                return x0, heads
            eps = (x - abar ** 0.5 * x0) / _at_least(1 - abar, 1e-12) ** 0.5
            sigma = self.eta * _at_least((1 - abar_next) / _at_least(1 - abar, 1e-12) * (1 - abar / abar_next), 0.0) ** 0.5
            x = abar_next ** 0.5 * x0 + _at_least(1 - abar_next - sigma ** 2, 0.0) ** 0.5 * eps
            if self.eta > 0:
                x = x + sigma * torch.randn_like(x)
        return x, heads


def _at_least(v, low: float):
    """max(v, low) for a float or elementwise for a tensor."""
    return v.clamp_min(low) if torch.is_tensor(v) else max(v, low)
