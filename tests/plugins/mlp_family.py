"""A second denoiser family, defined outside ditpolicy: an MLP over the whole flattened chunk.

It exists to prove the plug-in seams: it registers itself, names its module in its yaml,
returns an extra head beside its prediction and adds a named loss term of its own.
"""

import torch
from torch import nn

from ditpolicy.policies import DENOISERS, Denoiser


@DENOISERS.register("mlp")
class MLPDenoiser(Denoiser):
    """x_t (B, H, A), t (B,) or (B, H), prepared {"context": (B, D)} -> {"prediction", "energy"}."""

    def __init__(self, action_dim: int, horizon: int, d_model: int, hidden: int):
        super().__init__(action_dim, horizon, d_model)
        self.net = nn.Sequential(nn.Linear(horizon * (action_dim + 1) + d_model, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, horizon * action_dim))

    def prepare(self, cond: torch.Tensor) -> dict:
        return {"context": cond.mean(dim=1)}

    def forward(self, x_t, t, prepared):
        b, h, a = x_t.shape
        levels = t if t.dim() == 2 else t[:, None].expand(b, h)
        features = torch.cat([x_t.reshape(b, -1), levels, prepared["context"]], dim=-1)
        prediction = self.net(features).reshape(b, h, a)
        return {"prediction": prediction, "energy": prediction.pow(2).mean(dim=(1, 2))}

    def loss_terms(self, out):
        pred = out["prediction"]
        return {"smoothness": (pred[:, 1:] - pred[:, :-1]).pow(2).mean()}
