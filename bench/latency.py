"""Chunk inference latency at batch 1 on the CPU through the control API's executor, for
several denoising step counts and inference modes (eager; step graphs, ``trace-steps``; the
whole sampler as one graph, ``trace``). The modes are timed call by call in turn, so that
machine load falls on all alike. Prints a table and writes JSON.

    python bench/latency.py                                  # the default policy, untrained weights
    python bench/latency.py --checkpoint outputs/demo/run --threads 2 --calls 500

Latency does not depend on the weights, so without a checkpoint the default policy config is
built for Meta-World state observations (39-D state, 4-D actions, 10 tasks).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from ditpolicy.config import policy_config
from ditpolicy.datasets import Normalizer
from ditpolicy.datasets.stats import array_stats
from ditpolicy.policies import DiffusionPolicy, Policy, PolicySpec
from ditpolicy.policies.latency import measure_interleaved


def default_policy() -> DiffusionPolicy:
    spec = PolicySpec.from_config(policy_config(), {"state": [39]}, [], 4, [f"task{i}" for i in range(10)])
    rng = np.random.default_rng(0)
    stats = {"state": array_stats(rng.normal(size=(100, 39))), "action": array_stats(rng.uniform(-1, 1, (100, 4)))}
    return DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--modes", nargs="+", default=["eager", "trace-steps", "trace"])
    parser.add_argument("--out", default="outputs/bench/latency.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    policy = Policy.from_checkpoint(args.checkpoint, device="cpu") if args.checkpoint else default_policy()
    spec = policy.spec
    n_params = sum(p.numel() for p in policy.parameters())
    rows = []
    for steps in args.steps:
        timed = {mode: copy.deepcopy(policy).set_inference_mode(mode) for mode in args.modes}
        for mode, t in measure_interleaved(timed, args.calls, steps, warmup=30).items():
            rows.append({"mode": mode, "steps": steps, "p50_ms": float(np.percentile(t, 50)),
                         "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "calls": args.calls})
    print(f"chunk latency (control executor), batch 1, {args.threads} CPU threads, {n_params / 1e6:.2f} M params, "
          f"H={spec.horizon}, obs={spec.obs_keys}, {args.calls} calls each, modes timed in turn")
    print(f"{'mode':<12} {'steps':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for r in sorted(rows, key=lambda r: (args.modes.index(r["mode"]), r["steps"])):
        print(f"{r['mode']:<12} {r['steps']:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_ms']:>8.2f}")
    p50 = {(r["mode"], r["steps"]): r["p50_ms"] for r in rows}
    for slower in ("eager", "trace-steps"):
        for steps in args.steps:
            if (slower, steps) in p50 and ("trace", steps) in p50:
                print(f"trace vs {slower} at {steps} steps: p50 {p50[slower, steps] / p50['trace', steps]:.2f}x faster")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "params": n_params,
                                          "checkpoint": args.checkpoint, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
