"""The contract every denoising process implements.

A process turns clean action chunks x0 (B, H, A) into training pairs and a denoiser into a
sampler. Noise levels t live in [0, 1]: 0 is clean data, 1 pure noise. A level is given per
sample, t (B,), or per token, t (B, H), so that streams of one chunk (a clean prefix of
actions that are already committed, video tokens beside action tokens) can sit at different
levels; a token at level 0 is held fixed by the sampler.

    x_t, t, target = process.training_pair(x0)               # t drawn per sample, or passed in
    terms = process.loss_terms(out, target)                  # {"diffusion": ...} (plus the process's own)
    x0, heads = process.sample(fn, x_init, t_start, steps)   # fn(x_t, t) -> prediction or dict

``sample`` starts at any level: ``x_init`` is pure noise at ``t_start = 1``, or a sample
noised to a lower level with ``add_noise`` (warm start from the previous chunk, anchors).
The observation conditioning is bound into ``fn`` by the caller, so it is computed once per
chunk, not once per step. The step count is an argument of ``sample``, chosen at inference.

A process may run several denoising chains per sample (``fan_out``, e.g. one per anchor):
then ``training_pair`` and ``initial`` return (B * fan_out, ...) inputs, sample-major, whose
chains share their sample's noise level at every step; the caller gives the denoiser each
sample's condition once per chain (repeated, or shared by a denoiser that takes the chains
together), and ``sample`` returns one result per sample. It
may read extra denoiser outputs (``heads``, e.g. a per-chain score) and keep tensors in the
checkpoint (``make_state``: a module the policy registers), set by ``fit`` before training.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import batch_random
from ..denoiser import DenoiserOutput, heads_of, prediction_of
from ..registry import Registry

PROCESSES: Registry["DenoisingProcess"] = Registry("denoising process", "policy.process")

Denoiser = Callable[[torch.Tensor, torch.Tensor], DenoiserOutput]


def expand_levels(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Levels (B,) or (B, H) as (B, 1, 1) or (B, H, 1), to broadcast against ``like`` (B, H, A)."""
    return t.reshape(*t.shape, *([1] * (like.dim() - t.dim())))


def start_levels(t_start: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t_start`` as a (B,) or (B, H) tensor on ``x``'s device."""
    if not torch.is_tensor(t_start):
        return torch.full(x.shape[:1], float(t_start), device=x.device, dtype=x.dtype)
    t = t_start.to(device=x.device, dtype=x.dtype)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if tuple(t.shape) not in (tuple(x.shape[:1]), tuple(x.shape[:2])):
        raise ValueError(f"t_start has shape {tuple(t.shape)}; expected a number, (B,) = {tuple(x.shape[:1])} "
                         f"or (B, H) = {tuple(x.shape[:2])}")
    return t


class DenoisingProcess:
    """Shared parts of the processes; subclasses define the path, the target and the solver."""

    name: str
    fan_out: int = 1                     # denoising chains per sample
    heads: tuple[str, ...] = ()          # extra denoiser outputs the process reads

    def make_state(self, horizon: int, action_dim: int) -> nn.Module | None:
        """Tensors the process keeps with the policy's weights (the policy registers the module);
        None: none."""
        return None

    def fit(self, chunks: torch.Tensor, seed: int) -> None:
        """Set the state from normalised training chunks (N, H, A) before training; default: none."""

    def initial(self, noise: torch.Tensor, t_start: float | torch.Tensor = 1.0
                ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """The sampler's start from noise (B, H, A): (x_init (B * fan_out, H, A), t_start)."""
        return noise, t_start

    def draw_levels(self, shape: tuple[int, ...], device, dtype, generator=None) -> torch.Tensor:
        """Training noise levels in (0, 1] of the given shape, (B,) or (B, H)."""
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 (B, H, A) taken to levels t (B,) or (B, H) with noise eps (B, H, A)."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to predict at (x_t, t)."""
        raise NotImplementedError

    def x0_estimate(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The clean sample (B, H, A) that the prediction ``pred`` at (x_t, t) implies."""
        raise NotImplementedError

    def prediction_for(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The prediction at (x_t, t) that implies the clean sample ``x0``: the inverse of
        ``x0_estimate``, so a sampler can be steered by editing its clean-sample estimate."""
        raise NotImplementedError

    def noise_estimate(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise that takes ``x0`` to ``x_t`` at level t. With ``x0_estimate`` this gives
        the deterministic step ``add_noise(x0, t_next, noise)`` (DDIM; Euler for flow)."""
        raise NotImplementedError

    def training_pair(self, x0: torch.Tensor, t: torch.Tensor | None = None, generator=None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) for x0 (B, H, A); t (B,) drawn here unless given, (B,) or (B, H)."""
        if t is None:
            t = self.draw_levels(x0.shape[:1], x0.device, x0.dtype, generator)
        eps = batch_random.randn(x0.shape, x0.device, x0.dtype, generator)
        return self.add_noise(x0, t, eps), t, self.target(x0, eps, t)

    def loss_terms(self, out: DenoiserOutput, target: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
        """``diffusion``: mean squared error of the prediction; ``mask`` (B, H) selects the
        tokens that count (e.g. not a clean prefix)."""
        error = (prediction_of(out).float() - target.float()) ** 2
        if mask is None:
            return {"diffusion": error.mean()}
        weights = expand_levels(mask.float(), error).expand_as(error)
        return {"diffusion": (error * weights).sum() / weights.sum().clamp_min(1.0)}

    def sample(self, fn: Denoiser, x_init: torch.Tensor, t_start: float | torch.Tensor = 1.0, steps: int = 10
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoise ``x_init`` (B, H, A) from levels ``t_start`` to 0 in ``steps`` denoiser
        evaluations (Heun: about twice as many). Returns the sample and the extra heads of the
        last evaluation."""
        raise NotImplementedError


__all__ = ["PROCESSES", "DenoisingProcess", "expand_levels", "heads_of", "prediction_of", "start_levels"]
