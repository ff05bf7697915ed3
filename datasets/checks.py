"""Consistency checks of a committed store, one concern each; each raises a StoreError
subclass naming the store, the array and the step / row / chunk at fault.

``DemoStore`` runs them all when it opens a store; ``verify.py`` runs them array by array
and collects every problem instead of stopping at the first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .chunks import describe_chunk, missing_chunks
from .errors import MissingChunkError, MissingKeyError, StoreError

if TYPE_CHECKING:
    from .store import DemoStore

ACTION_KEY = "action"
META_ARRAYS = ("episode_ends", "task_id", "instruction_id", "success", "has_action")


def check_lengths(store: DemoStore) -> None:
    """Every meta array holds the committed episodes and every data array the committed steps."""
    for name in META_ARRAYS:
        rows = store.zarr_array(f"meta/{name}").shape[0]
        if rows < store.n_episodes:
            raise StoreError(store.path, f"meta/{name} holds {rows} entries but {store.n_episodes} "
                                         "episodes are committed")
    if "data" not in store.root:
        raise MissingKeyError(store.path, "missing group 'data'")
    for key in store.key_kinds:
        arr = store.array(key)
        if arr.shape[0] < store.n_steps:
            raise StoreError(store.path, f"ragged arrays: data/{key} has {arr.shape[0]} steps but "
                                         f"meta/episode_ends needs {store.n_steps}")


def check_episode_ends(store: DemoStore) -> None:
    """episode_ends strictly increasing from 0 and ending at the committed step count."""
    ends = store.episode_ends
    if not store.n_episodes:
        return
    bad = np.nonzero(np.diff(np.concatenate([[0], ends])) <= 0)[0]
    if bad.size:
        i = int(bad[0])
        prev = 0 if i == 0 else int(ends[i - 1])
        raise StoreError(
            store.path,
            f"meta/episode_ends is not increasing: episode_ends[{i}]={int(ends[i])} "
            f"<= {'start 0' if i == 0 else f'episode_ends[{i - 1}]={prev}'}",
        )
    if int(ends[-1]) != store.n_steps:
        raise StoreError(store.path, f"meta/episode_ends ends at {int(ends[-1])} but the commit record "
                                     f"counts {store.n_steps} steps")


def committed_rows(store: DemoStore, name: str) -> int:
    """Rows of array ``name`` (``data/<key>`` or ``meta/<name>``) covered by the commit record."""
    if name.startswith("data/"):
        return store.n_steps
    if name == "meta/segments":
        return int(store.record.get("n_segments", 0))
    return store.n_episodes


def checked_arrays(store: DemoStore) -> list[str]:
    """Names of the arrays whose chunk presence can be checked.

    v1 stores were written with zarr's default of skipping chunks that equal the fill value,
    so their meta arrays (often all zero) are left out; their data arrays are checked.
    """
    names = [f"data/{key}" for key in store.key_kinds]
    if store.version >= 2:
        names += [f"meta/{name}" for name in META_ARRAYS + ("seed", "segments") if store.has_array(f"meta/{name}")]
    return names


def absent_chunks(store: DemoStore, name: str) -> np.ndarray:
    """(K, ndim) coordinates of the chunks of ``name`` that should hold committed rows but are absent."""
    arr = store.zarr_array(name)
    gone = missing_chunks(store.root, name, committed_rows(store, name), store.local_dir, arr)
    if len(gone) and store.version < 2 and name == f"data/{ACTION_KEY}":
        gone = _drop_action_free_chunks(store, arr, gone)
    return gone


def check_chunks_present(store: DemoStore, name: str) -> None:
    """Raise MissingChunkError naming the first absent chunk of ``name`` inside the committed extent."""
    gone = absent_chunks(store, name)
    if len(gone):
        first = tuple(int(c) for c in gone[0])
        more = f" ({len(gone)} chunks missing in all)" if len(gone) > 1 else ""
        raise MissingChunkError(
            store.path,
            f"{describe_chunk(store.zarr_array(name), name, first, committed_rows(store, name))} is missing from the "
            f"store{more}; reading it would give fill values instead of data. Restore the store from a copy "
            "(or collect it again)",
        )


def _drop_action_free_chunks(store: DemoStore, arr, gone: np.ndarray) -> np.ndarray:
    """v1 action chunks that only hold action-free (all-zero) steps were legitimately skipped."""
    step_has_action = np.repeat(store.has_action, store.episode_lengths)
    size = arr.chunks[0]
    keep = [row for row in gone if step_has_action[row[0] * size:(row[0] + 1) * size].any()]
    return np.asarray(keep, np.int64).reshape(-1, gone.shape[1])


def first_nonfinite(values: np.ndarray) -> int | None:
    """The first row of (N, ...) values holding NaN or inf, or None."""
    if values.dtype.kind != "f" or not len(values):
        return None
    bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def check_finite(store: DemoStore, key: str, values: np.ndarray, offset: int = 0) -> None:
    """Raise naming the key, step and episode of the first NaN/inf row of ``values`` (rows from ``offset``)."""
    row = first_nonfinite(values)
    if row is not None:
        step = offset + row
        episode = int(np.searchsorted(store.episode_ends, step, side="right"))
        raise StoreError(store.path, f"data/{key} holds NaN/inf at step {step} (episode {episode}); "
                                     "repair or drop that episode")
