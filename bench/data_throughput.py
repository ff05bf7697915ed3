"""Sequence-sampler throughput on a low-dim MT10 store and an 84x84 image store, the image
store's size on disk per 1,000 frames, and the cost of the integrity checks: the same data
read with checks on (format v2: crc32c on every chunk, checks at open, reads that name a bad
chunk) and off (a v1-layout twin without checksums, opened unchecked, raw zarr reads).
Prints tables and writes JSON.

    python bench/data_throughput.py                       # makes the stores if missing
    python bench/data_throughput.py --lowdim-store S --image-store S --out outputs/bench/data.json
    python bench/data_throughput.py --only-loader        # image windows/s with 0, 1, 2 loader workers + training wait

Loader rows: image batches of 64 windows from zarr (no in-RAM cache) gathered in the training
process (0 workers) or by 1 or 2 worker processes, after the workers' start-up; then a short
training run with the workers, reporting how long each step waited for its batch.

The stores are collected with Meta-World's experts when absent or incomplete: MT10 x 50
episodes (state) and 3 tasks x 10 episodes with the corner camera at 84x84; their v1 twins
are copies.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ditpolicy.datasets import DemoStore, EpisodeWriter, SequenceSampler
from ditpolicy.envs.collect import complete_store

IMAGE_TASKS = ["reach-v3", "push-v3", "drawer-close-v3"]


def ensure_store(path: str, task, episodes: int, **collect_args) -> DemoStore:
    """The store at ``path``, collected or completed (collect continues a partial store)."""
    complete_store(task, episodes, path, progress=False, **collect_args)
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


def v1_twin(store: DemoStore, path: str) -> DemoStore:
    """The same episodes in the v1 layout (no checksums), written once."""
    if not Path(path).exists():
        print(f"copying {store.path} to the v1 layout at {path} ...")
        with EpisodeWriter(path, format_version=1) as writer:
            for i in range(store.n_episodes):
                writer.add_episode(store.episode(i), task=store.task_name(i), instruction=store.instruction(i),
                                   success=bool(store.success[i]), has_action=bool(store.has_action[i]),
                                   seed=int(store.seeds[i]))
    return DemoStore.open(path, check=False)


def median_rate(fn, units: float, seconds: float, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of ``units`` per second of ``fn`` (each run lasts ~seconds/repeats)."""
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            if time.perf_counter() - start >= seconds / repeats:
                break
        rates.append(count * units / (time.perf_counter() - start))
    return float(np.median(rates))


def integrity_cases(lowdim: DemoStore, image: DemoStore, lowdim_v1: str, image_v1: str, args) -> list[dict]:
    """Throughput with checks on (v2 store, DemoStore reads) and off (v1 twin, raw zarr arrays).

    The two sides are measured alternately, ``rounds`` times, and the medians compared, so a
    neighbour's load on the CPU hits both alike.
    """
    off_low, off_img = v1_twin(lowdim, lowdim_v1), v1_twin(image, image_v1)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, image.n_steps, 64)
    low_mb = lowdim.n_steps * 39 * 4 / 1e6

    def lazy_sampler(store, raw):
        sampler = SequenceSampler(store, ["rgb_corner", "proprio"], n_obs=args.n_obs, horizon=args.horizon,
                                  image_cache_bytes=0)
        if raw:  # plain zarr reads, no chunk naming on failure
            sampler.arrays["rgb_corner"] = store.root["data/rgb_corner"]
        return sampler

    samplers = {True: lazy_sampler(image, False), False: lazy_sampler(off_img, True)}
    lowdim_samplers = {True: SequenceSampler(lowdim, ["state"], n_obs=args.n_obs, horizon=args.horizon),
                       False: SequenceSampler(off_low, ["state"], n_obs=args.n_obs, horizon=args.horizon)}
    windows = rng.integers(0, len(samplers[True]), 64)
    low_windows = rng.integers(0, len(lowdim_samplers[True]), args.batch)
    cases = {
        "open + low-dim sampler setup (setups/s)": (
            lambda: SequenceSampler(DemoStore.open(lowdim.path), ["state"], n_obs=args.n_obs, horizon=args.horizon),
            lambda: SequenceSampler(DemoStore.open(off_low.path, check=False), ["state"], n_obs=args.n_obs,
                                    horizon=args.horizon), 1),
        "low-dim read, all steps of state (MB/s)": (
            lambda: lowdim.array("state")[: lowdim.n_steps], lambda: off_low.root["data/state"][: off_low.n_steps],
            low_mb),
        f"low-dim sampler, batch {args.batch} (windows/s)": (
            lambda: lowdim_samplers[True].sample_batch(low_windows),
            lambda: lowdim_samplers[False].sample_batch(low_windows), args.batch),
        "image decode, 64 random frames (frames/s)": (
            lambda: image.array("rgb_corner").get_orthogonal_selection((np.unique(frames),)),
            lambda: off_img.root["data/rgb_corner"].get_orthogonal_selection((np.unique(frames),)),
            len(np.unique(frames))),
        "image sampler decoded from zarr, batch 64 (windows/s)": (
            lambda: samplers[True].sample_batch(windows), lambda: samplers[False].sample_batch(windows), 64),
    }
    rows = []
    for name, (on, off, units) in cases.items():
        on_rates, off_rates = [], []
        for _ in range(args.rounds):
            on_rates.append(median_rate(on, units, args.seconds / args.rounds / 2, repeats=3))
            off_rates.append(median_rate(off, units, args.seconds / args.rounds / 2, repeats=3))
        on_rate, off_rate = float(np.median(on_rates)), float(np.median(off_rates))
        rows.append({"case": name, "checks_on": on_rate, "checks_off": off_rate,
                     "cost_percent": 100.0 * (off_rate / on_rate - 1.0)})
    return rows


def loader_rates(store_path: str, args, steps: int = 40) -> list[dict]:
    """Image windows/s from zarr with 0, 1 and 2 loader workers (batches of 64)."""
    from ditpolicy.datasets.loader import StepBatches, step_loader

    keys = ["rgb_corner", "proprio"]
    rows = []
    for workers in (0, 1, 2):
        batches = StepBatches(store_path, None, dict(obs_keys=keys, n_obs=args.n_obs, horizon=args.horizon,
                                                     image_cache_bytes=0), seed=0, batch=64, lo=0, hi=64)
        it = (batches[s] for s in range(steps + 2)) if workers == 0 else step_loader(batches, 0, steps + 2, workers)
        next(it)                                            # start-up (worker spawn, store open)
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        rate = steps * 64 / (time.perf_counter() - start)
        rows.append({"workers": workers, "windows_per_s": rate})
        print(f"  loader, {workers} worker(s): {rate:,.0f} image windows/s", flush=True)
    return rows


def training_wait(store_path: str, workers: int, steps: int = 40) -> dict:
    """Median time per step spent waiting for the batch, in a short image training run."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "ditpolicy", "train", f"dataset.path={store_path}",
                        "dataset.obs_keys=[rgb_corner,proprio]", f"dataset.loader.workers={workers}",
                        f"run_dir={tmp}/run", f"train.steps={steps}", "train.batch_size=64", "train.log_every=1",
                        "train.val_every=0", f"train.save_every={steps}", "train.progress=false"],
                       check=True, capture_output=True)
        logs = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()][5:]
    step_ms = float(np.median([64 / r["samples_per_s"] * 1e3 for r in logs]))
    wait_ms = float(np.median([r["data_ms"] for r in logs]))
    return {"workers": workers, "step_ms": step_ms, "data_wait_ms": wait_ms, "wait_share": wait_ms / step_ms}


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
    parser.add_argument("--rounds", type=int, default=4, help="alternations of checks on/off per integrity case")
    parser.add_argument("--out", default="outputs/bench/data_throughput.json")
    parser.add_argument("--only-loader", action="store_true", help="only the loader-worker rows (own JSON: *_loader.json)")
    args = parser.parse_args()
    if args.only_loader:
        ensure_store(args.image_store, task=IMAGE_TASKS, episodes=10, cameras=["corner"], image_size=84)
        loader, waits = loader_rates(args.image_store, args), [training_wait(args.image_store, w) for w in (0, 2)]
        print(f"\n{'workers':>7} {'image windows/s':>16}")
        for r in loader:
            print(f"{r['workers']:>7} {r['windows_per_s']:>16,.0f}")
        print(f"\ntraining on images, batch 64: {'workers':>7} {'step ms':>8} {'waiting ms':>11} {'share':>6}")
        for w in waits:
            print(f"{'':<31} {w['workers']:>7} {w['step_ms']:>8.1f} {w['data_wait_ms']:>11.2f} {w['wait_share']:>6.1%}")
        out = Path(args.out.replace(".json", "_loader.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"image_store": args.image_store, "loader": loader, "training_wait": waits}, indent=2))
        print(f"wrote {out}")
        return

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

    integrity = integrity_cases(lowdim, image, args.lowdim_store.replace(".zarr", "_v1.zarr"),
                                args.image_store.replace(".zarr", "_v1.zarr"), args)

    image_dir = Path(args.image_store) / "data" / "rgb_corner"
    per_1000 = disk_bytes(image_dir) / image.n_steps * 1000
    raw_per_1000 = 84 * 84 * 3 * 1000
    result = {
        "horizon": args.horizon, "n_obs": args.n_obs, "cases": rows, "integrity": integrity,
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
    print("\nintegrity checks on (v2: crc32c, checked open and reads) vs off (v1 twin, raw zarr), same data")
    print(f"{'case':<52} {'on':>12} {'off':>12} {'cost':>7}")
    for r in integrity:
        print(f"{r['case']:<52} {r['checks_on']:>12,.1f} {r['checks_off']:>12,.1f} {r['cost_percent']:>6.1f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
