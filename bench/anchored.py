"""Truncated anchored diffusion against flow matching on state-based Meta-World tasks, both
sampled in 1 and 2 steps: per-task success and batch-1 chunk latency. Prints a table and
writes JSON.

    python bench/anchored.py                                  # reach, push, pick-place; 50 demos/task
    python bench/anchored.py --steps 5000 --batch 256 --threads 2
    python bench/anchored.py --anchors 8 --steps 2000 --batch 64    # a CPU budget

An anchored training step denoises K chains per sample, so it costs about K times a flow step
in the denoiser.

Both policies share the store, the backbone and the training budget; only the process
differs (``policy/process=flow`` vs ``policy/process=anchored``). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ditpolicy.config import compose
from ditpolicy.envs.collect import complete_store
from ditpolicy.envs.metaworld_tasks import resolve_tasks
from ditpolicy.envs.rollout import evaluate
from ditpolicy.policies import Policy
from ditpolicy.policies.latency import measure_chunk_latency
from ditpolicy.policies.train import Trainer



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="reach,push,pick-place")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3000, help="training steps of each policy")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--sampler-steps", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calls", type=int, default=200, help="timed batch-1 chunks per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/bench/anchored")
    parser.add_argument("--anchors", type=int, default=20, help="K: every training sample runs K chains")
    parser.add_argument("--train", nargs="*", default=[], help="extra train overrides for both policies")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tasks = resolve_tasks(args.tasks)
    out = Path(args.out)
    store = out / "demos.zarr"
    complete_store(tasks, args.demos, store, progress=False)
    rows = []
    processes = {"flow": [], "anchored": ["policy/process=anchored", f"policy.process.n_anchors={args.anchors}"]}
    for name, extra in processes.items():
        run = out / name
        if not (run / "checkpoints" / "latest").exists():
            cfg = compose("train", [f"dataset.path={store}", f"run_dir={run}", f"train.steps={args.steps}",
                                    f"train.batch_size={args.batch}", f"train.save_every={args.steps}",
                                    f"train.num_threads={args.threads}", "train.progress=false", *extra, *args.train])
            start = time.perf_counter()
            Trainer(cfg).run()
            print(f"{name}: trained in {(time.perf_counter() - start) / 60:.1f} min")
        policy = Policy.from_checkpoint(run, device="cpu")
        for steps in args.sampler_steps:
            result = evaluate(policy, tasks, episodes=args.eval_episodes, num_envs=10, steps=steps, progress=False)
            latency = measure_chunk_latency(policy, args.calls, steps)
            rows.append({"process": name, "sampler_steps": steps, "mean_success": result.mean_success,
                         "success": {t.task: t.success_rate for t in result.tasks},
                         "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99))})
            print(f"{name} {steps} step(s): success {result.mean_success:.3f}")

    print(f"\n{len(tasks)} tasks, {args.demos} demos/task, {args.steps} steps x batch {args.batch}, "
          f"{args.eval_episodes} episodes/task, {args.threads} thread(s)")
    print(f"{'process':<10} {'steps':>5} {'mean':>6} " + " ".join(f"{t.removesuffix('-v3'):>12}" for t in tasks)
          + f" {'p50 ms':>7} {'p99 ms':>7}")
    for r in rows:
        print(f"{r['process']:<10} {r['sampler_steps']:>5} {r['mean_success']:>6.3f} "
              + " ".join(f"{r['success'][t]:>12.2f}" for t in tasks) + f" {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"tasks": tasks, "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
