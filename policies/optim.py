"""Optimiser, learning-rate schedule and EMA of the weights."""

from __future__ import annotations

import math

import torch
from torch import nn


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norms (1-D tensors), embedding tables
    (``nn.Embedding``) and learned token / position embeddings (names holding "embedding" or
    "position")."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        free = param.ndim < 2 or id(param) in tables or "embedding" in name or "position" in name
        (no_decay if free else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """Multiplier of the base learning rate: linear warm-up, then cosine decay to min_ratio."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class EMA:
    """Exponential moving average of a model's floating-point state.

    decay_n = min(max_decay, (1 + n) / (10 + n)) after n updates, so early averages follow
    the fast-moving weights and later ones settle."""

    def __init__(self, model: nn.Module, max_decay: float = 0.999):
        self.max_decay = max_decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.max_decay, (1 + self.updates) / (10 + self.updates))
        for name, value in model.state_dict().items():
            mine = self.state[name]
            if value.dtype.is_floating_point:
                mine.lerp_(value.detach(), 1 - decay)
            else:
                mine.copy_(value)
