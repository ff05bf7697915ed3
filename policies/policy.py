"""The diffusion policy: observation encoder + DiT denoiser + denoising process + normaliser.

Interface: ``compute_loss(batch) -> (loss, logs)``, ``predict_chunk(obs) -> (H, A)``,
``reset(task=None)``; ``Policy.from_checkpoint(dir)`` in checkpoint.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..datasets import Normalizer
from .dit import DiTConfig, DiTDenoiser
from .encoders import ObservationEncoder, ObsSpec
from .fast_step import FastStep
from .processes import make_process

POLICY_TYPE = "dit"


@dataclass
class PolicySpec:
    """Everything needed to rebuild a policy; written to a checkpoint's config.yaml."""

    type: str = POLICY_TYPE
    obs_keys: list[str] = field(default_factory=lambda: ["state"])
    obs_shapes: dict[str, list[int]] = field(default_factory=dict)   # per-step shape per key
    image_keys: list[str] = field(default_factory=list)
    action_key: str = "action"
    action_dim: int = 4
    n_obs: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    tasks: list[str] = field(default_factory=list)
    goal: str = "task"                 # "task": task-id token; "none": no goal token
    process: dict = field(default_factory=lambda: {"name": "flow"})
    inference_steps: int = 10          # default only; every predict call may choose its own
    dit: dict = field(default_factory=dict)
    image_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    normalize: dict[str, str] = field(default_factory=dict)  # key -> normaliser mode

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, policy_cfg: dict, obs_shapes: dict[str, list[int]], image_keys: list[str],
                    action_dim: int, tasks: list[str]) -> "PolicySpec":
        """A spec from the ``policy`` config group plus the data's shapes and tasks."""
        p = dict(policy_cfg)
        lowdim_mode, action_mode = p.pop("lowdim_normalization"), p.pop("action_normalization")
        normalize = {k: lowdim_mode for k in obs_shapes if k not in image_keys}
        normalize["action"] = action_mode
        return cls(obs_keys=list(obs_shapes), obs_shapes={k: list(v) for k, v in obs_shapes.items()},
                   image_keys=list(image_keys), action_dim=int(action_dim), tasks=list(tasks),
                   normalize=normalize, **p)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicySpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown policy fields {sorted(unknown)}")
        return cls(**data)


class DiffusionPolicy(nn.Module):
    def __init__(self, spec: PolicySpec, normalizer: Normalizer):
        super().__init__()
        if spec.type != POLICY_TYPE:
            raise ValueError(f"policy type {spec.type!r} is not {POLICY_TYPE!r}")
        self.spec = spec
        self.normalizer = normalizer
        dit_cfg = DiTConfig(action_dim=spec.action_dim, horizon=spec.horizon, **spec.dit)
        obs_spec = ObsSpec(
            lowdim={k: tuple(spec.obs_shapes[k]) for k in spec.obs_keys if k not in spec.image_keys},
            images={k: tuple(spec.obs_shapes[k]) for k in spec.image_keys},
        )
        n_tasks = len(spec.tasks) if spec.goal == "task" else 0
        self.encoder = ObservationEncoder(obs_spec, spec.n_obs, dit_cfg.d_model, n_tasks=n_tasks,
                                          image_widths=tuple(spec.image_widths))
        self.denoiser = DiTDenoiser(dit_cfg)
        process_args = {k: v for k, v in spec.process.items() if k != "name"}
        self.process = make_process(spec.process["name"], **process_args)
        self.fast_step = FastStep(self.denoiser, "eager")
        self._history: deque = deque(maxlen=spec.n_obs)
        self._task_id = 0

    def set_inference_mode(self, mode: str) -> "DiffusionPolicy":
        """``eager``, ``trace`` (frozen TorchScript step) or ``compile`` (torch.compile); see
        fast_step.py. Call it after the weights are final: graphs are built from them."""
        self.fast_step = FastStep(self.denoiser, mode)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ training
    def _normalized_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (self.normalizer.normalize(k, obs[k].float()) if k in self.normalizer else obs[k])
                for k in self.spec.obs_keys}

    def _goal(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"task_id": batch["task_id"]} if self.spec.goal == "task" else {}

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: obs keys (B, n_obs, ...), action (B, H, A), task_id (B,). MSE on the target."""
        actions = self.normalizer.normalize(self.spec.action_key, batch[self.spec.action_key].float())
        cond = self.encoder(self._normalized_obs(batch), self._goal(batch), augment=self.training)
        x_t, t, target = self.process.training_pair(actions)
        pred = self.denoiser(x_t, t, self.denoiser.prepare(cond))
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        return loss, {"loss": float(loss.detach())}

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict_action_chunks(self, obs: dict[str, torch.Tensor], task_id: torch.Tensor | None = None,
                              steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """obs keys (B, n_obs, ...) on the policy's device -> actions (B, H, A), unnormalised.

        The observation encoding and the cross-attention keys/values are computed once here
        and shared by all ``steps`` denoising evaluations."""
        b = next(iter(obs.values())).shape[0]
        goal = {}
        if self.spec.goal == "task":
            goal["task_id"] = task_id if task_id is not None else torch.zeros(b, dtype=torch.long, device=self.device)
        prepared = self.denoiser.prepare(self.encoder(self._normalized_obs(obs), goal))
        noise = torch.randn((b, self.spec.horizon, self.spec.action_dim), device=self.device, generator=generator)
        actions = self.process.sample(lambda x, t: self.fast_step(x, t, prepared), noise,
                                      steps or self.spec.inference_steps)
        return self.normalizer.unnormalize(self.spec.action_key, actions)

    def reset(self, task: str | int | None = None) -> None:
        """Forget the observation history; choose the task for the goal token."""
        self._history.clear()
        if task is None:
            self._task_id = 0
        elif isinstance(task, str):
            if task not in self.spec.tasks:
                raise ValueError(f"task {task!r} is not one this policy was trained on: {self.spec.tasks}")
            self._task_id = self.spec.tasks.index(task)
        else:
            self._task_id = int(task)

    @torch.inference_mode()
    def predict_chunk(self, obs: dict[str, np.ndarray], steps: int | None = None) -> np.ndarray:
        """One observation (key -> per-step array) -> (H, action_dim) actions from now on.

        The last ``n_obs`` observations since ``reset()`` form the history (the first one is
        repeated until enough have arrived)."""
        missing = [k for k in self.spec.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks keys {missing} (policy reads {self.spec.obs_keys})")
        step = {}
        for key in self.spec.obs_keys:
            value = np.asarray(obs[key])
            want = tuple(self.spec.obs_shapes[key])
            if value.shape != want:
                raise ValueError(f"observation {key!r} has shape {value.shape}, policy expects {want}")
            step[key] = value
        if not self._history:
            self._history.extend([step] * self.spec.n_obs)
        else:
            self._history.append(step)
        batch = {k: torch.as_tensor(np.stack([h[k] for h in self._history]))[None].to(self.device)
                 for k in self.spec.obs_keys}
        task_id = torch.tensor([self._task_id], device=self.device)
        return self.predict_action_chunks(batch, task_id, steps)[0].cpu().numpy()
