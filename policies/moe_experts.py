"""The expert layers of a MoDE block: E SwiGLU experts, their sparse mixture, their fusion
into one dense layer per route (expert caching), and the Switch-style load-balancing term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLUExperts(nn.Module):
    """E SwiGLU experts of hidden width h: expert_e(x) = W2_e (silu(W1_e x) * W3_e x).

    ``w13`` (E, 2h, D) holds W1 and W3 stacked; ``w2`` (E, D, h)."""

    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Parameter(torch.randn(n_experts, 2 * hidden, d_model) * d_model ** -0.5)
        self.w2 = nn.Parameter(torch.zeros(n_experts, d_model, hidden))   # branch starts closed

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        a, b = F.linear(x, self.w13[e]).chunk(2, dim=-1)
        return F.linear(F.silu(a) * b, self.w2[e])

    def mix(self, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Sparse mixture over rows: x (N, D), idx and gates (N, k) -> (N, D); each expert
        runs only on the rows routed to it."""
        out = torch.zeros_like(x)
        for e in range(self.w13.shape[0]):
            chosen = idx == e                                           # (N, k)
            rows = chosen.any(dim=-1).nonzero().squeeze(1)
            weight = (gates * chosen).sum(dim=-1).index_select(0, rows)
            out.index_add_(0, rows, weight[:, None] * self.expert(e, x.index_select(0, rows)))
        return out

    def fuse(self, idx: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One dense SwiGLU equal to sum_j gates_j * expert_{idx_j}: idx, gates (k,) ->
        (w13 (2kh, D), w2 (D, kh)); with a leading batch, (B, k) -> one layer per sample,
        (B, 2kh, D) and (B, D, kh)."""
        w1, w3 = self.w13[idx].chunk(2, dim=-2)                         # (..., k, h, D) each
        lead, d = idx.shape[:-1], w1.shape[-1]
        w13 = torch.cat([w1.reshape(*lead, -1, d), w3.reshape(*lead, -1, d)], dim=-2)
        w2 = (self.w2[idx] * gates[..., None, None]).transpose(-3, -2).reshape(*lead, self.w2.shape[1], -1)
        return w13.contiguous(), w2.contiguous()


def with_shared(fused: tuple[torch.Tensor, torch.Tensor], shared: SwiGLUExperts) -> tuple[torch.Tensor, torch.Tensor]:
    """A fused layer (``SwiGLUExperts.fuse``) widened by the always-on shared expert: its W1 and
    W3 rows join the routed ones' halves, its W2 columns the routed W2 (gate 1)."""
    w13, w2 = fused
    lead = w13.shape[:-2]
    s1, s3 = shared.w13[0].expand(*lead, -1, -1).chunk(2, dim=-2)          # (..., hs, D) each
    r1, r3 = w13.chunk(2, dim=-2)                                           # (..., kh, D) each
    w2 = torch.cat([w2, shared.w2[0].expand(*lead, -1, -1)], dim=-1)       # (..., D, kh + hs)
    return torch.cat([r1, s1, r3, s3], dim=-2).contiguous(), w2.contiguous()


def fused_swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, b13: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, N, D) through a fused layer shared by the batch (w13 (2kh, D), w2 (D, kh), with an
    input bias b13 (2kh,) where a folded modulation shifted it) or one per sample
    (w13 (B, 2kh, D), w2 (B, D, kh))."""
    if w13.dim() == 2:
        a, b = F.linear(x, w13, b13).chunk(2, dim=-1)
        return F.linear(F.silu(a) * b, w2)
    a, b = torch.matmul(x, w13.transpose(-1, -2)).chunk(2, dim=-1)
    return torch.matmul(F.silu(a) * b, w2.transpose(-1, -2))


def load_balance(probs: torch.Tensor, idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch-style balance term: probs (R, E) router probabilities, idx (R, k) chosen experts.

    E * sum_e f_e * P_e with f_e the share of choices that went to e and P_e its mean
    probability; 1 when both are uniform, up to E when one expert takes everything."""
    share = F.one_hot(idx, n_experts).float().sum(dim=(0, 1)) / idx.numel()
    return n_experts * (share * probs.mean(dim=0)).sum()
