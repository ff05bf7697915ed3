"""Append-only, crash-safe episode writer for demonstration stores.

An episode is written in this order: its data arrays are grown and filled, then its
per-episode ``meta/`` entries, and last the commit record (root attributes) that counts it.
zarr's local store replaces every file atomically, so a writer killed at any point leaves
the earlier episodes readable; the partial tail is cut off when the store is next opened
for appending.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr

from .errors import BadEpisodeError, StoreError
from .image_codec import ImageCodec
from .store import ACTION_KEY, FORMAT_NAME, FORMAT_VERSION, DemoStore, read_record

LOWDIM_CHUNK_STEPS = 4096


def _kind_of(value: np.ndarray) -> str:
    """uint8 arrays with (H, W, C) frames are images; everything else is low-dim float32."""
    return "image" if value.dtype == np.uint8 and value.ndim == 4 else "lowdim"


class EpisodeWriter:
    """Appends whole episodes to a store; creates it on first use.

    >>> with EpisodeWriter("demos.zarr") as writer:
    ...     writer.add_episode({"obs": obs, "action": act}, task="reach-v3",
    ...                        instruction="reach the red goal", success=True)
    """

    def __init__(self, path: str | Path, overwrite: bool = False, image_format: str = "webp"):
        self.path = str(path)
        self.image_format = image_format
        if overwrite and Path(self.path).exists():
            shutil.rmtree(self.path)
        if Path(self.path).exists():
            self.root = zarr.open_group(self.path, mode="r+")
            self.record = read_record(self.path, self.root)
            self._truncate_uncommitted()
        else:
            self.root = zarr.open_group(self.path, mode="w")
            self.root.create_group("data")
            meta = self.root.create_group("meta")
            for name, dtype in (("episode_ends", "int64"), ("task_id", "int32"),
                                ("instruction_id", "int32"), ("success", "bool"), ("has_action", "bool")):
                meta.create_array(name, shape=(0,), chunks=(4096,), dtype=dtype)
            meta.create_array("segments", shape=(0, 3), chunks=(4096, 3), dtype="int64")
            self.record = {
                "format": FORMAT_NAME, "version": FORMAT_VERSION, "n_episodes": 0, "n_steps": 0,
                "n_segments": 0, "tasks": [], "texts": [], "keys": {}, "stats": {},
            }
            self._commit()

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
    ) -> int:
        """Append one episode and commit it; returns its index.

        data: key -> (T, ...) arrays with the same T; images uint8 (T, H, W, C), the rest
        float32. Without an ``action`` key the episode is stored action-free (zeros, flagged).
        segments: (start, end, text) with steps relative to the episode start.
        """
        data = self._check_episode(data, has_action)
        length = next(iter(data.values())).shape[0]
        if has_action is None:
            has_action = self._episode_has_action
        start = int(self.record["n_steps"])
        end = start + length
        for key, value in data.items():
            arr = self.root[f"data/{key}"]
            arr.resize((end,) + arr.shape[1:])
            arr[start:end] = value
        episode = self.n_episodes
        task_id = self._table_index("tasks", task)
        text_id = self._table_index("texts", instruction) if instruction else -1
        for name, value in (("episode_ends", end), ("task_id", task_id), ("instruction_id", text_id),
                            ("success", bool(success)), ("has_action", bool(has_action))):
            self._set_row(self.root[f"meta/{name}"], episode, value)
        n_segments = int(self.record["n_segments"])
        for seg_start, seg_end, text in segments:
            if not 0 <= seg_start < seg_end <= length:
                raise BadEpisodeError(self.path, f"segment ({seg_start}, {seg_end}) outside episode of {length} steps")
            self._set_row(self.root["meta/segments"], n_segments,
                          [start + seg_start, start + seg_end, self._table_index("texts", text)])
            n_segments += 1
        self.record.update(n_episodes=episode + 1, n_steps=end, n_segments=n_segments)
        self._commit()
        return episode

    def write_stats(self, stats: dict[str, dict[str, np.ndarray]]) -> None:
        self.record["stats"] = {k: {n: np.asarray(v).tolist() for n, v in s.items()} for k, s in stats.items()}
        self._commit()

    def reader(self) -> DemoStore:
        return DemoStore.open(self.path)

    def close(self) -> None:
        pass

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_episode(self, data: dict[str, np.ndarray], has_action: bool | None) -> dict[str, np.ndarray]:
        if not data:
            raise BadEpisodeError(self.path, "episode has no arrays")
        data = {k: np.asarray(v) for k, v in data.items()}
        self._episode_has_action = ACTION_KEY in data if has_action is None else has_action
        lengths = {k: v.shape[0] if v.ndim else 0 for k, v in data.items()}
        if len(set(lengths.values())) != 1:
            raise BadEpisodeError(self.path, f"ragged episode: arrays have different lengths {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise BadEpisodeError(self.path, "episode has zero steps")
        if ACTION_KEY in data and not np.isfinite(data[ACTION_KEY]).all():
            step = int(np.argmax(~np.isfinite(data[ACTION_KEY].reshape(length, -1)).all(1)))
            raise BadEpisodeError(
                self.path, f"data/{ACTION_KEY} of the new episode holds NaN/inf at step {step}; episode not written"
            )
        kinds = self.record["keys"]
        if kinds:
            if ACTION_KEY not in data and ACTION_KEY in kinds:
                shape = self.root[f"data/{ACTION_KEY}"].shape[1:]
                data[ACTION_KEY] = np.zeros((length,) + shape, np.float32)
            missing = set(kinds) - set(data)
            extra = set(data) - set(kinds)
            if missing or extra:
                raise BadEpisodeError(
                    self.path, f"episode keys differ from the store: missing {sorted(missing)}, unexpected {sorted(extra)}"
                )
        out = {}
        for key, value in data.items():
            kind = kinds.get(key) or _kind_of(value)
            value = value.astype(np.uint8 if kind == "image" else np.float32, copy=False)
            if key in kinds:
                want = self.root[f"data/{key}"].shape[1:]
                if value.shape[1:] != want:
                    raise BadEpisodeError(
                        self.path, f"data/{key}: episode frames have shape {value.shape[1:]}, store holds {want}"
                    )
            out[key] = value
        for key, value in out.items():
            if key not in kinds:
                self._create_array(key, value)
        return out

    def _create_array(self, key: str, value: np.ndarray) -> None:
        kind = _kind_of(value)
        shape = (0,) + value.shape[1:]
        if kind == "image":
            self.root["data"].create_array(
                key, shape=shape, chunks=(1,) + value.shape[1:], dtype="uint8",
                serializer=ImageCodec(format=self.image_format), compressors=None,
            )
        else:
            self.root["data"].create_array(
                key, shape=shape, chunks=(LOWDIM_CHUNK_STEPS,) + value.shape[1:], dtype="float32",
            )
        self.record["keys"][key] = kind

    def _table_index(self, table: str, text: str) -> int:
        entries = self.record[table]
        if text not in entries:
            entries.append(text)
        return entries.index(text)

    @staticmethod
    def _set_row(arr: zarr.Array, row: int, value) -> None:
        if arr.shape[0] <= row:
            arr.resize((row + 1,) + arr.shape[1:])
        arr[row] = value

    def _truncate_uncommitted(self) -> None:
        """Cut arrays back to the committed length (a killed writer may have left a tail)."""
        n_steps, n_eps, n_seg = (int(self.record[k]) for k in ("n_steps", "n_episodes", "n_segments"))
        for key in self.record["keys"]:
            arr = self.root[f"data/{key}"]
            if arr.shape[0] != n_steps:
                if arr.shape[0] < n_steps:
                    raise StoreError(self.path, f"data/{key} has {arr.shape[0]} steps, fewer than the {n_steps} committed")
                arr.resize((n_steps,) + arr.shape[1:])
        for name in ("episode_ends", "task_id", "instruction_id", "success", "has_action"):
            arr = self.root[f"meta/{name}"]
            if arr.shape[0] > n_eps:
                arr.resize((n_eps,))
        if self.root["meta/segments"].shape[0] > n_seg:
            self.root["meta/segments"].resize((n_seg, 3))
        for key in list(self.root["data"].array_keys()):
            if key not in self.record["keys"]:  # created by an episode that never committed
                del self.root["data"][key]

    def _commit(self) -> None:
        self.root.attrs["ditpolicy"] = self.record
