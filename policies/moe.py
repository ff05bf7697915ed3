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
chunk, as in the DiT; with ``obs_input`` their projected mean is also added to every action
token's input embedding (with the positions, once per chunk), a direct path from the
observation that leaves the modulation the level's alone. Each block:
``x += attn(norm(x) + c)`` (MoDE's noise-conditioned attention input),
``x += cross_attn(norm(x), cond)``, ``x += moe(norm(x))``. With
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
from .dit import modulate, timestep_embedding, tokenwise, xavier_linears
from .moe_block import MoDEBlock, modulation_parts, with_observation
from .moe_experts import fused_swiglu, load_balance
from .routing_plot import plot_routes

ROUTERS = ("noise", "token")
TRAIN_ROUTING = ("multinomial", "noise", "topk")
CONDITIONING = ("token", "adaln")
MODULATION = ("joint", "split")
ATTENTION = ("cross", "prefix")
CACHE_SIZE = 256            # noise levels kept; a sampler schedule visits at most a few dozen
LEVEL_BINS = (("t_low", 0.0, 1 / 3), ("t_mid", 1 / 3, 2 / 3), ("t_high", 2 / 3, 1.01))


@DENOISERS.register("mode")
class MoDEDenoiser(Denoiser):
    """(x_t (B, H, A), t (B,) or (B, H), prepared condition[, fused experts]) -> prediction.

    ``prepare`` returns ``{"kv": [(k, v) per block]}`` like the DiT."""

    def __init__(self, action_dim: int, horizon: int, d_model: int, n_layers: int, n_heads: int, n_experts: int,
                 top_k: int, expert_ratio: float, dropout: float, router: str, train_routing: str,
                 router_noise: float, cache: bool, shared_ratio: float = 0.0, obs_context: bool = False,
                 conditioning: str = "token", modulation: str = "joint", attention: str = "cross",
                 obs_input: bool = False):
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
        self.obs_input = nn.Linear(d_model, d_model) if obs_input else None       # obs_input
        adaln = conditioning == "adaln"
        self.blocks = nn.ModuleList(MoDEBlock(d_model, n_heads, n_experts, hidden, dropout, shared_hidden, adaln,
                                              attention == "prefix") for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model, eps=1e-6, elementwise_affine=not adaln)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model)) if adaln else None
        if adaln:                           # the DiT's initialisation outside the blocks too
            for m in (self.action_in, self.time_mlp, self.cond_pool, self.obs_input):
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
        ``obs_final`` (B, 2D)). With ``obs_input`` the action tokens' input bias (``input_bias``
        (B, H, D)): the positions plus the projected mean of the condition tokens."""
        prepared = {"kv": [block.condition_kv(cond) for block in self.blocks]}
        if self.obs_input is None and self.cond_pool is None:
            return prepared
        mean = cond.mean(dim=1)                                                 # (B, D)
        if self.obs_input is not None:
            prepared["input_bias"] = self.position + self.obs_input(mean)[:, None]
        if self.cond_pool is not None:
            pooled = self.cond_pool(mean)
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
    def input_tokens(self, x_t: torch.Tensor, prepared: dict) -> torch.Tensor:
        """x_t (B, H, A) -> action tokens (B, H, D): the embedded actions plus the positions, or
        with ``obs_input`` the positions plus the projected pooled condition (``prepare``)."""
        h = x_t.shape[1]
        bias = prepared.get("input_bias")
        return self.action_in(x_t) + (self.position[:, :h] if bias is None else bias[:, :h])

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prepared: dict, step: dict | None = None):
        """``step``: the level's inputs from ``step_inputs`` / ``graph_step_inputs`` (fused
        experts, noise terms); None computes the noise terms here and routes sparsely."""
        b = x_t.shape[0]
        if step is not None and "folded" in step:                       # a cached level, modulation folded in
            x = self.input_tokens(x_t, prepared)
            for block, kv, folded in zip(self.blocks, prepared["kv"], step["folded"]):
                x = block.folded_forward(x, kv, folded)
            return F.linear(self.final_norm(x), *step["head"])
        terms = self.noise_terms(t) if step is None else step
        fused = None if step is None else step["experts"]
        c = terms["c"]                                                  # (B, D) or (B, H, D): the routers' input
        c = c.expand(b, *c.shape[1:]) if c.shape[0] != b else c        # a cached level's (1, D)
        pooled = prepared.get("pooled")                                 # (B, D) with obs_context, joint modulation
        c_cond = c if pooled is None else c + (pooled if c.dim() == 2 else pooled[:, None])
        tokens = self.input_tokens(x_t, prepared)                       # (B, H, D)
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


def noise_sequence(c: torch.Tensor) -> torch.Tensor:
    """The noise token followed by what each action token adds to its attention input: c (B, D)
    -> (B, 1, D), one level for all; c (B, H, D) per-token levels -> (B, 1 + H, D), the token
    holding their mean."""
    if c.dim() == 2:
        return c[:, None]
    return torch.cat([c.mean(dim=1, keepdim=True), c], dim=1)
