"""One MoDE block: self-attention (reading the condition too with ``prefix``), cross-attention
to the condition, and the mixture of SwiGLU experts, conditioned on the noise level by a
noise token or by adaLN-Zero; and the folding of one level's adaLN into the block's weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dit import Attention, modulate, tokenwise, xavier_linears
from .moe_experts import SwiGLUExperts, fused_swiglu, with_shared


class MoDEBlock(nn.Module):
    """One block. Noise conditioning by ``token`` (MoDE's noise token and ``attn(norm(x) + c)``)
    or ``adaln`` (the DiT's adaLN-Zero: shift, scale and gate of the self-attention and the
    feed-forward from c)."""

    def __init__(self, d: int, n_heads: int, n_experts: int, hidden: int, dropout: float, shared_hidden: int = 0,
                 adaln: bool = False, prefix: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=not adaln)
        self.self_attn = Attention(d, n_heads, dropout)
        # prefix: the self-attention reads the condition's keys/values too, and there is no cross-attention
        self.norm_cross = None if prefix else nn.LayerNorm(d, eps=1e-6)
        self.cross_attn = None if prefix else Attention(d, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=not adaln)
        self.router = nn.Linear(d, n_experts)
        self.experts = SwiGLUExperts(n_experts, d, hidden)
        self.shared = SwiGLUExperts(1, d, shared_hidden) if shared_hidden else None   # always on
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d)) if adaln else None
        if adaln:       # the DiT's initialisation; the gates close the branches (adaLN-Zero), and a zero
            xavier_linears(self)            # gate on a zero branch would leave both without gradient
            nn.init.zeros_(self.ada[-1].weight)
            nn.init.zeros_(self.ada[-1].bias)
            for experts in (self.experts, self.shared):
                if experts is not None:
                    nn.init.normal_(experts.w2, std=experts.hidden ** -0.5)
        else:
            for attention in (self.self_attn, self.cross_attn):     # residual branches start closed
                if attention is not None:
                    nn.init.zeros_(attention.out.weight)
                    nn.init.zeros_(attention.out.bias)

    def fuse(self, idx: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's whole feed-forward for one route as one dense layer: the chosen experts,
        gates folded in, plus the shared expert if any."""
        fused = self.experts.fuse(idx, gates)
        return fused if self.shared is None else with_shared(fused, self.shared)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """adaLN: c (B, D) or (B, N, D) -> (shift1, scale1, gate1, shift2, scale2, gate2), each
        (B, 1, D) or (B, N, D); None with token conditioning."""
        return None if self.ada is None else modulation_parts(self.ada(c))

    def fold(self, mod: torch.Tensor, experts: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One level's adaLN folded into the layers it feeds: mod (6D,) the level's modulation,
        experts its fused (w13, w2) -> (qkv weight (3D, D), qkv bias (3D,), out weight (D, D),
        out bias (D,), w13 (2kh, D), w13 bias (2kh,), w2 (D, kh)). modulate then a linear is a
        linear with scaled columns and a shifted bias; a gate on a linear scales its rows."""
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6)
        attn = self.self_attn
        qkv_w = torch.cat([attn.q.weight, attn.kv.weight])                   # (3D, D): q, k, v
        qkv_b = torch.cat([attn.q.bias, attn.kv.bias]) + qkv_w @ shift1
        w13, w2 = experts
        return (qkv_w * (1 + scale1), qkv_b, attn.out.weight * gate1[:, None], attn.out.bias * gate1,
                w13 * (1 + scale2), w13 @ shift2, w2 * gate2[:, None])

    def folded_forward(self, x: torch.Tensor, cond_kv, folded: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The block at one level with its modulation folded (``fold``): x (B, N, D) -> (B, N, D)."""
        qkv_w, qkv_b, out_w, out_b, w13, b13, w2 = folded
        attn = self.self_attn
        q, k, v = (attn.split(p) for p in F.linear(self.norm1(x), qkv_w, qkv_b).chunk(3, dim=-1))
        if self.cross_attn is None:                 # prefix: the condition's keys/values after the tokens'
            k, v = after_tokens((k, v), cond_kv)
        x = x + F.linear(attn.mix_heads(q, k, v), out_w, out_b)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), kv=cond_kv)
        return x + fused_swiglu(self.norm2(x), w13, w2, b13)

    def condition_kv(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition tokens (B, N_cond, D) as keys/values, (B, heads, N_cond, D / heads) each,
        of the cross-attention, or with ``prefix`` of the self-attention."""
        return (self.self_attn if self.cross_attn is None else self.cross_attn).keys_values(cond)

    def attend(self, x: torch.Tensor, c_seq: torch.Tensor, cond_kv, mod=None) -> torch.Tensor:
        y = self.norm1(x) + c_seq if mod is None else modulate(self.norm1(x), mod[0], mod[1])
        if self.cross_attn is None:                 # prefix: the tokens' own keys/values, then the condition's
            y = self.self_attn(y, kv=after_tokens(self.self_attn.keys_values(y), cond_kv))
        else:
            y = self.self_attn(y)
        x = x + (y if mod is None else mod[2] * y)
        return x if self.cross_attn is None else x + self.cross_attn(self.norm_cross(x), kv=cond_kv)

    def ffn_input(self, x: torch.Tensor, mod=None) -> torch.Tensor:
        return self.norm2(x) if mod is None else modulate(self.norm2(x), mod[3], mod[4])


def after_tokens(own_kv, cond_kv):
    """Prefix attention's keys and values: the tokens' own, then the condition's, along the key
    axis: (B, heads, N, D / heads) and (B, heads, N_cond, D / heads) -> (B, heads, N + N_cond, D / heads)."""
    return tuple(torch.cat([own, cond], dim=2) for own, cond in zip(own_kv, cond_kv))


def modulation_parts(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """An adaLN output (B, 6D) or (B, H, 6D) -> (shift1, scale1, gate1, shift2, scale2, gate2),
    each (B, 1, D) or (B, H, D)."""
    return tuple(tokenwise(m) for m in v.chunk(6, dim=-1))


def with_observation(noise_part: torch.Tensor, obs_part: torch.Tensor | None) -> torch.Tensor:
    """A split modulation: the level's part (1 or B, M) or (B, H, M) plus the observation's
    (B, M), or the level's alone when there is none."""
    if obs_part is None:
        return noise_part
    return noise_part + (obs_part if noise_part.dim() == 2 else obs_part[:, None])
