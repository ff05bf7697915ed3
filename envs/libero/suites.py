"""The LIBERO suites and the protocol's constants.

Per suite: 10 tasks (90 for LIBERO-90), 50 shipped initial states per task
(``init_files/<task>.pruned_init``), 50 trials per task, episode i of a task starting from
initial state i. An episode first holds still for ``SETTLE_STEPS`` no-op steps (objects
settle after the state is set) and then gets at most the suite's step limit of policy steps;
it succeeds the first step the task's goal predicate holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

STEP_LIMITS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
SETTLE_STEPS = 10
NOOP = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])       # 6-D OSC delta at rest, gripper open
TRIALS = 50


@dataclass(frozen=True)
class LiberoTask:
    suite: str
    index: int
    name: str
    instruction: str
    bddl_file: str
    init_states: np.ndarray          # (50, state_dim): the shipped initial states, in order


def require_libero():
    try:
        from libero.libero import benchmark, get_libero_path
    except ImportError as exc:
        raise ImportError(f"LIBERO needs its simulator: pip install -e '.[libero]' ({exc})") from None
    return benchmark, get_libero_path


def suite_tasks(suite: str) -> list[LiberoTask]:
    """The tasks of a suite in the benchmark's order, with their initial states."""
    if suite not in STEP_LIMITS:
        raise ValueError(f"LIBERO suite {suite!r}: the suites are {sorted(STEP_LIMITS)}")
    benchmark, get_libero_path = require_libero()
    bench = benchmark.get_benchmark_dict()[suite]()
    folder = get_libero_path("bddl_files")
    tasks = []
    for i in range(bench.n_tasks):
        task = bench.get_task(i)
        tasks.append(LiberoTask(suite, i, task.name, task.language,
                                os.path.join(folder, task.problem_folder, task.bddl_file),
                                np.asarray(bench.get_task_init_states(i))))
    return tasks


def pick_tasks(suite: str, names: list[str] | None) -> list[LiberoTask]:
    """The suite's tasks, or those named (by name or index)."""
    tasks = suite_tasks(suite)
    if not names:
        return tasks
    by_name = {t.name: t for t in tasks}
    chosen = []
    for name in names:
        if str(name).isdigit() and int(name) < len(tasks):
            chosen.append(tasks[int(name)])
        elif name in by_name:
            chosen.append(by_name[name])
        else:
            raise ValueError(f"{suite} has no task {name!r}; its tasks: {sorted(by_name)}")
    return chosen
