"""One writer at a time: real writer processes on one store on disk."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import make_episode
from store_procs import episodes_for

from ditpolicy.datasets import DemoStore, EpisodeWriter, StoreLockedError, write_store_stats
from ditpolicy.datasets.summary import summarize

PROCS = os.path.join(os.path.dirname(__file__), "store_procs.py")


def start(*args):
    return subprocess.Popen([sys.executable, PROCS, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def release_together(procs, go):
    """Let writer processes past their start line at the same moment, once all have started."""
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    go.touch()


def assert_episodes(store, expected):
    """The store holds exactly ``expected`` [(task, episode dict)], bit for bit."""
    assert store.n_episodes == len(expected)
    for i, (task, episode) in enumerate(expected):
        assert store.task_name(i) == task
        got = store.episode(i)
        for key, value in episode.items():
            np.testing.assert_array_equal(got[key], value)


def test_second_writer_process_is_refused_naming_store_and_holder(tmp_path):
    path = tmp_path / "shared.zarr"
    expected = []
    for trial in range(3):
        seeds = (10 * trial + 1, 10 * trial + 2)
        go, hold = tmp_path / f"go{trial}", tmp_path / f"hold{trial}"
        procs = {seed: start("append", path, seed, 4, 0, go, hold) for seed in seeds}
        release_together(procs.values(), go)
        deadline = time.monotonic() + 60
        while all(p.poll() is None for p in procs.values()):
            assert time.monotonic() < deadline, "neither writer was refused"
            time.sleep(0.01)
        loser_seed = next(s for s, p in procs.items() if p.poll() is not None)
        winner_seed = next(s for s in seeds if s != loser_seed)
        loser, winner = procs[loser_seed], procs[winner_seed]
        err = loser.stderr.read()
        assert loser.returncode == 3, err
        assert f"store {path}: another writer holds the store" in err
        assert f"pid {winner.pid} on host " in err and "since " in err and "writer.lock" in err
        hold.touch()
        out, err = winner.communicate(timeout=60)
        assert winner.returncode == 0, err
        assert out.splitlines()[0] == "locked"
        expected += [(f"writer{winner_seed}", ep) for ep in episodes_for(winner_seed, 4)]
        assert_episodes(DemoStore.open(path), expected)


def test_waiting_writers_are_serialised_and_lose_nothing(tmp_path):
    path = tmp_path / "queue.zarr"
    go = tmp_path / "go"
    procs = {seed: start("append", path, seed, 6, 60, go, "-") for seed in (1, 2)}
    release_together(procs.values(), go)
    times = {}
    for seed, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        times[seed] = json.loads(out.splitlines()[-1])
    first, second = sorted(times, key=lambda s: times[s]["acquired"])
    # the second tried while the first held the lock, and got it only once the first let go
    assert times[second]["start_try"] < times[first]["closing"] <= times[second]["acquired"]
    expected = [(f"writer{s}", ep) for s in (first, second) for ep in episodes_for(s, 6)]
    assert_episodes(DemoStore.open(path), expected)


def test_lock_of_a_killed_writer_is_taken_over(tmp_path):
    path = tmp_path / "held.zarr"
    holder = start("hold", path, 2)
    assert holder.stdout.readline().strip() == "holding"
    try:
        with pytest.raises(StoreLockedError, match=rf"store {path}: another writer holds the store: pid {holder.pid} "):
            EpisodeWriter(path)
        # overwrite must not delete a store that another writer holds
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid}"):
            EpisodeWriter(path, overwrite=True)
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid}"):
            write_store_stats(str(path))
        assert f"writer    pid {holder.pid} on host" in summarize(DemoStore.open(path))
        assert DemoStore.open(path).n_episodes == 2
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with EpisodeWriter(path) as writer:  # no waiting: the kernel dropped the dead writer's lock
        assert time.monotonic() - started < 2
        assert writer.lock.took_over_from["pid"] == holder.pid
        writer.add_episode(make_episode(np.random.default_rng(5), 7), task="after")
    store = DemoStore.open(path)
    assert_episodes(store, [("holder", ep) for ep in episodes_for(0, 2)] + [("after", make_episode(np.random.default_rng(5), 7))])
    assert "\nwriter " not in summarize(store)


def test_writers_in_one_process_exclude_each_other_and_close_releases(tmp_path):
    path = tmp_path / "s.zarr"
    first = EpisodeWriter(path)
    with pytest.raises(StoreLockedError, match=rf"store {path}: another writer holds the store: pid {os.getpid()}"):
        EpisodeWriter(path)
    started = time.monotonic()
    with pytest.raises(StoreLockedError, match="after waiting 0.3 s"):
        EpisodeWriter(path, wait=0.3)
    assert time.monotonic() - started >= 0.3
    first.close()
    with pytest.raises(Exception, match="this writer is closed"):
        first.add_episode(make_episode(np.random.default_rng(0), 3))
    with EpisodeWriter(path, overwrite=True) as writer:
        assert writer.lock.took_over_from is None  # a clean close leaves no holder behind
        writer.add_episode(make_episode(np.random.default_rng(0), 3))
    assert DemoStore.open(path).n_episodes == 1
