"""Values the writer refuses (NaN in any key, float32 overflow, strings, non-string task), values
found at open (NaN in any low-dim key), and statistics that must match the commit."""

import numpy as np
import pytest
import zarr
from helpers import make_episode

from ditpolicy.datasets import BadEpisodeError, DemoStore, EpisodeWriter, StoreError, compute_stats, write_store_stats
from ditpolicy.datasets.summary import summarize


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(0)
    with EpisodeWriter(path) as writer:
        for i, n in enumerate((5, 9, 3)):
            writer.add_episode(make_episode(rng, n), task=f"task{i % 2}", instruction="do it")
    return path


def refused(path, data, **kwargs):
    """The writer's error for ``data``; the store must be untouched afterwards."""
    before = DemoStore.open(path)
    snapshot = {key: before.read(key) for key in before.keys}
    with EpisodeWriter(path) as writer, pytest.raises(BadEpisodeError) as info:
        writer.add_episode(data, **kwargs)
    after = DemoStore.open(path)
    assert after.n_episodes == before.n_episodes and after.tasks == before.tasks
    raw = zarr.open_group(str(path), mode="r")
    for key, values in snapshot.items():
        assert raw[f"data/{key}"].shape[0] == before.n_steps  # nothing was written past the commit
        np.testing.assert_array_equal(after.read(key), values)
    assert str(path) in str(info.value)
    return str(info.value)


def test_nan_in_state_is_refused_naming_key_and_step(store_path, rng):
    bad = make_episode(rng, 6)
    bad["state"][4, 2] = np.nan
    message = refused(store_path, bad, task="t")
    assert "data/state of the new episode holds NaN/inf at step 4; episode not written" in message


def test_float64_beyond_float32_is_refused_not_stored_as_inf(store_path, rng):
    bad = make_episode(rng, 6)
    bad["action"] = bad["action"].astype(np.float64)
    bad["action"][2, 1] = 1e39
    message = refused(store_path, bad, task="t")
    assert "data/action value 1e+39 at step 2 is beyond the float32 range" in message


def test_string_and_object_arrays_are_refused_naming_the_key(tmp_path, store_path, rng):
    bad = make_episode(rng, 4)
    bad["note"] = np.array(["left", "left", "right", "stop"])
    assert "data/note has dtype <U5, which is not numeric" in refused(store_path, bad)
    with EpisodeWriter(tmp_path / "new.zarr") as writer, pytest.raises(BadEpisodeError, match=r"data/state has dtype object"):
        writer.add_episode({"state": np.array([[1.0], [1.0, 2.0]], dtype=object), "action": np.zeros((2, 4))})
    assert DemoStore.open(tmp_path / "new.zarr").keys == []  # no array was created for the refused episode


def test_task_and_instruction_must_be_strings(store_path, rng):
    message = refused(store_path, make_episode(rng, 4), task=None)
    assert "task must be a string, got None (NoneType); pass '' for no task" in message
    message = refused(store_path, make_episode(rng, 4), task="t", instruction=None)
    assert "instruction must be a string, got None" in message


def test_none_task_in_an_older_store_is_shown_not_crashed_on(store_path):
    root = zarr.open_group(str(store_path), mode="r+")
    record = dict(root.attrs["ditpolicy"])
    record["tasks"] = [None, "task1"]  # what the writer accepted before it checked
    root.attrs["ditpolicy"] = record
    store = DemoStore.open(store_path)
    assert store.task_name(0) == "" and "task1" in summarize(store)


def test_nan_in_stored_state_is_named_at_open(store_path):
    zarr.open_group(str(store_path), mode="r+")["data/state"][11, 3] = np.nan
    with pytest.raises(StoreError, match=rf"store {store_path}: data/state holds NaN/inf at step 11 \(episode 1\)"):
        DemoStore.open(store_path)


def test_stats_are_served_only_for_the_commit_they_describe(store_path, rng):
    write_store_stats(str(store_path))
    store = DemoStore.open(store_path)
    assert store.stats_status == "current" and set(store.stats) == {"state", "action", "rgb"}
    # a writer that commits and is killed before it writes statistics: none are served
    with EpisodeWriter(store_path) as writer:
        writer.add_episode(make_episode(rng, 8), task="t")
    store = DemoStore.open(store_path)
    assert store.stats == {} and store.stats_status == "absent"
    fresh = store.stats or compute_stats(store)  # what training does
    np.testing.assert_allclose(fresh["action"]["max"], store.read("action").max(0))
    # statistics of another commit (an older writer's record) are stale
    root = zarr.open_group(str(store_path), mode="r+")
    record = dict(root.attrs["ditpolicy"])
    record["stats"] = {k: {n: np.asarray(v).tolist() for n, v in s.items()} for k, s in fresh.items()}
    record["stats_at"] = {"n_episodes": 3, "n_steps": 17}
    root.attrs["ditpolicy"] = record
    store = DemoStore.open(store_path)
    assert store.stats == {}
    assert store.stats_status == "stale (computed on 3 episodes / 17 steps, the store commits 4 / 25)"
    assert "statistics stale" in summarize(store)
    record.pop("stats_at")
    root.attrs["ditpolicy"] = record
    assert DemoStore.open(store_path).stats == {}
    with EpisodeWriter(store_path) as writer, pytest.raises(StoreError, match="computed on 17 steps but the store commits 25"):
        writer.write_stats(fresh, n_steps=17)
