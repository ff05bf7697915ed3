"""Denoising processes behind one contract (see base.py), found by name in ``PROCESSES``."""

from .base import PROCESSES, DenoisingProcess, expand_levels
from .anchored import AnchoredProcess
from .ddpm import DDPMProcess
from .flow import FlowMatchingProcess


def make_process(section: dict) -> DenoisingProcess:
    """A process from its config section, e.g. ``{"name": "flow", "solver": "euler", ...}``."""
    return PROCESSES.build(section)


__all__ = ["AnchoredProcess", "DDPMProcess", "DenoisingProcess", "FlowMatchingProcess", "PROCESSES", "expand_levels",
           "make_process"]
