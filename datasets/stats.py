"""Per-dimension dataset statistics, computed once and kept in the store's commit record
together with the episode and step counts they were computed on (``DemoStore.stats`` is
empty when those differ from the commit)."""

from __future__ import annotations

import numpy as np

from .store import DemoStore
from .writer import EpisodeWriter

STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")
MAX_IMAGE_FRAMES = 512
MAX_IMAGE_PIXELS = 1 << 22       # per channel: larger frames are read on a pixel grid (bounded memory)


def array_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over axis 0 of (N, ...) values; each result has shape (...)."""
    values = np.asarray(values, dtype=np.float64)
    q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
    return {
        "min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
        "q01": q01, "q99": q99,
    }


def compute_stats(store: DemoStore, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Low-dim keys: over every committed step (action-free episodes left out of ``action``).
    Image keys: per channel, over up to 512 frames drawn evenly, in [0, 1] units; past 4 M
    pixels a channel, on every k-th row and column."""
    stats = {}
    for key in store.lowdim_keys:
        values = store.read(key)
        if key == "action" and not store.has_action.all():
            keep = np.repeat(store.has_action, store.episode_lengths)
            values = values[keep]
        if len(values):
            stats[key] = array_stats(values)
    for key in store.image_keys:
        frames = np.unique(np.linspace(0, store.n_steps - 1, min(MAX_IMAGE_FRAMES, store.n_steps)).astype(int))
        raw = store.array(key).get_orthogonal_selection((frames,))              # (F, H, W, C) uint8
        stride = max(1, int(np.ceil(np.sqrt(raw[..., 0].size / MAX_IMAGE_PIXELS))))
        pixels = raw[:, ::stride, ::stride] / 255.0
        stats[key] = array_stats(pixels.reshape(-1, pixels.shape[-1]))
    return stats


def refresh_stats(writer: EpisodeWriter) -> None:
    """Save statistics through an open ``writer`` unless they already describe every committed
    episode (or there are none): the last step of collecting or recording."""
    store = writer.reader()
    if store.n_episodes and store.stats_status != "current":
        writer.write_stats(compute_stats(store), n_steps=store.n_steps)


def write_store_stats(path: str, wait: float = 0.0) -> dict[str, dict[str, np.ndarray]]:
    """Compute the statistics of a store and save them in it; returns them.

    Holds the writer lock throughout (``wait`` as for EpisodeWriter), so the statistics are
    those of the episodes committed when they are saved.
    """
    DemoStore.open(path, check=False)  # names a missing store instead of creating one
    with EpisodeWriter(path, wait=wait) as writer:
        store = writer.reader()
        stats = compute_stats(store)
        writer.write_stats(stats, n_steps=store.n_steps)
    return stats
