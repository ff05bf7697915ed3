"""The DiT denoiser over action chunks (``policy/denoiser=dit``).

Tokens: H noisy action tokens (B, H, D). Each block: self-attention over the action
tokens, cross-attention to the conditioning tokens (observations, goal), and an MLP; the
self-attention and MLP are modulated by adaLN-Zero from the conditioning vector
``c = time_embedding(t) + pooled(cond)``. With one noise level per token, t (B, H), each
token gets its own ``c`` (B, H, D). The keys and values of the conditioning tokens are
projected once per chunk (``prepare``) and reused by every denoising step.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from .denoiser import DENOISERS, Denoiser


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000): (...) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def tokenwise(v: torch.Tensor) -> torch.Tensor:
    """A per-sample modulation (B, D) as (B, 1, D); a per-token one (B, H, D) unchanged."""
    return v[:, None] if v.dim() == 2 else v


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + tokenwise(scale)) + tokenwise(shift)


def xavier_linears(module: nn.Module) -> None:
    """Every linear layer of ``module``: Xavier-uniform weights, zero biases (children first)."""
    def init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    module.apply(init)


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

    def single_token(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of sequences of one token (N, 1, D): softmax over a single key is 1,
        so the output is the token's projected value; no queries, keys or scores."""
        d = x.shape[-1]
        return self.out(F.linear(x, self.kv.weight[d:], self.kv.bias[d:]))

    def mix_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled dot-product attention of split heads, q (B, heads, N, D / heads) and k, v
        (B, heads, N_keys, D / heads), merged back to (B, N, D), before the output layer."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        b, h, n, dh = y.shape
        return y.transpose(1, 2).reshape(b, n, h * dh)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, 1, N, N_keys) bool: True where a query may read a key."""
        k, v = self.keys_values(x) if kv is None else kv
        return self.out(self.mix_heads(self.split(self.q(x)), k, v, mask))


class DiTBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(d, n_heads, dropout)
        self.norm_cross = nn.LayerNorm(d, eps=1e-6)
        self.cross_attn = Attention(d, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond_kv: tuple[torch.Tensor, torch.Tensor],
                chain: int | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, K * H, D): K chains of ``chain`` = H tokens per condition row (default: one chain
        of all N tokens); self-attention stays within a chain, cross-attention and the MLP see
        every token of the row alike. ``mask`` (B, 1, N, N) bool: which tokens each token's
        self-attention reads (one chain only)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        b, n, d = x.shape
        chain = n if chain is None else chain
        y = modulate(self.norm1(x), shift1, scale1)
        if chain == 1:
            y = self.self_attn.single_token(y)
        elif n != chain:
            y = self.self_attn(y.reshape(b * (n // chain), chain, d)).reshape(b, n, d)
        else:
            y = self.self_attn(y, mask=mask)
        x = x + tokenwise(gate1) * y
        x = x + self.cross_attn(self.norm_cross(x), kv=cond_kv)
        x = x + tokenwise(gate2) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


@DENOISERS.register("dit")
class DiTDenoiser(Denoiser):
    """(x_t (B, H, A), t (B,) or (B, H), prepared condition) -> prediction (B, H, A), or with
    ``heads=("score",)`` a dict of the prediction and a score (B,) per chunk.

    ``cascade`` > 1 runs the blocks that many times with shared weights (DiffusionDrive's
    cascade decoder): each later pass reads the current estimate back into the action tokens
    and adds a correction to it.

    ``prepare`` returns ``{"pooled": (B, D), "kv": [(k, v) per block]}`` with k, v of shape
    (B, heads, N_cond, D / heads).

    Chains sharing a condition (``shares_condition``): x_t may hold K chains per condition row,
    (B * K, H, A) sample-major, at one noise level per row, t (B,). The chains are folded into
    the token axis, (B, K * H, D): the time and condition modulation is computed once per row,
    the cross-attention reads the row's keys and values unrepeated, and only self-attention
    splits the row back into its chains. Same result as repeating the condition K times."""

    shares_condition = True

    def __init__(self, action_dim: int, horizon: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_ratio: float, dropout: float, cascade: int = 1, heads: tuple[str, ...] = ()):
        super().__init__(action_dim, horizon, d_model)
        if int(cascade) < 1:
            raise ValueError(f"policy.denoiser.cascade must be >= 1, got {cascade}")
        self.cascade = int(cascade)
        if d_model % n_heads:
            raise ValueError(f"policy.d_model={d_model} is not divisible by policy.denoiser.n_heads={n_heads}")
        if set(heads) - {"score"}:
            raise ValueError(f"the dit denoiser has no head(s) {sorted(set(heads) - {'score'})}; it offers: score")
        d = d_model
        self.action_in = nn.Linear(action_dim, d)
        self.position = nn.Parameter(torch.zeros(1, horizon, d))
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.cond_pool = nn.Linear(d, d)
        self.blocks = nn.ModuleList(DiTBlock(d, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.action_out = nn.Linear(d, action_dim)
        self.score_out = nn.Linear(d, 1) if "score" in heads else None      # one score per chunk (anchors)
        self._init_weights()

    def _init_weights(self) -> None:
        xavier_linears(self)
        nn.init.normal_(self.position, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final_ada[-1].weight)
        nn.init.zeros_(self.final_ada[-1].bias)
        nn.init.zeros_(self.action_out.weight)
        nn.init.zeros_(self.action_out.bias)

    def prepare(self, cond: torch.Tensor) -> dict:
        """cond (B, N_cond, D) -> pooled vector and per-block cross-attention keys/values."""
        return {"pooled": self.cond_pool(cond.mean(dim=1)),
                "kv": [block.cross_attn.keys_values(cond) for block in self.blocks]}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prepared: dict) -> torch.Tensor:
        pooled = prepared["pooled"]
        b, h = pooled.shape[0], x_t.shape[1]
        k = x_t.shape[0] // b                                            # chains per condition row
        if k * b != x_t.shape[0] or (k > 1 and tuple(t.shape) != (b,)):
            raise ValueError(f"dit: x_t {tuple(x_t.shape)} and t {tuple(t.shape)} do not fit {b} condition rows: "
                             f"K chains per row take x_t (B * K, H, A) and one shared level per row, t (B,)")
        c = self.time_mlp(timestep_embedding(t, self.d_model))          # (B, D) or (B, H, D)
        c = c + (pooled if c.dim() == 2 else pooled[:, None])
        x = (self.action_in(x_t) + self.position[:, :h]).reshape(b, k * h, -1)     # chains folded: (B, K * H, D)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        prediction = None
        for _ in range(self.cascade):               # cascade: later passes refine the estimate, same weights
            if prediction is not None:
                x = x + self.action_in(prediction)
            for block, kv in zip(self.blocks, prepared["kv"]):
                x = block(x, c, kv, h)
            out = modulate(self.final_norm(x), shift, scale)
            prediction = self.action_out(out) if prediction is None else prediction + self.action_out(out)
        prediction = prediction.reshape(b * k, h, -1)
        if self.score_out is None:
            return prediction
        return {"prediction": prediction, "score": self.score_out(out.reshape(b * k, h, -1).mean(dim=1)).squeeze(-1)}
