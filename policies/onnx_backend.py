"""A policy that predicts with ONNX Runtime from an export directory (onnx_export.py).

    policy = OnnxPolicy("outputs/onnx")                   # or variant="int8", threads=2
    actions = policy.predict_action_chunks(batch)         # (B, H, A), like DiffusionPolicy's
    evaluate(policy, tasks)                               # envs/rollout.py, ChunkExecutor, latency

The encoder graph runs once per chunk, the step graph once per denoising evaluation; the
sampler between them is the torch policy's own ``process.sample`` (plain tensor arithmetic
on the CPU), so both backends walk the same levels from the same initial noise. Everything
comes from the export directory (spec, normaliser, graphs); torch weights are not needed.

It offers what ChunkExecutor, envs.rollout.evaluate and policies.latency use from a
policy: ``spec``, ``normalizer``, ``device``, ``goals.input_keys``, ``goal_inputs``,
``eval()``, ``predict_action_chunks``, and the control API (reset / observe /
select_action / predict_chunk) of DiffusionPolicy.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..datasets import Normalizer
from .control import ChunkExecutor
from .goals import GOAL_INPUTS
from .onnx_export import FILES
from .policy import DiffusionPolicy
from .processes import make_process
from .spec import PolicySpec

VARIANTS = ("fp32", "int8")
NUMPY_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64}


def session_options(threads: int = 2, spin: bool = False):
    """ONNX Runtime options for latency at small batch: ``threads`` intra-op threads, one
    inter-op thread (sequential execution: the graphs are chains), every graph optimisation.

    ``spin``: idle pool threads busy-wait for the next run. Off by default: between chunks
    the spinning threads take the cores from everything else on the machine (a torch
    policy measured beside it ran 5x slower on 2 cores), for a small gain of its own."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


class OnnxPolicy:
    """ONNX Runtime sessions of an export plus the spec, normaliser and sampler they need."""

    backend = "onnx"

    def __init__(self, export_dir: str | Path, variant: str = "fp32", threads: int = 2, spin: bool = False):
        import onnxruntime as ort

        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.export_dir = Path(export_dir)
        meta_path = self.export_dir / FILES["meta"]
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.export_dir} holds no {FILES['meta']}: not an ONNX export "
                                    f"(write one with `ditpolicy export checkpoint=<dir>`)")
        self.meta = json.loads(meta_path.read_text())
        suffix = "" if variant == "fp32" else "_int8"
        paths = {g: self.export_dir / FILES[g + suffix] for g in ("encoder", "step")}
        absent = [p.name for p in paths.values() if not p.exists()]
        if absent:
            hint = " (export with quantize=int8)" if variant == "int8" else ""
            raise FileNotFoundError(f"{self.export_dir} lacks {', '.join(absent)}{hint}")
        self.variant = variant
        self.spec = PolicySpec.from_dict(self.meta["spec"])
        self.normalizer = Normalizer.load(self.export_dir / FILES["normalizer"])
        self.process = make_process(self.spec.process)
        self.batch_size = self.meta["batch_size"]                # None: dynamic batch axis
        self.goals = SimpleNamespace(kinds=list(self.spec.goals),
                                     input_keys=[GOAL_INPUTS[k] for k in self.spec.goals])
        options = session_options(threads, spin)
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(paths["encoder"]), options, providers=providers)
        self.step = ort.InferenceSession(str(paths["step"]), options, providers=providers)
        self._encoder_inputs = {d["name"]: NUMPY_DTYPES[d["dtype"]] for d in self.meta["encoder"]["inputs"]}
        self._leaf_names = [d["name"] for d in self.meta["encoder"]["outputs"]]
        self._head_names = [d["name"] for d in self.meta["step"]["outputs"]][1:]
        self._executor = ChunkExecutor(self, batch_size=1)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def eval(self) -> "OnnxPolicy":
        return self

    def _check_batch(self, b: int) -> None:
        if self.batch_size is not None and b != self.batch_size:
            raise ValueError(f"{self.export_dir} was exported for batch size {self.batch_size}, got a batch of {b}: "
                             f"export again with batch_size={b}, or batch_size=null for any batch size")

    def encode(self, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Raw observations (B, n_obs, ...) and goal inputs -> the prepared condition's arrays."""
        missing = [k for k in self._encoder_inputs if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing} (the exported encoder takes {list(self._encoder_inputs)})")
        feeds = {k: np.ascontiguousarray(_numpy(batch[k]), dtype=dtype) for k, dtype in self._encoder_inputs.items()}
        return self.encoder.run(self._leaf_names, feeds)

    def bind(self, leaves: list[np.ndarray]):
        """``fn(x, t)`` for process.sample: one step-graph run with this chunk's condition."""
        feeds = dict(zip(self._leaf_names, leaves))
        heads = self._head_names

        def fn(x: torch.Tensor, t: torch.Tensor):
            if t.dim() != 1:
                raise ValueError(f"the ONNX step takes one noise level per sample, t (B,); got t of shape "
                                 f"{tuple(t.shape)} (per-token levels need the torch backend)")
            feeds["x"] = np.ascontiguousarray(x.numpy(), dtype=np.float32)
            feeds["t"] = np.ascontiguousarray(t.numpy(), dtype=np.float32)
            outs = [torch.from_numpy(o) for o in self.step.run(None, feeds)]
            return outs[0] if not heads else {"prediction": outs[0], **{h.removeprefix("head."): o
                                                                        for h, o in zip(heads, outs[1:])}}
        return fn

    @property
    def fast_step(self) -> "OnnxPolicy":
        """What DiffusionPolicy.predict_action_chunks calls ``prepare``, ``sample`` and ``bind`` on."""
        return self

    family_sampler = None       # the graphs run the policy's own sampler (a joint policy's policy mode)

    def sample(self, *args) -> None:
        """No whole-sampler graph here: the sampler steps through ``bind``'s step graph."""
        return None

    def prepare(self, policy, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """The per-chunk condition of a batch: ``encode`` after the batch size is checked."""
        self._check_batch(batch[self.spec.obs_keys[0]].shape[0])
        return self.encode(batch)

    def predict_action_chunks(self, batch: dict[str, torch.Tensor], *args, rtc: str = "inpaint", **kwargs):
        """DiffusionPolicy.predict_action_chunks, run on the two graphs: the same arguments,
        the same sampler, the initial noise drawn with torch (a seeded call starts where the
        torch policy's does). Real-time chunking by inpainting works as on torch; the
        clean-prefix variant (``rtc="train"``) needs per-token levels, a torch-only input."""
        if rtc == "train" and kwargs.get("prefix") is not None and kwargs.get("delay", 0) > 0:
            raise ValueError("rtc='train' feeds per-token noise levels, which the exported step graph "
                             "(t of shape (B,)) does not take: use the torch backend, or rtc='inpaint'")
        return DiffusionPolicy.predict_action_chunks(self, batch, *args, rtc=rtc, **kwargs)

    def write_diagnostics(self, directory) -> list:
        """No routing records or plots: the graphs keep none."""
        return []

    # The goal and control API of DiffusionPolicy: it uses only spec, device, normalizer,
    # _executor, goal_inputs and predict_action_chunks, which this class provides.
    goal_inputs = DiffusionPolicy.goal_inputs
    _with_prefix = DiffusionPolicy._with_prefix
    _task_index = DiffusionPolicy._task_index
    reset = DiffusionPolicy.reset
    observe = DiffusionPolicy.observe
    select_action = DiffusionPolicy.select_action
    predict_chunk = DiffusionPolicy.predict_chunk
    executor = DiffusionPolicy.executor


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def load_backend(checkpoint: str | Path, backend: str = "torch", onnx_dir: str | Path | None = None,
                 quantize: str | None = None, device: str | torch.device = "cpu", threads: int = 2):
    """A policy of ``checkpoint`` on ``backend`` (``torch`` or ``onnx``). For ``onnx``, the
    export in ``onnx_dir``, written there first (dynamic batch) when it holds none; with
    ``quantize="int8"`` the int8 graphs, quantised then if the export lacks them."""
    from .checkpoint import load_policy, resolve_checkpoint
    from .onnx_export import QUANTIZE, add_int8, export_onnx

    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend must be torch or onnx, got {backend!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if backend == "torch":
        if quantize is not None:
            raise ValueError("quantize=int8 applies to backend=onnx only")
        return load_policy(checkpoint, device, inference_mode="trace")
    checkpoint = resolve_checkpoint(checkpoint).resolve()
    onnx_dir = Path(onnx_dir) if onnx_dir else checkpoint / "onnx"
    meta_path = onnx_dir / FILES["meta"]
    if not meta_path.exists():
        export_onnx(load_policy(checkpoint, "cpu", inference_mode="eager"), onnx_dir, batch_size=None,
                    checkpoint=checkpoint)
    source = json.loads(meta_path.read_text()).get("checkpoint")
    if source is not None and Path(source) != checkpoint:
        raise ValueError(f"{onnx_dir} holds an export of {source}, not of {checkpoint}: pass another onnx_dir")
    if quantize and not (onnx_dir / FILES["step_int8"]).exists():
        add_int8(onnx_dir)
    return OnnxPolicy(onnx_dir, variant="int8" if quantize else "fp32", threads=threads)
