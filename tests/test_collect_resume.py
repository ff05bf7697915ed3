"""``collect`` on an existing store continues it (new seeds, target per task); bad settings are named."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_episode

from ditpolicy.datasets import DemoStore, EpisodeWriter, StoreError
from ditpolicy.envs.collect import collect

PROCS = os.path.join(os.path.dirname(__file__), "store_procs.py")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ditpolicy", *args], capture_output=True, text=True, timeout=300)


def test_collect_rerun_after_a_kill_continues_with_new_seeds(tmp_path):
    path = tmp_path / "reach.zarr"
    killed = subprocess.run([sys.executable, PROCS, "collect", str(path), "3"], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = DemoStore.open(path)
    assert store.n_episodes == 2 and store.seeds.tolist() == [0, 1]
    assert store.stats == {}  # killed before it wrote statistics: none are served

    out = cli("collect", "task=reach", "episodes=4", f"out={path}")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("reach-v3"))
    assert row.split()[:5] == ["reach-v3", "2", "2", "4", "2"]  # had, kept, total, tries
    assert f"continued {path}: it held 2 successful episodes of these tasks, this run kept 2" in out.stdout
    store = DemoStore.open(path)
    assert store.n_episodes == 4 and store.seeds.tolist() == [0, 1, 2, 3]
    assert store.stats_status == "current"
    first = store.episode(0)["state"]
    assert not any(np.array_equal(first[:1], store.episode(i)["state"][:1]) for i in (1, 2, 3))

    again = collect("reach-v3", episodes=4, out=str(path), progress=False)
    assert (again[0].existing, again[0].kept, again[0].attempts) == (4, 0, 0)
    assert DemoStore.open(path).n_episodes == 4


def test_collect_refuses_to_continue_episodes_without_seeds(tmp_path):
    path = tmp_path / "old.zarr"
    with EpisodeWriter(path) as writer:
        writer.add_episode(make_episode(np.random.default_rng(0), 5, image=False), task="reach-v3")
    with pytest.raises(StoreError, match=rf"store {path}: holds 1 episodes of reach-v3 without a recorded seed"):
        collect("reach-v3", episodes=2, out=str(path), progress=False)
    with pytest.raises(ValueError, match="episodes must be a positive integer, got 0"):
        collect("reach-v3", episodes=0, out=str(path), progress=False)
    assert DemoStore.open(path).n_episodes == 1


@pytest.mark.parametrize("setting, message", [
    ("episodes=-1", "episodes must be a positive integer, got -1"),
    ("env.image_size=abc", "env.image_size must be a positive integer, got 'abc'"),
    ("env.max_episode_steps=0", "env.max_episode_steps must be a positive integer, got 0"),
    ("max_attempts_factor=0", "max_attempts_factor must be a positive number, got 0"),
])
def test_collect_settings_are_checked_naming_the_key(tmp_path, setting, message):
    out = cli("collect", setting, f"out={tmp_path / 'x.zarr'}")
    assert out.returncode == 2 and out.stderr.strip() == f"ditpolicy collect: {message}"
    assert not (tmp_path / "x.zarr").exists()
