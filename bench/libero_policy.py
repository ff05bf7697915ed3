"""A policy trained on the scripted LIBERO-Object expert's demonstrations, evaluated under
LIBERO's protocol (shipped initial states 0..trials-1, settle steps, 280-step limit): success per
task with 95% intervals. Prints a table and writes JSON.

    python bench/libero_policy.py                        # 30 demos/task, 3000 steps, 20 trials/task
    python bench/libero_policy.py --trials 50            # the full protocol (500 episodes)

The policy reads proprioception (``state``) and the privileged ``object_state`` (the object's
and the basket's poses, ``collect env=libero env.objects=true``), so neither collection nor
evaluation renders: on a 2-core CPU collection takes about 25 min, training about 25 min and
20 trials per task about 20 min. Each stage is skipped or resumed when its output exists
(store, final checkpoint, per-episode results file). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ditpolicy.config import compose
from ditpolicy.envs.libero.collect import collect_libero
from ditpolicy.envs.libero.protocol import PolicyActor, evaluate_libero
from ditpolicy.policies import Policy
from ditpolicy.policies.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=int, default=30, help="expert demonstrations per task")
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--trials", type=int, default=20, help="episodes per task (initial states 0..trials-1)")
    parser.add_argument("--num-envs", type=int, default=5)
    parser.add_argument("--out", default="outputs/bench/libero_policy")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    reports = collect_libero("libero_object", None, args.demos, str(out / "demos.zarr"), cameras=[], objects=True)
    collected = time.perf_counter()
    run = out / "run"
    if not (run / "checkpoints" / "latest").exists():
        cfg = compose("train", [f"dataset.path={out / 'demos.zarr'}", f"run_dir={run}", "env=libero",
                                "dataset.obs_keys=[state,object_state]", f"train.steps={args.steps}",
                                f"train.batch_size={args.batch}", f"train.save_every={args.steps}"])
        Trainer(cfg).run()
    trained = time.perf_counter()
    policy = Policy.from_checkpoint(run, device="cpu")
    result = evaluate_libero(PolicyActor(policy), "libero_object", trials=args.trials, num_envs=args.num_envs,
                             results=out / "libero_libero_object.jsonl")
    print(f"\nLIBERO-Object, state + object poses, {args.demos} scripted demos per task, {args.trials} trials "
          f"per task (initial states 0..{args.trials - 1})")
    print(result.table())
    minutes = {"collect": (collected - start) / 60, "train": (trained - collected) / 60,
               "evaluate": (time.perf_counter() - trained) / 60}
    print("minutes this run: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()))
    out.mkdir(parents=True, exist_ok=True)
    summary = result.as_dict()
    (out / "result.json").write_text(json.dumps({"args": vars(args), "collection": reports, "minutes": minutes,
                                                 "mean_success": summary["mean_success"], "ci95": summary["ci95"],
                                                 "tasks": summary["tasks"],
                                                 "chunk_latency_ms_p50": float(np.percentile(
                                                     result.chunk_latency_ms, 50)) if result.chunk_latency_ms else None},
                                                indent=2))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
