"""Writer processes for the store tests, run as ``python tests/store_procs.py <command> ...``.

    append PATH SEED COUNT WAIT GO HOLD   print "ready", wait for file GO, open a writer (wait WAIT s), print
                                          "locked", wait for file HOLD ('-': don't), append
                                          COUNT episodes of episodes_for(SEED), print timings
    hold PATH COUNT                       append COUNT episodes, print "holding", sleep
    crash PATH METHOD EPISODE CALL        append episodes; while writing episode EPISODE, SIGKILL
                                          itself at the CALL-th call of EpisodeWriter.METHOD
    collect PATH KILL_AT                  collect reach-v3 (5 episodes), SIGKILL itself before
                                          writing the KILL_AT-th episode

Exit status 3 with the error on stderr when the writer lock is refused.
"""

import json
import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import make_episode  # noqa: E402

from ditpolicy.datasets import EpisodeWriter, StoreLockedError  # noqa: E402


def episodes_for(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    """The episodes a writer with ``seed`` appends: lengths 12..16, with 16x16 images."""
    rng = np.random.default_rng(seed)
    return [make_episode(rng, 12 + i % 5) for i in range(count)]


def wait_for(path: str) -> None:
    while path != "-" and not os.path.exists(path):
        time.sleep(0.005)


def append(path, seed, count, wait, go, hold) -> None:
    print("ready", flush=True)
    wait_for(go)
    times = {"start_try": time.time()}
    try:
        writer = EpisodeWriter(path, wait=float(wait))
    except StoreLockedError as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(3)
    times["acquired"] = time.time()
    print("locked", flush=True)
    wait_for(hold)
    for episode in episodes_for(int(seed), int(count)):
        writer.add_episode(episode, task=f"writer{seed}")
    times["closing"] = time.time()
    writer.close()
    print(json.dumps(times), flush=True)


def hold(path, count) -> None:
    writer = EpisodeWriter(path)
    for episode in episodes_for(0, int(count)):
        writer.add_episode(episode, task="holder")
    print("holding", flush=True)
    time.sleep(600)


def kill_at(cls, method: str, should_die) -> None:
    """Wrap ``cls.method`` so that the process SIGKILLs itself when ``should_die(self)`` is true."""
    original = getattr(cls, method)

    def wrapped(self, *args, **kwargs):
        if should_die(self):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    setattr(cls, method, wrapped)


def crash(path, method, episode, call) -> None:
    episode, call = int(episode), int(call)
    writer = EpisodeWriter(path)
    calls = {"n": 0}

    def should_die(w) -> bool:
        if w.n_episodes != episode:
            return False
        calls["n"] += 1
        return calls["n"] == call

    kill_at(EpisodeWriter, method, should_die)
    for i, data in enumerate(episodes_for(1, episode + 1)):
        writer.add_episode(data, task="t", success=True, seed=i)
        if i == 1:
            from ditpolicy.datasets.stats import compute_stats

            writer.write_stats(compute_stats(writer.reader()))
    print("not killed", flush=True)


def collect_and_die(path, kill_at_episode) -> None:
    from ditpolicy.envs.collect import collect

    calls = {"n": 0}

    def should_die(_) -> bool:
        calls["n"] += 1
        return calls["n"] == int(kill_at_episode)

    kill_at(EpisodeWriter, "add_episode", should_die)
    collect("reach-v3", episodes=5, out=path, progress=False)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"append": append, "hold": hold, "crash": crash, "collect": collect_and_die}[command](*args)
