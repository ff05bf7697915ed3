"""Mixture-of-denoising-experts (MoDE) denoiser (``policy/denoiser=mode``).

Each block's feed-forward is a mixture of SwiGLU experts. The router sees only the
noise-level embedding ``c``, so every token of a sample uses the same experts at a given
level and the routing of each step of a sampler is known before any observation arrives.
Expert caching, on by default at inference, exploits that: for each noise level it runs
the routers once and fuses the chosen experts, their routing weights folded in, into one
dense SwiGLU layer per block (``step_inputs``). The cache is keyed by the level and by the
parameters' version counters, so an optimizer step or a checkpoint load invalidates it.

Tokens: the noise token ``c`` followed by the H action tokens (B, 1 + H, D); the
observation and goal tokens enter by cross-attention with keys/values projected once per
chunk, as in the DiT. Each block: ``x += attn(norm(x) + c)`` (MoDE's noise-conditioned
attention input), ``x += cross_attn(norm(x), cond)``, ``x += moe(norm(x))``. With
``conditioning=adaln`` the noise token goes and c modulates the blocks as in the DiT
(adaLN-Zero shift, scale and gate around the self-attention and the mixture, (B, H, D)
tokens) and takes the DiT's Xavier initialisation; the routers still read the noise
embedding alone, so caching is unchanged. With ``attention=prefix`` there is no
cross-attention: each block's self-attention reads the condition's keys/values (projected
once per chunk by its own key/value layer) after the tokens' own, one attention per block
instead of two.

Everything the level alone decides is computed once per level with the fused experts: the
noise embedding c and, under adaLN, the blocks' modulation from c. With ``obs_context`` the
observation joins the modulation either inside it (``modulation=joint``: ada(c + obs), per
step) or beside it (``split``: ada(c) + ada's weights on silu(obs), whose observation share
is computed once per chunk in ``prepare``), so a cached split step runs no modulation layer.
Without the observation in it (``obs_context`` false) the modulation is the level's alone,
and the cache folds it into the weights it feeds (``MoDEBlock.fold``): the scale and shift
before the attention's and the mixture's input layers into their columns and biases, the
gates into their output rows, the final modulation into the output layer. A cached step is
then plain attention and SwiGLU layers, with no adaLN work at all.

An optional shared expert (``shared_ratio`` > 0) runs beside the routed ones on every
token at every level: a dense path that every update trains, while the routed experts add
capacity. It folds into the cached layer with gate 1. With ``obs_context`` the pooled
observation joins c in the noise token and every attention input, or in the adaLN
modulation (the DiT's sum); the routers still read the noise level alone.

Training picks k experts per sample by multinomial draw from the router's distribution
(or top-k of noised logits); inference takes the top k. Weights are renormalised over the
chosen experts. A Switch-style load-balancing term, ``load_balance`` = E * sum_e f_e * P_e,
is 1 for uniform routing and grows as routing collapses onto few experts.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import batch_random
from .denoiser import DENOISERS, Denoiser
from .dit import Attention, modulate, timestep_embedding, tokenwise, xavier_linears

ROUTERS = ("noise", "token")
TRAIN_ROUTING = ("multinomial", "noise", "topk")
CONDITIONING = ("token", "adaln")
MODULATION = ("joint", "split")
ATTENTION = ("cross", "prefix")
CACHE_SIZE = 256            # noise levels kept; a sampler schedule visits at most a few dozen
LEVEL_BINS = (("t_low", 0.0, 1 / 3), ("t_mid", 1 / 3, 2 / 3), ("t_high", 2 / 3, 1.01))


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


def fused_swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) through a fused layer shared by the batch (w13 (2kh, D), w2 (D, kh)) or one
    per sample (w13 (B, 2kh, D), w2 (B, D, kh))."""
    if w13.dim() == 2:
        a, b = F.linear(x, w13).chunk(2, dim=-1)
        return F.linear(F.silu(a) * b, w2)
    a, b = torch.matmul(x, w13.transpose(-1, -2)).chunk(2, dim=-1)
    return torch.matmul(F.silu(a) * b, w2.transpose(-1, -2))


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
            k, v = torch.cat([k, cond_kv[0]], dim=2), torch.cat([v, cond_kv[1]], dim=2)
        y = F.scaled_dot_product_attention(q, k, v)                        # (B, heads, N, D / heads)
        b, heads, n, dh = y.shape
        x = x + F.linear(y.transpose(1, 2).reshape(b, n, heads * dh), out_w, out_b)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), kv=cond_kv)
        a, g = F.linear(self.norm2(x), w13, b13).chunk(2, dim=-1)
        return x + F.linear(F.silu(a) * g, w2)

    def condition_kv(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition tokens (B, N_cond, D) as keys/values, (B, heads, N_cond, D / heads) each,
        of the cross-attention, or with ``prefix`` of the self-attention."""
        return (self.self_attn if self.cross_attn is None else self.cross_attn).keys_values(cond)

    def attend(self, x: torch.Tensor, c_seq: torch.Tensor, cond_kv, mod=None) -> torch.Tensor:
        y = self.norm1(x) + c_seq if mod is None else modulate(self.norm1(x), mod[0], mod[1])
        if self.cross_attn is None:                 # prefix: the tokens' own keys/values, then the condition's
            k, v = self.self_attn.keys_values(y)
            y = self.self_attn(y, kv=(torch.cat([k, cond_kv[0]], dim=2), torch.cat([v, cond_kv[1]], dim=2)))
        else:
            y = self.self_attn(y)
        x = x + (y if mod is None else mod[2] * y)
        return x if self.cross_attn is None else x + self.cross_attn(self.norm_cross(x), kv=cond_kv)

    def ffn_input(self, x: torch.Tensor, mod=None) -> torch.Tensor:
        return self.norm2(x) if mod is None else modulate(self.norm2(x), mod[3], mod[4])


@DENOISERS.register("mode")
class MoDEDenoiser(Denoiser):
    """(x_t (B, H, A), t (B,) or (B, H), prepared condition[, fused experts]) -> prediction.

    ``prepare`` returns ``{"kv": [(k, v) per block]}`` like the DiT."""

    def __init__(self, action_dim: int, horizon: int, d_model: int, n_layers: int, n_heads: int, n_experts: int,
                 top_k: int, expert_ratio: float, dropout: float, router: str, train_routing: str,
                 router_noise: float, cache: bool, shared_ratio: float = 0.0, obs_context: bool = False,
                 conditioning: str = "token", modulation: str = "joint", attention: str = "cross"):
        super().__init__(action_dim, horizon, d_model)
        if router not in ROUTERS:
            raise ValueError(f"policy.denoiser.router must be one of {ROUTERS}, got {router!r}")
        if train_routing not in TRAIN_ROUTING:
            raise ValueError(f"policy.denoiser.train_routing must be one of {TRAIN_ROUTING}, got {train_routing!r}")
        if conditioning not in CONDITIONING:
            raise ValueError(f"policy.denoiser.conditioning must be one of {CONDITIONING}, got {conditioning!r}")
        if modulation not in MODULATION:
            raise ValueError(f"policy.denoiser.modulation must be one of {MODULATION}, got {modulation!r}")
        if modulation == "split" and conditioning != "adaln":
            raise ValueError("policy.denoiser.modulation=split needs policy.denoiser.conditioning=adaln "
                             f"(got {conditioning!r})")
        if attention not in ATTENTION:
            raise ValueError(f"policy.denoiser.attention must be one of {ATTENTION}, got {attention!r}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"policy.denoiser.top_k={top_k} must be in [1, n_experts={n_experts}]")
        if d_model % n_heads:
            raise ValueError(f"policy.d_model={d_model} is not divisible by policy.denoiser.n_heads={n_heads}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router_kind, self.train_routing, self.router_noise = router, train_routing, router_noise
        self.cache, self.conditioning = cache, conditioning
        # adaLN from the noise level alone (cached per level), plus with a split one from the observation
        self.noise_modulation = conditioning == "adaln" and (not obs_context or modulation == "split")
        # ... and without the observation in it, the cache folds the whole modulation into the weights
        self.foldable = conditioning == "adaln" and not obs_context
        if shared_ratio < 0:
            raise ValueError(f"policy.denoiser.shared_ratio must be >= 0, got {shared_ratio}")
        hidden = max(1, round(d_model * expert_ratio))
        shared_hidden = round(d_model * shared_ratio)
        self.action_in = nn.Linear(action_dim, d_model)
        self.position = nn.Parameter(torch.randn(1, horizon, d_model) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.cond_pool = nn.Linear(d_model, d_model) if obs_context else None     # obs_context
        adaln = conditioning == "adaln"
        self.blocks = nn.ModuleList(MoDEBlock(d_model, n_heads, n_experts, hidden, dropout, shared_hidden, adaln,
                                              attention == "prefix") for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model, eps=1e-6, elementwise_affine=not adaln)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model)) if adaln else None
        if adaln:                           # the DiT's initialisation outside the blocks too
            for m in (self.action_in, self.time_mlp, self.cond_pool):
                if m is not None:
                    xavier_linears(m)
            nn.init.zeros_(self.final_ada[-1].weight)
            nn.init.zeros_(self.final_ada[-1].bias)
        self.action_out = nn.Linear(d_model, action_dim)
        nn.init.zeros_(self.action_out.weight)
        nn.init.zeros_(self.action_out.bias)
        self._fused: OrderedDict = OrderedDict()       # (level, weights version) -> fused experts per block
        self.routes: dict[float, list] = {}              # level -> [(experts, gates) per block], for plots

    # ------------------------------------------------------------------ routing
    def noise_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """c: (B,) -> (B, D) or (B, H) -> (B, H, D)."""
        return self.time_mlp(timestep_embedding(t, self.d_model))

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (R, E) -> (experts (R, k), renormalised gates (R, k), probabilities (R, E))."""
        probs = logits.float().softmax(dim=-1)
        if self.training and self.train_routing == "multinomial":
            # Gumbel top-k: k experts drawn without replacement in proportion to probs
            uniform = batch_random.rand(probs.shape, probs.device, probs.dtype).clamp(1e-20, 1 - 1e-7)
            idx = (probs.clamp_min(1e-30).log() - (-uniform.log()).log()).topk(self.top_k, dim=-1).indices
        elif self.training and self.train_routing == "noise":
            noise = batch_random.randn(logits.shape, logits.device, logits.dtype)
            idx = (logits + self.router_noise * noise).topk(self.top_k, dim=-1).indices
        else:
            idx = probs.topk(self.top_k, dim=-1).indices
        gates = probs.gather(-1, idx)
        return idx, (gates / gates.sum(dim=-1, keepdim=True)).to(logits.dtype), probs

    def noise_terms(self, t: torch.Tensor) -> dict:
        """What the noise level alone decides: ``c`` (B, D) or (B, H, D), the routers' input, and
        with ``noise_modulation`` every block's adaLN from c (``mods``, (B, 6D) or (B, H, 6D)
        each) and the final layer's (``final``, (B, 2D) or (B, H, 2D)); the observation's share
        of a split modulation is added per chunk (``prepare``)."""
        c = self.noise_embedding(t)
        if not self.noise_modulation:
            return {"c": c}
        return {"c": c, "mods": [block.ada(c) for block in self.blocks], "final": self.final_ada(c)}

    def prepare(self, cond: torch.Tensor) -> dict:
        """cond (B, N_cond, D) -> per-block cross-attention keys/values, and with ``obs_context``
        the pooled condition (B, D), or under a split modulation its share of every adaLN: the
        modulation's linear layer, without bias, on silu(pooled) (``obs_mods`` (B, 6D) per block,
        ``obs_final`` (B, 2D))."""
        prepared = {"kv": [block.condition_kv(cond) for block in self.blocks]}
        if self.cond_pool is not None:
            pooled = self.cond_pool(cond.mean(dim=1))
            if self.noise_modulation:
                act = F.silu(pooled)
                prepared["obs_mods"] = [F.linear(act, block.ada[-1].weight) for block in self.blocks]
                prepared["obs_final"] = F.linear(act, self.final_ada[-1].weight)
            else:
                prepared["pooled"] = pooled
        return prepared

    # ------------------------------------------------------------------ expert caching
    def _weights_version(self) -> tuple:
        """The version counters (and identities) of the weights routing and fusion read: any
        in-place change (optimizer step, ``load_state_dict``) or replaced tensor changes it."""
        refs = self.__dict__.get("_routing_refs")
        if refs is None:        # (module's parameter dict, name) pairs: plain lookups, and they see replacements
            modules = [self.time_mlp[0], self.time_mlp[2]]
            modules += [m for b in self.blocks for m in (b.router, b.experts, b.shared) if m is not None]
            if self.noise_modulation:           # the cached adaLN of each level
                modules += [b.ada[-1] for b in self.blocks] + [self.final_ada[-1]]
            if self.foldable:                   # the layers the modulation folds into
                modules += [m for b in self.blocks for m in (b.self_attn.q, b.self_attn.kv, b.self_attn.out)]
                modules.append(self.action_out)
            refs = [(m._parameters, name) for m in modules for name in m._parameters]
            self.__dict__["_routing_refs"] = refs
        return tuple((id(params[name]), params[name]._version) for params, name in refs)

    def step_inputs(self, t: torch.Tensor):
        """For one batch-wide noise level (cached): ``{"experts": fused experts of every block,
        **noise_terms}`` with tensors of batch 1, and when the modulation is the level's alone
        (``foldable``) each block's layers with it folded in (``folded``, ``MoDEBlock.fold``) and the
        output layer with the final one (``head``: weight (A, D), bias (A,)); None when caching is
        off, in training, with token routing or with levels that differ."""
        if self.training or not self.cache or self.router_kind != "noise" or t.dim() != 1:
            return None
        level = float(t[0])
        if not bool((t == t[0]).all()):
            return None
        key = (round(level, 7), self._weights_version())
        fused = self._fused.get(key)
        if fused is None:
            with torch.no_grad():
                terms = self.noise_terms(t[:1])
                experts, routes = [], []
                for block in self.blocks:
                    idx, gates, _ = self.route(block.router(terms["c"]))
                    experts.append(block.fuse(idx[0], gates[0]))
                    routes.append((idx[0].tolist(), gates[0].tolist()))
                fused = {"experts": experts, **terms}
                if self.foldable:
                    fused["folded"] = [b.fold(m[0], e) for b, m, e in zip(self.blocks, terms["mods"], experts)]
                    shift, scale = terms["final"][0].chunk(2)
                    w = self.action_out.weight
                    fused["head"] = (w * (1 + scale), self.action_out.bias + w @ shift)
            self._fused[key] = fused
            self.routes[round(level, 7)] = routes
            while len(self._fused) > CACHE_SIZE:
                self._fused.popitem(last=False)
        return fused

    def graph_step_inputs(self, t: torch.Tensor):
        """``step_inputs`` with the fused experts one layer per sample, computed from the levels
        t (B,) as plain tensor work (routers, top-k, gathers) that a graph export holds, so an
        exported step routes exactly as the cache does without a cache outside the graph.
        None (the forward's own sparse routing) with token routing or per-token levels."""
        if self.training or self.router_kind != "noise" or t.dim() != 1:
            return None
        terms = self.noise_terms(t)                                     # c (B, D)
        experts = []
        for block in self.blocks:
            idx, gates, _ = self.route(block.router(terms["c"]))        # (B, k) each
            experts.append(block.fuse(idx, gates))                      # (B, 2kh', D), (B, D, kh')
        return {"experts": experts, **terms}

    # ------------------------------------------------------------------ forward
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prepared: dict, step: dict | None = None):
        """``step``: the level's inputs from ``step_inputs`` / ``graph_step_inputs`` (fused
        experts, noise terms); None computes the noise terms here and routes sparsely."""
        b, h, _ = x_t.shape
        if step is not None and "folded" in step:                       # a cached level, modulation folded in
            x = self.action_in(x_t) + self.position[:, :h]
            for block, kv, folded in zip(self.blocks, prepared["kv"], step["folded"]):
                x = block.folded_forward(x, kv, folded)
            return F.linear(self.final_norm(x), *step["head"])
        terms = self.noise_terms(t) if step is None else step
        fused = None if step is None else step["experts"]
        c = terms["c"]                                                  # (B, D) or (B, H, D): the routers' input
        c = c.expand(b, *c.shape[1:]) if c.shape[0] != b else c        # a cached level's (1, D)
        pooled = prepared.get("pooled")                                 # (B, D) with obs_context, joint modulation
        c_cond = c if pooled is None else c + (pooled if c.dim() == 2 else pooled[:, None])
        tokens = self.action_in(x_t) + self.position[:, :h]             # (B, H, D)
        if self.conditioning == "adaln":                                # the action tokens alone
            x, c_seq, route_seq = tokens, None, tokenwise(c)
        else:                                                           # the noise token, then the actions
            route_seq, c_seq = noise_sequence(c), noise_sequence(c_cond)     # (B, 1, D) or (B, 1 + H, D)
            x = torch.cat([c_seq[:, :1], tokens], dim=1)                # (B, 1 + H, D)
        n = x.shape[1]
        obs_mods = prepared.get("obs_mods", [None] * len(self.blocks))     # a split modulation's observation share
        balance, usage = [], []
        for i, (block, kv) in enumerate(zip(self.blocks, prepared["kv"])):
            mod = (modulation_parts(with_observation(terms["mods"][i], obs_mods[i])) if self.noise_modulation
                   else block.modulation(c_cond))
            x = block.attend(x, c_seq, kv, mod)
            y = block.ffn_input(x, mod)
            if fused is not None:                                       # cached: one dense layer
                delta = fused_swiglu(y, *fused[i])
            else:
                rows = y.reshape(-1, self.d_model)                       # (B * N, D)
                per_sample = self.router_kind == "noise" and c.dim() == 2
                router_in = rows if self.router_kind == "token" else (c if per_sample else route_seq.flatten(0, 1))
                idx, gates, probs = self.route(block.router(router_in))
                if self.training:
                    balance.append(load_balance(probs, idx, self.n_experts))
                    usage.append(F.one_hot(idx, self.n_experts).float().sum(dim=1).reshape(b, -1, self.n_experts)
                                 .mean(dim=1) / self.top_k)              # (B, E): share of choices
                if per_sample:                                          # a sample's route serves all its tokens
                    idx, gates = (v[:, None].expand(-1, n, -1).reshape(-1, self.top_k) for v in (idx, gates))
                delta = block.experts.mix(rows, idx, gates).reshape(x.shape)
                if block.shared is not None:
                    delta = delta + block.shared.expert(0, y)
            x = x + (delta if mod is None else mod[5] * delta)
        if self.conditioning == "token":                                # drop the noise token
            out = self.final_norm(x[:, 1:])
        else:
            final = (with_observation(terms["final"], prepared.get("obs_final")) if self.noise_modulation
                     else self.final_ada(c_cond))
            shift, scale = final.chunk(2, dim=-1)
            out = modulate(self.final_norm(x), shift, scale)
        prediction = self.action_out(out)
        if not self.training:
            return prediction
        return {"prediction": prediction, "load_balance": torch.stack(balance).mean(),
                "expert_usage": torch.stack(usage).mean(dim=0).detach(),
                "routing_levels": (t if t.dim() == 1 else t.mean(dim=1)).detach()}

    # ------------------------------------------------------------------ losses, logs, plots
    def loss_terms(self, out) -> dict[str, torch.Tensor]:
        return {"load_balance": out["load_balance"]} if isinstance(out, dict) and "load_balance" in out else {}

    def log_values(self, out) -> dict[str, float]:
        """Share of expert choices per noise-level bin: ``routing/<bin>/expert<e>``."""
        if not isinstance(out, dict) or "expert_usage" not in out:
            return {}
        usage, levels, logs = out["expert_usage"], out["routing_levels"], {}
        for name, low, high in LEVEL_BINS:
            rows = (levels >= low) & (levels < high)
            if rows.any():
                for e, share in enumerate(usage[rows].mean(dim=0).tolist()):
                    logs[f"routing/{name}/expert{e}"] = share
        return logs

    def write_diagnostics(self, directory) -> list:
        if not self.routes:
            return []
        path = Path(directory) / "expert_routing.png"
        plot_routes(self.routes, self.n_experts, path)
        return [path]


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


def noise_sequence(c: torch.Tensor) -> torch.Tensor:
    """The noise token followed by what each action token adds to its attention input: c (B, D)
    -> (B, 1, D), one level for all; c (B, H, D) per-token levels -> (B, 1 + H, D), the token
    holding their mean."""
    if c.dim() == 2:
        return c[:, None]
    return torch.cat([c.mean(dim=1, keepdim=True), c], dim=1)


def load_balance(probs: torch.Tensor, idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch-style balance term: probs (R, E) router probabilities, idx (R, k) chosen experts.

    E * sum_e f_e * P_e with f_e the share of choices that went to e and P_e its mean
    probability; 1 when both are uniform, up to E when one expert takes everything."""
    share = F.one_hot(idx, n_experts).float().sum(dim=(0, 1)) / idx.numel()
    return n_experts * (share * probs.mean(dim=0)).sum()


def plot_routes(routes: dict[float, list], n_experts: int, path: Path) -> None:
    """Heat map of routing weight per (noise level, block, expert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = sorted(routes, reverse=True)
    n_blocks = len(routes[levels[0]])
    grid = np.zeros((len(levels), n_blocks * n_experts))
    for row, level in enumerate(levels):
        for block, (experts, gates) in enumerate(routes[level]):
            for e, g in zip(experts, gates):
                grid[row, block * n_experts + e] = g
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * grid.shape[1], 1.2 + 0.3 * len(levels)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(levels)), [f"{t:.3f}" for t in levels])
    ax.set_xticks(range(grid.shape[1]), [f"b{i // n_experts}e{i % n_experts}" for i in range(grid.shape[1])],
                  rotation=90)
    ax.set_ylabel("noise level t")
    ax.set_title("expert routing weight per noise level")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
