"""The scripted LIBERO-Object expert: success per task on fresh placements (collection seeds,
as ``collect env=libero`` draws them) and the simulator's speed on this machine, with and
without two cameras. Prints a table and writes JSON. Run it alone.

    python bench/libero_expert.py                   # 10 tasks x 20 placements, no cameras
    python bench/libero_expert.py --episodes 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ditpolicy.envs.collect import COLLECT_SEED_STRIDE
from ditpolicy.envs.libero.collect import expert_episode
from ditpolicy.envs.libero.env import LiberoEnv
from ditpolicy.envs.libero.suites import NOOP, STEP_LIMITS, suite_tasks


def steps_per_second(task, cameras: list[str], steps: int = 200) -> float:
    env = LiberoEnv(task, cameras, 128)
    env.reset(0)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(NOOP)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20, help="placements per task")
    parser.add_argument("--out", default="outputs/bench/libero_expert")
    args = parser.parse_args()
    tasks = suite_tasks("libero_object")
    rows = []
    for task in tasks:
        env = LiberoEnv(task)
        start, results, steps = time.perf_counter(), [], []
        for e in range(args.episodes):
            data, ok = expert_episode(env, COLLECT_SEED_STRIDE * (task.index + 1) + e, STEP_LIMITS["libero_object"])
            results.append(ok)
            steps.append(len(data["action"]))
        env.close()
        rows.append({"task": task.name, "success": float(np.mean(results)), "episodes": args.episodes,
                     "mean_steps": float(np.mean(steps)), "seconds": time.perf_counter() - start})
        print(f"{task.name:<60} {rows[-1]['success']:>6.2f} {rows[-1]['mean_steps']:>7.1f}", flush=True)
    speed = {"no cameras": steps_per_second(tasks[0], []),
             "agentview + eye_in_hand 128x128": steps_per_second(tasks[0], ["agentview", "eye_in_hand"])}
    print(f"\n{'task':<60} {'success':>7} {'steps':>7}")
    for r in rows:
        print(f"{r['task']:<60} {r['success']:>7.2f} {r['mean_steps']:>7.1f}")
    print(f"{'mean':<60} {np.mean([r['success'] for r in rows]):>7.2f}")
    for name, rate in speed.items():
        print(f"simulator, {name}: {rate:.0f} steps/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"args": vars(args), "tasks": rows, "steps_per_s": speed}, indent=2))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
