"""A small convolutional autoencoder for camera frames, trained by the project on its own stores.

The joint video-action family (joint.py) denoises future frames as latents rather than
pixels: a frame (H, W, 3) uint8 becomes a grid (C, h, w) of ``latent_channels`` numbers per
cell, each stage of ``widths`` halving the side (84 px with four stages: 6 x 6 cells). No
pretrained image autoencoder can be downloaded here, and a few thousand frames of one scene
train this one to a useful reconstruction in minutes on a CPU.

    ae = FrameAutoencoder((84, 84, 3), latent_channels=8, widths=(16, 32, 64, 64))
    loss = ae.reconstruction_loss(frames)      # frames (B, H, W, 3) uint8; the trainer fits it (train.fit_stage)
    z = ae.encode(frames)          # (B, H, W, 3) uint8 -> (B, C, h, w)
    images = ae.decode(z)          # -> (B, H, W, 3) float in [0, 1]
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


class FrameAutoencoder(nn.Module):
    """Frames (B, H, W, 3) uint8 <-> latents (B, C, h, w); strided 3x3 convolutions down,
    nearest-neighbour upsampling to the encoder's own sizes and 3x3 convolutions up."""

    def __init__(self, image_shape: tuple[int, int, int], latent_channels: int, widths: tuple[int, ...]):
        super().__init__()
        h, w, c = (int(v) for v in image_shape)
        if c != 3 or not widths:
            raise ValueError(f"the frame autoencoder takes (H, W, 3) frames and at least one stage width; got "
                             f"image shape {tuple(image_shape)}, widths {list(widths)}")
        self.image_shape = (h, w, c)
        self.sizes = [(h, w)]
        for _ in widths:                                   # 3x3, stride 2, padding 1: ceil(n / 2)
            self.sizes.append((math.ceil(self.sizes[-1][0] / 2), math.ceil(self.sizes[-1][1] / 2)))
        down, previous = [], 3
        for width in widths:
            down += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.SiLU()]
            previous = width
        self.encoder = nn.Sequential(*down, nn.Conv2d(previous, latent_channels, 1))
        self.decode_in = nn.Conv2d(latent_channels, widths[-1], 1)
        outs = list(widths[-2::-1]) + [widths[0]]          # the stage widths in reverse, ending at full size
        self.up = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(widths[::-1], outs))
        self.to_rgb = nn.Conv2d(widths[0], 3, 3, padding=1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one frame's latent."""
        return (self.encoder[-1].out_channels, *self.sizes[-1])

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, C, h, w)."""
        if tuple(frames.shape[1:]) != self.image_shape:
            raise ValueError(f"the autoencoder was built for frames {self.image_shape}, got {tuple(frames.shape[1:])}")
        return self.encoder(to_unit(frames))

    def decode_unit(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 3, H, W) in about [-1, 1] (the training target's scale)."""
        x = F.silu(self.decode_in(z))
        for conv, size in zip(self.up, self.sizes[-2::-1]):
            x = F.silu(conv(F.interpolate(x, size=size, mode="nearest")))
        return self.to_rgb(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, H, W, 3) float in [0, 1]."""
        return ((self.decode_unit(z).clamp(-1, 1) + 1) / 2).movedim(-3, -1)

    def reconstruction_loss(self, frames: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.decode_unit(self.encode(frames)), to_unit(frames))


def psnr(predicted: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (or uint8, scaled), over all pixels."""
    def unit(v):
        v = torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v)
        return v.float() / 255.0 if v.dtype == torch.uint8 else v.float()
    mse = float(((unit(predicted) - unit(target)) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))
