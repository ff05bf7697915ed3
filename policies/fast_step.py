"""Low-latency denoising steps for inference, for any denoiser family.

At batch 1 a denoising step of a small DiT is bound by per-operator overhead, not
arithmetic. Two ways around it, both keyed by the input shapes and built on first use:

- ``trace``: a frozen TorchScript graph of one step (CPU and CUDA, no compiler needed;
  about 2x faster than eager on a 2-core CPU);
- ``compile``: ``torch.compile`` of the step (inductor; on CUDA ``reduce-overhead`` adds
  CUDA graphs). Compiling takes tens of seconds on the first call.

A family's ``prepare`` may return any pytree (dicts, lists, tuples) of tensors: it is
flattened into plain tensor inputs of the graph and rebuilt inside it, so the per-chunk
work stays outside the step and the step needs no knowledge of the family. A family's
per-level ``step_inputs(t)`` (denoiser.py) are computed outside the graph each step and
enter it the same way. The per-chunk work itself (normalising and encoding the
observations and goals, then ``prepare``) is one more graph in ``trace`` mode
(``FastStep.prepare``), so a 1-step chunk is two graph calls and little Python.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.utils._pytree as pytree
from torch import nn

from .denoiser import Denoiser, DenoiserOutput

MODES = ("eager", "trace", "compile")


class _FlatStep(nn.Module):
    """One denoising step taking the prepared condition as flat tensors."""

    def __init__(self, denoiser: Denoiser, spec: pytree.TreeSpec):
        super().__init__()
        self.denoiser = denoiser
        self.spec = spec

    def forward(self, x: torch.Tensor, t: torch.Tensor, *leaves: torch.Tensor) -> DenoiserOutput:
        return self.denoiser(x, t, *pytree.tree_unflatten(list(leaves), self.spec))


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
            if isinstance(prepared, FlatPrepared):
                prepared = prepared.tree()

            def eager(x: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
                extra = denoiser.step_inputs(t)
                return denoiser(x, t, prepared) if extra is None else denoiser(x, t, prepared, extra)
            return eager
        if isinstance(prepared, FlatPrepared):
            leaves, spec, chunk_key = list(prepared.leaves), prepared.spec, prepared.key
            tree = prepared.tree                    # rebuilt only to key a new step graph
        else:
            leaves, spec = pytree.tree_flatten((prepared,))
            chunk_key = (str(spec), *(tuple(v.shape) for v in leaves))

            def tree():
                return prepared

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
