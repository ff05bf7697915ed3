"""Truncated anchored diffusion (DiffusionDrive), ``policy/process=anchored``.

K anchors (K, H, A) are k-means centres of normalised training chunks, fitted before training
from a seed and saved with the policy's weights (``process_state.anchors``). The schedule is
DDPM's scaled-linear one over ``num_train_steps`` steps, of which only the first
``truncation`` are ever used:

- training: one step k uniform in [0, truncation) per sample; each of the K anchors is noised
  to it with noise of its own; the denoiser predicts every anchor's clean chunk and a score.
  ``anchor_score`` is a focal (or cross-entropy) classification whose positive is the anchor
  nearest the ground truth; ``anchor_l1`` is the L1 error of the positive anchor's prediction
  (weights in the yaml: 10 and 8, as published).
- sampling: the anchors noised to step ``start_step`` with the sampler's noise (one draw per
  sample, shared by its anchors), ``steps`` DDIM evaluations on levels from there down to
  step 0 (``levels(steps)`` lists them), then each sample's best-scoring plan. The heads hold
  all K plans (B, K, H, A) and their scores (B, K).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import batch_random
from .base import PROCESSES, heads_of, prediction_of
from .ddpm import DDPMProcess

CLASSIFICATIONS = ("focal", "ce")


class AnchorState(nn.Module):
    """The anchors (K, H, A) in normalised action units, and whether they were fitted."""

    def __init__(self, n_anchors: int, horizon: int, action_dim: int):
        super().__init__()
        self.register_buffer("anchors", torch.zeros(n_anchors, horizon, action_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 100) -> np.ndarray:
    """k centres (k, D) of points (N, D): k-means++ seeding from ``seed``, then Lloyd iterations
    until the centres stop moving. The same points and seed give the same centres."""
    points = np.asarray(points, np.float64)
    n = len(points)
    if n < k:
        raise ValueError(f"anchored process: {k} anchors need at least {k} training chunks, the store gives {n}")
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(n)]]
    nearest = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres.append(points[pick])
        nearest = np.minimum(nearest, ((points - points[pick]) ** 2).sum(1))
    centres = np.stack(centres)
    norms = (points ** 2).sum(1, keepdims=True)
    for _ in range(iterations):
        distances = norms - 2 * points @ centres.T + (centres ** 2).sum(1)[None]     # (N, k)
        assign = distances.argmin(1)
        moved = np.stack([points[assign == j].mean(0) if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(moved, centres, atol=1e-9):
            break
        centres = moved
    return centres


@PROCESSES.register("anchored")
class AnchoredProcess(DDPMProcess):
    name = "anchored"
    heads = ("score",)

    def __init__(self, n_anchors: int = 20, num_train_steps: int = 1000, truncation: int = 50,
                 start_step: int = 8, classification: str = "focal", focal_gamma: float = 2.0,
                 focal_alpha: float = 0.25, fit_chunks: int = 20000, clip_sample: float = 1.0):
        super().__init__(num_train_steps, "sample", 0.0, clip_sample, beta_schedule="scaled_linear")
        if int(n_anchors) < 1:
            raise ValueError(f"policy.process.n_anchors must be >= 1, got {n_anchors}")
        if not 1 <= int(truncation) <= self.num_train_steps:
            raise ValueError(f"policy.process.truncation must be in [1, num_train_steps={self.num_train_steps}], "
                             f"got {truncation}")
        if not 0 <= int(start_step) < int(truncation):
            raise ValueError(f"policy.process.start_step must be in [0, truncation={truncation}), got {start_step}")
        if classification not in CLASSIFICATIONS:
            raise ValueError(f"policy.process.classification must be one of {CLASSIFICATIONS}, got {classification!r}")
        self.fan_out = int(n_anchors)
        self.truncation = int(truncation)
        self.start_step = int(start_step)
        self.classification = classification
        self.focal_gamma, self.focal_alpha = float(focal_gamma), float(focal_alpha)
        self.fit_chunks = int(fit_chunks)
        self.state: AnchorState | None = None

    # ------------------------------------------------------------------ anchors
    def make_state(self, horizon: int, action_dim: int) -> AnchorState:
        self.state = AnchorState(self.fan_out, horizon, action_dim)
        return self.state

    def fit(self, chunks: torch.Tensor, seed: int) -> None:
        """The anchors: k-means centres of the normalised chunks (N, H, A)."""
        anchors = self._anchors()
        centres = kmeans(chunks.reshape(len(chunks), -1).cpu().numpy(), self.fan_out, seed)
        anchors.copy_(torch.as_tensor(centres, dtype=anchors.dtype).reshape(anchors.shape))
        self.state.fitted.fill_(True)

    def _anchors(self) -> torch.Tensor:
        if self.state is None:
            raise RuntimeError("anchored process: no anchor state; the policy creates it (make_state)")
        return self.state.anchors

    def nearest_anchor(self, x0: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the anchor nearest each chunk x0 (B, H, A) in mean squared distance."""
        anchors = self._anchors().to(x0.dtype)
        return ((x0[:, None] - anchors[None]) ** 2).mean(dim=(-2, -1)).argmin(dim=1)

    # ------------------------------------------------------------------ training
    def draw_levels(self, shape, device, dtype, generator=None):
        k = batch_random.randint(0, self.truncation, shape, device, generator)
        return (k.to(dtype) + 1) / self.num_train_steps

    def training_pair(self, x0, t=None, generator=None):
        """x0 (B, H, A) -> every anchor noised to the sample's level: x_t (B * K, H, A), t (B * K,);
        the target is x0 itself (the positive anchor is chosen in ``loss_terms``)."""
        b, k = x0.shape[0], self.fan_out
        if t is None:
            t = self.draw_levels((b,), x0.device, x0.dtype, generator)
        if t.dim() != 1:
            raise ValueError("anchored process: one noise level per sample (no per-token levels, no clean prefix)")
        anchors = self._anchors().to(x0.dtype)[None].expand(b, -1, -1, -1)           # (B, K, H, A)
        eps = batch_random.randn(anchors.shape, x0.device, x0.dtype, generator)
        levels = t.repeat_interleave(k)
        x_t = self.add_noise(anchors.reshape(b * k, *x0.shape[1:]), levels, eps.reshape(b * k, *x0.shape[1:]))
        return x_t, levels, x0

    def loss_terms(self, out, target, mask=None):
        """``anchor_score`` (classification of the nearest anchor) and ``anchor_l1`` (the positive's error)."""
        b, k = target.shape[0], self.fan_out
        plans = prediction_of(out).float().reshape(b, k, *target.shape[1:])
        scores = heads_of(out)["score"].float().reshape(b, k)
        positive = self.nearest_anchor(target.float())
        l1 = (plans[torch.arange(b, device=target.device), positive] - target.float()).abs().mean()
        if self.classification == "ce":
            score_loss = F.cross_entropy(scores, positive)
        else:
            labels = F.one_hot(positive, k).float()
            bce = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
            p = torch.sigmoid(scores)
            p_true = p * labels + (1 - p) * (1 - labels)
            alpha = self.focal_alpha * labels + (1 - self.focal_alpha) * (1 - labels)
            score_loss = (alpha * (1 - p_true) ** self.focal_gamma * bce).sum(dim=1).mean()
        return {"anchor_score": score_loss, "anchor_l1": l1}

    # ------------------------------------------------------------------ sampling
    def levels(self, steps: int) -> list[float]:
        """The noise levels t the sampler evaluates the denoiser at, first to last."""
        j0 = self.start_step + 1
        n = max(1, min(int(steps), j0))
        return [self._walk(j0, i, n) / self.num_train_steps for i in range(n)]

    def initial(self, noise, t_start=1.0):
        """The anchors noised to ``start_step`` with each sample's noise (B, H, A): (B * K, H, A)."""
        self._anchors()
        if not bool(self.state.fitted):
            raise RuntimeError("anchored process: the anchors were never fitted; train the policy (the trainer "
                               "fits them from the store) or load a trained checkpoint")
        if torch.is_tensor(t_start) or float(t_start) != 1.0:
            raise ValueError("anchored process: sampling starts from the anchors at policy.process.start_step; "
                             "warm starts and other start levels are not supported")
        b, k = noise.shape[0], self.fan_out
        t0 = (self.start_step + 1) / self.num_train_steps
        anchors = self._anchors().to(noise.dtype)[None].expand(b, -1, -1, -1)
        eps = noise[:, None].expand(-1, k, -1, -1)
        x = self.add_noise(anchors.reshape(b * k, *noise.shape[1:]),
                           torch.full((b * k,), t0, device=noise.device, dtype=noise.dtype),
                           eps.reshape(b * k, *noise.shape[1:]))
        return x, t0

    @torch.no_grad()
    def sample(self, fn, x_init, t_start=1.0, steps=2):
        """x_init (B * K, H, A) from ``initial`` -> each sample's best plan (B, H, A), and heads
        ``plans`` (B, K, H, A), ``scores`` (B, K)."""
        steps = min(max(1, int(steps)), self.start_step + 1)
        x0, heads = super().sample(fn, x_init, t_start, steps)
        k = self.fan_out
        plans = x0.reshape(-1, k, *x0.shape[1:])
        scores = heads["score"].reshape(-1, k)
        best = scores.argmax(dim=1)
        return plans[torch.arange(len(plans), device=plans.device), best], {"plans": plans, "scores": scores}
