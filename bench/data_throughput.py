"""Sequence-sampler throughput on a low-dim MT10 store and an 84x84 image store, plus the
image store's size on disk per 1,000 frames. Prints a table and writes JSON.

    python bench/data_throughput.py                       # makes the stores if missing
    python bench/data_throughput.py --lowdim-store S --image-store S --out outputs/bench/data.json

The stores are collected with Meta-World's experts when absent: MT10 x 50 episodes (state)
and 3 tasks x 10 episodes with the corner camera at 84x84.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ditpolicy.datasets import DemoStore, SequenceSampler
from ditpolicy.envs.collect import collect, format_reports

IMAGE_TASKS = ["reach-v3", "push-v3", "drawer-close-v3"]


def ensure_store(path: str, **collect_args) -> DemoStore:
    if not Path(path).exists():
        print(f"collecting {path} ...")
        print(format_reports(collect(out=path, **collect_args)))
    return DemoStore.open(path)


def windows_per_second(sampler: SequenceSampler, batch: int, seconds: float, repeats: int = 5) -> float:
    """Median over ``repeats`` timed runs of random batches, in windows per second."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / repeats:
            sampler.sample_batch(rng.integers(0, len(sampler), batch))
            count += batch
        rates.append(count / (time.perf_counter() - start))
    return float(np.median(rates))


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lowdim-store", default="outputs/bench/mt10_state.zarr")
    parser.add_argument("--image-store", default="outputs/bench/image3_84.zarr")
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--n-obs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default="outputs/bench/data_throughput.json")
    args = parser.parse_args()

    lowdim = ensure_store(args.lowdim_store, task="MT10", episodes=50)
    image = ensure_store(args.image_store, task=IMAGE_TASKS, episodes=10, cameras=["corner"], image_size=84)
    rows = []

    def measure(name, store, keys, batch, **kwargs):
        sampler = SequenceSampler(store, keys, n_obs=args.n_obs, horizon=args.horizon, **kwargs)
        rate = windows_per_second(sampler, batch, args.seconds)
        rows.append({"case": name, "windows": len(sampler), "batch": batch, "windows_per_s": rate})

    measure("lowdim MT10 state, batch", lowdim, ["state"], args.batch)
    measure("lowdim MT10 state, single window", lowdim, ["state"], 1)
    measure("image 84x84 + proprio, in-memory cache", image, ["rgb_corner", "proprio"], args.batch)
    measure("image 84x84 + proprio, decoded from zarr", image, ["rgb_corner", "proprio"], 64, image_cache_bytes=0)

    image_dir = Path(args.image_store) / "data" / "rgb_corner"
    per_1000 = disk_bytes(image_dir) / image.n_steps * 1000
    raw_per_1000 = 84 * 84 * 3 * 1000
    result = {
        "horizon": args.horizon, "n_obs": args.n_obs, "cases": rows,
        "lowdim_store": {"path": args.lowdim_store, "episodes": lowdim.n_episodes, "steps": lowdim.n_steps},
        "image_store": {"path": args.image_store, "episodes": image.n_episodes, "frames": image.n_steps,
                        "bytes_per_1000_frames": per_1000, "raw_bytes_per_1000_frames": raw_per_1000},
    }
    print(f"\nsequence sampler, H={args.horizon}, n_obs={args.n_obs}, one process")
    print(f"{'case':<42} {'windows':>9} {'batch':>6} {'windows/s':>12}")
    for r in rows:
        print(f"{r['case']:<42} {r['windows']:>9} {r['batch']:>6} {r['windows_per_s']:>12,.0f}")
    print(f"\nimage store: {image.n_steps} frames, {per_1000 / 1e6:.2f} MB per 1,000 84x84 frames "
          f"(raw {raw_per_1000 / 1e6:.2f} MB, ratio {raw_per_1000 / per_1000:.1f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
