"""Reading checkpoints written before denoiser families existed (policy type ``dit``).

Their spec had ``type: dit``, a ``dit`` section holding the width, and one ``goal`` setting;
their observation encoder held the task embedding and a slot embedding whose last row was
the goal token's. Both map exactly onto today's layout, so such a checkpoint predicts the
same actions after the upgrade.
"""

from __future__ import annotations

import torch

LEGACY_POLICY_TYPE = "dit"
# checkpoints from before spatial image tokens: one pooled token per camera and step
POOLED_IMAGE_ENCODER = {"tokens": "pooled", "grid": 3, "keypoints": 16, "shift": 4, "color_jitter": 0.0}


def is_legacy_spec(spec: dict) -> bool:
    return spec.get("type") == LEGACY_POLICY_TYPE and "dit" in spec


def upgrade_spec(spec: dict) -> dict:
    """A ``type: dit`` spec as today's spec dict."""
    spec = dict(spec)
    spec.pop("type")
    dit = dict(spec.pop("dit"))
    spec["d_model"] = int(dit.pop("d_model"))
    spec["denoiser"] = {"name": "dit", **dit}
    spec["goals"] = [] if spec.pop("goal") == "none" else ["task"]
    spec.setdefault("goal_shapes", {})
    spec.setdefault("loss_weights", {"diffusion": 1.0})
    spec.setdefault("prefix_delay_max", 0)
    spec.setdefault("image_encoder", dict(POOLED_IMAGE_ENCODER))
    return spec


def upgrade_state(state: dict[str, torch.Tensor], goals: list[str]) -> dict[str, torch.Tensor]:
    """Weights of a ``type: dit`` policy under today's parameter names."""
    state = dict(state)
    if "task" in goals and "encoder.task_embedding.weight" in state:
        state["goals.encoders.task.weight"] = state.pop("encoder.task_embedding.weight")
        slots = state["encoder.slot_embedding"]
        state["encoder.slot_embedding"] = slots[:, :-1].contiguous()
        state["goals.kind_embedding.task"] = slots[:, -1:].contiguous()
    return state
