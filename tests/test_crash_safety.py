"""A writer process SIGKILLed at a chosen point inside an episode's writes leaves every earlier
episode readable; the next writer takes its lock over and cuts the uncommitted tail off."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr
from helpers import make_episode
from store_procs import episodes_for

from ditpolicy.datasets import DemoStore, EpisodeWriter

PROCS = os.path.join(os.path.dirname(__file__), "store_procs.py")
KILLED_EPISODE = 3

# (EpisodeWriter method, which call of it during episode 3 dies, arrays holding the episode's tail)
POINTS = {
    "after the first data array": ("_write_rows", 2, ["data/state"]),
    "after all data, before the meta rows": ("_write_meta", 1, ["data/state", "data/action", "data/rgb"]),
    "after the meta rows, before the commit": ("_commit", 1, ["data/state", "data/action", "data/rgb",
                                                              "meta/episode_ends", "meta/seed"]),
}


def chunk_rows_on_disk(path, name):
    """Row indices of the chunk files of a one-frame-per-chunk array."""
    names = os.listdir(os.path.join(path, name))
    return sorted(int(n.split(".")[1]) for n in names if n.startswith("c.") and not n.endswith(".partial"))


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_at_a_chosen_point_keeps_committed_episodes(tmp_path, point):
    method, call, tails = POINTS[point]
    path = str(tmp_path / "crash.zarr")
    proc = subprocess.Popen([sys.executable, PROCS, "crash", path, method, str(KILLED_EPISODE), str(call)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, out + err

    want = episodes_for(1, KILLED_EPISODE)
    committed_steps = sum(len(ep["action"]) for ep in want)
    # the killed episode's writes are on disk, past the commit
    raw = zarr.open_group(path, mode="r")
    for name in tails:
        committed = committed_steps if name.startswith("data/") else KILLED_EPISODE
        assert raw[name].shape[0] > committed, f"{name} should hold the uncommitted tail"
    if "data/rgb" in tails:
        assert max(chunk_rows_on_disk(path, "data/rgb")) >= committed_steps

    store = DemoStore.open(path)
    assert store.n_episodes == KILLED_EPISODE and store.n_steps == committed_steps
    for i, episode in enumerate(want):
        got = store.episode(i)
        for key in episode:
            np.testing.assert_array_equal(got[key], episode[key])
    assert store.seeds.tolist() == [0, 1, 2]
    # statistics were written after episode 1; the commits since made them stale, so none are served
    assert store.stats == {} and store.stats_status == "absent"

    extra = make_episode(np.random.default_rng(7), 10)
    with EpisodeWriter(path) as writer:
        assert writer.lock.took_over_from["pid"] == proc.pid  # the killed writer's lock, taken over
        raw = zarr.open_group(path, mode="r")
        for name in tails:  # opening for append cut the tail off
            committed = committed_steps if name.startswith("data/") else KILLED_EPISODE
            assert raw[name].shape[0] == committed
        assert max(chunk_rows_on_disk(path, "data/rgb")) == committed_steps - 1
        index = writer.add_episode(extra, task="t")
    store = DemoStore.open(path)
    assert index == KILLED_EPISODE and store.n_episodes == KILLED_EPISODE + 1
    for key in extra:
        np.testing.assert_array_equal(store.episode(index)[key], extra[key])
    np.testing.assert_array_equal(store.episode(2)["rgb"], want[2]["rgb"])
    assert store.array("state").shape[0] == store.n_steps
