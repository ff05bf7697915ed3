"""Meta-World benchmark: collect expert demonstrations, train one policy on a fixed step
budget, evaluate every task, print the per-task table and write JSON.

    python bench/metaworld_success.py                                # MT10 from state, 50 demos/task
    python bench/metaworld_success.py --obs image --tasks reach,push,drawer-close --steps 4000
    python bench/metaworld_success.py --train train.batch_size=256 policy.denoiser.n_layers=6   # any train override
    python bench/metaworld_success.py --obs image --tasks reach,push,drawer-close,pick-place \
        --store outputs/bench/image4/demos.zarr --train policy.image_encoder.tokens=pooled   # the old encoder

State runs read the 39-D state; image runs read 84x84 cameras (``--cameras``, default corner)
plus the 4-D proprioception. Stores are reused when present (``--store`` names one to share
between runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ditpolicy.config import compose
from ditpolicy.datasets import DemoStore
from ditpolicy.envs.collect import collect, format_reports
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
    parser.add_argument("--cameras", default="corner", help="image runs: comma-separated Meta-World cameras")
    args = parser.parse_args()

    tasks = resolve_tasks(args.tasks or ("MT10" if args.obs == "state" else "reach,push,drawer-close,pick-place"))
    out = Path(args.out or f"outputs/bench/metaworld_{args.obs}")
    store_path = Path(args.store) if args.store else out / "demos.zarr"
    cameras = args.cameras.split(",") if args.obs == "image" else []
    if not store_path.exists():
        print(format_reports(collect(tasks, episodes=args.demos, out=str(store_path), cameras=cameras, image_size=84)))
    store = DemoStore.open(store_path)
    obs_keys = f"[{','.join(f'rgb_{c}' for c in cameras)},proprio]" if args.obs == "image" else "[state]"
    cfg = compose("train", [f"dataset.path={store_path}", f"run_dir={out / 'run'}", f"dataset.obs_keys={obs_keys}",
                            f"train.steps={args.steps}", f"train.batch_size={args.batch}",
                            f"train.save_every={max(args.steps // 4, 1)}", *args.train])
    timing_file = out / "train_timing.json"
    if not (args.reuse and timing_file.exists()):
        trainer = Trainer(cfg)
        start = time.perf_counter()
        trainer.run()
        timing_file.write_text(json.dumps({"train_seconds": time.perf_counter() - start}))
    train_seconds = json.loads(timing_file.read_text())["train_seconds"]
    samples_per_s = args.steps * args.batch / train_seconds

    policy = Policy.from_checkpoint(out / "run", device="cpu")
    result = evaluate(policy, tasks, episodes=args.eval_episodes, num_envs=args.num_envs, steps=args.sampler_steps,
                      video_dir=out / "videos", videos_per_task=1)
    plot_success(result, out / "success.png", title=f"Meta-World {args.obs}: {len(tasks)} tasks, {args.steps} steps")
    summary = {"obs": args.obs, "tasks": tasks, "demos_per_task": args.demos, "store_episodes": store.n_episodes,
               "train_steps": args.steps, "batch_size": args.batch, "train_seconds": train_seconds,
               "train_samples_per_s": samples_per_s, "params": sum(p.numel() for p in policy.parameters()),
               "sampler_steps": args.sampler_steps or policy.spec.inference_steps, **result.as_dict()}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"\nMeta-World, {args.obs} observations, {args.demos} demos/task, {args.steps} steps x batch {args.batch} "
          f"({train_seconds / 60:.1f} min, {samples_per_s:,.0f} samples/s), {args.eval_episodes} episodes/task")
    print(result.table())
    print(f"wrote {out / 'result.json'} and {out / 'success.png'}")


if __name__ == "__main__":
    main()
