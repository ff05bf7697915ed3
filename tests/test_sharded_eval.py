"""Evaluation sharded over torchrun processes gives, episode by episode, what one process
gives: each episode's environment and sampling noise come from its own seed, whatever wave
or process runs it."""

import json
import os
import subprocess
import sys

import pytest
from helpers import TINY_POLICY

from ditpolicy.envs.collect import collect

TASK, EPISODES = "reach-v3", 6
EVAL = ["episodes=6", "num_envs=2", "env.max_episode_steps=40", "videos=0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A barely trained reach policy: its actions are close to its sampling noise, so every
    episode's return is different and depends on that episode's noise."""
    root = tmp_path_factory.mktemp("sharded")
    collect(TASK, episodes=2, out=str(root / "reach.zarr"), progress=False)
    subprocess.run([sys.executable, "-m", "ditpolicy", "train", f"dataset.path={root / 'reach.zarr'}",
                    f"run_dir={root / 'run'}", *TINY_POLICY, "train.steps=2"], check=True, capture_output=True,
                   timeout=300)
    return root / "run" / "checkpoints" / "latest"


def per_episode(out_dir) -> dict:
    result = json.loads((out_dir / "result.json").read_text())
    return result, result["tasks"][0]["per_episode"]


def test_two_processes_give_the_one_process_episodes(checkpoint, tmp_path):
    one = subprocess.run([sys.executable, "-m", "ditpolicy", "eval", f"checkpoint={checkpoint}",
                          f"out={tmp_path / 'one'}", *EVAL], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})      # as torchrun sets for each process
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "ditpolicy", "eval", f"checkpoint={checkpoint}", f"out={tmp_path / 'two'}", *EVAL],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    (single, a), (sharded, b) = per_episode(tmp_path / "one"), per_episode(tmp_path / "two")
    assert sharded["processes"] == 2 and single["processes"] == 1
    assert a["episode"] == b["episode"] == list(range(EPISODES))
    assert a["success"] == b["success"] and a["length"] == b["length"]
    assert a["return"] == b["return"]                               # float for float
    assert len(set(a["return"])) == EPISODES                        # every episode is its own
    assert sharded["mean_success"] == single["mean_success"]
    assert two.stdout.count("results:") == 1                       # rank 0 alone writes and prints
