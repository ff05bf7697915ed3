"""The contract every denoiser family implements, and the table that finds families by name.

A denoiser predicts, from noisy action tokens and their noise levels, what its denoising
process asks for (velocity, noise or clean sample), conditioned on observation and goal
tokens that are turned into per-chunk state once:

    prepared = denoiser.prepare(cond)      # cond (B, N, D) -> any pytree of tensors, once per chunk
    out = denoiser(x_t, t, prepared)       # x_t (B, H, A); t (B,) per sample or (B, H) per token
    terms = denoiser.loss_terms(out)       # named auxiliary losses, e.g. {"load_balance": ...}

``out`` is a tensor (B, H, A), or a dict holding it under ``"prediction"`` beside extra
heads (e.g. per-anchor scores). ``prepare`` must be pure tensor work so that the fast
inference path (fast_step.py) can trace ``forward`` with the prepared tensors as inputs.

Optional hooks:
- ``step_inputs(t)``: tensors that depend on the noise level alone and are worth computing
  once per level rather than inside every step (fused experts of a noise-routed mixture).
  When it returns a pytree instead of None, inference calls ``forward(x_t, t, prepared,
  step)`` with it, outside the traced graph, so a family can cache it by level.
- ``graph_step_inputs(t)``: the same per-level inputs computed as tensor work inside an
  exported graph (onnx_export.py), which has no cache outside it; None: none needed, or
  the forward's own path is exportable as it is.
- ``shares_condition = True``: the family takes the K chains of a fan-out process (one per
  anchor) as x_t (B * K, H, A) with the prepared condition of the B samples unrepeated and one
  noise level per sample, t (B,); otherwise the policy repeats the condition and the levels.
- ``log_values(out)``: training diagnostics (floats) logged beside the loss terms.
- ``training_forward(x_t, t, prepared, batch, process)``: the training pass, for a family
  that denoises more than the actions (joint.py: future frames from the batch); its output
  dict may hold ``action_rows`` (B,) bool, the samples whose action prediction counts.
- ``sampler_options()``: extra training-window options the family reads (future frames,
  action-free episodes; datasets/sampler.py); ``fit(store, episode_mask, seed, run_stage)``:
  state set from the training data before the first step; ``run_stage(module, loss_fn, data,
  steps, batch_size, lr, desc=...)`` is the trainer's own stage loop (train.fit_stage) for a
  part to optimise first (the joint family's autoencoder).
- ``write_diagnostics(directory)``: files (plots) written after an evaluation.
- ``samples_actions`` / ``sample_actions(policy, batch, steps, noise, generator)``: a family
  that samples the actions its own way when the flag is set (joint.py's ``plan`` mode denoises
  them together with imagined future frames); the policy's sampler otherwise.

A family is a module that subclasses ``Denoiser``, registers itself with
``@DENOISERS.register("<name>")``, and a yaml under ``configs/policy/denoiser/`` whose keys
are its constructor's options. The policy supplies ``action_dim``, ``horizon`` and ``d_model``,
and ``obs_shapes`` (key -> per-step shape) to a family whose constructor takes it.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Registry

DENOISERS: Registry["Denoiser"] = Registry("denoiser", "policy.denoiser")
PREDICTION = "prediction"
ACTION_ROWS = "action_rows"       # training output: (B,) bool, the samples whose action prediction counts

DenoiserOutput = torch.Tensor | dict[str, torch.Tensor]


class Denoiser(nn.Module):
    """Base class of the denoiser families: (x_t, t, prepared) -> prediction."""

    shares_condition = False      # takes K chains per condition row at one level per row
    samples_actions = False       # inference goes through sample_actions instead of the policy's sampler

    def __init__(self, action_dim: int, horizon: int, d_model: int):
        super().__init__()
        self.action_dim = action_dim
        self.horizon = horizon
        self.d_model = d_model

    def prepare(self, cond: torch.Tensor):
        """Per-chunk work on the condition tokens (B, N, D); the default passes them through."""
        return cond

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prepared) -> DenoiserOutput:
        raise NotImplementedError

    def loss_terms(self, out: DenoiserOutput) -> dict[str, torch.Tensor]:
        """Auxiliary losses of the last training forward pass, by name (weights come from config)."""
        return {}

    def step_inputs(self, t: torch.Tensor):
        """Per-level inputs computed outside the traced step at inference; None: none."""
        return None

    def graph_step_inputs(self, t: torch.Tensor):
        """``step_inputs`` as traceable tensor work for graph export (ONNX); None: none."""
        return None

    def training_forward(self, x_t: torch.Tensor, t: torch.Tensor, prepared, batch: dict, process) -> DenoiserOutput:
        """The forward pass of training; the batch is there for families that read more of it."""
        return self(x_t, t, prepared)

    def sampler_options(self) -> dict:
        """Extra SequenceSampler options of the training windows; none by default."""
        return {}

    def fit(self, store, episode_mask, seed: int, run_stage) -> None:
        """Set state from the training episodes before the first step; nothing by default."""

    def log_values(self, out: DenoiserOutput) -> dict[str, float]:
        """Training diagnostics of a forward pass, by name."""
        return {}

    def sample_actions(self, policy, batch: dict, steps: int, noise: torch.Tensor | None,
                       generator: torch.Generator | None) -> torch.Tensor:
        """Actions (B, H, A), unnormalised, from observation histories, for a family with
        ``samples_actions`` set; ``noise`` (B, H, A) is the action stream's starting noise."""
        raise NotImplementedError

    def write_diagnostics(self, directory) -> list:
        """Files written after an evaluation (e.g. plots); returns their paths."""
        return []


def prediction_of(out: DenoiserOutput) -> torch.Tensor:
    """The (B, H, A) prediction of a denoiser output."""
    return out[PREDICTION] if isinstance(out, dict) else out


def heads_of(out: DenoiserOutput) -> dict[str, torch.Tensor]:
    """The extra heads of a denoiser output (empty for a plain tensor)."""
    return {k: v for k, v in out.items() if k != PREDICTION} if isinstance(out, dict) else {}

