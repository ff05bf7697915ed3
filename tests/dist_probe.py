"""Runs a few training steps as one rank of a torchrun launch (or alone) and records, after
every step, the loss and how far each rank's parameters are from rank 0's.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_probe.py OUT.json STEPS key=value ...
    python tests/dist_probe.py OUT.json STEPS key=value ...          (one process)

STEPS steps of a run configured by the overrides (whose ``train.steps`` sets the schedule) run,
then a checkpoint is saved and rank 0 writes OUT.json: {"loss": [...], "rank_spread": [...],
"params": [...]}."""

import json
import sys

import torch

from ditpolicy.config import compose
from ditpolicy.policies.parallel_model import full_tensor
from ditpolicy.policies.train import Trainer


def flat_parameters(policy) -> torch.Tensor:
    return torch.cat([full_tensor(p.detach()).reshape(-1).cpu().double() for p in policy.parameters()])


def main(out: str, steps: int, overrides: list[str]) -> None:
    trainer = Trainer(compose("train", overrides))
    record = {"loss": [], "rank_spread": [], "world_size": trainer.dist.world_size}
    while trainer.step < steps:
        logs = trainer.train_step()
        params = flat_parameters(trainer.policy)
        every = trainer.dist.gather(params.numpy())
        record["loss"].append(logs["loss"])
        record["rank_spread"].append(max(float(abs(p - every[0]).max()) for p in every))
    trainer.save()
    params = flat_parameters(trainer.policy)         # a collective under FSDP: every rank gathers
    if trainer.dist.is_main:
        record["params"] = params.tolist()
        with open(out, "w") as f:
            json.dump(record, f)
    trainer.dist.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
