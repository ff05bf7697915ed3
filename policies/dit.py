"""The DiT denoiser over action chunks.

Tokens: H noisy action tokens (B, H, D). Each block: self-attention over the action
tokens, cross-attention to the conditioning tokens (observations, goal), and an MLP; the
self-attention and MLP are modulated by adaLN-Zero from the conditioning vector
``c = time_embedding(t) + pooled(cond)``. The keys and values of the conditioning tokens
are projected once per chunk (``prepare``) and reused by every denoising step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DiTConfig:
    action_dim: int = 4
    horizon: int = 16
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention; ``kv`` may be precomputed (B, heads, N, D/heads) pairs."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q = self.split(self.q(x))
        k, v = self.keys_values(x) if kv is None else kv
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        b, h, n, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * dh))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.norm_cross = nn.LayerNorm(d, eps=1e-6)
        self.cross_attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.self_attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross_attn(self.norm_cross(x), kv=cond_kv)
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


@dataclass
class PreparedCondition:
    """Per-chunk work shared by all denoising steps."""

    pooled: torch.Tensor                                  # (B, D)
    kv: list[tuple[torch.Tensor, torch.Tensor]]           # per block: (B, heads, N_cond, D/heads)


class DiTDenoiser(nn.Module):
    """(x_t (B, H, A), t (B,), prepared condition) -> prediction (B, H, A)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.position = nn.Parameter(torch.zeros(1, cfg.horizon, d))
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.cond_pool = nn.Linear(d, d)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.action_out = nn.Linear(d, cfg.action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        nn.init.normal_(self.position, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final_ada[-1].weight)
        nn.init.zeros_(self.final_ada[-1].bias)
        nn.init.zeros_(self.action_out.weight)
        nn.init.zeros_(self.action_out.bias)

    def prepare(self, cond: torch.Tensor) -> PreparedCondition:
        """cond (B, N_cond, D) -> pooled vector and per-block cross-attention keys/values."""
        return PreparedCondition(
            pooled=self.cond_pool(cond.mean(dim=1)),
            kv=[block.cross_attn.keys_values(cond) for block in self.blocks],
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prepared: PreparedCondition) -> torch.Tensor:
        c = self.time_mlp(timestep_embedding(t, self.cfg.d_model)) + prepared.pooled
        x = self.action_in(x_t) + self.position[:, : x_t.shape[1]]
        for block, kv in zip(self.blocks, prepared.kv):
            x = block(x, c, kv)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.action_out(modulate(self.final_norm(x), shift, scale))
