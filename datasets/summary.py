"""A human-readable summary of a demonstration store (``ditpolicy info``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .lock import current_holder, describe_holder
from .store import DemoStore


def _disk_bytes(path: str) -> int:
    root = Path(path)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0


def _fmt(values: np.ndarray, limit: int = 6) -> str:
    values = np.atleast_1d(values)
    shown = " ".join(f"{v:+.3f}" for v in values[:limit])
    return shown + (f" ... ({values.size} dims)" if values.size > limit else "")


def summarize(store: DemoStore, with_stats: bool = True) -> str:
    lengths = store.episode_lengths
    lines = [
        f"store     {store.path}",
        f"episodes  {store.n_episodes}   steps {store.n_steps}   "
        + (f"length min/mean/max {lengths.min()}/{lengths.mean():.1f}/{lengths.max()}" if len(lengths) else ""),
        f"success   {int(store.success.sum())}/{store.n_episodes}   action-free episodes {int((~store.has_action).sum())}",
        f"on disk   {_disk_bytes(store.path) / 1e6:.1f} MB",
        f"format    v{store.version} " + ("(crc32c chunk checksums)" if store.version >= 2 else "(no chunk checksums)"),
    ]
    holder = current_holder(store.path) if store.local_dir else None
    if holder is not None:
        lines.append(f"writer    {describe_holder(holder)} (episodes it has not committed are not shown)")
    lines.append("keys:")
    for key, (shape, dtype) in store.shapes().items():
        lines.append(f"  {key:<16} {str(shape):<16} {dtype:<8} {store.key_kinds[key]}")
    counts = Counter(store.task_ids.tolist())
    lines.append(f"tasks ({len(counts)}):")
    for task_id, count in sorted(counts.items()):
        first = int(np.argmax(store.task_ids == task_id))
        lines.append(f"  {store.tasks[task_id]:<28} {count:>5} episodes   \"{store.instruction(first)}\"")
    if store.segments:
        lines.append(f"language segments: {len(store.segments)}")
    if store.stats_status != "current":
        lines.append(f"statistics {store.stats_status}; 'train' computes them itself")
    elif with_stats:
        lines.append("statistics (per dimension):")
        for key, s in store.stats.items():
            lines.append(f"  {key}")
            for name in ("min", "max", "mean", "std", "q01", "q99"):
                lines.append(f"    {name:<5} {_fmt(s[name])}")
    return "\n".join(lines)
