"""Demonstration data: zarr stores, sequence sampling, normalisation.

The sampler (numba) and the normaliser (torch) load on first use, so that tools which only
read or write stores (``ditpolicy info``/``verify``, writer processes) start quickly.
"""

from importlib import import_module

from .errors import (
    BadEpisodeError, CorruptChunkError, MissingChunkError, MissingKeyError, StoreError, StoreLockedError,
    StoreVersionError,
)
from .lock import StoreLock
from .stats import compute_stats, write_store_stats
from .store import ACTION_KEY, DemoStore, Segment
from .writer import EpisodeWriter

_LAZY = {"Normalizer": ".normalizer", "SequenceSampler": ".sampler", "build_windows": ".sampler",
         "split_episodes": ".sampler"}

__all__ = [
    "ACTION_KEY", "BadEpisodeError", "CorruptChunkError", "DemoStore", "EpisodeWriter", "MissingChunkError",
    "MissingKeyError", "Normalizer", "Segment", "SequenceSampler", "StoreError", "StoreLock", "StoreLockedError",
    "StoreVersionError", "build_windows", "compute_stats", "split_episodes", "write_store_stats",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
