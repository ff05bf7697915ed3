"""Driving demonstrations from highway-env's IDM/MOBIL driver.

The expert drives a whole episode by itself; afterwards every decision step (every 0.5 s)
gets as its action the expert's own next 4 s: its positions at the 8 following decision
steps in the ego frame of that step (16 numbers). The last 8 decision steps of an episode
have no full future and are not stored; an episode that ends in a collision is dropped.
"""

from __future__ import annotations

import numpy as np

from ...datasets import EpisodeWriter
from ...datasets.stats import refresh_stats
from ...progress import progress_bar
from .env import SUBSTEPS, DrivingEnv
from .scene import to_ego

HORIZON_STEPS = 8


def plans_from_trace(decision_poses: np.ndarray) -> np.ndarray:
    """(T, 4) ego (x, y, heading, speed) at each decision step -> (T - 8, 16) plans: the
    positions of the next 8 decision steps in each step's ego frame."""
    n = len(decision_poses) - HORIZON_STEPS
    plans = [to_ego(decision_poses[i + 1:i + 1 + HORIZON_STEPS, :2], decision_poses[i, :2], decision_poses[i, 2])
             for i in range(max(n, 0))]
    return np.asarray(plans, np.float32).reshape(max(n, 0), 2 * HORIZON_STEPS)


def expert_episode(env: DrivingEnv, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode: ({"state": (T, 53), "action": (T, 16)}, no collision)."""
    obs, _ = env.reset(seed=seed)
    states, done, crashed = [obs["state"]], False, False
    while not done:
        obs, _, terminated, truncated, info = env.step()
        states.append(obs["state"])
        done, crashed = terminated or truncated, info["crashed"]
    poses = np.asarray(env.trace)[::SUBSTEPS]
    plans = plans_from_trace(poses)
    return {"state": np.asarray(states[:len(plans)], np.float32), "action": plans}, not crashed and len(plans) > 0


def collect_driving(task: str = "highway", episodes: int = 10, out: str = "data/highway.zarr", seed: int = 0,
                    overwrite: bool = False, wait: float = 0.0, progress: bool = True, **env_options) -> dict:
    """Bring ``out`` to ``episodes`` collision-free expert episodes (an existing store is
    continued with the next seeds). Returns {kept, tries, steps, collisions}."""
    report = {"kept": 0, "tries": 0, "steps": 0, "collisions": 0}
    env = DrivingEnv(task, expert=True, **env_options)
    with EpisodeWriter(out, overwrite=overwrite, wait=wait) as writer:
        store = writer.reader()
        had = int(np.sum([store.task_name(i) == task for i in range(store.n_episodes)]))
        seeds = store.seeds
        next_seed = int(seeds.max()) + 1 if len(seeds) and seeds.max() >= 0 else seed
        bar = progress_bar(total=max(episodes - had, 0), desc="collect driving", unit="ep", disable=not progress)
        while had + report["kept"] < episodes and report["tries"] < 2 * episodes:
            data, ok = expert_episode(env, next_seed + report["tries"])
            report["tries"] += 1
            if not ok:
                report["collisions"] += 1
                continue
            writer.add_episode(data, task=task, instruction=env.instruction, success=True,
                               seed=next_seed + report["tries"] - 1)
            report["kept"] += 1
            report["steps"] += len(data["action"])
            bar.update(1)
        bar.close()
        refresh_stats(writer)
    env.close()
    report["total"] = had + report["kept"]
    return report
