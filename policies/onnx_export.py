"""Export a policy to ONNX for runtimes without torch (ONNX Runtime on a robot computer).

    out = export_onnx(policy, "outputs/onnx", batch_size=1, quantize="int8", checkpoint=ckpt_dir)
    runtime = OnnxPolicy(out)                             # onnx_backend.py

A chunk is predicted in two graphs, split where the torch policy splits its work:

    encoder.onnx   raw observation histories (B, n_obs, ...) and goal inputs -> the denoiser's
                   prepared condition (``denoiser.prepare(policy.condition(batch))``) as flat
                   tensors named after their place in the pytree (``cond.pooled``, ``cond.kv.0.1``)
    step.onnx      x (B, H, A) float32, t (B,) float32 and those tensors -> ``prediction``
                   (B, H, A), plus any extra heads the denoiser returns at inference

The normaliser is inside ``encoder.onnx`` (its scales and offsets are constants of the
graph), so a runtime feeds raw observations; the actions stay normalised in the graphs and
the sampler (plain arithmetic, policies/processes) unnormalises them with
``normalizer.safetensors``, copied beside the graphs. ``export.json`` records the input and
output names, shapes and dtypes, opset, batch size, source checkpoint and policy spec, so
the directory is all a runtime needs.

Per-level inputs (``Denoiser.step_inputs``, MoDE's expert cache) live outside a traced
step; an exported graph has no such cache, so the step calls ``graph_step_inputs(t)``
instead: MoDE routes from each sample's level inside the graph and gathers its chosen
experts into one fused layer per sample, the exact computation of the cache.

Batch: ``batch_size`` fixes the batch of both graphs (a robot runs batch 1);
``batch_size=None`` exports a dynamic batch axis (simulation runs many envs at once).
Levels are per sample, t (B,): per-token levels (t (B, H)) are a torch-backend feature.

int8 (``quantize="int8"``): dynamic quantisation of both graphs, written as ``*.int8.onnx``
beside the fp32 files: MatMul/Gemm weights int8 per output channel with activations
quantised per call, and gathered tables (the task embedding, MoDE's expert weights) stored
int8 and dequantised after the gather, so MoDE's per-sample experts multiply in fp32.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch import nn

from .denoiser import heads_of, prediction_of
from .goals import GOAL_INPUTS

OPSET = 17
QUANTIZE = (None, "int8")
FILES = {"encoder": "encoder.onnx", "step": "step.onnx", "encoder_int8": "encoder.int8.onnx",
         "step_int8": "step.int8.onnx", "normalizer": "normalizer.safetensors", "meta": "export.json"}
QUANTIZED_OPS = ["MatMul", "Gemm", "Gather"]
TRACE_BATCH = 2   # a dynamic-batch export is traced at 2 so that no size-1 batch rule is baked in


def example_inputs(policy, batch_size: int) -> dict[str, torch.Tensor]:
    """Inputs of the encoder graph: obs keys (B, n_obs, *shape) float32 or uint8 frames, then
    goal inputs (task_id (B,) int64, language (B, [N,] L) float32, goal_image (B, [N,] H, W, 3) uint8)."""
    spec, b = policy.spec, batch_size
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for key in spec.obs_keys:
        shape = (b, spec.n_obs, *spec.obs_shapes[key])
        inputs[key] = (torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8) if key in spec.image_keys
                       else torch.randn(shape, generator=gen))
    for kind in spec.goals:
        key = GOAL_INPUTS[kind]
        if kind == "task":
            inputs[key] = torch.arange(b) % max(1, len(spec.tasks))
            continue
        shape = spec.goal_shapes.get(kind)
        if shape is None and kind == "image" and spec.image_keys:
            shape = spec.obs_shapes[spec.image_keys[0]]     # goal frames like the cameras' frames
        if shape is None:
            raise ValueError(f"cannot export goal kind {kind!r}: the spec has no goal_shapes.{kind}")
        inputs[key] = (torch.randint(0, 256, (b, *shape), generator=gen, dtype=torch.uint8) if kind == "image"
                       else torch.randn((b, *shape), generator=gen))
    return inputs


def leaf_names(prepared) -> list[str]:
    """``cond.<path>`` for each tensor of a prepared pytree, in ``tree_flatten`` order."""
    paths, _ = pytree.tree_flatten_with_path(prepared)
    names = []
    for path, _ in paths:
        parts = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        names.append(".".join(["cond", *parts]))
    return names


class EncoderGraph(nn.Module):
    """(*inputs in ``keys`` order) -> the prepared condition's tensors, flat."""

    def __init__(self, policy, keys: list[str]):
        super().__init__()
        self.policy = policy
        self.keys = keys

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = dict(zip(self.keys, inputs))
        prepared = self.policy.denoiser.prepare(self.policy.condition(batch))
        return tuple(pytree.tree_flatten(prepared)[0])


class StepGraph(nn.Module):
    """(x (B, H, A), t (B,), *leaves) -> (prediction, *heads in ``head_names`` order)."""

    def __init__(self, denoiser, spec: pytree.TreeSpec):
        super().__init__()
        self.denoiser = denoiser
        self.spec = spec
        self.head_names: list[str] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prepared = pytree.tree_unflatten(list(leaves), self.spec)
        extra = self.denoiser.graph_step_inputs(t)
        out = self.denoiser(x, t, prepared) if extra is None else self.denoiser(x, t, prepared, extra)
        heads = heads_of(out)
        self.head_names = sorted(heads)
        return (prediction_of(out), *(heads[k] for k in self.head_names))


def _describe(names: list[str], tensors, dynamic: bool) -> list[dict]:
    return [{"name": n, "shape": ["batch" if dynamic and i == 0 else int(s) for i, s in enumerate(v.shape)],
             "dtype": str(v.dtype).removeprefix("torch.")} for n, v in zip(names, tensors)]


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: bool) -> None:
    # The TorchScript exporter: it needs nothing beyond torch (the dynamo one needs onnxscript),
    # and its traces of these modules hold no data-dependent control flow.
    axes = {name: {0: "batch"} for name in [*inputs, *outputs]} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    check(path)


def check(path: Path) -> None:
    """onnx.checker on a written model (raises onnx.checker.ValidationError)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


# Layers left in float32: the noise-level path (time MLP, adaLN modulation, router) and the
# action input/output projections. They act once per sample or on A-wide vectors, so they
# cost little, and their errors reach every token: quantising them cost 4.6 points of
# Meta-World success at 1 step (0.927 against 0.973), the per-token layers alone did not.
FLOAT_LAYERS = ("time_mlp", "/ada/", "final_ada", "action_in", "action_out", "noise_embedding", "router")


def keep_float(node_name: str) -> bool:
    return any(part in node_name for part in FLOAT_LAYERS)


def quantize_int8(src: Path, dst: Path, per_channel: bool = True, reduce_range: bool = True) -> Path:
    """Dynamic int8 quantisation of ``src``'s MatMul/Gemm weights and gathered tables into ``dst``.

    Per-channel scales with ``reduce_range`` (7-bit weights) measured best: on x86 CPUs
    without VNNI the u8 x s8 products are summed in saturating int16 pairs, and full-range
    per-channel weights overflow them (relative error about 1 instead of 0.05)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    staged = dst.with_name(dst.name + ".pre.onnx")
    try:   # shape inference and constant clean-up first, as the quantiser asks
        quant_pre_process(str(src), str(staged))
        # the quantiser turns a Gemm into "<name>_MatMul" plus an Add before quantising it
        kept = [name for n in onnx.load(str(staged)).graph.node if keep_float(n.name)
                for name in (n.name, f"{n.name}_MatMul")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             reduce_range=reduce_range, op_types_to_quantize=QUANTIZED_OPS,
                             nodes_to_exclude=kept)
    finally:
        staged.unlink(missing_ok=True)
    check(dst)
    return dst


@torch.no_grad()
def export_onnx(policy, out_dir: str | Path, batch_size: int | None = 1, quantize: str | None = None,
                checkpoint: str | Path | None = None) -> Path:
    """Write encoder.onnx, step.onnx (and with ``quantize="int8"`` their int8 twins),
    normalizer.safetensors and export.json into ``out_dir``; returns ``out_dir``.

    ``batch_size``: the fixed batch of the graphs, or None for a dynamic batch axis.
    ``checkpoint``: where the weights came from, recorded in export.json."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if policy.process.fan_out > 1:
        raise ValueError(f"policy/process={policy.process.name} runs {policy.process.fan_out} chains per sample "
                         f"and keeps anchors beside the weights; ONNX export supports one chain per sample "
                         f"(flow, ddpm)")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None (dynamic), got {batch_size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dynamic = batch_size is None
    was_training, device = policy.training, policy.device
    policy.eval().cpu()        # traced on the CPU, where ONNX Runtime runs them here; restored below
    try:
        inputs = example_inputs(policy, TRACE_BATCH if dynamic else int(batch_size))
        names = list(inputs)
        prepared = policy.denoiser.prepare(policy.condition(inputs))
        leaves, tree = pytree.tree_flatten(prepared)
        leaves_named = leaf_names(prepared)
        encoder = EncoderGraph(policy, names).eval()
        _export(encoder, tuple(inputs.values()), out / FILES["encoder"], names, leaves_named, dynamic)

        b = leaves[0].shape[0]
        x = torch.randn(b, policy.spec.horizon, policy.spec.action_dim, generator=torch.Generator().manual_seed(1))
        t = torch.linspace(0.9, 0.3, b)
        step = StepGraph(policy.denoiser, tree).eval()
        outputs = step(x, t, *leaves)
        out_names = ["prediction", *(f"head.{k}" for k in step.head_names)]
        _export(step, (x, t, *leaves), out / FILES["step"], ["x", "t", *leaves_named], out_names, dynamic)
        routed_in_graph = policy.denoiser.graph_step_inputs(t) is not None
    finally:
        policy.train(was_training).to(device)
    policy.normalizer.save(out / FILES["normalizer"])

    for graph in ("encoder", "step"):    # no stale int8 files of an earlier export beside new fp32 ones
        (out / FILES[f"{graph}_int8"]).unlink(missing_ok=True)
    import onnx
    import onnxruntime

    meta = {
        "format": "onnx", "opset": OPSET, "exporter": "torch.onnx.export (TorchScript)",
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "batch_size": None if dynamic else int(batch_size), "dynamic_batch": dynamic,
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "quantize": None, "quantization": None,
        "files": {k: FILES[k] for k in ("encoder", "step", "normalizer")},
        "encoder": {"inputs": _describe(names, inputs.values(), dynamic),
                    "outputs": _describe(leaves_named, leaves, dynamic)},
        "step": {"inputs": _describe(["x", "t", *leaves_named], [x, t, *leaves], dynamic),
                 "outputs": _describe(out_names, outputs, dynamic)},
        "step_inputs": "routing and expert fusion in the step graph" if routed_in_graph else None,
        "spec": policy.spec.to_dict(),
    }
    (out / FILES["meta"]).write_text(json.dumps(meta, indent=2))
    if quantize == "int8":
        add_int8(out)
    return out


def add_int8(out_dir: str | Path) -> Path:
    """Quantise an export's fp32 graphs into ``*.int8.onnx`` beside them; export.json lists them."""
    out = Path(out_dir)
    meta = json.loads((out / FILES["meta"]).read_text())
    for graph in ("encoder", "step"):
        quantize_int8(out / FILES[graph], out / FILES[f"{graph}_int8"])
        meta["files"][f"{graph}_int8"] = FILES[f"{graph}_int8"]
    meta["quantize"] = "int8"
    meta["quantization"] = {"weights": "int8", "per_channel": True, "reduce_range": True, "ops": QUANTIZED_OPS,
                            "activations": "uint8, quantised dynamically per call (MatMul/Gemm)"}
    (out / FILES["meta"]).write_text(json.dumps(meta, indent=2))
    return out


def file_sizes(out_dir: str | Path) -> dict[str, int]:
    """Bytes of each file an export wrote, by file name."""
    meta = json.loads((Path(out_dir) / FILES["meta"]).read_text())
    names = [*meta["files"].values(), FILES["meta"]]
    return {name: (Path(out_dir) / name).stat().st_size for name in names}


__all__ = ["OPSET", "QUANTIZE", "FILES", "add_int8", "export_onnx", "quantize_int8", "file_sizes", "example_inputs"]
