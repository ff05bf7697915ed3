"""Diffusion-transformer policies: denoiser families, denoising processes, training, checkpoints."""

from .checkpoint import CheckpointError
from .control import ChunkExecutor, ObservationError
from .denoiser import DENOISERS, Denoiser
from .dit import DiTDenoiser
from .joint import JointDenoiser
from .moe import MoDEDenoiser
from .policy import DiffusionPolicy
from .processes import PROCESSES
from .spec import PolicySpec

Policy = DiffusionPolicy  # ``Policy.from_checkpoint(dir)``: the one loading entry point

__all__ = ["CheckpointError", "ChunkExecutor", "DENOISERS", "Denoiser", "DiTDenoiser", "DiffusionPolicy",
           "JointDenoiser", "MoDEDenoiser", "ObservationError", "PROCESSES", "Policy", "PolicySpec"]
