"""Sequence windows and padding against a brute-force reference; the episode split."""

import numpy as np
import pytest
from helpers import make_episode
from hypothesis import given, settings
from hypothesis import strategies as st

from ditpolicy.datasets import DemoStore, EpisodeWriter, SequenceSampler, build_windows, split_episodes


def brute_force_windows(lengths, mask, n_obs, horizon, pad_after):
    """Every (obs steps, obs pad, action steps, action pad) window, by plain loops."""
    out = []
    start = 0
    for length, keep in zip(lengths, mask):
        end = start + length
        for t in range(start, end):
            if not keep or t + horizon - 1 > end - 1 + pad_after:
                continue
            obs, obs_pad, act, act_pad = [], [], [], []
            for k in range(t - n_obs + 1, t + 1):
                obs.append(min(max(k, start), end - 1))
                obs_pad.append(k < start)
            for k in range(t, t + horizon):
                act.append(min(max(k, start), end - 1))
                act_pad.append(k >= end)
            out.append((obs, obs_pad, act, act_pad))
        start = end
    return out


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    n_obs=st.integers(1, 4),
    horizon=st.integers(1, 12),
    pad_after=st.integers(0, 12),
    mask_seed=st.integers(0, 1000),
)
def test_windows_match_brute_force(lengths, n_obs, horizon, pad_after, mask_seed):
    ends = np.cumsum(lengths).astype(np.int64)
    mask = np.random.default_rng(mask_seed).random(len(lengths)) < 0.8
    windows = build_windows(ends, mask, horizon, pad_after)
    ref = brute_force_windows(lengths, mask, n_obs, horizon, pad_after)
    assert len(windows) == len(ref)

    class FakeSampler(SequenceSampler):  # index arithmetic only, no store needed
        def __init__(self):
            self.windows = windows
            self._obs_offsets = np.arange(-n_obs + 1, 1)
            self._act_offsets = np.arange(horizon)

    if not ref:
        return
    idx = FakeSampler().indices(np.arange(len(windows)))
    assert idx["obs"].tolist() == [r[0] for r in ref]
    assert idx["obs_is_pad"].tolist() == [r[1] for r in ref]
    assert idx["action"].tolist() == [r[2] for r in ref]
    assert idx["action_is_pad"].tolist() == [r[3] for r in ref]


def test_sampler_batches_hold_the_right_values(tmp_path, rng):
    path = tmp_path / "s.zarr"
    episodes = [make_episode(rng, n) for n in (6, 3)]
    with EpisodeWriter(path) as writer:
        for i, ep in enumerate(episodes):
            writer.add_episode(ep, task=f"t{i}")
    store = DemoStore.open(path)
    sampler = SequenceSampler(store, ["state", "rgb"], n_obs=2, horizon=4)
    assert len(sampler) == 9  # every step is a current step once
    # window of episode 1 at its first step: obs padded before, actions padded after
    item = sampler[6]
    ep = episodes[1]
    np.testing.assert_array_equal(item["state"], ep["state"][[0, 0]])
    np.testing.assert_array_equal(item["rgb"], ep["rgb"][[0, 0]])
    np.testing.assert_array_equal(item["action"], ep["action"][[0, 1, 2, 2]])
    assert item["obs_is_pad"].tolist() == [True, False]
    assert item["action_is_pad"].tolist() == [False, False, False, True]
    assert item["task_id"] == 1
    batch = sampler.sample_batch(np.arange(len(sampler)))
    assert batch["state"].shape == (9, 2, 7) and batch["rgb"].shape == (9, 2, 16, 16, 3)
    assert batch["action"].shape == (9, 4, 4)
    # lazily read images (no cache) give the same batch
    lazy = SequenceSampler(store, ["state", "rgb"], n_obs=2, horizon=4, image_cache_bytes=0)
    np.testing.assert_array_equal(lazy.sample_batch(np.arange(9))["rgb"], batch["rgb"])


def test_sampler_names_a_missing_key(tmp_path, rng):
    path = tmp_path / "s.zarr"
    EpisodeWriter(path).add_episode(make_episode(rng, 5))
    with pytest.raises(KeyError, match="missing key 'data/depth'"):
        SequenceSampler(DemoStore.open(path), ["depth"])


@given(n=st.integers(1, 200), frac=st.floats(0.0, 0.9), seed=st.integers(0, 100))
def test_split_by_episode_is_disjoint_and_complete(n, frac, seed):
    train, val = split_episodes(n, frac, seed)
    assert not (train & val).any() and (train | val).all()
    assert train.sum() >= 1
    if frac > 0 and n > 1:
        assert val.sum() >= 1
