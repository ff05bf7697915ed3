"""Other stacks' demonstration formats into a store: ``ditpolicy convert <format> <src> <store>``.

- ``libero`` / ``robomimic``: HDF5 files ``data/demo_<i>/{actions, obs/<key>}`` (hdf5_demos.py);
  a folder converts every ``*.hdf5`` in it, sorted.
- ``calvin``: a CALVIN split folder of per-frame ``episode_XXXXXXX.npz`` files with its
  ``ep_start_end_ids.npy`` and language annotations (calvin.py).
- ``lerobot``: a LeRobot dataset folder, layouts v2.0 / v2.1 / v3.0: parquet frames, mp4
  videos, ``meta/`` (lerobot.py).

Every converter streams: it holds one source episode (or, for CALVIN's long play episodes,
one cut of at most ``max_episode_steps`` frames) in memory at a time. Every converter
resumes: each source file or split has its own task name in the store, and a conversion that
is started again skips the episodes the store already holds under that task, in the same
deterministic order, so a killed conversion continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from ..writer import EpisodeWriter


def episodes_of_task(writer: EpisodeWriter, task: str) -> int:
    """How many committed episodes of ``writer``'s store carry ``task`` (the resume point)."""
    store = writer.reader()
    names = store.tasks
    return sum(1 for i in store.task_ids if names[int(i)] == task)


def convert(format: str, src: str | Path, out: str | Path, **options) -> dict:
    """Convert ``src`` in ``format`` into the store ``out``; returns counts (episodes, frames, ...)."""
    from .calvin import convert_calvin
    from .hdf5_demos import convert_hdf5
    from .lerobot import convert_lerobot

    converters = {"libero": lambda: convert_hdf5(src, out, layout="libero", **options),
                  "robomimic": lambda: convert_hdf5(src, out, layout="robomimic", **options),
                  "calvin": lambda: convert_calvin(src, out, **options),
                  "lerobot": lambda: convert_lerobot(src, out, **options)}
    if format not in converters:
        raise ValueError(f"convert: unknown format {format!r}; formats: {sorted(converters)} (and rosbag)")
    return converters[format]()


FORMATS = ("libero", "robomimic", "calvin", "lerobot")

__all__ = ["FORMATS", "convert", "episodes_of_task"]
