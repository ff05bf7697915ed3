"""Demonstration data: zarr stores, sequence sampling, normalisation."""

from .errors import BadEpisodeError, MissingKeyError, StoreError, StoreVersionError
from .normalizer import Normalizer
from .sampler import SequenceSampler, build_windows, split_episodes
from .stats import compute_stats, write_store_stats
from .store import ACTION_KEY, DemoStore, Segment
from .writer import EpisodeWriter

__all__ = [
    "ACTION_KEY", "BadEpisodeError", "DemoStore", "EpisodeWriter", "MissingKeyError", "Normalizer",
    "Segment", "SequenceSampler", "StoreError", "StoreVersionError", "build_windows", "compute_stats",
    "split_episodes", "write_store_stats",
]
