"""Meta-World benchmark: collect expert demonstrations, train one policy on a fixed step
budget, evaluate every task, print the per-task table and write JSON.

    python bench/metaworld_success.py                                # MT10 from state, 50 demos/task
    python bench/metaworld_success.py --obs image --tasks reach,push,drawer-close --steps 4000
    python bench/metaworld_success.py --train train.batch_size=256 policy.denoiser.n_layers=6   # any train override
    python bench/metaworld_success.py --obs image --cameras corner --train policy.image_encoder.tokens=pooled \
        --out outputs/bench/image_pooled                              # one camera, the old encoder
    python bench/metaworld_success.py --obs image --device cuda --steps 20000 --curve 4 --eval-processes 8

``--curve N`` keeps N evenly spaced checkpoints and evaluates each (success over training
steps, curve.png); ``--eval-processes N`` runs ``ditpolicy eval`` under torchrun, its episodes
sharded over N processes.

State runs read the 39-D state; image runs read square camera frames (``--cameras``, default the
corner scene camera and the gripper camera gripperPOV; ``--image-size``, default 84) plus the 4-D
proprioception. A store is completed to ``--demos`` episodes per task and reused (``--store``
names one to share between runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ditpolicy.config import compose
from ditpolicy.datasets import DemoStore
from ditpolicy.envs.collect import complete_store
from ditpolicy.envs.metaworld_tasks import resolve_tasks
from ditpolicy.envs.rollout import evaluate, plot_success
from ditpolicy.policies import Policy
from ditpolicy.policies.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", choices=["state", "image"], default="state")
    parser.add_argument("--tasks", default=None, help="default: MT10 (state), reach,push,drawer-close,pick-place (image)")
    parser.add_argument("--demos", type=int, default=50, help="expert episodes per task")
    parser.add_argument("--steps", type=int, default=20000, help="training steps (the fixed budget)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--sampler-steps", type=int, default=None)
    parser.add_argument("--out", default=None, help="default: outputs/bench/metaworld_<obs>")
    parser.add_argument("--train", nargs="*", default=[], help="extra train config overrides")
    parser.add_argument("--reuse", action="store_true", help="evaluate the finished run in --out without training")
    parser.add_argument("--store", default=None, help="default: <out>/demos.zarr")
    parser.add_argument("--cameras", default="corner,gripperPOV", help="image runs: comma-separated Meta-World cameras")
    parser.add_argument("--image-size", type=int, default=84, help="image runs: camera resolution (square)")
    parser.add_argument("--device", default="cpu", help="training and evaluation device: cpu, cuda")
    parser.add_argument("--curve", type=int, default=0, help="evaluate this many evenly spaced checkpoints too")
    parser.add_argument("--eval-processes", type=int, default=1, help="worker processes sharing the episodes")
    parser.add_argument("--eval-device", default=None, help="device of the evaluation processes (default: --device)")
    args = parser.parse_args()

    tasks = resolve_tasks(args.tasks or ("MT10" if args.obs == "state" else "reach,push,drawer-close,pick-place"))
    out = Path(args.out or f"outputs/bench/metaworld_{args.obs}")
    store_path = Path(args.store) if args.store else out / "demos.zarr"
    cameras = args.cameras.split(",") if args.obs == "image" else []
    complete_store(tasks, args.demos, store_path, cameras=cameras, image_size=args.image_size)
    store = DemoStore.open(store_path)
    obs_keys = f"[{','.join(f'rgb_{c}' for c in cameras)},proprio]" if args.obs == "image" else "[state]"
    cfg = compose("train", [f"dataset.path={store_path}", f"run_dir={out / 'run'}", f"dataset.obs_keys={obs_keys}",
                            f"train.steps={args.steps}", f"train.batch_size={args.batch}",
                            f"train.save_every={max(args.steps // (args.curve or 4), 1)}",
                            f"train.keep_checkpoints={max(args.curve, 2)}", f"train.device={args.device}", *args.train])
    timing_file = out / "train_timing.json"
    if not (args.reuse and timing_file.exists()):
        trainer = Trainer(cfg)
        start = time.perf_counter()
        trainer.run()
        timing_file.write_text(json.dumps({"train_seconds": time.perf_counter() - start}))
    train_seconds = json.loads(timing_file.read_text())["train_seconds"]
    samples_per_s = args.steps * args.batch / train_seconds

    eval_device = args.eval_device or args.device
    policy = Policy.from_checkpoint(out / "run", device=eval_device)
    eval_options = {"episodes": args.eval_episodes, "num_envs": args.num_envs, "steps": args.sampler_steps}
    curve = []
    if args.curve:      # every kept checkpoint, the last one being the final policy
        for checkpoint in sorted((out / "run" / "checkpoints").glob("step_*")):
            row = torchrun_eval(checkpoint, out / "curve" / checkpoint.name, tasks, eval_device, args)
            curve.append({"step": int(checkpoint.name.split("_")[1]), "mean_success": row["mean_success"],
                          "success": {t["task"]: t["success_rate"] for t in row["tasks"]}})
        result = row
    elif args.eval_processes > 1:
        result = torchrun_eval(out / "run", out / "eval", tasks, eval_device, args)
    else:
        evaluated = evaluate(policy, tasks, video_dir=out / "videos", videos_per_task=1, **eval_options)
        plot_success(evaluated, out / "success.png", title=f"Meta-World {args.obs}: {len(tasks)} tasks, {args.steps} steps")
        print(evaluated.table())
        result = evaluated.as_dict()
    summary = {"obs": args.obs, "tasks": tasks, "demos_per_task": args.demos, "store_episodes": store.n_episodes,
               "train_steps": args.steps, "batch_size": args.batch, "train_seconds": train_seconds,
               "train_samples_per_s": samples_per_s, "params": sum(p.numel() for p in policy.parameters()),
               "sampler_steps": args.sampler_steps or policy.spec.inference_steps, "device": args.device,
               "curve": curve, **result}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"\nMeta-World, {args.obs} observations, {args.demos} demos/task, {args.steps} steps x batch {args.batch} "
          f"({train_seconds / 60:.1f} min, {samples_per_s:,.0f} samples/s), {args.eval_episodes} episodes/task")
    if curve:
        print(format_curve(curve, tasks))
        plot_curve(curve, out / "curve.png", f"Meta-World {args.obs}: success over training")
    print(f"wrote {out / 'result.json'}")


def torchrun_eval(checkpoint: Path, out: Path, tasks: list[str], device: str, args) -> dict:
    """``ditpolicy eval`` of one checkpoint with its episodes sharded over ``--eval-processes``
    torchrun processes; it prints the table and writes result.json, success.png and a video
    per task under ``out``. Returns the result."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.eval_processes}", "-m", "ditpolicy", "eval", f"checkpoint={checkpoint}",
               f"out={out}", f"tasks=[{','.join(tasks)}]", f"episodes={args.eval_episodes}",
               f"num_envs={args.num_envs}", f"device={device}", "videos=1"]
    if args.sampler_steps:
        command.append(f"steps={args.sampler_steps}")
    subprocess.run(command, check=True)
    return json.loads((out / "result.json").read_text())


def format_curve(curve: list[dict], tasks: list[str]) -> str:
    lines = [f"{'step':>7} {'mean':>6} " + " ".join(f"{t.removesuffix('-v3'):>14}" for t in tasks)]
    for row in curve:
        lines.append(f"{row['step']:>7} {row['mean_success']:>6.3f} "
                     + " ".join(f"{row['success'][t]:>14.2f}" for t in tasks))
    return "\n".join(lines)


def plot_curve(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for task in curve[0]["success"]:
        ax.plot(steps, [row["success"][task] for row in curve], marker="o", alpha=0.6, label=task.removesuffix("-v3"))
    ax.plot(steps, [row["mean_success"] for row in curve], marker="s", color="black", linewidth=2, label="mean")
    ax.set(xlabel="training step", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
