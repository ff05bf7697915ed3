"""Few-step sampling and real-time chunking on Meta-World from state: success, chunk latency
and smoothness. Prints tables and writes JSON.

    python bench/realtime.py                                   # everything, on its defaults
    python bench/realtime.py --episodes 20 --out outputs/bench/realtime

Three policies share one store (reach, pick-place, button-press-topdown; 50 expert demos
each): the default flow policy (``base``), the same policy trained with a clean prefix of up
to 4 actions (``rtc``, training-time real-time chunking), and ``base`` consistency-distilled
into a 1–2 step sampler (``distilled``). Each is trained once and reused from ``--out``.

1. Steps: success at 1, 2, 4 and 10 sampler steps, for ``base`` and ``distilled``, each cold
   (from noise) and warm-started from the rest of the previous chunk; ``latency``: their
   batch-1 chunk latency p50/p99 on ``--threads`` CPU threads (run it alone).
2. Delay: the inference delay simulated exactly (deploy/simulated_delay.py) at 0, 2 and 4
   control steps: success and seam smoothness (mean |a(t+1) - a(t)| where the supplying
   chunk changes, against within chunks) for naive switching, temporal ensembling,
   inference-time and training-time real-time chunking.

Each part (``--skip`` the others) writes ``<out>/realtime_<part>.json``. Run the latency part
alone: two torch processes on 2 cores slow each other many times over.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ditpolicy.config import compose
from ditpolicy.deploy.simulated_delay import DelayedChunkExecutor
from ditpolicy.envs.collect import collect
from ditpolicy.envs.rollout import evaluate
from ditpolicy.policies import Policy
from ditpolicy.policies.latency import measure_chunk_latency

TASKS = ["reach-v3", "pick-place-v3", "button-press-topdown-v3"]
STEPS = (1, 2, 4, 10)
DELAYS = (0, 2, 4)
PARTS = ("steps", "latency", "delay")
STRATEGIES = {"naive": dict(blending="naive"), "ensemble": dict(blending="ensemble"),
              "rtc-inpaint": dict(rtc="inpaint"), "rtc-train": dict(rtc="train")}


def ensure_policies(args) -> dict[str, Path]:
    """Collect, train and distil what ``--out`` does not hold yet; the three run directories."""
    out = Path(args.out)
    store = out / "demos.zarr"
    collect(TASKS, episodes=args.demos, out=str(store), progress=False)
    runs = {"base": out / "base", "rtc": out / "rtc", "distilled": out / "base-distilled"}
    common = [f"dataset.path={store}", f"train.steps={args.train_steps}", "train.batch_size=128",
              "train.val_every=0", "train.num_threads=1"]
    from ditpolicy.commands import distill
    from ditpolicy.policies.train import train

    for name, extra in (("base", []), ("rtc", ["policy.prefix_delay_max=4"])):
        if not (runs[name] / "checkpoints" / "latest").exists():
            train(compose("train", [*common, f"run_dir={runs[name]}", *extra]))
    if not (runs["distilled"] / "checkpoints" / "latest").exists():
        distill(compose("distill", [f"checkpoint={runs['base']}", f"run_dir={runs['distilled']}",
                                    f"train.steps={args.distill_steps}"]))
    return runs


def latency(policy, steps: int, calls: int, **options) -> dict:
    times = measure_chunk_latency(policy, calls, steps, **options)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def step_rows(policies: dict, args) -> list[dict]:
    rows = []
    for name in ("base", "distilled"):
        for steps in STEPS:
            for warm in (0.0, args.warm_start):
                result = evaluate(policies[name], TASKS, episodes=args.episodes, num_envs=args.num_envs, steps=steps,
                                  warm_start=warm, seed=args.seed, progress=False)
                row = {"policy": name, "steps": steps, "warm_start": warm, "success": result.mean_success,
                       "per_task": {t.task: t.success_rate for t in result.tasks}}
                rows.append(row)
                print(f"{name:<10} {steps:>5} {warm:>5.2f} {row['success']:>8.3f}", flush=True)
    return rows


def latency_rows(policies: dict, args) -> list[dict]:
    rows = []
    for name in ("base", "distilled"):
        for steps in STEPS:
            for warm in (0.0, args.warm_start):
                row = {"policy": name, "steps": steps, "warm_start": warm,
                       **latency(policies[name], steps, args.calls, warm_start=warm)}
                rows.append(row)
                print(f"{name:<10} {steps:>5} {warm:>5.2f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}", flush=True)
    return rows


def delay_rows(policies: dict, args) -> list[dict]:
    rows = []
    for delay in DELAYS:
        for strategy, options in STRATEGIES.items():
            if args.strategies and strategy not in args.strategies:
                continue
            policy = policies["rtc" if strategy == "rtc-train" else "base"]
            executor = DelayedChunkExecutor(policy, batch_size=args.num_envs, delay=delay, steps=args.delay_steps,
                                            **options)
            result = evaluate(policy, TASKS, episodes=args.episodes, seed=args.seed, executor=executor, progress=False)
            seams = executor.seams.as_dict()
            row = {"delay": delay, "strategy": strategy, "success": result.mean_success,
                   "per_task": {t.task: t.success_rate for t in result.tasks}, **seams,
                   "schedule": executor.schedule_stats.as_dict()}
            rows.append(row)
            print(f"{delay:>5} {strategy:<12} {row['success']:>8.3f} {seams['seam_jump']:>9.4f} "
                  f"{seams['within_jump']:>9.4f} {seams['ratio']:>6.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/realtime")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--distill-steps", type=int, default=1500)
    parser.add_argument("--episodes", type=int, default=20, help="per task")
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300, help="timed batch-1 chunks per latency figure")
    parser.add_argument("--warm-start", type=float, default=0.5, help="noise level of the warm start")
    parser.add_argument("--delay-steps", type=int, default=10, help="sampler steps in the delay study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (latency figures use them)")
    parser.add_argument("--skip", choices=PARTS, action="append", default=[])
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    runs = ensure_policies(args)
    torch.set_num_threads(args.threads)
    policies = {name: Policy.from_checkpoint(run, device="cpu") for name, run in runs.items()}
    report = {"tasks": TASKS, "episodes_per_task": args.episodes, "checkpoints": {k: str(v) for k, v in runs.items()}}
    parts = {"steps": (f"{'policy':<10} {'steps':>5} {'warm':>5} {'success':>8}", step_rows),
             "latency": (f"{'policy':<10} {'steps':>5} {'warm':>5} {'p50 ms':>8} {'p99 ms':>8}", latency_rows),
             "delay": (f"{'delay':>5} {'strategy':<12} {'success':>8} {'seam |da|':>9} {'within':>9} {'ratio':>6}",
                       delay_rows)}
    for part, (header, rows) in parts.items():
        if part in args.skip:
            continue
        print(f"\n{header}")
        report[part] = rows(policies, args)
        out = Path(args.out) / f"realtime_{part}.json"
        out.write_text(json.dumps({**report, part: report[part]}, indent=2))
        print(f"wrote {out}")
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
