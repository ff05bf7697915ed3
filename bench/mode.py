"""Dense DiT against MoDE (mixture of denoising experts) on Meta-World from state: per-task
success, total and active parameters, FLOPs per chunk (counted by torch's FlopCounterMode),
and chunk latency at batch 1 and 64 with expert caching on and off. Prints tables and
writes JSON.

    python bench/mode.py                              # MT10, 50 demos/task, 15000 steps x 128
    python bench/mode.py --tasks reach,push,pick-place --steps 3000 --eval-episodes 20
    python bench/mode.py --latency-only               # parameters, FLOPs, latency (untrained weights)
    python bench/mode.py --latency-only --experts 8 --top-k 2 --layers 2   # sparser / shallower MoDE
    python bench/mode.py --experts 8 --layers 2 --runs dit,mode_total   # two of the three policies
    python bench/mode.py --device cuda                 # train, evaluate and time on a GPU
    python bench/mode.py --latency-only --inference-modes trace-steps,trace   # step graphs vs whole-sampler graph
    python bench/mode.py --runs dit --dit-overrides policy.denoiser.n_layers=2   # a shallower dense DiT
    python bench/mode.py --experts 8 --top-k 2 --layers 3 --runs dit,mode_total \
        --mode-overrides policy.denoiser.conditioning=adaln policy.denoiser.train_routing=topk   # adaLN folded

Three policies share the data and the step budget: the dense DiT (the default policy), MoDE
with as many *active* parameters as the DiT, and MoDE with as many *total* parameters; the
experts' width is solved for each. Latency and FLOPs do not depend on the weights, so
``--latency-only`` measures them on freshly built policies. Run it alone: two torch
processes on 2 cores slow each other many times over.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ditpolicy.config import compose, policy_config
from ditpolicy.datasets import DemoStore, Normalizer, compute_stats
from ditpolicy.envs.collect import complete_store
from ditpolicy.envs.metaworld_tasks import resolve_tasks
from ditpolicy.envs.rollout import evaluate
from ditpolicy.policies import DiffusionPolicy, MoDEDenoiser, Policy, PolicySpec
from ditpolicy.policies.latency import measure_interleaved
from ditpolicy.policies.train import Trainer

EQUAL = {"dit": "dense DiT", "mode_active": "MoDE, equal active", "mode_total": "MoDE, equal total"}


def count_params(policy: DiffusionPolicy) -> tuple[int, int]:
    """(total, active per sample): a MoDE block uses top_k of its n_experts experts."""
    total = sum(p.numel() for p in policy.parameters())
    denoiser = policy.denoiser
    if not isinstance(denoiser, MoDEDenoiser):
        return total, total
    per_expert = sum(p[0].numel() for block in denoiser.blocks for p in (block.experts.w13, block.experts.w2))
    return total, total - (denoiser.n_experts - denoiser.top_k) * per_expert


def build(spec_overrides: list[str], stats, tasks: list[str], device: str = "cpu") -> DiffusionPolicy:
    spec = PolicySpec.from_config(policy_config(spec_overrides), {"state": [39]}, [], 4, tasks)
    return DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).to(device).eval()


def expert_ratio_for(target: int, which: int, stats, tasks, routing: list[str]) -> float:
    """The MoDE expert width (as a ratio of d_model) whose total (which=0) or active (which=1)
    parameter count is ``target``: both counts grow linearly with the width, by 3 * d_model
    weights per unit of width and expert (n_experts of them in total, top_k active).
    ``routing``: the n_experts / top_k / n_layers overrides of the MoDE runs."""
    probe = build(["policy/denoiser=mode", *routing, "policy.denoiser.expert_ratio=1.0"], stats, tasks)
    denoiser, d = probe.denoiser, probe.spec.d_model
    experts = denoiser.n_experts if which == 0 else denoiser.top_k
    per_width = len(denoiser.blocks) * experts * 3 * d
    hidden = d + (target - count_params(probe)[which]) / per_width
    return round(hidden) / d


def chunk_flops(policy: DiffusionPolicy, steps: int) -> int:
    """Floating-point operations of one batch-1 chunk (encoder and all denoising steps)."""
    device = policy.device
    batch = {"state": torch.zeros(1, policy.spec.n_obs, 39, device=device),
             "task_id": torch.zeros(1, dtype=torch.long, device=device)}
    policy.predict_action_chunks(batch, steps)          # fills caches, as a running policy has them
    counter = FlopCounterMode(display=False)
    with counter:
        policy.predict_action_chunks(batch, steps)
    return int(counter.get_total_flops())


def latency_rows(policies: dict[str, DiffusionPolicy], steps: int, calls: int,
                 modes: tuple[str, ...] = ("trace",)) -> list[dict]:
    """p50 / p99 chunk latency of every policy at batch 1 and 64 in each inference mode
    (fast_step.py: ``trace``, the whole sampler as one graph; ``trace-steps``, a graph per
    step), MoDE with caching on and off (a copy of each with ``cache`` False). The policies
    are timed in turn, call by call (``measure_interleaved``), so that the CPU's clock and
    other load fall on all alike: timed one after another, their batch-1 ratios drifted 2x
    between runs."""
    timed = {}
    for name, policy in policies.items():
        variants = [(policy, None)]
        if isinstance(policy.denoiser, MoDEDenoiser):
            uncached = copy.deepcopy(policy)
            uncached.denoiser.cache = False
            variants = [(policy, True), (uncached, False)]
        for variant, cache in variants:
            for mode in modes:
                timed[(name, cache, mode)] = copy.deepcopy(variant).set_inference_mode(mode)
    rows = []
    for batch_size in (1, 64):
        times = measure_interleaved(timed, calls if batch_size == 1 else max(calls // 8, 20), steps,
                                    batch_size=batch_size)
        for (label, cache, mode), ms in times.items():
            rows.append({"policy": label, "cache": cache, "mode": mode, "batch": batch_size, "steps": steps,
                         "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})
    return rows


def train_and_evaluate(name: str, extra: list[str], store_path: Path, tasks: list[str], args) -> dict:
    """Train one policy on the shared store and budget, evaluate it; its success entries."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = compose("train", [f"dataset.path={store_path}", f"run_dir={out / name}", f"train.steps={args.steps}",
                            f"train.batch_size={args.batch}", f"train.save_every={args.steps}", "train.val_every=0",
                            f"train.device={args.device}", *extra])
    start = time.perf_counter()
    Trainer(cfg).run()
    minutes = (time.perf_counter() - start) / 60
    trained = Policy.from_checkpoint(out / name, device=args.device)
    result = evaluate(trained, tasks, episodes=args.eval_episodes, num_envs=10, steps=args.sampler_steps,
                      progress=False)
    trained.denoiser.write_diagnostics(out / name)
    return {"train_minutes": minutes, "mean_success": result.mean_success,
            "success": {t.task: t.success_rate for t in result.tasks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="MT10")
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--steps", type=int, default=15000, help="training steps for each policy")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--sampler-steps", type=int, default=4)
    parser.add_argument("--calls", type=int, default=300, help="timed batch-1 chunk predictions per setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--experts", type=int, default=None, help="experts per MoDE block (default: the config's)")
    parser.add_argument("--top-k", type=int, default=None, help="experts each noise level uses (default: the config's)")
    parser.add_argument("--layers", type=int, default=None, help="MoDE blocks (default: the config's, the DiT's depth)")
    parser.add_argument("--mode-overrides", nargs="*", default=[],
                        help="extra policy overrides of the MoDE runs, e.g. policy.denoiser.train_routing=topk")
    parser.add_argument("--dit-overrides", nargs="*", default=[],
                        help="policy overrides of the dense DiT run, e.g. policy.denoiser.n_layers=2 (the parameter "
                             "targets of the MoDE runs stay those of the default DiT)")
    parser.add_argument("--runs", default="dit,mode_active,mode_total",
                        help="which of dit, mode_active, mode_total to build, train and time")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: training, evaluation and latency")
    parser.add_argument("--inference-modes", default="trace",
                        help="comma-separated modes to time: trace (whole sampler as one graph), trace-steps")
    parser.add_argument("--out", default="outputs/bench/mode")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tasks = resolve_tasks(args.tasks)
    out = Path(args.out)
    store_path = out / "demos.zarr"
    complete_store(tasks, args.demos, store_path, progress=False)
    store = DemoStore.open(store_path)
    stats = store.stats or compute_stats(store)

    dense_total = count_params(build([], stats, tasks))[0]
    routing = [f"policy.denoiser.{key}={value}" for key, value in
               (("n_experts", args.experts), ("top_k", args.top_k), ("n_layers", args.layers)) if value]
    routing += args.mode_overrides
    ratios = {"mode_active": expert_ratio_for(dense_total, 1, stats, tasks, routing),
              "mode_total": expert_ratio_for(dense_total, 0, stats, tasks, routing)}
    overrides = {"dit": list(args.dit_overrides)}
    for name, ratio in ratios.items():
        overrides[name] = ["policy/denoiser=mode", *routing, f"policy.denoiser.expert_ratio={ratio}"]

    runs = args.runs.split(",")
    unknown = sorted(set(runs) - set(EQUAL))
    if unknown:
        parser.error(f"--runs: unknown {unknown}; choose from {sorted(EQUAL)}")
    results, built = {}, {}
    for name, extra in ((k, v) for k, v in overrides.items() if k in runs):
        policy = build(extra, stats, tasks, args.device)
        total, active = count_params(policy)
        row = {"policy": EQUAL[name], "overrides": extra, "params_total": total, "params_active": active,
               "flops_per_chunk": chunk_flops(policy, args.sampler_steps)}
        if isinstance(policy.denoiser, MoDEDenoiser):
            policy.denoiser.cache = False
            row["flops_per_chunk_uncached"] = chunk_flops(policy, args.sampler_steps)
            policy.denoiser.cache = True
        if not args.latency_only:
            row.update(train_and_evaluate(name, extra, store_path, tasks, args))
        results[name] = row
        built[EQUAL[name]] = policy
    latency = latency_rows(built, args.sampler_steps, args.calls, tuple(args.inference_modes.split(",")))

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU threads"
    print(f"\nMoDE vs dense DiT: {len(tasks)} tasks, {args.sampler_steps} sampler steps, {where}")
    print(f"{'policy':<22} {'total':>9} {'active':>9} {'MFLOP/chunk':>12} {'success':>8} {'train min':>9}")
    for row in results.values():
        print(f"{row['policy']:<22} {row['params_total']:>9,} {row['params_active']:>9,} "
              f"{row['flops_per_chunk'] / 1e6:>12.2f} {row.get('mean_success', float('nan')):>8.3f} "
              f"{row.get('train_minutes', float('nan')):>9.1f}")
    if not args.latency_only:
        print(f"\n{'task':<28}" + "".join(f"{EQUAL[k]:>22}" for k in results))
        for task in tasks:
            print(f"{task:<28}" + "".join(f"{results[k]['success'][task]:>22.2f}" for k in results))
    print(f"\n{'policy':<22} {'cache':>6} {'mode':>12} {'batch':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for r in latency:
        print(f"{r['policy']:<22} {str(r['cache']):>6} {r['mode']:>12} {r['batch']:>6} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f}")
    dense = {(r["batch"], r["mode"]): r["p50_ms"] for r in latency if r["policy"] == EQUAL["dit"]}
    for r in latency:
        if r["cache"] is not None and (r["batch"], r["mode"]) in dense:
            print(f"{r['policy']} ({'cached' if r['cache'] else 'uncached'}, {r['mode']}) / dense DiT at batch "
                  f"{r['batch']}: p50 {r['p50_ms'] / dense[r['batch'], r['mode']]:.2f}x")
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"tasks": tasks, "args": vars(args), "policies": results,
                                                 "latency": latency}, indent=2))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
