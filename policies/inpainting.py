"""Real-time chunking at inference: steer a new chunk toward the actions that will still run.

While a chunk is being computed the robot keeps executing the previous one. When the new
chunk arrives, its first ``delay`` actions are already in the past (they were taken from the
previous chunk), and the next few overlap actions the previous chunk had planned. A new
chunk that ignores them jumps at the seam. Here the sampler is steered toward that committed
prefix, for any process, by editing its clean-sample estimate at every step:

    x0_hat <- x0_hat + w * (prefix - x0_hat)          w (H,): 1 over the delay, decaying to 0

and turning the edited estimate back into the prediction the process integrates
(``process.prediction_for``). On the last step a weight of 1 returns the prefix exactly, so
the actions executed during the delay and the new chunk agree. This is the identity-Jacobian
form of guided inpainting (the published guidance back-propagates through the network; on
the CPU that triples the cost of a step, and with weights capped at 1 the blend above is
its fixed point). It works the same for flow and DDPM/DDIM, since both are written in terms
of the clean-sample estimate.

The training-time alternative (``policy.prefix_delay_max``) gives the prefix to the network
clean, at noise level 0, and costs nothing at inference.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .denoiser import PREDICTION, DenoiserOutput, prediction_of

DECAYS = ("exp", "linear")


def prefix_weights(horizon: int, delay: int, overlap: int, decay: str = "exp") -> np.ndarray:
    """Inpainting weight per action of the new chunk, (H,).

    1 for the first ``delay`` actions (executed before the chunk arrives), decaying to 0 at
    ``overlap``, the number of actions the previous chunk still covers; 0 after it. ``exp``
    is the decay the real-time chunking paper recommends, ``linear`` LeRobot's default."""
    if decay not in DECAYS:
        raise ValueError(f"prefix decay must be one of {DECAYS}, got {decay!r}")
    delay, overlap = max(0, int(delay)), max(0, min(int(overlap), int(horizon)))
    w = np.zeros(horizon, np.float32)
    w[: min(delay, overlap)] = 1.0
    span = overlap - delay
    for i in range(delay, overlap):
        c = (overlap - i) / (span + 1)             # in (0, 1): 1 just after the delay, -> 0 at overlap
        w[i] = c * math.expm1(c) / math.expm1(1.0) if decay == "exp" else c
    return w


def inpainted(fn: Callable[[torch.Tensor, torch.Tensor], DenoiserOutput], process, prefix: torch.Tensor,
              weights: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], DenoiserOutput]:
    """``fn(x, t)`` steered toward ``prefix`` (B, H, A), normalised, with ``weights`` (H,) or (B, H)."""
    w = weights.to(prefix.device, prefix.dtype)
    w = w.reshape(1, -1, 1) if w.dim() == 1 else w[..., None]

    def guided(x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        out = fn(x, t)
        x0 = process.x0_estimate(x, t, prediction_of(out))
        pred = process.prediction_for(x, t, x0 + w * (prefix - x0))
        return {**out, PREDICTION: pred} if isinstance(out, dict) else pred

    return guided
