"""ONNX export and the ONNX Runtime backend: graphs equal torch, int8 within its bound, the
export and eval verbs.

Tolerances (float32 through different kernels; measured errors are below 5e-6): encoder
outputs atol 1e-5, step predictions and whole chunks atol 5e-5. int8: relative RMS error
of a step prediction at most 0.15 (measured 0.02-0.04 on these random-weight policies)."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY_POLICY, write_reaching_store

from ditpolicy.cli import main
from ditpolicy.config import compose, policy_config
from ditpolicy.datasets import EpisodeWriter, Normalizer
from ditpolicy.datasets.stats import array_stats
from ditpolicy.policies import DiffusionPolicy, Policy, PolicySpec
from ditpolicy.policies.latency import measure_chunk_latency
from ditpolicy.policies.onnx_backend import OnnxPolicy
from ditpolicy.policies.onnx_export import export_onnx, leaf_names
from ditpolicy.policies.train import Trainer

pytest.importorskip("onnxruntime")

SMALL = ["policy.d_model=32", "policy.denoiser.n_layers=2", "policy.denoiser.n_heads=2", "policy.horizon=6",
         "policy.n_action_steps=3"]
FAMILIES = {"dit-flow": ["policy/denoiser=dit", "policy/process=flow"],
            "dit-ddpm": ["policy/denoiser=dit", "policy/process=ddpm"],
            "mode-flow": ["policy/denoiser=mode", "policy/process=flow"],
            "mode-shared-obs": ["policy/denoiser=mode", "policy/process=flow", "policy.denoiser.shared_ratio=1.0",
                                "policy.denoiser.obs_context=true"],
            "mode-adaln": ["policy/denoiser=mode", "policy/process=flow", "policy.denoiser.conditioning=adaln",
                           "policy.denoiser.obs_context=true"],
            "mode-split-prefix": ["policy/denoiser=mode", "policy/process=flow", "policy.denoiser.conditioning=adaln",
                                  "policy.denoiser.obs_context=true", "policy.denoiser.modulation=split",
                                  "policy.denoiser.attention=prefix"]}


def small_policy(overrides) -> DiffusionPolicy:
    torch.manual_seed(0)
    spec = PolicySpec.from_config(policy_config([*SMALL, *overrides]), {"state": [5]}, [], 2, ["a", "b"])
    rng = np.random.default_rng(0)
    stats = {"state": array_stats(rng.normal(size=(50, 5))), "action": array_stats(rng.normal(size=(50, 2)))}
    policy = DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()
    with torch.no_grad():   # open every zero-initialised branch, so each part shapes the output
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return policy.set_inference_mode("trace")


def batch_of(b: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"state": torch.randn(b, 2, 5, generator=gen), "task_id": torch.arange(b) % 2}


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory):
    policy = small_policy(FAMILIES[request.param])
    out = export_onnx(policy, tmp_path_factory.mktemp(request.param) / "onnx", batch_size=None, quantize="int8")
    return policy, out


def test_encoder_and_step_graphs_equal_torch(exported):
    policy, out = exported
    runtime = OnnxPolicy(out)
    batch = batch_of(3)
    with torch.no_grad():
        prepared = policy.denoiser.prepare(policy.condition(batch))
    leaves = runtime.encode(batch)
    names = leaf_names(prepared)
    assert names == runtime._leaf_names and len(leaves) == len(names)
    for name, got, want in zip(names, leaves, torch.utils._pytree.tree_flatten(prepared)[0]):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0, err_msg=name)
    fn, ort_fn = policy.fast_step.bind(prepared), runtime.bind(leaves)   # torch: the traced, cached path
    x = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(2))
    for level in (1.0, 0.55, 0.1):
        t = torch.full((3,), level)
        torch.testing.assert_close(ort_fn(x, t), fn(x, t), atol=5e-5, rtol=0)
    t = torch.tensor([0.9, 0.5, 0.2])   # a level per sample: MoDE routes each in the graph
    with torch.no_grad():
        torch.testing.assert_close(ort_fn(x, t), policy.denoiser(x, t, prepared), atol=5e-5, rtol=0)


def test_chunks_equal_torch_from_the_same_noise(exported):
    policy, out = exported
    runtime = OnnxPolicy(out)
    for b, steps in ((1, 1), (1, 10), (4, 4)):
        batch = batch_of(b, seed=steps)
        want = policy.predict_action_chunks(batch, steps, generator=torch.Generator().manual_seed(5))
        got = runtime.predict_action_chunks(batch, steps, generator=torch.Generator().manual_seed(5))
        assert got.shape == (b, 6, 2)
        torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
    init = torch.randn(2, 6, 2)   # warm start from a previous chunk
    kwargs = dict(steps=4, init=init, t_start=torch.tensor([0.5, 0.8]))
    want = policy.predict_action_chunks(batch_of(2), generator=torch.Generator().manual_seed(6), **kwargs)
    got = runtime.predict_action_chunks(batch_of(2), generator=torch.Generator().manual_seed(6), **kwargs)
    torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
    rtc = dict(steps=2, prefix=torch.randn(2, 3, 2), delay=2, rtc="inpaint")   # real-time chunking by inpainting
    want = policy.predict_action_chunks(batch_of(2), generator=torch.Generator().manual_seed(7), **rtc)
    got = runtime.predict_action_chunks(batch_of(2), generator=torch.Generator().manual_seed(7), **rtc)
    torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
    with pytest.raises(ValueError, match="per-token"):
        runtime.predict_action_chunks(batch_of(2), **{**rtc, "rtc": "train"})


def test_int8_graphs_are_smaller_and_close(exported):
    policy, out = exported
    fp32, int8 = OnnxPolicy(out), OnnxPolicy(out, variant="int8")
    for name in ("encoder", "step"):
        assert (out / f"{name}.int8.onnx").stat().st_size < (out / f"{name}.onnx").stat().st_size
    batch = batch_of(8)
    x = torch.randn(8, 6, 2, generator=torch.Generator().manual_seed(3))
    for level in (0.9, 0.3):
        t = torch.full((8,), level)
        want = fp32.bind(fp32.encode(batch))(x, t)
        got = int8.bind(int8.encode(batch))(x, t)
        rel = float(((got - want) ** 2).mean().sqrt() / (want ** 2).mean().sqrt())
        assert rel < 0.15, rel
    meta = json.loads((out / "export.json").read_text())
    assert meta["quantize"] == "int8" and meta["files"]["step_int8"] == "step.int8.onnx"


def test_image_and_language_inputs_with_token_routing(tmp_path):
    """Camera frames (uint8, CNN with GroupNorm), a language goal, and MoDE's token router
    (the sparse expert mixture itself in the graph, no fused experts)."""
    torch.manual_seed(0)
    cfg = policy_config([*SMALL, "policy.image_widths=[8,8,8,8]", "policy.goals=[task,language]",
                         "policy/denoiser=mode", "policy.denoiser.router=token"])
    spec = PolicySpec.from_config(cfg, {"state": [5], "rgb_cam": [32, 32, 3]}, ["rgb_cam"], 2, ["a", "b"],
                                  goal_shapes={"language": [8]})
    stats = {"state": array_stats(np.random.default_rng(0).normal(size=(50, 5))),
             "action": array_stats(np.random.default_rng(1).normal(size=(50, 2)))}
    policy = DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    runtime = OnnxPolicy(export_onnx(policy, tmp_path / "onnx", batch_size=None))
    assert [d["dtype"] for d in runtime.meta["encoder"]["inputs"]] == ["float32", "uint8", "int64", "float32"]
    gen = torch.Generator().manual_seed(4)
    batch = {"state": torch.randn(3, 2, 5, generator=gen), "task_id": torch.tensor([0, 1, 1]),
             "rgb_cam": torch.randint(0, 256, (3, 2, 32, 32, 3), generator=gen, dtype=torch.uint8),
             "language": torch.randn(3, 8, generator=gen)}
    with torch.no_grad():
        prepared = torch.utils._pytree.tree_flatten(policy.denoiser.prepare(policy.condition(batch)))[0]
    for got, want in zip(runtime.encode(batch), prepared):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    want = policy.predict_action_chunks(batch, 4, generator=torch.Generator().manual_seed(0))
    got = runtime.predict_action_chunks(batch, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, atol=5e-5, rtol=0)


def test_fixed_batch_export_and_control_api(tmp_path):
    policy = small_policy(FAMILIES["dit-flow"])
    out = export_onnx(policy, tmp_path / "onnx", batch_size=1)
    meta = json.loads((out / "export.json").read_text())
    assert meta["batch_size"] == 1 and meta["opset"] == 17 and meta["step"]["inputs"][0] == \
        {"name": "x", "shape": [1, 6, 2], "dtype": "float32"}
    assert not (out / "step.int8.onnx").exists()
    runtime = OnnxPolicy(out, threads=1)
    with pytest.raises(ValueError, match="exported for batch size 1, got a batch of 3"):
        runtime.predict_action_chunks(batch_of(3))
    with pytest.raises(FileNotFoundError, match=r"lacks encoder.int8.onnx, step.int8.onnx \(export with quantize=int8"):
        OnnxPolicy(out, variant="int8")
    with pytest.raises(ValueError, match=r"one noise level per sample, t \(B,\)"):
        runtime.predict_action_chunks(batch_of(1), init=torch.zeros(1, 6, 2), t_start=torch.full((1, 6), 0.5))
    runtime.reset(task="b")                      # the control API and the latency helper drive it as a policy
    runtime.observe({"state": np.zeros(5, np.float32)})
    assert runtime.select_action().shape == (2,) and runtime.executor.queued == 2
    assert len(measure_chunk_latency(runtime, 3, steps=2, warmup=1)) == 3


# ---------------------------------------------------------------------------- the verbs
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_cli")
    write_reaching_store(root / "reach.zarr")
    Trainer(compose("train", [f"dataset.path={root / 'reach.zarr'}", f"run_dir={root / 'run'}", *TINY_POLICY,
                              "train.steps=10", "train.save_every=10"])).run()
    return root / "run"


def test_export_verb_round_trip(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", f"checkpoint={run_dir}", "format=onnx", "quantize=int8", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    for name in ("encoder.onnx", "step.onnx", "step.int8.onnx", "encoder.int8.onnx", "export.json"):
        assert name in printed and (out / name).exists()
    assert "KiB" in printed
    meta = json.loads((out / "export.json").read_text())
    latest = (run_dir / "checkpoints" / "latest").resolve()
    assert meta["checkpoint"] == str(latest) and meta["batch_size"] == 1
    policy = Policy.from_checkpoint(run_dir, device="cpu")
    batch = {"state": torch.randn(1, 2, 4), "task_id": torch.tensor([1])}
    want = policy.predict_action_chunks(batch, 4, generator=torch.Generator().manual_seed(0))
    got = OnnxPolicy(out).predict_action_chunks(batch, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
    assert main(["export", f"checkpoint={run_dir}", "batch_size=null"]) == 0     # default out: beside the weights
    assert json.loads((latest / "onnx" / "export.json").read_text())["batch_size"] is None


def test_export_verb_errors(run_dir, tmp_path, capsys):
    assert main(["export", f"checkpoint={run_dir}", "format=tflite"]) == 2
    assert "format must be one of onnx, got 'tflite'" in capsys.readouterr().err
    assert main(["export", f"checkpoint={run_dir}", "quantize=int4"]) == 2
    assert "quantize must be one of null, int8, got 'int4'" in capsys.readouterr().err
    assert main(["export", f"checkpoint={run_dir}", "batch_size=0"]) == 2
    assert "batch_size must be a positive integer" in capsys.readouterr().err
    assert main(["export", f"checkpoint={tmp_path / 'nothing'}"]) == 1
    assert "nothing does not exist" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={run_dir}", "quantize=int8"]) == 2
    assert "quantize and onnx_dir apply to backend=onnx" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={run_dir}", "backend=tensorrt"]) == 2
    assert "backend must be one of torch, onnx, got 'tensorrt'" in capsys.readouterr().err


def test_eval_on_onnx_runtime(tmp_path, capsys):
    """A policy of Meta-World's observation layout, evaluated through ONNX Runtime int8."""
    rng = np.random.default_rng(0)
    with EpisodeWriter(tmp_path / "mw.zarr", overwrite=True) as writer:
        for _ in range(2):
            writer.add_episode({"state": rng.normal(size=(12, 39)).astype(np.float32),
                                "action": rng.uniform(-1, 1, (12, 4)).astype(np.float32)}, task="reach-v3")
    run = tmp_path / "run"
    Trainer(compose("train", [f"dataset.path={tmp_path / 'mw.zarr'}", f"run_dir={run}", *TINY_POLICY,
                              "train.steps=2", "train.save_every=2"])).run()
    args = ["eval", f"checkpoint={run}", "episodes=2", "num_envs=2", "env.max_episode_steps=8", "videos=0",
            "steps=2", "backend=onnx", "quantize=int8", f"out={tmp_path / 'eval'}"]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["episodes"] == 2 and result["backend"].startswith("onnx (int8, ")
    assert result["chunk_latency_ms"]["calls"] >= 1
    fixed = tmp_path / "fixed"
    assert main(["export", f"checkpoint={run}", f"out={fixed}"]) == 0
    assert main([*args[:-2], f"onnx_dir={fixed}"]) == 2
    assert "num_envs=2 runs batches of 2, but" in capsys.readouterr().err
