"""The policy under DDP or FSDP, and its full (unsharded) state for checkpoints.

DDP and FSDP synchronise gradients from hooks set up in a module's ``forward``, while the
trainer calls an objective ``(policy, batch) -> (loss, logs)``. ``ObjectiveModule`` makes
that call the forward of one module holding the policy, and that module is what gets wrapped:

    model = wrap(ObjectiveModule(policy, objective), "ddp", dist)
    loss, logs = model(batch)

FSDP (``fully_shard``, one unit over the whole policy) keeps 1/N of every parameter, gradient
and optimiser state on each rank and gathers the parameters for the forward and backward.
Checkpoints are always written in the single-process layout (full tensors, optimiser state
indexed by parameter position), so a run can resume with any number of processes and either
strategy.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .distributed import Distributed

STRATEGIES = ("ddp", "fsdp")


class ObjectiveModule(nn.Module):
    """``forward(batch) = objective(policy, batch)``; the objective is not a submodule (a
    distillation teacher inside it is neither trained nor synchronised)."""

    def __init__(self, policy: nn.Module, objective):
        super().__init__()
        self.policy = policy
        self._objective = [objective]

    def forward(self, batch: dict[str, torch.Tensor]):
        return self._objective[0](self.policy, batch)


def wrap(module: ObjectiveModule, strategy: str, dist: Distributed, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` under DDP or FSDP when more than one process runs; unchanged otherwise."""
    if strategy not in STRATEGIES:
        raise ValueError(f"train.distributed.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not dist.active:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device.index] if dist.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
    from torch.distributed.fsdp import fully_shard

    fully_shard(module)
    return module


def gradient_sync(model: nn.Module, sync: bool):
    """Context of one micro-batch's backward: gradients are reduced across ranks only on the
    last micro-batch of a step (``sync``)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):       # fully_shard
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def is_sharded(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) value gathered whole; a plain tensor as it is. Collective for DTensors."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def full_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of a state dict whole and on the CPU (all ranks must call it under FSDP)."""
    return {k: full_tensor(v).detach().cpu().clone() for k, v in state.items()}


def shard_like(full: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors cut into this rank's shards of ``like``'s DTensors (plain entries copied)."""
    from torch.distributed.tensor import distribute_tensor

    out = {}
    for k, ref in like.items():
        value = full[k].to(device=ref.device, dtype=ref.dtype)
        out[k] = distribute_tensor(value, ref.device_mesh, ref.placements) if hasattr(ref, "device_mesh") else value
    return out


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimiser's parameters in its own order (param groups concatenated)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state in the single-process layout (state keyed by parameter position).
    Under FSDP all ranks must call it; rank 0's copy holds the gathered state."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not named:
        return {}
    position = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    return {"state": {position[name]: value for name, value in named["state"].items()},
            "param_groups": [{**g, "params": [position[n] for n in g["params"]]} for g in named["param_groups"]]}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a single-process-layout optimiser state (as ``optimizer_state`` writes)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _parameter_names(model, optimizer)
    named = {"state": {names[int(i)]: value for i, value in state["state"].items()},
             "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
