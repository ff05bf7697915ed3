"""A writer process killed with SIGKILL mid-episode leaves every earlier episode readable."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
from helpers import make_episode

from ditpolicy.datasets import DemoStore, EpisodeWriter

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from helpers import make_episode
    from ditpolicy.datasets import EpisodeWriter

    writer = EpisodeWriter({path!r})
    rng = np.random.default_rng(1)
    for i in range(1000):
        episode = make_episode(rng, 40 + i)
        print("begin", i, flush=True)
        writer.add_episode(episode, task="t", success=True)
    """
)


def expected_episodes(count):
    rng = np.random.default_rng(1)
    return [make_episode(rng, 40 + i) for i in range(count)]


def test_sigkill_mid_episode_keeps_committed_episodes(tmp_path):
    path = str(tmp_path / "crash.zarr")
    script = WRITER.format(tests=os.path.dirname(__file__), path=path)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "begin 4":
            break
    time.sleep(0.05)  # inside the writes of episode 4 (each takes ~0.2 s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = DemoStore.open(path)
    assert store.n_episodes in (4, 5)
    want = expected_episodes(store.n_episodes)
    for i, episode in enumerate(want):
        got = store.episode(i)
        for key in episode:
            np.testing.assert_array_equal(got[key], episode[key])

    # appending after the crash cuts the uncommitted tail and continues cleanly
    extra = make_episode(np.random.default_rng(7), 10)
    index = EpisodeWriter(path).add_episode(extra, task="t")
    store = DemoStore.open(path)
    assert index == len(want) and store.n_episodes == len(want) + 1
    np.testing.assert_array_equal(store.episode(index)["rgb"], extra["rgb"])
    assert store.array("state").shape[0] == store.n_steps
