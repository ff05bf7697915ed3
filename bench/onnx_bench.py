"""Chunk latency (and optionally success) of one checkpoint on torch (traced steps), ONNX
Runtime fp32 and ONNX Runtime int8. Prints a table and writes JSON.

    python bench/onnx_bench.py --checkpoint outputs/demo/run
    python bench/onnx_bench.py --checkpoint outputs/demo/run --episodes 50 --tasks reach-v3

(Not bench/onnx.py: a script's folder comes first on sys.path, and that name would hide
the onnx package.)

Latency: batch 1, the same thread count for torch and ONNX Runtime, every backend measured
in one run and taken in turn per repetition (policies/latency.py: measure_interleaved), so
machine load falls on all alike; warm-up calls (graph building) are not counted. The
graphs are exported for batch 1, as a robot runs them. Success: envs.rollout.evaluate of
each backend on the same seeds, from graphs with a dynamic batch axis (``--num-envs``).
Without ``--checkpoint`` the default policy with untrained weights is measured (latency only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ditpolicy.policies import Policy
from ditpolicy.policies.latency import measure_interleaved
from ditpolicy.policies.onnx_backend import OnnxPolicy
from ditpolicy.policies.onnx_export import export_onnx, file_sizes

BACKENDS = ("torch", "onnx-fp32", "onnx-int8")


def backends(policy, export_dir: Path, threads: int) -> dict[str, object]:
    return {"torch": policy, "onnx-fp32": OnnxPolicy(export_dir, "fp32", threads),
            "onnx-int8": OnnxPolicy(export_dir, "int8", threads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300, help="timed chunk predictions per backend and step count")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--block", type=int, default=1,
                        help="calls of one backend in a row before the next (1: alternate every call)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--episodes", type=int, default=0, help="per task; 0: latency only")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the checkpoint's tasks")
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--max-episode-steps", type=int, default=500)
    parser.add_argument("--eval-steps", type=int, default=None, help="sampler steps in the success runs")
    parser.add_argument("--out", default="outputs/bench/onnx.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        policy = Policy.from_checkpoint(args.checkpoint, device="cpu", inference_mode="trace")
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from latency import default_policy

        policy = default_policy().set_inference_mode("trace")
    spec = policy.spec
    work = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    export_onnx(policy, work / "batch1", batch_size=1, quantize="int8", checkpoint=args.checkpoint)
    sizes = file_sizes(work / "batch1")
    runtimes = backends(policy, work / "batch1", args.threads)

    rows = []
    for steps in args.steps:
        times = measure_interleaved(runtimes, args.calls, steps, warmup=args.warmup, block=args.block)
        for name in BACKENDS:
            t = times[name]
            rows.append({"backend": name, "steps": steps, "p50_ms": float(np.percentile(t, 50)),
                         "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "calls": len(t)})
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"chunk latency, batch 1, {args.threads} threads, {spec.denoiser['name']} / {spec.process['name']}, "
          f"{n_params / 1e6:.2f} M params, H={spec.horizon}, {args.calls} calls each, backends in turn "
          f"({args.block} call(s) at a time)")
    print(f"{'backend':<10} {'steps':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'vs torch':>9}")
    for r in rows:
        base = next(x for x in rows if x["backend"] == "torch" and x["steps"] == r["steps"])
        print(f"{r['backend']:<10} {r['steps']:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_ms']:>8.2f} "
              f"{base['p50_ms'] / r['p50_ms']:>8.2f}x")
    print("files: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items() if k.endswith(".onnx")))

    success = []
    if args.episodes:
        from ditpolicy.envs.metaworld_tasks import resolve_tasks
        from ditpolicy.envs.rollout import evaluate

        tasks = resolve_tasks(args.tasks) if args.tasks else spec.tasks
        export_onnx(policy, work / "dynamic", batch_size=None, quantize="int8", checkpoint=args.checkpoint)
        for name, runtime in backends(policy, work / "dynamic", args.threads).items():
            result = evaluate(runtime, tasks, episodes=args.episodes, num_envs=args.num_envs,
                              max_episode_steps=args.max_episode_steps, steps=args.eval_steps, progress=False)
            d = result.as_dict()
            success.append({"backend": name, "mean_success": d["mean_success"], "ci95": d["ci95"],
                            "episodes": d["episodes"], "tasks": {t["task"]: t["success_rate"] for t in d["tasks"]},
                            "chunk_latency_ms": d["chunk_latency_ms"]})
        print(f"\nsuccess, {args.episodes} episodes per task of {tasks}, "
              f"{args.eval_steps or spec.inference_steps} sampler steps, batch {args.num_envs}")
        print(f"{'backend':<10} {'success':>8} {'95% CI':>15}")
        for s in success:
            ci = f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
            print(f"{s['backend']:<10} {s['mean_success']:>8.3f} {ci:>15}")

    shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "threads": args.threads, "params": n_params,
                               "batch_size": 1, "file_bytes": sizes, "latency": rows, "success": success}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
