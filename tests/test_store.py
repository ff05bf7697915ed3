"""Round trip, append and bad-input errors of the zarr demonstration store."""

import numpy as np
import pytest
import zarr
from helpers import make_episode

from ditpolicy.datasets import (
    BadEpisodeError, DemoStore, EpisodeWriter, MissingKeyError, StoreError, StoreVersionError,
    write_store_stats,
)


def write_store(path, rng, lengths=(5, 9, 3)):
    episodes = [make_episode(rng, n) for n in lengths]
    with EpisodeWriter(path) as writer:
        for i, ep in enumerate(episodes):
            writer.add_episode(ep, task=f"task{i % 2}", instruction=f"do thing {i % 2}", success=i != 1,
                               segments=[(0, 2, "first two steps")])
    return episodes


def test_round_trip_identical_after_reopen(tmp_path, rng):
    path = tmp_path / "s.zarr"
    episodes = write_store(path, rng)
    store = DemoStore.open(path)
    assert store.n_episodes == 3 and store.n_steps == 17
    assert store.episode_ends.tolist() == [5, 14, 17]
    assert store.key_kinds == {"state": "lowdim", "action": "lowdim", "rgb": "image"}
    for i, ep in enumerate(episodes):
        got = store.episode(i)
        for key, value in ep.items():
            assert got[key].dtype == value.dtype
            np.testing.assert_array_equal(got[key], value)  # images too: the codec is lossless
    assert store.success.tolist() == [True, False, True]
    assert [store.task_name(i) for i in range(3)] == ["task0", "task1", "task0"]
    assert store.instruction(1) == "do thing 1"
    assert [(s.start, s.end) for s in store.segments] == [(0, 2), (5, 7), (14, 16)]
    # one frame per chunk, image codec on disk
    arr = zarr.open_group(str(path), mode="r")["data/rgb"]
    assert arr.chunks == (1, 16, 16, 3)
    assert arr.metadata.to_dict()["codecs"][0]["name"] == "ditpolicy.image"


def test_append_after_reopen_and_stats(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng)
    extra = make_episode(rng, 4)
    EpisodeWriter(path).add_episode(extra, task="task9")
    stats = write_store_stats(str(path))
    store = DemoStore.open(path)
    assert store.n_episodes == 4 and store.tasks[-1] == "task9"
    np.testing.assert_array_equal(store.episode(3)["state"], extra["state"])
    actions = store.read("action").astype(np.float64)
    np.testing.assert_allclose(store.stats["action"]["max"], actions.max(0))
    np.testing.assert_allclose(store.stats["action"]["q01"], np.quantile(actions, 0.01, axis=0))
    assert set(stats) == {"state", "action", "rgb"} and stats["rgb"]["mean"].shape == (3,)


def test_action_free_episode_is_flagged(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng, lengths=(4,))
    video = make_episode(rng, 6)
    del video["action"]
    EpisodeWriter(path).add_episode(video, task="video")
    store = DemoStore.open(path)
    assert store.has_action.tolist() == [True, False]
    assert store.episode(1)["action"].shape == (6, 4)


def test_nan_action_is_refused_and_loses_nothing(tmp_path, rng):
    path = tmp_path / "s.zarr"
    episodes = write_store(path, rng)
    bad = make_episode(rng, 5)
    bad["action"][3, 1] = np.nan
    with pytest.raises(BadEpisodeError, match=r"data/action .*NaN/inf at step 3"):
        EpisodeWriter(path).add_episode(bad)
    store = DemoStore.open(path)
    assert store.n_episodes == 3
    np.testing.assert_array_equal(store.episode(2)["rgb"], episodes[2]["rgb"])


def test_wrong_shape_episode_is_refused(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng)
    bad = make_episode(rng, 5)
    bad["state"] = bad["state"][:, :6]
    with pytest.raises(BadEpisodeError, match=r"data/state: episode frames have shape \(6,\), store holds \(7,\)"):
        EpisodeWriter(path).add_episode(bad)
    ragged = make_episode(rng, 5)
    ragged["action"] = ragged["action"][:4]
    with pytest.raises(BadEpisodeError, match="ragged episode"):
        EpisodeWriter(path).add_episode(ragged)
    missing = make_episode(rng, 5)
    del missing["rgb"]
    with pytest.raises(BadEpisodeError, match=r"missing \['rgb'\]"):
        EpisodeWriter(path).add_episode(missing)


def test_missing_keys_are_named(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng)
    store = DemoStore.open(path)
    with pytest.raises(MissingKeyError, match=r"s.zarr: missing key 'data/depth' \(keys: action, rgb, state\)"):
        store.read("depth")
    del zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    with pytest.raises(MissingKeyError, match="missing key 'meta/episode_ends'"):
        DemoStore.open(path)


def test_not_a_store_is_named(tmp_path):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(MissingKeyError, match="plain.zarr: missing attribute 'ditpolicy'"):
        DemoStore.open(tmp_path / "plain.zarr")
    with pytest.raises(StoreError, match="no such store"):
        DemoStore.open(tmp_path / "nothing.zarr")


def test_ragged_arrays_are_named(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng)
    zarr.open_group(str(path), mode="r+")["data/state"].resize((10, 7))
    with pytest.raises(StoreError, match=r"ragged arrays: data/state has 10 steps but meta/episode_ends needs 17"):
        DemoStore.open(path)


def test_episode_ends_not_increasing_is_named(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng)
    zarr.open_group(str(path), mode="r+")["meta/episode_ends"][1] = 4
    with pytest.raises(StoreError, match=r"episode_ends\[1\]=4 <= episode_ends\[0\]=5"):
        DemoStore.open(path)


def test_nan_in_stored_actions_is_named(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng)
    zarr.open_group(str(path), mode="r+")["data/action"][7, 0] = np.inf
    with pytest.raises(StoreError, match=r"data/action holds NaN/inf at step 7 \(episode 1\)"):
        DemoStore.open(path)


def test_newer_store_version_is_refused(tmp_path, rng):
    path = tmp_path / "s.zarr"
    write_store(path, rng)
    root = zarr.open_group(str(path), mode="r+")
    record = dict(root.attrs["ditpolicy"])
    record["version"] = 99
    root.attrs["ditpolicy"] = record
    with pytest.raises(StoreVersionError, match="store format v99.*reads up to v2"):
        DemoStore.open(path)
    with pytest.raises(StoreVersionError):
        EpisodeWriter(path)
