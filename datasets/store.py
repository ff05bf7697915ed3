"""Reading a zarr v3 demonstration store.

Layout (time on axis 0 of every ``data/`` array, E = episodes, N = steps, S = segments)::

    <store>/                       root group; attrs["ditpolicy"] holds the commit record
      writer.lock                  the writer lock (see ``lock.py``); not part of the data
      data/<key>                   (N, ...) low-dim float32 or uint8 images (one frame a chunk)
      meta/episode_ends            (E,) int64, exclusive end step of each episode
      meta/task_id                 (E,) int32, index into the ``tasks`` table
      meta/instruction_id          (E,) int32, index into the ``texts`` table (-1: none)
      meta/success                 (E,) bool
      meta/has_action              (E,) bool, False for action-free (video only) episodes
      meta/seed                    (E,) int64, the reset seed of each episode (-1: unknown);
                                   absent in stores written before it existed
      meta/segments                (S, 3) int64: start step, end step, text id (language
                                   segments of partially annotated play data)

The commit record ``attrs["ditpolicy"]`` counts the committed episodes, steps and segments
and carries the tables (task names, texts, key kinds, statistics and the step count they
were computed on). It is written last and in one atomic file replace, so whatever a killed
writer left behind it is simply not visible.

Format versions: v2 (written now) adds a crc32c checksum to every chunk and writes every
chunk (see ``chunks.py``); v1 stores (no checksums) are still read. Opening checks the
commit record, the meta arrays, that every chunk of the committed extent is present, and
that every low-dim value is finite; bad chunks found later name the array and chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import image_codec  # noqa: F401  (registers the image codec with zarr)
from .checks import (
    ACTION_KEY, META_ARRAYS, check_chunks_present, check_episode_ends, check_finite, check_lengths, checked_arrays,
)
from .chunks import CheckedArray
from .errors import MissingKeyError, StoreError, StoreVersionError
from .remote import open_location

FORMAT_NAME = "ditpolicy.demos"
FORMAT_VERSION = 2

__all__ = ["ACTION_KEY", "FORMAT_NAME", "FORMAT_VERSION", "META_ARRAYS", "DemoStore", "Segment", "read_record"]


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

    def __init__(self, path: str | Path, root: zarr.Group, record: dict, check: bool = True):
        self.path = str(path)
        self.root = root
        self.record = record
        self.version: int = int(record.get("version", 1))
        self.n_episodes: int = int(record["n_episodes"])
        self.n_steps: int = int(record["n_steps"])
        # v1 writers accepted task=None; show it as an empty name rather than fail on it
        self.tasks: list[str] = ["" if t is None else str(t) for t in record.get("tasks", [])]
        self.texts: list[str] = ["" if t is None else str(t) for t in record.get("texts", [])]
        self.key_kinds: dict[str, str] = dict(record.get("keys", {}))
        self.local_dir: str | None = None if "://" in self.path else self.path
        self._meta_cache: dict[str, np.ndarray] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._lowdim: dict[str, np.ndarray] = {}
        if check:
            self._validate()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, check: bool = True, cache_dir: str | Path | None = None) -> "DemoStore":
        """Open the committed part of a store: a local path or an fsspec URL.

        check: verify the meta arrays, chunk presence and finite low-dim values now (reads every
        low-dim array once); ``check=False`` is for tools that report problems themselves.
        cache_dir: where chunks of a remote URL are cached (remote.py; default ~/.cache).
        """
        path = str(path)
        if "://" not in path and not Path(path).exists():
            raise StoreError(path, "no such store (the path does not exist)")
        try:
            root = zarr.open_group(open_location(path, cache_dir), mode="r")
        except Exception as exc:  # zarr raises several types for a non-store directory
            raise StoreError(path, f"not a readable zarr group ({type(exc).__name__}: {exc})") from exc
        return cls(path, root, read_record(path, root), check=check)

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        check_lengths(self)
        for name in checked_arrays(self):
            check_chunks_present(self, name)
        check_episode_ends(self)
        for key in self.lowdim_keys:
            check_finite(self, key, self.read(key))

    # ------------------------------------------------------------------ arrays
    def zarr_array(self, name: str) -> zarr.Array:
        """The zarr array at ``name`` (``data/<key>`` or ``meta/<name>``), looked up once."""
        if name not in self._arrays:
            try:
                self._arrays[name] = self.root[name]
            except KeyError:
                if name.startswith("data/"):
                    have = ", ".join(sorted(self.key_kinds)) or "none"
                    raise MissingKeyError(self.path, f"missing key '{name}' (keys: {have})") from None
                raise MissingKeyError(self.path, f"missing key '{name}'") from None
        return self._arrays[name]

    def has_array(self, name: str) -> bool:
        try:
            self.zarr_array(name)
        except MissingKeyError:
            return False
        return True

    # ------------------------------------------------------------------ meta
    def meta_array(self, name: str) -> np.ndarray:
        """The committed rows of ``meta/<name>`` (E,), read once."""
        if name not in self._meta_cache:
            arr = CheckedArray(self.path, f"meta/{name}", self.zarr_array(f"meta/{name}"))
            self._meta_cache[name] = arr[: max(self.n_episodes, 0)] if arr.shape[0] else np.zeros(0, arr.dtype)
        return self._meta_cache[name]

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 exclusive end step of each committed episode."""
        return self.meta_array("episode_ends")[: self.n_episodes].astype(np.int64)

    @property
    def episode_starts(self) -> np.ndarray:
        ends = self.episode_ends
        return np.concatenate([[0], ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    @property
    def task_ids(self) -> np.ndarray:
        return self.meta_array("task_id")[: self.n_episodes].astype(np.int64)

    @property
    def success(self) -> np.ndarray:
        return self.meta_array("success")[: self.n_episodes].astype(bool)

    @property
    def has_action(self) -> np.ndarray:
        return self.meta_array("has_action")[: self.n_episodes].astype(bool)

    @property
    def seeds(self) -> np.ndarray:
        """(E,) int64 reset seed of each episode; -1 where none was recorded (and for old stores)."""
        if not self.has_array("meta/seed"):
            return np.full(self.n_episodes, -1, np.int64)
        seeds = self.meta_array("seed")[: self.n_episodes].astype(np.int64)
        return np.concatenate([seeds, np.full(self.n_episodes - len(seeds), -1, np.int64)])

    def instruction(self, episode: int) -> str:
        text_id = int(self.meta_array("instruction_id")[episode])
        return self.texts[text_id] if text_id >= 0 else ""

    def task_name(self, episode: int) -> str:
        return self.tasks[int(self.task_ids[episode])]

    @property
    def segments(self) -> list[Segment]:
        count = int(self.record.get("n_segments", 0))
        if count == 0:
            return []
        rows = CheckedArray(self.path, "meta/segments", self.zarr_array("meta/segments"))[:count]
        return [Segment(int(s), int(e), self.texts[int(t)]) for s, e, t in rows]

    @property
    def stats_status(self) -> str:
        """'current', 'absent', or 'stale (...)' for the statistics in the commit record."""
        if not self.record.get("stats"):
            return "absent"
        at = self.record.get("stats_at")
        if not at:
            return "stale (written by an older ditpolicy that did not record their step count)"
        if int(at.get("n_steps", -1)) != self.n_steps or int(at.get("n_episodes", -1)) != self.n_episodes:
            return (f"stale (computed on {at.get('n_episodes')} episodes / {at.get('n_steps')} steps, "
                    f"the store commits {self.n_episodes} / {self.n_steps})")
        return "current"

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """key -> {min, max, mean, std, q01, q99} as float64 arrays.

        Empty unless they were computed on exactly the committed episodes (``stats_status``),
        so ``store.stats or compute_stats(store)`` never uses statistics a killed writer left stale.
        """
        if self.stats_status != "current":
            return {}
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

    def array(self, key: str) -> CheckedArray:
        """The zarr array behind ``data/<key>`` (may hold uncommitted steps past ``n_steps``), with
        reads that raise CorruptChunkError naming the chunk."""
        return CheckedArray(self.path, f"data/{key}", self.zarr_array(f"data/{key}"))

    def read(self, key: str) -> np.ndarray:
        """All committed steps of ``data/<key>``: (N, ...).

        Low-dim keys are read once (opening the store reads them to check them) and returned
        as the same read-only array each time; image keys are read anew.
        """
        if key in self._lowdim:
            return self._lowdim[key]
        values = self.array(key)[: self.n_steps]
        if self.key_kinds.get(key) == "lowdim":
            values.setflags(write=False)
            self._lowdim[key] = values
        return values

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
