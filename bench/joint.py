"""Joint video-action denoising on image-based Meta-World tasks: the DiT image policy, the joint
model on the same action-labelled demos, and the joint model with as many extra action-free
(video-only) episodes. Prints success, policy-mode latency and future-frame prediction error;
writes JSON and each run's world-model strip.

    python bench/joint.py                                         # reach, push, drawer-close; 50 + 50 demos/task
    python bench/joint.py --steps 3000 --batch 64 --eval-episodes 25 --threads 2
    python bench/joint.py --device cuda --steps 4000 --batch 256 --cameras corner,gripperPOV
    python bench/joint.py --cameras corner,gripperPOV --video-batch 86    # same labelled rows per step, video added

One store holds the labelled demos and, after them, the action-free episodes (fresh expert
seeds, actions dropped): the DiT and the joint model without ``action_free`` never draw from
those. Every run has the same data split, step budget and batch; latency is measured at batch 1
with the runs taken in turn (bench/latency.py's interleaving), after training, on trained weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ditpolicy.config import compose
from ditpolicy.datasets import DemoStore
from ditpolicy.envs.collect import collect, complete_store
from ditpolicy.envs.metaworld_tasks import resolve_tasks
from ditpolicy.envs.rollout import evaluate
from ditpolicy.policies import Policy
from ditpolicy.policies.latency import measure_interleaved
from ditpolicy.policies.train import Trainer
from ditpolicy.policies.world_model_eval import evaluate_checkpoint, format_report

RUNS = {   # name -> policy overrides
    "dit": ["policy/denoiser=dit"],
    "joint": ["policy/denoiser=joint", "policy.denoiser.action_free=false"],
    "joint + video": ["policy/denoiser=joint", "policy.denoiser.action_free=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="reach,push,drawer-close")
    parser.add_argument("--demos", type=int, default=50, help="action-labelled expert episodes per task")
    parser.add_argument("--video", type=int, default=None, help="extra action-free episodes per task (default: --demos)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--video-batch", type=int, default=None,
                        help="batch of the run with action-free episodes (default: --batch); --batch / (1 - "
                             "action_free_share), 86 for 64 at the default cap of 0.25, keeps its labelled rows per "
                             "step equal")
    parser.add_argument("--eval-episodes", type=int, default=25)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--cameras", default="corner", help="comma-separated; the first is the one predicted")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--runs", default=",".join(RUNS), help="a subset of: " + ", ".join(RUNS))
    parser.add_argument("--ae-steps", type=int, default=None, help="autoencoder fit steps of the joint runs")
    parser.add_argument("--train", nargs="*", default=[], help="extra train overrides for every run")
    parser.add_argument("--out", default="outputs/bench/joint")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tasks = resolve_tasks(args.tasks)
    cameras = args.cameras.split(",")
    out = Path(args.out)
    store_path = out / "demos.zarr"
    video = args.demos if args.video is None else args.video
    complete_store(tasks, args.demos, store_path, cameras=cameras, image_size=args.image_size)
    if video:
        collect(tasks, episodes=args.demos + video, out=str(store_path), cameras=cameras, image_size=args.image_size,
                action_free=True)
    store = DemoStore.open(store_path)
    print(f"{store_path}: {int(store.has_action.sum())} labelled + {int((~store.has_action).sum())} action-free episodes")

    ae_steps = [f"policy.denoiser.autoencoder.steps={args.ae_steps}"] if args.ae_steps else []
    obs_keys = f"[{','.join(f'rgb_{c}' for c in cameras)},proprio]"
    results, policies = {}, {}
    for name in args.runs.split(","):
        run_dir = out / name.replace(" + ", "_")
        batch = args.video_batch if name == "joint + video" and args.video_batch else args.batch
        cfg = compose("train", [f"dataset.path={store_path}", f"run_dir={run_dir}", f"dataset.obs_keys={obs_keys}",
                                f"train.steps={args.steps}", f"train.batch_size={batch}",
                                f"train.save_every={args.steps}", f"train.device={args.device}",
                                f"train.num_threads={args.threads}", *RUNS[name], *args.train,
                                *(ae_steps if "joint" in name else [])])
        timing = run_dir / "train_timing.json"
        if not timing.exists():
            start = time.perf_counter()
            Trainer(cfg).run()
            timing.write_text(json.dumps({"train_seconds": time.perf_counter() - start}))
        policy = Policy.from_checkpoint(run_dir, device=args.device)
        evaluated = evaluate(policy, tasks, episodes=args.eval_episodes, num_envs=args.num_envs,
                             video_dir=run_dir / "videos", videos_per_task=1)
        print(f"\n{name}\n{evaluated.table()}")
        row = {"train_seconds": json.loads(timing.read_text())["train_seconds"], "batch_size": batch,
               "params": sum(p.numel() for p in policy.parameters()), **evaluated.as_dict()}
        if policy.spec.denoiser["name"] == "joint":
            row["world_model"] = evaluate_checkpoint(policy, run_dir, run_dir / "eval")
            print(format_report(row["world_model"]))
        results[name], policies[name] = row, policy
        write_summary(out, results, tasks, video, cameras, args)          # each finished run, as it lands

    latency = measure_interleaved(policies, args.latency_calls)
    for name, ms in latency.items():
        results[name]["latency_ms"] = {"p50": float(np.median(ms)), "p99": float(np.percentile(ms, 99))}
    print(format_table(results, tasks, args))
    write_summary(out, results, tasks, video, cameras, args)
    print(f"wrote {out / 'result.json'}")


def write_summary(out: Path, results: dict, tasks: list[str], video: int, cameras: list[str], args) -> None:
    summary = {"tasks": tasks, "demos_per_task": args.demos, "action_free_per_task": video, "train_steps": args.steps,
               "batch_size": args.batch, "cameras": cameras, "image_size": args.image_size, "device": args.device,
               "threads": torch.get_num_threads(), "eval_episodes": args.eval_episodes, "runs": results}
    (out / "result.json").write_text(json.dumps(summary, indent=2))


def format_table(results: dict, tasks: list[str], args) -> str:
    short = [t.removesuffix("-v3") for t in tasks]
    lines = [f"\n{len(tasks)} tasks, {args.demos} labelled demos/task, {args.steps} steps x batch {args.batch}, "
             f"{args.eval_episodes} episodes/task; latency at batch 1, policy mode",
             f"| run | mean | {' | '.join(short)} | p50 ms | p99 ms | video pred. MSE / PSNR | fwd dyn. MSE / PSNR "
             f"| AE PSNR | train min |",
             "|" + " --- |" * (9 + len(tasks) - 1)]
    for name, row in results.items():
        per_task = {t["task"]: t["success_rate"] for t in row["tasks"]}
        wm = row.get("world_model")
        cells = [f"{wm['video']['mse']:.4f} / {wm['video']['psnr']:.1f}", f"{wm['forward']['mse']:.4f} / "
                 f"{wm['forward']['psnr']:.1f}", f"{wm['autoencoder']['psnr']:.1f}"] if wm else ["-", "-", "-"]
        label = name if row["batch_size"] == args.batch else f"{name} (batch {row['batch_size']})"
        lines.append(f"| {label} | {row['mean_success']:.2f} | " + " | ".join(f"{per_task[t]:.2f}" for t in tasks)
                     + f" | {row['latency_ms']['p50']:.1f} | {row['latency_ms']['p99']:.1f} | " + " | ".join(cells)
                     + f" | {row['train_seconds'] / 60:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
