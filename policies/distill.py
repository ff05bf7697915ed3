"""Consistency distillation: a second training stage that turns a many-step policy into a 1–2 step one.

Why consistency distillation rather than shortcut models: it starts from any trained
checkpoint of any family and either process, without a step-size input the network was not
trained with, and its student has exactly the teacher's architecture, so the distilled
checkpoint runs through the same samplers, traced graphs, ONNX export and runtime. It is
also the route published for visuomotor policies (Consistency Policy, RSS 2024: 1–3 steps
at the success of a many-step teacher). Shortcut models need the step size as a network
input from the first training step, which would be a second architecture to carry.

The student starts as a copy of the teacher. On the teacher's ``teacher_steps``-level grid
t_n = n / N, a training chunk is noised to a level t_n; the teacher takes one deterministic
step (Euler for flow, DDIM for DDPM) down to t_{n-1}; the student learns that its clean-sample
estimate at (x_{t_n}, t_n) equals its own (gradient-free) estimate at (x_{t_{n-1}}, t_{n-1}),
and the data itself at level 0:

    f_S(x_{t_n}, t_n) -> stopgrad f_S(x_{t_{n-1}}, t_{n-1}),    f(x, 0) = x

so f maps every point of a teacher trajectory to its end, and the process's own sampler at
1 or 2 steps lands where the teacher's N steps would. Loss: pseudo-Huber (robust to the
large early errors) or MSE, per chunk.
"""

from __future__ import annotations

import math

import torch

from .denoiser import prediction_of

LOSSES = ("pseudo_huber", "mse")


class ConsistencyDistillation:
    """Training objective ``(policy, batch) -> (loss, logs)`` for the shared trainer."""

    def __init__(self, teacher, teacher_steps: int = 10, loss: str = "pseudo_huber"):
        if loss not in LOSSES:
            raise ValueError(f"distill loss must be one of {LOSSES}, got {loss!r}")
        if int(teacher_steps) < 1:
            raise ValueError(f"teacher_steps must be a positive integer, got {teacher_steps}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_steps = int(teacher_steps)
        self.loss = loss

    def _teacher_step(self, process, x, t, t_next, prepared) -> torch.Tensor:
        """One deterministic step of the teacher's ODE from levels t to t_next (B,)."""
        x0 = process.x0_estimate(x, t, prediction_of(self.teacher.denoiser(x, t, prepared)))
        clip = getattr(process, "clip_sample", 0.0)
        if clip:
            x0 = x0.clamp(-clip, clip)                 # as the teacher's own DDIM sampler does
        return process.add_noise(x0, t_next, process.noise_estimate(x, t, x0))

    def __call__(self, policy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        spec, process = policy.spec, policy.process
        x0 = policy.normalizer.normalize(spec.action_key, batch[spec.action_key].float())       # (B, H, A)
        b, n_steps = x0.shape[0], self.teacher_steps
        n = torch.randint(1, n_steps + 1, (b,), device=x0.device)
        t_hi, t_lo = n.to(x0.dtype) / n_steps, (n - 1).to(x0.dtype) / n_steps
        x_hi = process.add_noise(x0, t_hi, torch.randn_like(x0))
        prepared = policy.denoiser.prepare(policy.condition(batch, augment=policy.training))
        with torch.no_grad():
            teacher_prepared = self.teacher.denoiser.prepare(self.teacher.condition(batch))
            x_lo = self._teacher_step(process, x_hi, t_hi, t_lo, teacher_prepared)
            target = process.x0_estimate(x_lo, t_lo, prediction_of(policy.denoiser(x_lo, t_lo, prepared)))
            target = torch.where((t_lo == 0).reshape(-1, 1, 1), x_lo, target)
        estimate = process.x0_estimate(x_hi, t_hi, prediction_of(policy.denoiser(x_hi, t_hi, prepared)))
        sq = ((estimate.float() - target.float()) ** 2).flatten(1).sum(dim=1)        # (B,)
        if self.loss == "mse":
            loss = sq.mean() / x0[0].numel()
        else:
            c = 0.00054 * math.sqrt(x0[0].numel())   # the improved-consistency-training constant, scaled to the chunk size
            loss = (torch.sqrt(sq + c * c) - c).mean()
        logs = {"loss/consistency": float(loss.detach()), "loss": float(loss.detach()),
                "distill/x0_rmse": float(torch.sqrt(sq.detach().mean() / x0[0].numel()))}
        return loss, logs
