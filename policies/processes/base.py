"""The interface every denoising process implements.

A process turns clean action chunks x0 (B, H, A) into training pairs and turns a denoiser
into a sampler. The denoiser is ``fn(x_t, t) -> prediction`` with t a (B,) float tensor in
[0, 1] (1 = pure noise); the observation conditioning is bound into ``fn`` by the caller, so
it is computed once per chunk, not once per step. The number of sampling steps is an argument
of ``sample``: it is chosen at inference and never stored in a checkpoint.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DenoisingProcess(Protocol):
    name: str

    def training_pair(self, x0: torch.Tensor, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) for x0 (B, H, A); t is (B,) in [0, 1]."""

    def sample(self, fn: Denoiser, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """Denoise ``noise`` (B, H, A) in ``steps`` network evaluations (Heun: about 2x)."""
