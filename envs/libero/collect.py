"""Scripted LIBERO-Object demonstrations: the privileged-state expert (expert.py) on fresh
placements drawn by each task's own sampler (collection seeds, never the evaluation's shipped
initial states), written through the normal store writer with the converter's keys and names
(task = LIBERO task name, its instruction, ``state``, ``action``, ``rgb_<camera>``, and with
``objects`` the privileged ``object_state``)."""

from __future__ import annotations

import numpy as np

from ...datasets import EpisodeWriter
from ...datasets.convert import episodes_of_task
from ...datasets.stats import refresh_stats
from ...progress import progress_bar
from ..collect import COLLECT_SEED_STRIDE
from .env import LiberoEnv
from .expert import PickPlaceExpert
from .suites import STEP_LIMITS, pick_tasks

TALL = 0.05                        # objects whose centre stands higher are grasped nearer their top


def expert_for(env: LiberoEnv) -> PickPlaceExpert:
    """The expert for the task's object of interest, its grasp height set by the object's size."""
    target, container = env.env.env.obj_of_interest[:2]
    height = float(env.raw[f"{target}_pos"][2])
    return PickPlaceExpert(target, container, grasp_depth=0.045 if height > TALL else 0.0)


def expert_episode(env: LiberoEnv, seed: int, step_limit: int) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from a fresh placement: (recorded arrays, success)."""
    obs = env.reset(seed=seed)
    expert = expert_for(env)
    frames: dict[str, list] = {k: [] for k in obs}
    frames["action"] = []
    for _ in range(step_limit):
        action = expert.act(env.raw).astype(np.float32)
        for k, v in obs.items():
            frames[k].append(v)
        frames["action"].append(action)
        obs, done = env.step(action)
        if done:
            return {k: np.stack(v) for k, v in frames.items()}, True
    return {k: np.stack(v) for k, v in frames.items()}, False


def collect_libero(suite: str = "libero_object", tasks: list[str] | None = None, episodes: int = 10,
                   out: str = "data/libero_object.zarr", cameras: list[str] = ("agentview", "eye_in_hand"),
                   image_size: int = 128, objects: bool = False, seed: int = 0, max_attempts_factor: float = 2.0,
                   overwrite: bool = False, progress: bool = True) -> list[dict]:
    """``episodes`` successful expert demos per task (an existing store's count toward it);
    returns per task {task, kept, attempts, steps}."""
    reports = []
    with EpisodeWriter(out, overwrite=overwrite) as writer:
        for task in pick_tasks(suite, tasks):
            store = writer.reader()
            had = episodes_of_task(writer, task.name)
            seeds = [int(s) for i, s in enumerate(store.seeds) if store.task_name(i) == task.name]
            next_seed = max(seeds) + 1 if seeds else seed + COLLECT_SEED_STRIDE * (task.index + 1)
            report = {"task": task.name, "existing": had, "kept": 0, "attempts": 0, "steps": 0}
            env = LiberoEnv(task, list(cameras), image_size, objects)
            bar = progress_bar(total=max(episodes - had, 0), desc=task.name[:40], unit="ep", disable=not progress)
            while had + report["kept"] < episodes and report["attempts"] < max_attempts_factor * episodes:
                data, ok = expert_episode(env, next_seed + report["attempts"], STEP_LIMITS[suite])
                report["attempts"] += 1
                report["steps"] += len(data["action"])
                if ok:
                    writer.add_episode(data, task=task.name, instruction=task.instruction, success=True,
                                       seed=next_seed + report["attempts"] - 1)
                    report["kept"] += 1
                    bar.update(1)
            bar.close()
            env.close()
            reports.append(report)
        refresh_stats(writer)
    return reports
