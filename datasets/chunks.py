"""Chunk layout of store arrays, and reads that name the chunk that fails.

Layout of arrays created by format v2 (time or episode on axis 0):

- low-dim ``data/<key>`` (N, D) float32: chunks of 4096 steps, codecs bytes -> zstd -> crc32c;
- images ``data/<key>`` (N, H, W, C) uint8: one frame a chunk, codecs image -> crc32c;
- ``meta/*``: bytes -> zstd -> crc32c;
- chunk keys ``c.<i>.<j>...`` (one flat directory per array), and every chunk is written
  even when it equals the fill value, so a chunk absent inside the committed extent is
  damage, never an optimisation.

Format v1 arrays (no checksum, ``c/<i>/<j>`` keys, all-fill chunks skipped by zarr) are read
as they are; the checks that need v2 guarantees are skipped for them (see ``DemoStore``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from .errors import CorruptChunkError, StoreError
from .image_codec import ImageCodec

LOWDIM_CHUNK_STEPS = 4096
META_CHUNK_ROWS = 4096
CHUNK_SEPARATOR = "."


def array_layout(kind: str, version: int, image_format: str = "webp") -> dict:
    """``create_array`` keyword arguments for a new array of ``kind`` (image, lowdim, meta)."""
    if kind == "image":
        layout = {"serializer": ImageCodec(format=image_format), "compressors": None}
        if version >= 2:
            layout["compressors"] = (Crc32cCodec(),)
    else:
        layout = {}
        if version >= 2:
            layout["compressors"] = (ZstdCodec(level=0), Crc32cCodec())
    if version >= 2:
        layout["chunk_key_encoding"] = {"name": "default", "separator": CHUNK_SEPARATOR}
    return layout


def has_checksum(arr: zarr.Array) -> bool:
    return any(codec.get("name") == "crc32c" for codec in arr.metadata.to_dict()["codecs"])


def chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    """The store key of a chunk relative to its array, e.g. ``c.3.0`` (v2) or ``c/3/0`` (v1)."""
    return arr.metadata.chunk_key_encoding.encode_chunk_key(tuple(int(c) for c in coords))


def chunk_rows(arr: zarr.Array, coords: tuple[int, ...], n_rows: int) -> tuple[int, int]:
    """First and last row (inclusive, clipped to ``n_rows``) held by the chunk at ``coords``."""
    size = arr.chunks[0]
    return coords[0] * size, min((coords[0] + 1) * size, max(n_rows, 1)) - 1


def describe_chunk(arr: zarr.Array, name: str, coords: tuple[int, ...], n_rows: int) -> str:
    """``data/action chunk c.0.0 (steps 0..4095)``; meta arrays count rows."""
    first, last = chunk_rows(arr, coords, n_rows)
    unit = "steps" if name.startswith("data/") else "rows"
    span = f"{unit} {first}" if first == last else f"{unit} {first}..{last}"
    return f"{name} chunk {chunk_key(arr, coords)} ({span})"


def expected_chunks(arr: zarr.Array, n_rows: int) -> np.ndarray:
    """(K, ndim) int64 coordinates of every chunk that holds one of the first ``n_rows`` rows."""
    row_chunks = -(-n_rows // arr.chunks[0]) if n_rows > 0 else 0
    grid = (row_chunks,) + tuple(arr.cdata_shape[1:])
    if 0 in grid:
        return np.zeros((0, len(grid)), np.int64)
    return np.stack(np.unravel_index(np.arange(int(np.prod(grid))), grid), axis=1).astype(np.int64)


def _parse_keys(keys, separator: str, ndim: int) -> np.ndarray:
    """Chunk coordinates of store keys (relative to the array); other files are ignored."""
    coords = []
    prefix = "c" + separator
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix):].split(separator)
        if len(parts) != ndim or not all(p.isdigit() for p in parts):
            continue  # e.g. zarr's '<name>.<uuid>.partial' files left by a killed write
        coords.append([int(p) for p in parts])
    return np.asarray(coords, np.int64).reshape(-1, ndim)


def present_chunks(root: zarr.Group, name: str, local_dir: str | None, arr: zarr.Array | None = None) -> np.ndarray:
    """(K, ndim) coordinates of the chunks of array ``name`` (``arr``, if at hand) that exist in the store.

    local_dir: the store's directory for a local store (listed with ``os.scandir``/``os.walk``);
    None lists through the zarr store API (any fsspec store).
    """
    arr = root[name] if arr is None else arr
    separator = arr.metadata.chunk_key_encoding.to_dict().get("configuration", {}).get("separator", "/")
    if local_dir is not None:
        base = Path(local_dir) / name
        if separator == "/":
            keys = []
            for folder, _, files in os.walk(base / "c"):
                rel = Path(folder).relative_to(base).as_posix()
                keys.extend(f"{rel}/{f}" for f in files)
        else:
            try:
                keys = [entry.name for entry in os.scandir(base)]
            except FileNotFoundError:
                keys = []
    else:
        from zarr.core.sync import sync

        async def listing():
            prefix = f"{name}/"
            return [key[len(prefix):] async for key in root.store.list_prefix(prefix)]

        keys = sync(listing())
    return _parse_keys(keys, separator, arr.ndim)


def missing_chunks(root: zarr.Group, name: str, n_rows: int, local_dir: str | None,
                   arr: zarr.Array | None = None) -> np.ndarray:
    """(K, ndim) coordinates of chunks inside the first ``n_rows`` rows that are absent."""
    arr = root[name] if arr is None else arr
    want = expected_chunks(arr, n_rows)
    if not len(want):
        return want
    have = present_chunks(root, name, local_dir, arr)
    grid = (int(want[:, 0].max()) + 1,) + tuple(arr.cdata_shape[1:])
    have = have[(have < np.asarray(grid)).all(axis=1)] if len(have) else have
    have_flat = np.ravel_multi_index(tuple(have.T), grid) if len(have) else np.zeros(0, np.int64)
    want_flat = np.ravel_multi_index(tuple(want.T), grid)
    gone = np.setdiff1d(want_flat, have_flat)
    return np.stack(np.unravel_index(gone, grid), axis=1).astype(np.int64).reshape(-1, arr.ndim)


def _cause(exc: BaseException) -> str:
    text = str(exc)
    if "checksum" in text.lower():
        return "checksum mismatch (the bytes on disk changed after they were written)"
    return f"cannot be decoded ({type(exc).__name__}: {text[:200]})"


def read_chunk(store: str, name: str, arr: zarr.Array, coords: tuple[int, ...], n_rows: int,
               hint: bool = True) -> np.ndarray:
    """One whole chunk, or CorruptChunkError naming the store, array and chunk."""
    try:
        return arr.get_block_selection(tuple(int(c) for c in coords))
    except Exception as exc:
        advice = f"; run 'ditpolicy verify store={store}' for a full report" if hint else ""
        raise CorruptChunkError(store, f"{describe_chunk(arr, name, coords, n_rows)} is corrupt: "
                                       f"{_cause(exc)}{advice}") from exc


def locate_failure(store: str, name: str, arr: zarr.Array, rows: np.ndarray, exc: Exception) -> StoreError:
    """After a read of ``rows`` failed with ``exc``: the error naming the first bad chunk among them."""
    n_rows = arr.shape[0]
    for row_chunk in np.unique(np.asarray(rows, np.int64) // arr.chunks[0]):
        for inner in np.ndindex(*arr.cdata_shape[1:]):
            try:
                read_chunk(store, name, arr, (int(row_chunk),) + inner, n_rows)
            except CorruptChunkError as located:
                return located
    return StoreError(store, f"reading {name} failed ({type(exc).__name__}: {str(exc)[:200]})")


def _rows_of(selection, n_rows: int) -> np.ndarray:
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    if isinstance(first, slice):
        return np.arange(*first.indices(n_rows))
    if isinstance(first, (int, np.integer)):
        return np.array([first % max(n_rows, 1)])
    if isinstance(first, (list, np.ndarray)):
        return np.asarray(first).ravel()
    return np.arange(n_rows)


class CheckedArray:
    """A zarr array whose reads turn checksum and decode failures into CorruptChunkError.

    Everything else (shape, dtype, chunks, metadata, resize, ...) is the zarr array's own.
    """

    def __init__(self, store: str, name: str, arr: zarr.Array):
        self._store, self._name, self._arr = store, name, arr

    def __getitem__(self, selection) -> np.ndarray:
        try:
            return self._arr[selection]
        except Exception as exc:
            raise locate_failure(self._store, self._name, self._arr, _rows_of(selection, self._arr.shape[0]), exc) from exc

    def get_orthogonal_selection(self, selection) -> np.ndarray:
        try:
            return self._arr.get_orthogonal_selection(selection)
        except Exception as exc:
            raise locate_failure(self._store, self._name, self._arr, _rows_of(selection, self._arr.shape[0]), exc) from exc

    @property
    def zarr_array(self) -> zarr.Array:
        return self._arr

    def __getattr__(self, attr):
        return getattr(self._arr, attr)

    def __len__(self) -> int:
        return self._arr.shape[0]

    def __repr__(self) -> str:
        return f"CheckedArray({self._store}/{self._name}, shape={self._arr.shape}, dtype={self._arr.dtype})"
