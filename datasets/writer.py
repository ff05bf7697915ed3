"""Append-only, crash-safe episode writer for demonstration stores; one writer at a time.

A writer holds the store's writer lock (``lock.py``) from construction to ``close()``; a
second writer is refused with the holder named, or waits with ``wait=<seconds>``.

An episode is checked first (``episode_checks.py``: nothing is written for a refused one),
then written in this order: its data arrays are grown and filled, then its per-episode
``meta/`` rows, and last the commit record (root attributes) that counts it. zarr's local
store replaces every file atomically, so a writer killed at any point leaves the earlier
episodes readable; the partial tail is cut off when the store is next opened for writing.
Committing an episode drops the statistics, which then describe fewer steps than the store
holds; ``write_stats`` records the step count they were computed on.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr

from .chunks import LOWDIM_CHUNK_STEPS, META_CHUNK_ROWS, array_layout
from .episode_checks import check_episode, check_text
from .errors import StoreError
from .lock import LOCK_FILE, StoreLock
from .store import FORMAT_NAME, FORMAT_VERSION, META_ARRAYS, DemoStore, read_record

META_DTYPES = {"episode_ends": "int64", "task_id": "int32", "instruction_id": "int32", "success": "bool",
               "has_action": "bool", "seed": "int64"}
WRITE_EVERY_CHUNK = {"array.write_empty_chunks": True}  # so that an absent chunk always means damage


class EpisodeWriter:
    """Appends whole episodes to a store; creates it on first use.

    >>> with EpisodeWriter("demos.zarr", wait=30) as writer:
    ...     writer.add_episode({"obs": obs, "action": act}, task="reach-v3",
    ...                        instruction="reach the red goal", success=True, seed=7)

    overwrite: delete the store's contents first (only once this writer holds the lock).
    wait: seconds to wait for another writer to finish (``math.inf``: as long as it takes);
    0 refuses at once with StoreLockedError naming the holder.
    format_version: layout of a new store (2: checksummed; 1: the legacy layout, kept for
    compatibility tests and benchmarks). An existing store keeps its own version.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, image_format: str = "webp",
                 wait: float = 0.0, format_version: int = FORMAT_VERSION):
        self.path = str(path)
        self.image_format = image_format
        if format_version not in (1, FORMAT_VERSION):
            raise ValueError(f"format_version must be 1 or {FORMAT_VERSION}, got {format_version}")
        self.lock = StoreLock(self.path)
        self.lock.acquire(wait=math.inf if wait is None else float(wait))
        try:
            self._open(overwrite, format_version)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, overwrite: bool, format_version: int) -> None:
        store_dir = Path(self.path)
        others = [entry for entry in os.scandir(store_dir) if entry.name != LOCK_FILE]
        if overwrite:
            for entry in others:
                shutil.rmtree(entry.path) if entry.is_dir() and not entry.is_symlink() else os.unlink(entry.path)
            others = []
        if (store_dir / "zarr.json").exists():
            self.root = zarr.open_group(self.path, mode="r+")
            self.record = read_record(self.path, self.root)
            self.version = int(self.record.get("version", 1))
            self._truncate_uncommitted()
            if "meta/seed" not in self.root:  # stores written before seeds were recorded
                with zarr.config.set(WRITE_EVERY_CHUNK):
                    self._create_meta("seed", (0,))
                    self._set_rows("meta/seed", 0, np.full(self.n_episodes, -1, np.int64))
            return
        if others:
            raise StoreError(self.path, f"exists but is not a zarr store (holds {sorted(e.name for e in others)[:5]}); "
                                        "pass overwrite=True to replace it")
        self.version = format_version
        self.root = zarr.open_group(self.path, mode="a")
        self.root.create_group("data")
        self.root.create_group("meta")
        with zarr.config.set(WRITE_EVERY_CHUNK):
            for name in META_ARRAYS + ("seed",):
                self._create_meta(name, (0,))
            self._create_meta("segments", (0, 3), dtype="int64")
        self.record = {
            "format": FORMAT_NAME, "version": self.version, "n_episodes": 0, "n_steps": 0,
            "n_segments": 0, "tasks": [], "texts": [], "keys": {}, "stats": {},
        }
        self._commit(self.record)

    # ------------------------------------------------------------------ public
    @property
    def n_episodes(self) -> int:
        return int(self.record["n_episodes"])

    def add_episode(
        self,
        data: dict[str, np.ndarray],
        task: str = "",
        instruction: str = "",
        success: bool = True,
        has_action: bool | None = None,
        segments: Iterable[tuple[int, int, str]] = (),
        seed: int | None = None,
    ) -> int:
        """Append one episode and commit it; returns its index.

        data: key -> (T, ...) arrays with the same T; images uint8 (T, H, W, C), the rest
        numeric, stored as float32. Without an ``action`` key the episode is stored
        action-free (zeros, flagged). task, instruction: strings ('' for none).
        segments: (start, end, text) with steps relative to the episode start.
        seed: the reset seed the episode was recorded with (-1 / None: unknown).
        """
        self._check_open()
        task = check_text(self.path, "task", task)
        instruction = check_text(self.path, "instruction", instruction)
        shapes = {key: self.root[f"data/{key}"].shape[1:] for key in self.record["keys"]}
        episode = check_episode(self.path, data, self.record["keys"], shapes, has_action, segments)
        record = copy.deepcopy(self.record)
        index, start = int(record["n_episodes"]), int(record["n_steps"])
        end = start + episode.length
        segment_rows = [[start + s, start + e, _table_index(record, "texts", text)] for s, e, text in episode.segments]
        meta_row = {
            "episode_ends": end, "task_id": _table_index(record, "tasks", task),
            "instruction_id": _table_index(record, "texts", instruction) if instruction else -1,
            "success": bool(success), "has_action": episode.has_action, "seed": -1 if seed is None else int(seed),
        }
        with zarr.config.set(WRITE_EVERY_CHUNK):
            for key, kind in episode.new_keys.items():
                self._create_data_array(key, episode.data[key], kind)
                record["keys"][key] = kind
            for key, value in episode.data.items():
                self._write_rows(f"data/{key}", start, value)
            self._write_meta(index, meta_row, int(record["n_segments"]), segment_rows)
        record.update(n_episodes=index + 1, n_steps=end, n_segments=int(record["n_segments"]) + len(segment_rows),
                      stats={})
        record.pop("stats_at", None)
        self._commit(record)
        self.record = record
        return index

    def write_stats(self, stats: dict[str, dict[str, np.ndarray]], n_steps: int | None = None) -> None:
        """Save statistics computed on the committed episodes (``n_steps``: the step count they saw)."""
        self._check_open()
        if n_steps is not None and int(n_steps) != int(self.record["n_steps"]):
            raise StoreError(self.path, f"statistics were computed on {n_steps} steps but the store commits "
                                        f"{self.record['n_steps']}; compute them again")
        record = copy.deepcopy(self.record)
        record["stats"] = {k: {n: np.asarray(v).tolist() for n, v in s.items()} for k, s in stats.items()}
        record["stats_at"] = {"n_episodes": int(record["n_episodes"]), "n_steps": int(record["n_steps"])}
        self._commit(record)
        self.record = record

    def reader(self) -> DemoStore:
        return DemoStore.open(self.path)

    def close(self) -> None:
        """Release the writer lock; the writer cannot be used afterwards."""
        self.lock.release()

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if not self.lock.held:
            raise StoreError(self.path, "this writer is closed (it no longer holds the writer lock)")

    def _create_meta(self, name: str, shape: tuple[int, ...], dtype: str | None = None) -> None:
        self.root["meta"].create_array(
            name, shape=shape, chunks=(META_CHUNK_ROWS,) + shape[1:], dtype=dtype or META_DTYPES[name],
            fill_value=-1 if name == "seed" else None, overwrite=True, **array_layout("meta", self.version))

    def _create_data_array(self, key: str, value: np.ndarray, kind: str) -> None:
        shape = (0,) + value.shape[1:]
        if kind == "image":
            self.root["data"].create_array(key, shape=shape, chunks=(1,) + value.shape[1:], dtype="uint8",
                                           overwrite=True, **array_layout("image", self.version, self.image_format))
        else:
            self.root["data"].create_array(key, shape=shape, chunks=(LOWDIM_CHUNK_STEPS,) + value.shape[1:],
                                           dtype="float32", overwrite=True, **array_layout("lowdim", self.version))

    def _write_rows(self, name: str, row: int, values: np.ndarray) -> None:
        """Grow array ``name`` to hold rows [row, row + len(values)) and write them."""
        arr = self.root[name]
        end = row + len(values)
        if arr.shape[0] < end:
            arr.resize((end,) + arr.shape[1:])
        arr[row:end] = values

    def _write_meta(self, episode: int, row: dict, first_segment: int, segment_rows: list) -> None:
        for name, value in row.items():
            self._write_rows(f"meta/{name}", episode, np.asarray([value], META_DTYPES[name]))
        if segment_rows:
            self._write_rows("meta/segments", first_segment, np.asarray(segment_rows, np.int64))

    def _set_rows(self, name: str, row: int, values: np.ndarray) -> None:
        if len(values):
            self._write_rows(name, row, values)

    def _truncate_uncommitted(self) -> None:
        """Cut arrays back to the committed length (a killed writer may have left a tail)."""
        n_steps, n_eps, n_seg = (int(self.record[k]) for k in ("n_steps", "n_episodes", "n_segments"))
        for key in self.record["keys"]:
            arr = self.root[f"data/{key}"]
            if arr.shape[0] < n_steps:
                raise StoreError(self.path, f"data/{key} has {arr.shape[0]} steps, fewer than the {n_steps} committed")
            if arr.shape[0] > n_steps:
                arr.resize((n_steps,) + arr.shape[1:])
        for name in META_ARRAYS + ("seed",):
            if f"meta/{name}" in self.root and self.root[f"meta/{name}"].shape[0] > n_eps:
                self.root[f"meta/{name}"].resize((n_eps,))
        if self.root["meta/segments"].shape[0] > n_seg:
            self.root["meta/segments"].resize((n_seg, 3))
        for key in list(self.root["data"].array_keys()):
            if key not in self.record["keys"]:  # created by an episode that never committed
                del self.root["data"][key]

    def _commit(self, record: dict) -> None:
        """Write the commit record: one atomic replace of the root group's zarr.json."""
        self.root.attrs["ditpolicy"] = record


def _table_index(record: dict, table: str, text: str) -> int:
    entries = record[table]
    if text not in entries:
        entries.append(text)
    return entries.index(text)
