"""The diffusion policy: observation and goal tokens, a denoiser family, a denoising process,
and the normaliser, behind one interface for training, evaluation and robots.

    loss, logs = policy.compute_loss(batch)              # training; named, weighted loss terms
    actions = policy.predict_action_chunks(batch)        # (B, H, A) from (B, n_obs, ...) histories

    policy = DiffusionPolicy.from_checkpoint("outputs/demo/run")
    policy.reset(task="reach-v3")                        # control API: one step at a time
    policy.observe(obs)                                  # every control step
    action = policy.select_action()                      # (A,), from a chunk queue

A batch holds the observation keys (B, n_obs, ...), the goal inputs of the policy's goal
kinds (``task_id`` (B,), ...) and, in training, ``action`` (B, H, A).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

from ..datasets import Normalizer
from . import batch_random
from .control import ChunkExecutor, ObservationError, check_observation, pad_chunk
from .denoiser import ACTION_ROWS, DENOISERS, heads_of
from .encoders import ImageTokens, ObservationEncoder, ObsSpec
from .fast_step import FastStep, FlatPrepared
from .goals import GOAL_INPUTS, GoalEncoder
from .inpainting import inpainted, prefix_weights
from .processes import make_process
from .processes.base import start_levels
from .spec import PolicySpec


class DiffusionPolicy(nn.Module):
    def __init__(self, spec: PolicySpec, normalizer: Normalizer):
        super().__init__()
        self.spec = spec
        self.normalizer = normalizer
        obs_spec = ObsSpec(
            lowdim={k: tuple(spec.obs_shapes[k]) for k in spec.obs_keys if k not in spec.image_keys},
            images={k: tuple(spec.obs_shapes[k]) for k in spec.image_keys},
        )
        widths = tuple(spec.image_widths)
        self.encoder = ObservationEncoder(obs_spec, spec.n_obs, spec.d_model, widths, ImageTokens(**spec.image_encoder))
        language_dim = int(spec.goal_shapes.get("language", [0])[-1])     # (L,) or (N, L): L
        self.goals = GoalEncoder(spec.goals, spec.d_model, len(spec.tasks), language_dim, widths)
        self.process = make_process(spec.process)
        self.process_state = self.process.make_state(spec.horizon, spec.action_dim)    # saved with the weights
        if self.process.fan_out > 1 and spec.prefix_delay_max:
            raise ValueError(f"policy.prefix_delay_max={spec.prefix_delay_max} needs one denoising chain per "
                             f"sample; policy/process={self.process.name} runs {self.process.fan_out}")
        family = DENOISERS.get(spec.denoiser["name"], spec.denoiser.get("module"))
        takes = inspect.signature(family.__init__).parameters
        takes_heads = "heads" in takes                                            # extra outputs, set here
        heads = {"heads": tuple(self.process.heads)} if takes_heads else {}
        if "obs_shapes" in takes:
            heads["obs_shapes"] = {k: list(v) for k, v in spec.obs_shapes.items()}
        if self.process.heads and not takes_heads:
            raise ValueError(f"policy/process={self.process.name} needs a denoiser with the head(s) "
                             f"{list(self.process.heads)}; policy/denoiser={spec.denoiser['name']} has none "
                             f"(policy/denoiser=dit has them)")
        self.denoiser = DENOISERS.build(spec.denoiser, action_dim=spec.action_dim, horizon=spec.horizon,
                                        d_model=spec.d_model, **heads)
        self.loss_weights = {**spec.loss_weights, **spec.denoiser.get("loss_weights", {}),
                             **spec.process.get("loss_weights", {})}
        self.fast_step = FastStep(self.denoiser, "eager")
        self._executor = ChunkExecutor(self, batch_size=1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, use_ema: bool = True,
                        inference_mode: str = "trace") -> "DiffusionPolicy":
        """The policy of a checkpoint directory, or of a run directory's ``checkpoints/latest``.

        Loads the EMA weights by default. ``inference_mode``: ``trace`` (default) runs a
        chunk's whole sampler as one frozen TorchScript graph (fast_step.py), 1.6-1.8x faster
        than ``eager`` at batch 1; ``trace-steps`` a graph per step; ``compile`` uses
        torch.compile."""
        from .checkpoint import load_policy

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return load_policy(path, device, use_ema, inference_mode)

    def set_inference_mode(self, mode: str) -> "DiffusionPolicy":
        """``eager``, ``trace``, ``trace-steps`` or ``compile`` (fast_step.py). Call it after
        the weights are final: graphs are built from them."""
        self.fast_step = FastStep(self.denoiser, mode)
        return self

    @property
    def family_sampler(self):
        """The denoiser when it samples the actions itself (``Denoiser.samples_actions``), else None."""
        return self.denoiser if self.denoiser.samples_actions else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ shared
    def condition(self, batch: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        """Observation and goal tokens (B, N, D) of a batch."""
        obs = {k: (self.normalizer.normalize(k, batch[k].float()) if k in self.normalizer else batch[k])
               for k in self.spec.obs_keys}
        tokens = self.encoder(obs, augment=augment)
        if self.goals.kinds:
            tokens = torch.cat([tokens, self.goals(batch, augment=augment)], dim=1)
        return tokens

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: obs keys (B, n_obs, ...), goal inputs, action (B, H, A).

        Returns the weighted sum of the named loss terms of the process (``diffusion``, ...)
        and of the denoiser (e.g. ``load_balance``), and a log with each term and ``loss``."""
        actions = self.normalizer.normalize(self.spec.action_key, batch[self.spec.action_key].float())
        prepared = self.fan_out(self.denoiser.prepare(self.condition(batch, augment=self.training)))
        t, mask = self.training_levels(actions)
        x_t, t, target = self.process.training_pair(actions, t)
        out = self.denoiser.training_forward(x_t, self.chain_levels(t), prepared, batch, self.process)
        rows = heads_of(out).get(ACTION_ROWS)          # samples whose actions count (not action-free)
        if rows is not None:
            rows = rows[:, None].expand(actions.shape[:2])
            mask = rows if mask is None else mask & rows
        terms = {**self.process.loss_terms(out, target, mask), **self.denoiser.loss_terms(out)}
        unweighted = sorted(set(terms) - set(self.loss_weights))
        if unweighted:
            raise ValueError(f"loss term(s) {unweighted} have no weight: set policy.loss_weights."
                             f"{unweighted[0]} (or loss_weights in the family's yaml)")
        loss = sum(self.loss_weights[name] * value for name, value in terms.items())
        logs = {f"loss/{name}": float(value.detach()) for name, value in terms.items()}
        logs["loss"] = float(loss.detach())
        logs.update(self.denoiser.log_values(out))
        return loss, logs

    def training_levels(self, actions: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Noise levels and loss mask for a batch of chunks (B, H, A).

        With ``prefix_delay_max`` > 0 (training-time real-time chunking) each sample's first
        d actions sit at level 0, clean, as the actions a robot is still executing would at
        inference, and are left out of the loss: levels (B, H) and mask (B, H). d is 0 for half
        the samples and uniform in 1..prefix_delay_max otherwise: the first actions of a chunk
        are the ones a robot executes first, and a uniform d over 0..max left the first one in
        the loss for only 1/(max+1) of the samples (success at delay 0 fell from 0.97 to 0.80).
        Otherwise (None, None): the process draws one level per sample."""
        if not self.spec.prefix_delay_max:
            return None, None
        b, h = actions.shape[:2]
        t = self.process.draw_levels((b,), actions.device, actions.dtype)
        delay = batch_random.randint(1, self.spec.prefix_delay_max + 1, (b, 1), actions.device)
        delay = torch.where(batch_random.rand((b, 1), actions.device) < 0.5, torch.zeros_like(delay), delay)
        mask = torch.arange(h, device=actions.device)[None] >= delay
        return torch.where(mask, t[:, None], torch.zeros_like(t)[:, None]), mask

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict_action_chunks(self, batch: dict[str, torch.Tensor], steps: int | None = None,
                              generator: torch.Generator | None = None, init: torch.Tensor | None = None,
                              t_start: float | torch.Tensor = 1.0, return_heads: bool = False,
                              prefix: torch.Tensor | None = None, delay: int = 0, rtc: str = "inpaint",
                              decay: str = "exp", noise: torch.Tensor | None = None):
        """Observation histories (B, n_obs, ...) and goal inputs -> actions (B, H, A), unnormalised.

        ``init`` (B, H, A), unnormalised, starts the sampler from those actions noised to
        ``t_start`` (per sample or per token) instead of from pure noise. The observation
        encoding and per-chunk denoiser state are computed once and shared by all ``steps``
        denoising evaluations. With ``return_heads`` also returns the denoiser's extra heads.

        Real-time chunking: ``prefix`` (B, P, A), unnormalised, are the actions the previous
        chunk plans for this chunk's first P steps, of which the first ``delay`` will run
        before this chunk arrives. ``rtc="inpaint"`` steers the sampler toward them
        (inpainting.py, ``decay`` of the weights); ``rtc="train"`` gives the first ``delay``
        to the network clean, for policies trained with ``prefix_delay_max >= delay``.

        ``noise`` (B, H, A): the sampler's starting noise, instead of a draw (per-episode
        seeded noise, so that an episode's actions do not depend on the batch it runs in)."""
        family = self.family_sampler
        if family is not None:                     # the family's own sampler (joint.py's plan mode)
            if init is not None or return_heads or (prefix is not None and prefix.shape[1] > 0):
                raise ValueError("this policy samples its actions with its own sampler (a joint policy in plan mode):"
                                 " warm starts (init), real-time chunking (prefix) and heads are not supported")
            return family.sample_actions(self, batch, steps or self.spec.inference_steps, noise, generator)
        b = batch[self.spec.obs_keys[0]].shape[0]
        h = self.spec.horizon
        prepared = self.fast_step.prepare(self, batch)
        shape = (b, h, self.spec.action_dim)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; the sampler starts from (B, H, A) = {shape}")
        x = (noise.to(self.device, torch.float32) if noise is not None
             else torch.randn(shape, device=self.device, generator=generator))
        if init is not None:
            x0 = self.normalizer.normalize(self.spec.action_key, init.to(self.device).float())
            x = self.process.add_noise(x0, start_levels(t_start, x0), x)
        if self.process.fan_out > 1:
            if init is not None or (prefix is not None and prefix.shape[1] > 0):
                raise ValueError(f"policy/process={self.process.name} samples from its own start (one chain per "
                                 f"anchor): warm starts (init) and real-time chunking (prefix) are not supported")
            x, t_start = self.process.initial(x, t_start)
            prepared = self.fan_out(prepared)
        steps = steps or self.spec.inference_steps
        whole = (self.process.fan_out == 1 and not return_heads and not torch.is_tensor(t_start)
                 and (prefix is None or prefix.shape[1] == 0))
        actions = self.fast_step.sample(self.process, prepared, x, float(t_start), steps) if whole else None
        if actions is not None:         # the whole sampler as one graph (trace mode)
            return self.normalizer.unnormalize(self.spec.action_key, actions)
        fn = self.fast_step.bind(prepared)
        if self.process.fan_out > 1 and self.denoiser.shares_condition:
            step, fn = fn, lambda x_t, t: step(x_t, self.chain_levels(t))
        if prefix is not None and prefix.shape[1] > 0:
            x, t_start, fn = self._with_prefix(x, t_start, fn, prefix, delay, rtc, decay)
        actions, heads = self.process.sample(fn, x, t_start, steps)
        actions = self.normalizer.unnormalize(self.spec.action_key, actions)
        return (actions, heads) if return_heads else actions

    def fan_out(self, prepared):
        """The prepared condition for the process's K chains per sample: as it is for a denoiser
        that shares it between chains, else each sample repeated (B * K, ...)."""
        k = self.process.fan_out
        if k == 1 or self.denoiser.shares_condition:
            return prepared
        if isinstance(prepared, FlatPrepared):
            leaves = tuple(v.repeat_interleave(k, dim=0) for v in prepared.leaves)
            return FlatPrepared(leaves, prepared.spec, (prepared.key[0], *(tuple(v.shape) for v in leaves)))
        return pytree.tree_map(lambda v: v.repeat_interleave(k, dim=0), prepared)

    def chain_levels(self, t: torch.Tensor) -> torch.Tensor:
        """The chains' levels (B * K,) as the denoiser takes them: one per sample (B,) where it
        shares the condition between a sample's chains (a fan-out process gives them one level)."""
        k = self.process.fan_out
        return t[::k] if k > 1 and self.denoiser.shares_condition else t

    def _with_prefix(self, x, t_start, fn, prefix, delay: int, rtc: str, decay: str):
        """Sampler start, levels and step function that honour a committed prefix (B, P, A)."""
        h = self.spec.horizon
        p = self.normalizer.normalize(self.spec.action_key, prefix.to(self.device).float())[:, :h]
        full = pad_chunk(p, h)                                                    # (B, H, A)
        delay = min(int(delay), p.shape[1])
        if rtc == "train":
            if delay > self.spec.prefix_delay_max:
                raise ValueError(f"rtc='train' with a delay of {delay} steps needs a policy trained with "
                                 f"policy.prefix_delay_max >= {delay}; this one has {self.spec.prefix_delay_max}")
            levels = start_levels(t_start, x)
            levels = (levels[:, None].expand(-1, h) if levels.dim() == 1 else levels).clone()
            levels[:, :delay] = 0.0
            x = x.clone()
            x[:, :delay] = full[:, :delay]
            return x, levels, fn
        if rtc != "inpaint":
            raise ValueError(f"rtc must be 'inpaint' or 'train', got {rtc!r}")
        weights = torch.as_tensor(prefix_weights(h, delay, p.shape[1], decay))
        return x, t_start, inpainted(fn, self.process, full, weights)

    def goal_inputs(self, task: str | int | None = None, batch_size: int = 1, **goal) -> dict[str, torch.Tensor]:
        """Goal tensors (B, ...) for the policy's goal kinds: ``task`` by name or index, and
        per-episode inputs of other kinds by batch key (``language=(L,) array``, ...)."""
        inputs = {}
        for kind in self.spec.goals:
            key = GOAL_INPUTS[kind]
            if kind == "task":
                inputs[key] = torch.full((batch_size,), self._task_index(task), dtype=torch.long)
            elif key in goal:
                value = torch.as_tensor(np.asarray(goal[key]))
                inputs[key] = value.expand(batch_size, *value.shape)
            else:
                raise ValueError(f"this policy's goals are {self.spec.goals}: pass {key}=... to reset()")
        return {k: v.to(self.device) for k, v in inputs.items()}

    def _task_index(self, task: str | int | None) -> int:
        tasks = self.spec.tasks
        if task is None:
            if len(tasks) == 1:
                return 0
            raise ValueError(f"this policy was trained on {len(tasks)} tasks: reset(task=...) must name one of {tasks}")
        if isinstance(task, str):
            if task not in tasks:
                raise ValueError(f"task {task!r} is not one this policy was trained on: {tasks}")
            return tasks.index(task)
        if not 0 <= int(task) < len(tasks):
            raise ValueError(f"task index {task} is out of range: this policy knows {len(tasks)} tasks {tasks}")
        return int(task)

    # ------------------------------------------------------------------ control API (batch 1)
    def reset(self, task: str | int | None = None, **goal) -> None:
        """Start an episode: forget the history and queued actions; choose the goal."""
        self._executor.reset(self.goal_inputs(task, 1, **goal))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Record one control step's observation (key -> per-step array). Call it every step,
        whether or not an action is taken from a new chunk. A bad observation (missing key,
        wrong shape, NaN/inf) raises an ObservationError and leaves the history untouched."""
        self._executor.observe({k: np.asarray(v)[None] for k, v in obs.items()})

    def select_action(self) -> np.ndarray:
        """The next action (A,): from the queue, or from a new chunk predicted from the last
        ``n_obs`` consecutive observations when the queue is empty."""
        return self._executor.act()[0]

    @property
    def executor(self) -> ChunkExecutor:
        """The batch-1 executor behind the control API (history, queue, latencies)."""
        return self._executor

    def predict_chunk(self, history: dict[str, np.ndarray], steps: int | None = None, task: str | int | None = None
                      ) -> np.ndarray:
        """For callers that keep their own history: key -> (n_obs, ...) consecutive
        observations, oldest first -> (H, A) actions from the newest observation on. The goal
        is ``task`` if given, else the one of the last ``reset``."""
        try:
            checked = check_observation(self.spec, history, self.spec.n_obs, self.normalizer)
        except ObservationError as exc:
            raise ObservationError(f"predict_chunk takes a history of n_obs={self.spec.n_obs} consecutive "
                                   f"observations per key (for one observation per call use observe / "
                                   f"select_action): {exc}") from None
        batch = {k: torch.as_tensor(v)[None].to(self.device) for k, v in checked.items()}
        goal = self._executor.goal if task is None and self._executor.goal else self.goal_inputs(task, 1)
        return self.predict_action_chunks({**batch, **goal}, steps)[0].cpu().numpy()
