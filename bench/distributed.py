"""Training throughput with 1 and 2 processes (``torchrun``): samples/s of the same run
configuration, one launch per row, each on its own (nothing else may run beside it).

    python bench/distributed.py                                  # MT10 state store, default DiT
    python bench/distributed.py --store S --steps 300 --batch 256 --out outputs/bench/distributed.json
    python bench/distributed.py --device cuda --nproc 1 2 4      # GPUs: one process per GPU

Rows: 1 process with as many threads as the 2-process rows use in all, 1 process with one
thread, then N processes (one thread each on the CPU) with DDP and with FSDP. The rate of a
row is the median of the samples/s that the trainer logs every ``--log-every`` steps, after
the first window (start-up, first-call costs). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def ensure_store(path: str) -> None:
    """MT10 x 50 state episodes from Meta-World's experts when absent (collect continues a partial one)."""
    from ditpolicy.envs.collect import collect

    collect(task="MT10", episodes=50, out=path, progress=False)


def run(args, nproc: int, strategy: str, threads: int, run_dir: Path) -> dict:
    """One training launch; its logged samples/s and wall time."""
    overrides = [f"dataset.path={args.store}", f"run_dir={run_dir}", f"train.steps={args.steps}",
                 f"train.batch_size={args.batch}", f"train.log_every={args.log_every}", "train.val_every=0",
                 f"train.save_every={args.steps}", "train.progress=false", f"train.device={args.device}",
                 f"train.num_threads={threads}", f"train.distributed.strategy={strategy}", *args.override]
    if nproc == 1:
        cmd = [sys.executable, "-m", "ditpolicy", "train", *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ditpolicy", "train", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    rates = [json.loads(line)["samples_per_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"processes": nproc, "strategy": strategy if nproc > 1 else "-", "threads_per_process": threads,
            "samples_per_s": float(np.median(rates[1:] or rates)), "windows": len(rates), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="outputs/bench/mt10_state.zarr")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256, help="global batch (split over the processes)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--nproc", type=int, nargs="+", default=[2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for every run")
    parser.add_argument("--out", default="outputs/bench/distributed.json")
    args = parser.parse_args()
    if not Path(args.store).exists():
        ensure_store(args.store)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cpu = args.device == "cpu"
        most = max(args.nproc)
        plan = ([(1, "ddp", most)] if cpu and most > 1 else []) + [(1, "ddp", 1)]
        plan += [(n, s, 1) for n in args.nproc if n > 1 for s in ("ddp", "fsdp")]
        for i, (n, strategy, threads) in enumerate(plan):
            row = run(args, n, strategy, threads if cpu else 0, Path(tmp) / f"run{i}")
            rows.append(row)
            print(f"  {n} process(es) {row['strategy']:>4}, {threads} thread(s) each: "
                  f"{row['samples_per_s']:,.0f} samples/s", flush=True)
    base = next(r for r in rows if r["processes"] == 1 and r["threads_per_process"] == 1)["samples_per_s"]
    print(f"\n{'processes':>9} {'strategy':>8} {'threads':>7} {'samples/s':>10} {'vs 1x1':>7} {'wall s':>7}")
    for r in rows:
        r["speedup_vs_one_thread"] = r["samples_per_s"] / base
        print(f"{r['processes']:>9} {r['strategy']:>8} {r['threads_per_process']:>7} {r['samples_per_s']:>10,.0f} "
              f"{r['speedup_vs_one_thread']:>6.2f}x {r['wall_s']:>7.1f}")
    import torch

    result = {"store": args.store, "steps": args.steps, "global_batch": args.batch, "device": args.device,
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "overrides": args.override, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
