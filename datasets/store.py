"""Reading a zarr v3 demonstration store.

Layout (time on axis 0 of every ``data/`` array, E = episodes, N = steps, S = segments)::

    <store>/                       root group; attrs["ditpolicy"] holds the commit record
      data/<key>                   (N, ...) low-dim float32 or uint8 images (one frame a chunk)
      meta/episode_ends            (E,) int64, exclusive end step of each episode
      meta/task_id                 (E,) int32, index into the ``tasks`` table
      meta/instruction_id          (E,) int32, index into the ``texts`` table (-1: none)
      meta/success                 (E,) bool
      meta/has_action              (E,) bool, False for action-free (video only) episodes
      meta/segments                (S, 3) int64: start step, end step, text id (language
                                   segments of partially annotated play data)

The commit record ``attrs["ditpolicy"]`` counts the committed episodes, steps and segments
and carries the tables (task names, texts, key kinds, statistics). It is written last and in
one atomic file replace, so whatever a killed writer left behind it is simply not visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import image_codec  # noqa: F401  (registers the image codec with zarr)
from .errors import MissingKeyError, StoreError, StoreVersionError

FORMAT_NAME = "ditpolicy.demos"
FORMAT_VERSION = 1
ACTION_KEY = "action"
META_ARRAYS = ("episode_ends", "task_id", "instruction_id", "success", "has_action")


@dataclass
class Segment:
    """A language-annotated span [start, end) of global steps."""

    start: int
    end: int
    text: str


class DemoStore:
    """Read-only view of the committed part of a demonstration store.

    >>> store = DemoStore.open("demos.zarr")
    >>> store.n_episodes, store.keys
    >>> episode = store.episode(0)          # dict key -> (T, ...) arrays
    """

    def __init__(self, path: str | Path, root: zarr.Group, record: dict):
        self.path = str(path)
        self.root = root
        self.record = record
        self.n_episodes: int = int(record["n_episodes"])
        self.n_steps: int = int(record["n_steps"])
        self.tasks: list[str] = list(record.get("tasks", []))
        self.texts: list[str] = list(record.get("texts", []))
        self.key_kinds: dict[str, str] = dict(record.get("keys", {}))
        self._meta_cache: dict[str, np.ndarray] = {}
        self._validate()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> "DemoStore":
        path = str(path)
        if "://" not in path and not Path(path).exists():
            raise StoreError(path, "no such store (the path does not exist)")
        try:
            root = zarr.open_group(path, mode="r")
        except Exception as exc:  # zarr raises several types for a non-store directory
            raise StoreError(path, f"not a readable zarr group ({type(exc).__name__}: {exc})") from exc
        return cls(path, root, read_record(path, root))

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        for name in META_ARRAYS:
            arr = self._meta_array(name)
            if arr.shape[0] < self.n_episodes:
                raise StoreError(
                    self.path,
                    f"meta/{name} holds {arr.shape[0]} entries but {self.n_episodes} episodes are committed",
                )
        ends = self.episode_ends
        if self.n_episodes:
            bad = np.nonzero(np.diff(np.concatenate([[0], ends])) <= 0)[0]
            if bad.size:
                i = int(bad[0])
                prev = 0 if i == 0 else int(ends[i - 1])
                raise StoreError(
                    self.path,
                    f"meta/episode_ends is not increasing: episode_ends[{i}]={int(ends[i])} "
                    f"<= {'start 0' if i == 0 else f'episode_ends[{i - 1}]={prev}'}",
                )
            if int(ends[-1]) != self.n_steps:
                raise StoreError(
                    self.path,
                    f"meta/episode_ends ends at {int(ends[-1])} but the commit record counts {self.n_steps} steps",
                )
        if "data" not in self.root:
            raise MissingKeyError(self.path, "missing group 'data'")
        for key in self.key_kinds:
            arr = self.array(key)
            if arr.shape[0] < self.n_steps:
                raise StoreError(
                    self.path,
                    f"ragged arrays: data/{key} has {arr.shape[0]} steps but meta/episode_ends "
                    f"needs {self.n_steps}",
                )
        if ACTION_KEY in self.key_kinds:
            check_finite_actions(self)

    # ------------------------------------------------------------------ meta
    def _meta_array(self, name: str) -> np.ndarray:
        if name not in self._meta_cache:
            try:
                arr = self.root[f"meta/{name}"]
            except KeyError:
                raise MissingKeyError(self.path, f"missing key 'meta/{name}'") from None
            self._meta_cache[name] = arr[: max(self.n_episodes, 0)] if arr.shape[0] else np.zeros(0, arr.dtype)
        return self._meta_cache[name]

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 exclusive end step of each committed episode."""
        return self._meta_array("episode_ends")[: self.n_episodes].astype(np.int64)

    @property
    def episode_starts(self) -> np.ndarray:
        ends = self.episode_ends
        return np.concatenate([[0], ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    @property
    def task_ids(self) -> np.ndarray:
        return self._meta_array("task_id")[: self.n_episodes].astype(np.int64)

    @property
    def success(self) -> np.ndarray:
        return self._meta_array("success")[: self.n_episodes].astype(bool)

    @property
    def has_action(self) -> np.ndarray:
        return self._meta_array("has_action")[: self.n_episodes].astype(bool)

    def instruction(self, episode: int) -> str:
        text_id = int(self._meta_array("instruction_id")[episode])
        return self.texts[text_id] if text_id >= 0 else ""

    def task_name(self, episode: int) -> str:
        return self.tasks[int(self.task_ids[episode])]

    @property
    def segments(self) -> list[Segment]:
        count = int(self.record.get("n_segments", 0))
        if count == 0:
            return []
        rows = self.root["meta/segments"][:count]
        return [Segment(int(s), int(e), self.texts[int(t)]) for s, e, t in rows]

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """key -> {min, max, mean, std, q01, q99} as float64 arrays (empty if not computed)."""
        raw = self.record.get("stats", {})
        return {key: {k: np.asarray(v, dtype=np.float64) for k, v in s.items()} for key, s in raw.items()}

    # ------------------------------------------------------------------ data
    @property
    def keys(self) -> list[str]:
        return list(self.key_kinds)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, kind in self.key_kinds.items() if kind == "image"]

    @property
    def lowdim_keys(self) -> list[str]:
        return [k for k, kind in self.key_kinds.items() if kind == "lowdim"]

    def array(self, key: str) -> zarr.Array:
        """The zarr array behind ``data/<key>`` (may hold uncommitted steps past ``n_steps``)."""
        try:
            return self.root[f"data/{key}"]
        except KeyError:
            have = ", ".join(sorted(self.key_kinds)) or "none"
            raise MissingKeyError(self.path, f"missing key 'data/{key}' (keys: {have})") from None

    def read(self, key: str) -> np.ndarray:
        """All committed steps of ``data/<key>``: (N, ...)."""
        return self.array(key)[: self.n_steps]

    def episode(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        if not 0 <= index < self.n_episodes:
            raise IndexError(f"store {self.path}: episode {index} out of range [0, {self.n_episodes})")
        start, end = int(self.episode_starts[index]), int(self.episode_ends[index])
        return {key: self.array(key)[start:end] for key in (keys or self.keys)}

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """key -> (per-step shape, dtype)."""
        out = {}
        for key in self.keys:
            arr = self.array(key)
            out[key] = (tuple(arr.shape[1:]), str(arr.dtype))
        return out

    def __repr__(self) -> str:
        return f"DemoStore({self.path!r}, episodes={self.n_episodes}, steps={self.n_steps}, keys={self.keys})"


def read_record(path: str, root: zarr.Group) -> dict[str, Any]:
    """The commit record of a store, with format and version checked."""
    record = root.attrs.get("ditpolicy")
    if record is None:
        raise MissingKeyError(path, "missing attribute 'ditpolicy' (not a ditpolicy demonstration store)")
    if record.get("format") != FORMAT_NAME:
        raise StoreError(path, f"unknown store format {record.get('format')!r} (expected {FORMAT_NAME!r})")
    version = int(record.get("version", 0))
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            path,
            f"written by a newer ditpolicy (store format v{version}); this ditpolicy reads up to "
            f"v{FORMAT_VERSION}: upgrade ditpolicy to read it",
        )
    for field in ("n_episodes", "n_steps", "keys"):
        if field not in record:
            raise MissingKeyError(path, f"commit record lacks field '{field}'")
    return record


def check_finite_actions(store: DemoStore) -> None:
    """Raise naming the step and episode of the first NaN/inf action."""
    actions = store.read(ACTION_KEY)
    bad = ~np.isfinite(actions.reshape(actions.shape[0], -1)).all(axis=1)
    if bad.any():
        step = int(np.argmax(bad))
        episode = int(np.searchsorted(store.episode_ends, step, side="right"))
        raise StoreError(
            store.path,
            f"data/{ACTION_KEY} holds NaN/inf at step {step} (episode {episode}); "
            "repair or drop that episode",
        )
