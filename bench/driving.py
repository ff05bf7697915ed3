"""Driving planners on held-out highway seeds: the anchored process at 2 steps against a
vanilla 20-step diffusion planner and the IDM/MOBIL expert. Prints the score table (score and
its parts, plan diversity, planning latency p50/p99) and writes JSON.

    python bench/driving.py                                   # 200 demos, 200 held-out episodes
    python bench/driving.py --demos 50 --episodes 50 --steps 2000

Both planners share the demonstrations, the backbone and the step budget; only the process
differs (``policy/process=anchored`` vs ``policy/process=ddpm`` sampled in 20 DDIM steps).
Diversity: the K plans of one anchored call against K vanilla plans from independent noise,
on the first scene of every evaluation episode. Planning latency: a pass of its own after the
episodes, the planners taking turns on the same scenes (batch 1, ``--threads`` threads), so
both see the same machine; the latencies measured inside the episodes (between simulator
steps) are kept in the JSON too. ``--latency-only`` re-measures it from the saved planners (``--device cuda``: on a GPU).
Run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ditpolicy.config import compose
from ditpolicy.envs.driving import DrivingEnv
from ditpolicy.envs.driving.evaluate import (EVAL_SEED, drive_experts, evaluate_driving, format_table,
                                             sampled_diversity, summarize)
from ditpolicy.envs.driving.expert import collect_driving
from ditpolicy.policies import Policy
from ditpolicy.policies.train import Trainer

N_OBS = 2
PLANNER = ["policy.horizon=1", "policy.n_action_steps=1", f"policy.n_obs={N_OBS}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=int, default=200, help="expert episodes to learn from")
    parser.add_argument("--episodes", type=int, default=200, help="held-out evaluation episodes")
    parser.add_argument("--steps", type=int, default=4000, help="training steps of each planner")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--anchors", type=int, default=20)
    parser.add_argument("--anchored-steps", type=int, default=2)
    parser.add_argument("--vanilla-steps", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0, help="episode length, s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-rounds", type=int, default=20, help="latency pass: calls per scene and planner")
    parser.add_argument("--device", default="cpu", help="where the planners run in the latency pass (cpu, cuda)")
    parser.add_argument("--latency-only", action="store_true",
                        help="only re-measure planning latency of the saved planners and update result.json")
    parser.add_argument("--out", default="outputs/bench/driving")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    env_options = {"duration_s": args.duration}
    planners = {
        f"anchored {args.anchored_steps}-step": (["policy/process=anchored", f"policy.process.n_anchors={args.anchors}"],
                                                 args.anchored_steps, "anchored"),
        f"vanilla {args.vanilla_steps}-step": (["policy/process=ddpm"], args.vanilla_steps, "vanilla"),
    }
    seeds = list(range(EVAL_SEED, EVAL_SEED + args.episodes))
    first_scenes = first_scenes_of(seeds, env_options)
    if args.latency_only:
        saved = json.loads((out / "result.json").read_text())
        summaries = saved["summaries"]
        policies = {name: (Policy.from_checkpoint(out / run_name, device=args.device), steps)
                    for name, (_, steps, run_name) in planners.items()}
        add_latency(summaries, policies, first_scenes, args.latency_rounds)
        report(args, summaries, planners)
        (out / "result.json").write_text(json.dumps({**saved, "summaries": summaries}, indent=2))
        print(f"updated {out / 'result.json'}")
        return
    collected = collect_driving(episodes=args.demos, out=str(out / "demos.zarr"), **env_options)
    print(f"demonstrations: {collected['total']} expert episodes ({collected['collisions']} dropped for a collision)")
    experts = drive_experts(seeds, **env_options)
    results, summaries, policies = {}, {}, {}
    for name, (extra, steps, run_name) in planners.items():
        run = out / run_name
        if not (run / "checkpoints" / "latest").exists():
            cfg = compose("train", [f"dataset.path={out / 'demos.zarr'}", f"run_dir={run}", f"train.steps={args.steps}",
                                    f"train.batch_size={args.batch}", f"train.save_every={args.steps}",
                                    f"train.num_threads={args.threads}", "train.progress=false", *PLANNER, *extra])
            start = time.perf_counter()
            Trainer(cfg).run()
            print(f"{name}: trained in {(time.perf_counter() - start) / 60:.1f} min")
        policy = Policy.from_checkpoint(run, device="cpu")
        result = evaluate_driving(policy, args.episodes, steps, video_dir=out / run_name / "videos", videos=2,
                                  experts=experts, **env_options)
        result["planner"]["diversity"] = sampled_diversity(policy, first_scenes, args.anchors, steps)
        results[name], summaries[name], policies[name] = result, result["planner"], (policy, steps)
    summaries["IDM/MOBIL expert"] = summarize(experts)
    add_latency(summaries, policies, first_scenes, args.latency_rounds)
    report(args, summaries, planners)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"args": vars(args), "summaries": summaries,
                                                 "per_episode": {n: r["per_episode"] for n, r in results.items()}},
                                                indent=2))
    print(f"wrote {out / 'result.json'}")


def first_scenes_of(seeds: list[int], env_options: dict) -> np.ndarray:
    """The first observation history of each evaluation seed (N, n_obs, 53)."""
    env = DrivingEnv(**env_options)
    scenes = [np.repeat(env.reset(seed=s)[0]["state"][None], N_OBS, axis=0) for s in seeds]
    env.close()
    return np.stack(scenes)


def add_latency(summaries: dict, policies: dict, scenes: np.ndarray, rounds: int) -> None:
    """Replace each planner's latency by the dedicated pass; keep the in-episode one beside it."""
    latency = planning_latency(policies, scenes, rounds)
    for name, ms in latency.items():
        summary = summaries[name]
        if "latency_in_episode_ms" not in summary and "latency_ms" in summary:
            summary["latency_in_episode_ms"] = summary["latency_ms"]
        summary["latency_ms"] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                                 "calls": len(ms)}


def planning_latency(policies: dict[str, tuple], scenes: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """ms per planning call (batch 1), the planners taking turns on every scene (N, n_obs, 53)."""
    times = {name: [] for name in policies}
    batches = []
    for scene in scenes:
        batches.append({"state": torch.as_tensor(scene)[None].to(next(iter(policies.values()))[0].device)})
    for name, (policy, steps) in policies.items():        # warm-up: traced graphs built outside the timing
        goal = policy.goal_inputs(policy.spec.tasks[0] if policy.spec.tasks else None, 1)
        for batch in batches[:3]:
            policy.predict_action_chunks({**batch, **goal}, steps)
    for _ in range(rounds):
        for batch in batches:
            for name, (policy, steps) in policies.items():
                goal = policy.goal_inputs(policy.spec.tasks[0] if policy.spec.tasks else None, 1)
                start = time.perf_counter()
                policy.predict_action_chunks({**batch, **goal}, steps)
                if batch["state"].is_cuda:
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def report(args, summaries: dict, planners: dict) -> None:
    print(f"\nhighway, {args.demos} demonstrations, {args.steps} steps x batch {args.batch}, "
          f"{args.episodes} held-out episodes of {args.duration:.0f} s, {args.threads} thread(s); latency: "
          f"{args.latency_rounds} turns per scene and planner, batch 1")
    print(format_table(summaries))
    anchored, vanilla = (summaries[n] for n in planners)
    print(f"anchored / vanilla: score {anchored['score'] - vanilla['score']:+.3f}, latency p50 "
          f"{vanilla['latency_ms']['p50'] / anchored['latency_ms']['p50']:.1f}x lower, diversity "
          f"{anchored['diversity']:.3f} vs {vanilla['diversity']:.3f}")


if __name__ == "__main__":
    main()
