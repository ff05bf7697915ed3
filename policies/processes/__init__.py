"""Denoising processes behind one interface (see base.py)."""

from .base import DenoisingProcess
from .ddpm import DDPMProcess
from .flow import FlowMatchingProcess

PROCESSES = {"ddpm": DDPMProcess, "flow": FlowMatchingProcess}


def make_process(name: str, **kwargs) -> DenoisingProcess:
    if name not in PROCESSES:
        raise ValueError(f"unknown denoising process {name!r}; choose from {sorted(PROCESSES)}")
    return PROCESSES[name](**kwargs)


__all__ = ["DDPMProcess", "DenoisingProcess", "FlowMatchingProcess", "PROCESSES", "make_process"]
