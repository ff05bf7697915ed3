"""Low-latency denoising steps for inference, for any denoiser family.

At batch 1 a denoising step of a small DiT is bound by per-operator overhead, not
arithmetic. Two ways around it, both keyed by the input shapes and built on first use:

- ``trace``: frozen TorchScript graphs (CPU and CUDA, no compiler needed): of the whole
  sampler of a chunk where it can (below), else of one step (``trace-steps``: always so);
- ``compile``: ``torch.compile`` of the step (inductor; on CUDA ``reduce-overhead`` adds
  CUDA graphs). Compiling takes tens of seconds on the first call.

A family's ``prepare`` may return any pytree (dicts, lists, tuples) of tensors: it is
flattened into plain tensor inputs of the graph and rebuilt inside it, so the per-chunk
work stays outside the step and the step needs no knowledge of the family. A family's
per-level ``step_inputs(t)`` (denoiser.py) are computed outside the graph each step and
enter it the same way. The per-chunk work itself (normalising and encoding the
observations and goals, then ``prepare``) is one more graph in ``trace`` mode
(``FastStep.prepare``). A plain chunk (no real-time-chunking prefix, one chain per
sample, up to ``WHOLE_SAMPLER_MAX_STEPS`` steps) then runs its whole sampler as a second
graph (``FastStep.sample``): every chunk is two graph calls and little Python, whatever
its step count. Chunks that continue a previous one step through the step graphs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.utils._pytree as pytree
from torch import nn

from .denoiser import Denoiser, DenoiserOutput

MODES = ("eager", "trace", "trace-steps", "compile")   # trace-steps: step graphs only, never the whole sampler
WHOLE_SAMPLER_MAX_STEPS = 32    # longer samplers step through a step graph: an unrolled trace grows with the steps


class _FlatStep(nn.Module):
    """One denoising step taking the prepared condition as flat tensors."""

    def __init__(self, denoiser: Denoiser, spec: pytree.TreeSpec):
        super().__init__()
        self.denoiser = denoiser
        self.spec = spec

    def forward(self, x: torch.Tensor, t: torch.Tensor, *leaves: torch.Tensor) -> DenoiserOutput:
        return self.denoiser(x, t, *pytree.tree_unflatten(list(leaves), self.spec))


class _FlatSample(nn.Module):
    """The whole sampler of one chunk, ``steps`` denoising steps from level ``t_start``, taking
    the prepared condition as flat tensors: (x (B, H, A) start noise, *leaves) -> sample (B, H, A)."""

    def __init__(self, denoiser: Denoiser, process, spec: pytree.TreeSpec, t_start: float, steps: int):
        super().__init__()
        self.denoiser = denoiser
        self.process = process
        self.spec = spec
        self.t_start, self.steps = t_start, steps

    def forward(self, x: torch.Tensor, *leaves: torch.Tensor) -> torch.Tensor:
        prepared = pytree.tree_unflatten(list(leaves), self.spec)[0]
        return self.process.sample(eager_step(self.denoiser, prepared), x, self.t_start, self.steps)[0]


def eager_step(denoiser: Denoiser, prepared) -> Callable[[torch.Tensor, torch.Tensor], DenoiserOutput]:
    """``fn(x, t)``: one denoising step in eager mode, with the family's per-level inputs."""
    def step(x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        extra = denoiser.step_inputs(t)
        return denoiser(x, t, prepared) if extra is None else denoiser(x, t, prepared, extra)
    return step


class _Condition(nn.Module):
    """Observation and goal inputs, flat in ``keys`` order -> the leaves of the prepared condition."""

    def __init__(self, policy, keys: tuple[str, ...]):
        super().__init__()
        self.policy = policy
        self.keys = keys

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prepared = self.policy.denoiser.prepare(self.policy.condition(dict(zip(self.keys, inputs))))
        return tuple(pytree.tree_leaves(prepared))


@dataclass
class FlatPrepared:
    """A prepared condition as graph outputs: its leaves, its tree structure, and the key of
    the step graphs that take it."""
    leaves: tuple
    spec: pytree.TreeSpec
    key: tuple

    def tree(self):
        """The prepared condition as the family's pytree."""
        return pytree.tree_unflatten(list(self.leaves), self.spec)[0]


class FastStep:
    """Builds per-chunk step functions ``fn(x, t)`` for a denoiser, specialised per input shape."""

    def __init__(self, denoiser: Denoiser, mode: str = "trace"):
        if mode not in MODES:
            raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")
        self.denoiser = denoiser
        self.mode = mode
        self._graphs: dict[tuple, object] = {}
        self._step_keys: dict[tuple, tuple] = {}    # (chunk key, step-input shapes) -> (tree spec, graph key)

    def _graph(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        """``module`` as a frozen TorchScript graph or a torch.compile'd one, for these inputs."""
        module = module.eval()
        if self.mode == "compile":
            options = {"mode": "reduce-overhead"} if inputs[0].is_cuda else {}
            return torch.compile(module, dynamic=False, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, inputs, check_trace=False, strict=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def prepare(self, policy, batch: dict[str, torch.Tensor]):
        """The per-chunk condition of a batch: ``denoiser.prepare(policy.condition(batch))``,
        as one traced graph (outside ``eager`` mode) returning a FlatPrepared."""
        if self.mode == "eager":
            return policy.denoiser.prepare(policy.condition(batch))
        keys = tuple(k for k in (*policy.spec.obs_keys, *policy.goals.input_keys) if k in batch)
        inputs = tuple(batch[k] for k in keys)
        key = ("prepare", keys, *((tuple(v.shape), v.dtype, v.device) for v in inputs))
        entry = self._graphs.get(key)
        if entry is None:
            leaves, spec = pytree.tree_flatten((policy.denoiser.prepare(policy.condition(batch)),))
            graph = self._graph(_Condition(policy, keys), inputs)
            entry = self._graphs[key] = (graph, spec, (str(spec), *(tuple(v.shape) for v in leaves)))
        graph, spec, step_key = entry
        return FlatPrepared(tuple(graph(*inputs)), spec, step_key)

    def bind(self, prepared) -> Callable[[torch.Tensor, torch.Tensor], DenoiserOutput]:
        """``fn(x, t)`` for one chunk: the prepared condition is flattened once here, not per step."""
        denoiser = self.denoiser
        if self.mode == "eager":
            return eager_step(denoiser, prepared.tree() if isinstance(prepared, FlatPrepared) else prepared)
        leaves, spec, chunk_key, tree = _flat(prepared)

        def step(x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
            extra = denoiser.step_inputs(t)
            args, args_spec, key = leaves, spec, chunk_key
            if extra is not None:
                extra_leaves = pytree.tree_leaves(extra)
                shapes = tuple(tuple(v.shape) for v in extra_leaves)
                known = self._step_keys.get((chunk_key, shapes))
                if known is None:       # a family's step inputs keep one structure per shape
                    args_spec = pytree.tree_flatten((tree(), extra))[1]
                    known = self._step_keys[chunk_key, shapes] = (args_spec, (str(args_spec), *chunk_key[1:], *shapes))
                args_spec, key = known
                args = [*leaves, *extra_leaves]
            key = (tuple(x.shape), tuple(t.shape), x.device, x.dtype, key)
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = self._graph(_FlatStep(denoiser, args_spec), (x, t, *args))
            return graph(x, t, *args)
        return step

    def sample(self, process, prepared, x: torch.Tensor, t_start: float, steps: int) -> torch.Tensor | None:
        """The whole sampler of a chunk as one graph (``trace`` mode): x (B, H, A), the start
        noise -> the sample (B, H, A), ``steps`` steps of ``process`` from level ``t_start``.
        One graph per (steps, t_start, shapes) drops the step graphs' calls, the sampler's
        Python between them and per-step work outside the graph: 3-6% of a batch-1 DiT chunk
        on the CPU, a fifth of a cached MoDE one (bench/latency.py, bench/mode.py). A
        family's per-level inputs (``step_inputs``, e.g. MoDE's fused experts) are computed
        once, before tracing, and held in the graph like its weights. None in the other modes
        and beyond ``WHOLE_SAMPLER_MAX_STEPS`` steps: the caller steps through ``bind``."""
        if self.mode != "trace" or steps > WHOLE_SAMPLER_MAX_STEPS:
            return None
        leaves, spec, chunk_key, tree = _flat(prepared)
        key = ("sample", float(t_start), int(steps), tuple(x.shape), x.dtype, x.device, chunk_key)
        graph = self._graphs.get(key)
        if graph is None:
            with torch.no_grad():     # fill the family's per-level caches, so the trace reads them as constants
                process.sample(eager_step(self.denoiser, tree()), x, t_start, steps)
            graph = self._graphs[key] = self._graph(_FlatSample(self.denoiser, process, spec, t_start, steps),
                                                    (x, *leaves))
        return graph(x, *leaves)


def _flat(prepared) -> tuple[list, pytree.TreeSpec, tuple, Callable]:
    """A prepared condition (FlatPrepared or the family's pytree) as (leaves, spec of
    ``(prepared,)``, the key of graphs that take it, a function rebuilding the pytree)."""
    if isinstance(prepared, FlatPrepared):
        return list(prepared.leaves), prepared.spec, prepared.key, prepared.tree
    leaves, spec = pytree.tree_flatten((prepared,))
    return leaves, spec, (str(spec), *(tuple(v.shape) for v in leaves)), lambda: prepared
