"""Conversion speed and peak memory of each converter, on sources written in the official
layouts at their real image sizes (LIBERO 128x128 x 2 cameras; robomimic 84x84 x 2; CALVIN
200x200 + 84x84 per frame; LeRobot v3.0, two AV1 cameras at ``--lerobot-size``). Each conversion runs in a fresh process, at two source sizes:
constant memory means the peak does not grow with the source. Prints a table, writes JSON.

    python bench/convert.py                    # 20 and 40 demos of 150 frames; CALVIN 3,000 and 6,000 frames
    python bench/convert.py --demos 10 --frames 150 --calvin-frames 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))         # the official-layout writers live with the tests


def write_source(fmt: str, folder: Path, size: int, frames: int, image: tuple[int, int] = (240, 320)) -> Path:
    """An official-layout source of ``size`` demos (CALVIN: ``size`` frames in sequences of 1,000)."""
    from official_layouts import write_calvin_split, write_lerobot_dataset, write_libero_hdf5, write_robomimic_hdf5

    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "libero":
        write_libero_hdf5(folder / "put_the_bowl_on_the_plate_demo.hdf5", "put the bowl on the plate",
                          [frames] * size, size=128)
        return folder
    if fmt == "lerobot":
        write_lerobot_dataset(folder / "so100_pick", [frames] * size, ["pick the cube"], version="v3.0", fps=30,
                              size=image, episodes_per_file=10)
        return folder / "so100_pick"
    if fmt == "robomimic":
        write_robomimic_hdf5(folder / "lift_ph.hdf5", [frames] * size, size=84)
        return folder / "lift_ph.hdf5"
    sequences = [(10_000 * i, 10_000 * i + min(1000, size - 1000 * i) - 1) for i in range((size + 999) // 1000)]
    annotations = [(s + j, s + j + 63, "open the drawer", "open_drawer") for s, e in sequences
                   for j in range(0, e - s - 63, 100)]
    write_calvin_split(folder / "training", sequences, annotations, static=200, gripper=84)
    return folder / "training"


def peak_resident_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM: since exec, unlike ru_maxrss,
    which a child started by fork + exec inherits from its parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(fmt: str, src: str, out: str) -> None:
    """In a fresh process: convert, print frames, seconds and the peak resident memory."""
    from ditpolicy.datasets.convert import convert

    start = time.perf_counter()
    counts = convert(fmt, src, out, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    peak_mb = peak_resident_mb()
    print(json.dumps({"frames": counts["frames"], "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=int, default=20, help="HDF5 demos in the smaller source (the larger: 2x)")
    parser.add_argument("--frames", type=int, default=150, help="frames per HDF5 demo")
    parser.add_argument("--calvin-frames", type=int, default=3000, help="frames of the smaller CALVIN split")
    parser.add_argument("--lerobot-size", default="240x320", help="LeRobot camera frames, HEIGHTxWIDTH")
    parser.add_argument("--formats", default="libero,robomimic,calvin,lerobot")
    parser.add_argument("--out", default="outputs/bench/convert")
    parser.add_argument("--run", nargs=3, metavar=("FORMAT", "SRC", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(*args.run)
        return
    out = Path(args.out)
    rows = []
    image = tuple(int(v) for v in args.lerobot_size.split("x"))
    for fmt in args.formats.split(","):
        base = args.calvin_frames if fmt == "calvin" else args.demos
        for size in (base, 2 * base):
            work = out / f"{fmt}_{size}"
            shutil.rmtree(work, ignore_errors=True)
            src = write_source(fmt, work / "source", size, args.frames, image)
            done = subprocess.run([sys.executable, __file__, "--run", fmt, str(src), str(work / "store.zarr")],
                                  check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            source_mb = sum(p.stat().st_size for p in (work / "source").rglob("*") if p.is_file()) / 2 ** 20
            rows.append({"format": fmt, "size": size, **result, "frames_per_s": result["frames"] / result["seconds"],
                         "source_mb": source_mb})
            print(f"{fmt:<10} {result['frames']:>7} frames  {rows[-1]['frames_per_s']:>7.0f} frames/s  "
                  f"peak {result['peak_mb']:>6.0f} MB  (source {source_mb:.0f} MB)", flush=True)
            shutil.rmtree(work / "source")
    print(f"\n{'format':<10} {'frames':>7} {'frames/s':>9} {'peak MB':>8} {'source MB':>10}")
    for r in rows:
        print(f"{r['format']:<10} {r['frames']:>7} {r['frames_per_s']:>9.0f} {r['peak_mb']:>8.0f} {r['source_mb']:>10.0f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
