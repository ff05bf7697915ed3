"""Observation encoders: every observation input becomes tokens of width D.

- low-dim keys (B, T, d_k): one MLP per key, one token per key and history step;
- image keys (B, T, H, W, 3) uint8: a small ResNet-style CNN per camera, trained from
  scratch (GroupNorm), whose last feature map becomes the camera's tokens (``tokens``):
  ``grid``: the map average-pooled to G x G cells, one token per cell with a learned
  embedding of its place, so the DiT's cross-attention sees *where* things are;
  ``keypoints``: spatial softmax over K learned maps, one token per expected (x, y);
  ``pooled``: the whole map averaged to one token (position is averaged away).

Each token gets a learned embedding of its (input, history step) slot. Training augments
frames with a random shift (pad and crop back) and, optionally, colour jitter. Goal tokens
come from goals.py.
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


IMAGE_TOKENS = ("pooled", "grid", "keypoints")


@dataclass(frozen=True)
class ImageTokens:
    """How a camera frame becomes tokens and is augmented (``policy.image_encoder``)."""

    tokens: str = "grid"         # pooled | grid | keypoints
    grid: int = 3                # grid: G, tokens per frame G * G
    keypoints: int = 16          # keypoints: K, tokens per frame K
    shift: int = 4               # random-shift augmentation: pad in pixels (0: off)
    color_jitter: float = 0.0    # brightness / contrast / saturation jitter strength (0: off)

    def __post_init__(self):
        if self.tokens not in IMAGE_TOKENS:
            raise ValueError(f"policy.image_encoder.tokens must be one of {IMAGE_TOKENS}, got {self.tokens!r}")
        for key in ("grid", "keypoints"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"policy.image_encoder.{key} must be a positive integer, got {getattr(self, key)!r}")
        if not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"policy.image_encoder.shift must be an integer >= 0, got {self.shift!r}")
        if not 0.0 <= float(self.color_jitter) < 1.0:
            raise ValueError(f"policy.image_encoder.color_jitter must be in [0, 1), got {self.color_jitter!r}")

    @property
    def per_frame(self) -> int:
        return {"pooled": 1, "grid": self.grid ** 2, "keypoints": self.keypoints}[self.tokens]


class ImageEncoder(nn.Module):
    """(N, H, W, 3) uint8 -> (N, n, D): n tokens per frame (``ImageTokens``). A stride-2 stem
    and four stride-2 residual stages: 84 px -> 3x3 features, about 9 M multiply-adds per
    frame with the default widths, so image policies train on a CPU."""

    def __init__(self, d_model: int, widths: tuple[int, ...], tokens: ImageTokens = ImageTokens("pooled"),
                 image_size: tuple[int, int] | None = None):
        super().__init__()
        self.layout = tokens
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.GroupNorm(8, widths[0]), nn.ReLU())
        stages, c = [], widths[0]
        for w in widths:
            stages.append(ResidualBlock(c, w, stride=2))
            c = w
        self.stages = nn.Sequential(*stages)
        if tokens.tokens == "keypoints":
            self.keypoint_maps = nn.Conv2d(c, tokens.keypoints, 1)
            self.proj = nn.Linear(2, d_model)
        else:
            self.proj = nn.Linear(c, d_model)
        if tokens.tokens != "pooled":
            self.place_embedding = nn.Parameter(torch.randn(1, tokens.per_frame, d_model) * 0.02)
        if tokens.tokens == "grid":
            if image_size is None:
                raise ValueError("grid image tokens need the image size")
            h, w = (feature_size(n, 1 + len(widths)) for n in image_size)
            # adaptive average pooling as two fixed matrices: exported to ONNX as a plain einsum
            self.register_buffer("pool_rows", adaptive_pool_matrix(h, tokens.grid), persistent=False)
            self.register_buffer("pool_cols", adaptive_pool_matrix(w, tokens.grid), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = self.stages(self.stem(x))                                        # (N, C, h, w)
        kind = self.layout.tokens
        if kind == "pooled":
            return self.proj(x.mean(dim=(2, 3)))[:, None]
        if kind == "grid":
            cells = torch.einsum("gh,nchw,kw->ngkc", self.pool_rows, x, self.pool_cols)   # (N, G, G, C)
            return self.proj(cells.flatten(1, 2)) + self.place_embedding
        return self.proj(spatial_softmax(self.keypoint_maps(x))) + self.place_embedding


def feature_size(n: int, halvings: int) -> int:
    """Side of the feature map after ``halvings`` stride-2, padding-1, 3x3 convolutions."""
    for _ in range(halvings):
        n = (n + 1) // 2
    return n


def adaptive_pool_matrix(n: int, g: int) -> torch.Tensor:
    """(g, n) averaging weights of adaptive average pooling from n cells to g."""
    m = torch.zeros(g, n)
    for i in range(g):
        start, end = (i * n) // g, -((-(i + 1) * n) // g)
        m[i, start:end] = 1.0 / (end - start)
    return m


def spatial_softmax(maps: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, 2): the expected (x, y) in [-1, 1] of each map's softmax."""
    n, k, h, w = maps.shape
    weights = maps.flatten(2).softmax(dim=-1).reshape(n, k, h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=weights.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=weights.dtype)
    return torch.stack([(weights.sum(dim=2) * xs).sum(-1), (weights.sum(dim=3) * ys).sum(-1)], dim=-1)


def color_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """Training augmentation: per-image brightness, contrast and saturation factors drawn
    uniformly from [1 - strength, 1 + strength]. images: (N, H, W, 3) uint8."""
    n = images.shape[0]
    factors = 1.0 + strength * (2.0 * batch_random.rand((n, 3), images.device) - 1.0)       # (N, 3)
    x = images.float() * factors[:, 0, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factors[:, 1, None, None, None] + mean
    gray = x.mean(dim=-1, keepdim=True)
    x = (x - gray) * factors[:, 2, None, None, None] + gray
    return x.clamp(0, 255).round().to(images.dtype)


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

    def __init__(self, spec: ObsSpec, n_obs: int, d_model: int, image_widths: tuple[int, ...],
                 image_tokens: ImageTokens = ImageTokens("pooled")):
        super().__init__()
        self.spec = spec
        self.n_obs = n_obs
        self.lowdim = nn.ModuleDict({
            key: nn.Sequential(nn.Linear(int(torch.tensor(shape).prod()), d_model), nn.GELU(), nn.Linear(d_model, d_model))
            for key, shape in spec.lowdim.items()
        })
        self.images = nn.ModuleDict({key: ImageEncoder(d_model, image_widths, image_tokens, tuple(shape[:2]))
                                     for key, shape in spec.images.items()})
        self.n_slots = (len(self.lowdim) + len(self.images)) * n_obs
        self.n_tokens = (len(self.lowdim) + len(self.images) * image_tokens.per_frame) * n_obs
        self.slot_embedding = nn.Parameter(torch.zeros(1, self.n_slots, d_model))
        nn.init.normal_(self.slot_embedding, std=0.02)

    def forward(self, obs: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        """-> (B, n_tokens, D): per low-dim key T tokens, per camera T x n tokens (n per frame)."""
        tokens, slot = [], 0
        for key, mlp in self.lowdim.items():
            x = obs[key]
            t = x.shape[1]
            tokens.append(mlp(x.reshape(x.shape[0], t, -1).float()) + self.slot_embedding[:, slot:slot + t])
            slot += t
        for key, cnn in self.images.items():
            frames = encode_frames(cnn, obs[key], augment)                          # (B, T, n, D)
            t = frames.shape[1]
            frames = frames + self.slot_embedding[:, slot:slot + t, None]
            tokens.append(frames.reshape(frames.shape[0], -1, frames.shape[-1]))
            slot += t
        return torch.cat(tokens, dim=1)


def encode_frames(cnn: ImageEncoder, frames: torch.Tensor, augment: bool) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, T, n, D), one CNN pass over all B * T frames; ``augment``
    applies the encoder's training augmentations."""
    b, t = frames.shape[:2]
    flat = frames.reshape(b * t, *frames.shape[2:])
    if augment and cnn.layout.shift > 0:
        flat = random_shift(flat, cnn.layout.shift)
    if augment and cnn.layout.color_jitter > 0:
        flat = color_jitter(flat, float(cnn.layout.color_jitter))
    out = cnn(flat)
    return out.reshape(b, t, *out.shape[1:])
