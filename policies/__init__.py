"""Diffusion-transformer policies: DiT denoiser, denoising processes, training, checkpoints."""

from .checkpoint import CheckpointError, Policy, load_policy
from .policy import DiffusionPolicy, PolicySpec

__all__ = ["CheckpointError", "DiffusionPolicy", "Policy", "PolicySpec", "load_policy"]
