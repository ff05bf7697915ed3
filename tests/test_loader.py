"""Batches by step from loader worker processes are exactly the in-process sampler's."""

import numpy as np
import torch
from helpers import write_reaching_store

from ditpolicy.datasets import DemoStore, SequenceSampler
from ditpolicy.datasets.loader import StepBatches, step_draws, step_loader

ARGS = dict(obs_keys=["state", "rgb_cam"], n_obs=2, horizon=8)


def test_worker_batches_equal_the_in_process_sampler(tmp_path):
    write_reaching_store(tmp_path / "s.zarr", episodes=5, length=30, image=True)
    store = DemoStore.open(tmp_path / "s.zarr")
    mask = np.array([True, True, False, True, True])
    reference = SequenceSampler(store, episode_mask=mask, **ARGS)            # frames cached in RAM
    batches = StepBatches(str(tmp_path / "s.zarr"), None, {**ARGS, "episode_mask": mask, "image_cache_bytes": 0},
                          seed=3, batch=16, lo=4, hi=12)
    assert not isinstance(batches.sampler().arrays["rgb_cam"], np.ndarray)   # read from zarr, not cached
    got = list(step_loader(batches, start=5, stop=9, workers=2, prefetch=2))
    assert len(got) == 4
    for step, batch in zip(range(5, 9), got):
        rows, _ = step_draws(3, step, reference, 16)
        want = reference.sample_batch(rows[4:12])
        assert set(batch) == set(want)
        for key in want:
            assert isinstance(batch[key], torch.Tensor)
            np.testing.assert_array_equal(batch[key].numpy(), want[key], err_msg=f"step {step}, key {key}")


def test_step_draws_depend_on_seed_and_step_only(tmp_path):
    write_reaching_store(tmp_path / "s.zarr", episodes=5, length=30)
    sampler = SequenceSampler(DemoStore.open(tmp_path / "s.zarr"), obs_keys=["state"], n_obs=2, horizon=8)
    a, seed_a = step_draws(0, 7, sampler, 32)
    b, seed_b = step_draws(0, 7, sampler, 32)
    c, _ = step_draws(0, 8, sampler, 32)
    assert np.array_equal(a, b) and seed_a == seed_b and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < len(sampler)
