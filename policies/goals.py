"""Goal tokens: what the policy is asked to do, as tokens of width D beside the observations.

Each goal kind reads one input of the batch and emits any number of tokens; every token of a
kind gets that kind's learned embedding, so kinds can be added, dropped or repeated without
a fixed slot table:

    kind       batch key      input shape               tokens
    task       task_id        (B,) int                  1 (learned per-task embedding)
    language   language       (B, L) or (B, N, L)       1 or N (projection of a fixed text embedding)
    image      goal_image     (B, H, W, 3) or           1 or N (a CNN of its own)
                              (B, N, H, W, 3) uint8
"""

from __future__ import annotations

import torch
from torch import nn

from .encoders import ImageEncoder, encode_frames

GOAL_INPUTS = {"task": "task_id", "language": "language", "image": "goal_image"}


class GoalEncoder(nn.Module):
    """Goal inputs (batch key -> tensor) -> goal tokens (B, N_goal, D); with no kinds it is empty
    and the policy does not call it."""

    def __init__(self, kinds: list[str], d_model: int, n_tasks: int, language_dim: int,
                 image_widths: tuple[int, ...]):
        super().__init__()
        unknown = sorted(set(kinds) - set(GOAL_INPUTS))
        if unknown:
            raise ValueError(f"policy.goals: unknown goal kind(s) {unknown}; known: {sorted(GOAL_INPUTS)}")
        self.kinds = list(dict.fromkeys(kinds))
        self.d_model = d_model
        self.encoders = nn.ModuleDict()
        if "task" in self.kinds:
            if n_tasks < 1:
                raise ValueError("policy.goals has 'task' but the data names no tasks")
            self.encoders["task"] = nn.Embedding(n_tasks, d_model)
        if "language" in self.kinds:
            if language_dim < 1:
                raise ValueError("policy.goals has 'language' but no language embedding size is known "
                                 "(policy goal_shapes.language)")
            self.encoders["language"] = nn.Linear(language_dim, d_model)
        if "image" in self.kinds:
            self.encoders["image"] = ImageEncoder(d_model, image_widths)
        self.kind_embedding = nn.ParameterDict(
            {kind: nn.Parameter(torch.randn(1, 1, d_model) * 0.02) for kind in self.kinds})

    @property
    def input_keys(self) -> list[str]:
        return [GOAL_INPUTS[kind] for kind in self.kinds]

    def forward(self, goal: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        tokens = []
        for kind in self.kinds:
            key = GOAL_INPUTS[kind]
            if key not in goal:
                raise KeyError(f"goal input {key!r} is missing (the policy's goals are {self.kinds})")
            x = goal[key]
            if kind == "task":
                out = self.encoders["task"](x.long().reshape(-1))[:, None]
            elif kind == "language":
                out = self.encoders["language"](x.float() if x.dim() == 3 else x.float()[:, None])
            else:
                out = encode_frames(self.encoders["image"], x if x.dim() == 5 else x[:, None], augment).flatten(1, 2)
            tokens.append(out + self.kind_embedding[kind])
        return torch.cat(tokens, dim=1)
