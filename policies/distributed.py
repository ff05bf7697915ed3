"""The process group of a ``torchrun`` launch, and the few collectives the stack uses.

``torchrun --nproc_per_node N ditpolicy train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous variables; ``Distributed.from_env`` joins that group (gloo on the CPU, nccl on
CUDA) and picks this process's device (``cuda:LOCAL_RANK`` on GPUs). Without those
variables, or with WORLD_SIZE=1, it is a single process and every collective is the identity,
so the same code runs both ways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKENDS = ("auto", "gloo", "nccl")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; under torchrun ``cuda`` means this
    process's GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


@dataclass
class Distributed:
    """rank, world size and device of this process; ``owns_group``: this object started the
    process group (and ``close`` ends it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str = "auto", backend: str = "auto") -> "Distributed":
        """Join the torchrun group named by the environment, or a single process without one."""
        if backend not in BACKENDS:
            raise ValueError(f"train.distributed.backend must be one of {BACKENDS}, got {backend!r}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        chosen = resolve_device(device)
        if world <= 1:
            return cls(device=chosen)
        if chosen.type == "cuda":
            if torch.cuda.device_count() <= local_rank:
                raise ValueError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA "
                                 f"device(s): start at most that many processes per node")
            torch.cuda.set_device(chosen)
        owns = not dist.is_initialized()
        if owns:
            name = backend if backend != "auto" else ("nccl" if chosen.type == "cuda" else "gloo")
            dist.init_process_group(name, device_id=chosen if name == "nccl" else None)
        return cls(rank, world, local_rank, chosen, owns)

    # ------------------------------------------------------------------ facts
    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (every rank passes the same keys)."""
        if not self.active or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """End the process group if this object started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")
