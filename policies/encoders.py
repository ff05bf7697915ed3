"""Observation encoders: every observation input becomes tokens of width D.

- low-dim keys (B, T, d_k): one MLP per key, one token per key and history step;
- image keys (B, T, H, W, 3) uint8: a small ResNet-style CNN per camera, trained from
  scratch (GroupNorm, global average pooling), one token per camera and history step.

Each token gets a learned embedding of its (input, history step) slot. Goal tokens come
from goals.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import batch_random


@dataclass
class ObsSpec:
    """Shapes of the observation inputs: key -> per-step shape."""

    lowdim: dict[str, tuple[int, ...]] = field(default_factory=dict)
    images: dict[str, tuple[int, int, int]] = field(default_factory=dict)


class ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.skip = (nn.Identity() if stride == 1 and channels_in == channels_out
                     else nn.Conv2d(channels_in, channels_out, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.skip(x))


class ImageEncoder(nn.Module):
    """(N, H, W, 3) uint8 -> (N, D). A stride-2 stem and four stride-2 residual stages:
    84 px -> 3x3 features, about 9 M multiply-adds per frame with the default widths, so
    image policies train on a CPU."""

    def __init__(self, d_model: int, widths: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.GroupNorm(8, widths[0]), nn.ReLU())
        stages, c = [], widths[0]
        for w in widths:
            stages.append(ResidualBlock(c, w, stride=2))
            c = w
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(c, d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = self.stages(self.stem(x))
        return self.proj(x.mean(dim=(2, 3)))


def random_shift(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Training augmentation: pad by edge replication and crop back at a random offset.

    images: (N, H, W, C) uint8, one offset per image."""
    n, h, w, _ = images.shape
    x = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    dx = batch_random.randint(0, 2 * pad + 1, (n,), images.device)
    dy = batch_random.randint(0, 2 * pad + 1, (n,), images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None])  # (N, H)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None])  # (N, W)
    x = x[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
          rows[:, None, :, None], cols[:, None, None, :]]
    return x.permute(0, 2, 3, 1).round().to(images.dtype)


class ObservationEncoder(nn.Module):
    """Observation history -> tokens (B, n_obs * n_inputs, D); obs: key -> (B, n_obs, ...)."""

    def __init__(self, spec: ObsSpec, n_obs: int, d_model: int, image_widths: tuple[int, ...]):
        super().__init__()
        self.spec = spec
        self.n_obs = n_obs
        self.lowdim = nn.ModuleDict({
            key: nn.Sequential(nn.Linear(int(torch.tensor(shape).prod()), d_model), nn.GELU(), nn.Linear(d_model, d_model))
            for key, shape in spec.lowdim.items()
        })
        self.images = nn.ModuleDict({key: ImageEncoder(d_model, image_widths) for key in spec.images})
        self.n_tokens = (len(self.lowdim) + len(self.images)) * n_obs
        self.slot_embedding = nn.Parameter(torch.zeros(1, self.n_tokens, d_model))
        nn.init.normal_(self.slot_embedding, std=0.02)

    def forward(self, obs: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        tokens = []
        for key, mlp in self.lowdim.items():
            x = obs[key]
            tokens.append(mlp(x.reshape(x.shape[0], x.shape[1], -1).float()))  # (B, T, D)
        for key, cnn in self.images.items():
            tokens.append(encode_frames(cnn, obs[key], augment))
        return torch.cat(tokens, dim=1) + self.slot_embedding


def encode_frames(cnn: ImageEncoder, frames: torch.Tensor, augment: bool) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, T, D), one CNN pass over all B * T frames."""
    b, t = frames.shape[:2]
    flat = frames.reshape(b * t, *frames.shape[2:])
    if augment:
        flat = random_shift(flat)
    return cnn(flat).reshape(b, t, -1)
