"""DDPM training with a cosine (squaredcos_cap_v2) schedule and DDIM sampling.

Training draws an integer step k in [0, T) and noises x0 as
``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps``; the network predicts eps (``epsilon``) or
x0 (``sample``). Sampling walks any sub-sequence of the T training steps with the DDIM
update; eta = 0 is deterministic, eta = 1 matches DDPM's ancestral noise.
"""

from __future__ import annotations

import math

import torch

PREDICTIONS = ("epsilon", "sample")


def cosine_alphas_cumprod(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """abar_k for k = 0..T-1 of the squared-cosine schedule (Nichol & Dhariwal)."""
    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), 0)


class DDPMProcess:
    name = "ddpm"

    def __init__(self, num_train_steps: int = 100, prediction: str = "epsilon", eta: float = 0.0,
                 clip_sample: float = 1.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"ddpm prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.num_train_steps = num_train_steps
        self.prediction = prediction
        self.eta = eta
        self.clip_sample = clip_sample
        self.alphas_cumprod = cosine_alphas_cumprod(num_train_steps)

    def _abar(self, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(like.device)[k].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def training_pair(self, x0, generator=None):
        b = x0.shape[0]
        k = torch.randint(0, self.num_train_steps, (b,), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        abar = self._abar(k, x0)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        target = eps if self.prediction == "epsilon" else x0
        return x_t, (k.to(x0.dtype) + 1) / self.num_train_steps, target

    @torch.no_grad()
    def sample(self, fn, noise, steps):
        steps = max(1, min(int(steps), self.num_train_steps))
        ks = torch.linspace(self.num_train_steps - 1, 0, steps).round().long().tolist()
        x = noise
        b = noise.shape[0]
        for i, k in enumerate(ks):
            t = torch.full((b,), (k + 1) / self.num_train_steps, device=x.device, dtype=x.dtype)
            out = fn(x, t)
            abar = self.alphas_cumprod[k].item()
            if self.prediction == "epsilon":
                eps = out
                x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
            else:
                x0 = out
            if self.clip_sample:
                x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
            if i == len(ks) - 1:
                x = x0
                break
            abar_prev = self.alphas_cumprod[ks[i + 1]].item()
            sigma = self.eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn_like(x)
        return x
