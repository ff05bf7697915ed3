"""Training batches by step, from the sampler in this process or from loader worker processes.

The rows of training step k (and its noise seed) are a function of (seed, k) alone:
``step_draws``. A batch can therefore be gathered ahead of time, in another process, and
still be exactly the batch of step k, and a resumed run draws what the uninterrupted one drew.

``StepBatches`` is a ``torch.utils.data.Dataset`` whose item k is this rank's part of the
batch of step k. With ``workers > 0`` a ``DataLoader`` runs it in worker processes that open
the store themselves (a local path or a URL) and decode image frames from zarr on demand,
without the in-RAM frame cache, with ``prefetch`` steps in flight per worker and pinned
memory for CUDA. With ``workers = 0`` the trainer gathers in its own process as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .sampler import SequenceSampler


def step_draws(seed: int, step: int, sampler: SequenceSampler, batch: int) -> tuple[np.ndarray, int]:
    """(rows (batch,) of the sampler's training windows, noise seed) of training step ``step``."""
    rng = np.random.default_rng([int(seed), int(step)])
    return sampler.draw(rng, batch), int(rng.integers(0, 1 << 62))


@dataclass
class StepBatches(torch.utils.data.Dataset):
    """Item ``step``: rows ``lo:hi`` of the global batch of that step, gathered by a
    ``SequenceSampler`` over ``store_path`` (opened lazily, once per process).

    ``sampler_args``: the SequenceSampler's keyword arguments (obs_keys, n_obs, horizon,
    episode_mask, image_cache_bytes)."""

    store_path: str
    cache_dir: str | None
    sampler_args: dict
    seed: int
    batch: int
    lo: int
    hi: int
    _sampler: SequenceSampler | None = field(default=None, repr=False)

    def sampler(self) -> SequenceSampler:
        if self._sampler is None:
            from .store import DemoStore

            store = DemoStore.open(self.store_path, check=False, cache_dir=self.cache_dir)
            self._sampler = SequenceSampler(store, **self.sampler_args)
        return self._sampler

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        sampler = self.sampler()
        rows, _ = step_draws(self.seed, step, sampler, self.batch)
        return sampler.sample_batch(rows[self.lo:self.hi])

    def __getstate__(self):                      # workers open their own store
        state = dict(self.__dict__)
        state["_sampler"] = None
        return state


def step_loader(batches: StepBatches, start: int, stop: int, workers: int, prefetch: int = 2,
                pin_memory: bool = False):
    """An iterator over the batches of steps ``start .. stop - 1`` read by ``workers`` worker
    processes (spawned, so that no zarr or torch thread state is forked)."""
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, stop), num_workers=workers, prefetch_factor=prefetch,
        pin_memory=pin_memory, persistent_workers=False, multiprocessing_context="spawn",
        collate_fn=_as_tensors)
    return iter(loader)


def _as_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
