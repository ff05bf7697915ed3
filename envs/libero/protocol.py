"""LIBERO's evaluation protocol: every task of a suite, ``trials`` episodes each, episode i
from the task's shipped initial state i (whichever wave runs it), ``SETTLE_STEPS`` no-op steps,
then the policy for at most the suite's step limit; success the first step the goal holds.

Episodes of a task run in waves of ``num_envs`` environments stepped together, the policy
predicting for the whole wave in one batch. Every finished episode is appended at once to
``results.jsonl`` (task, episode, success, steps): a killed evaluation started again with the
same file runs only the episodes it lacks. Per-task and per-suite success come with 95%
Wilson intervals (rollout.py's tables).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...policies.control import ChunkExecutor
from ...progress import progress_bar
from ..rollout import EvalResult, TaskResult
from .env import LiberoEnv
from .suites import STEP_LIMITS, TRIALS, pick_tasks


class PolicyActor:
    """Drives a wave with a trained policy through a ChunkExecutor (one per wave size)."""

    def __init__(self, policy, n_action_steps: int | None = None, steps: int | None = None):
        self.policy, self.n_action_steps, self.steps = policy, n_action_steps, steps
        self.executors: dict[int, ChunkExecutor] = {}
        spec = policy.spec
        self.cameras = [k[len("rgb_"):] for k in spec.image_keys]
        self.image_size = spec.obs_shapes[spec.image_keys[0]][0] if self.cameras else 128
        self.objects = "object_state" in spec.obs_keys       # a policy trained on privileged object state
        self.executor: ChunkExecutor | None = None      # the current wave's

    def start(self, task, observations: list[dict], episodes: list[int]) -> None:
        n = len(observations)
        if n not in self.executors:
            self.executors[n] = ChunkExecutor(self.policy, batch_size=n, n_action_steps=self.n_action_steps,
                                              steps=self.steps)
        self.executor = self.executors[n]
        spec = self.policy.spec
        goal = self.policy.goal_inputs(task.name if task.name in spec.tasks else None, n)
        self.executor.reset(goal, seeds=[task.index * 1000 + e for e in episodes])
        self.observe(observations)

    def observe(self, observations: list[dict]) -> None:
        self.executor.observe({k: np.stack([o[k] for o in observations]) for k in self.policy.spec.obs_keys})

    def act(self) -> np.ndarray:
        return self.executor.act()

    @property
    def latencies_ms(self) -> list[float]:
        return [ms for e in self.executors.values() for ms in e.latencies_ms]


def run_wave(envs: list[LiberoEnv], task, episodes: list[int], actor, step_limit: int) -> list[dict]:
    """Episodes ``episodes`` of ``task`` on ``envs`` (one each) under the protocol."""
    observations = [env.reset(e) for env, e in zip(envs, episodes)]
    actor.start(task, observations, episodes)
    n = len(episodes)
    success, length = np.zeros(n, bool), np.full(n, step_limit)
    for t in range(step_limit):
        actions = actor.act()
        for i, env in enumerate(envs[:n]):
            if success[i]:
                continue                    # a finished episode's env holds its last observation
            observations[i], done = env.step(actions[i])
            if done:
                success[i], length[i] = True, t + 1
        if success.all():
            break
        actor.observe(observations)
    return [{"task": task.name, "episode": int(e), "success": bool(s), "steps": int(k)}
            for e, s, k in zip(episodes, success, length)]


def read_results(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {number} is not JSON; it holds finished LIBERO episodes, one "
                                 f"per line (a torn last line comes from a kill: delete it and run again)") from None
    return rows


def evaluate_libero(actor, suite: str, tasks: list[str] | None = None, trials: int = TRIALS, num_envs: int = 5,
                    results: str | Path | None = None, progress: bool = True) -> EvalResult:
    """Success per task of ``actor`` (PolicyActor, or any object with start/observe/act) on
    ``suite``; ``results``: the JSONL file that makes the evaluation resumable."""
    if not 1 <= trials <= TRIALS:
        raise ValueError(f"LIBERO ships {TRIALS} initial states per task: trials must be 1..{TRIALS}, got {trials}")
    chosen = pick_tasks(suite, tasks)
    path = Path(results) if results is not None else None
    done = read_results(path)
    finished = {(r["task"], r["episode"]) for r in done}
    todo = sum(1 for t in chosen for e in range(trials) if (t.name, e) not in finished)
    bar = progress_bar(total=todo, desc=f"{suite}", unit="ep", disable=not progress)
    cameras, size = getattr(actor, "cameras", []), getattr(actor, "image_size", 128)
    objects = getattr(actor, "objects", False)
    for task in chosen:
        episodes = [e for e in range(trials) if (task.name, e) not in finished]
        if not episodes:
            continue
        envs = [LiberoEnv(task, cameras, size, objects) for _ in range(min(num_envs, len(episodes)))]
        try:
            for start in range(0, len(episodes), len(envs)):
                wave = episodes[start:start + len(envs)]
                rows = run_wave(envs, task, wave, actor, STEP_LIMITS[suite])
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with path.open("a") as f:
                        f.write("".join(json.dumps(r) + "\n" for r in rows))
                done += rows
                bar.update(len(rows))
        finally:
            for env in envs:
                env.close()
    bar.close()
    by_task = {t.name: TaskResult(t.name) for t in chosen}
    for row in sorted(done, key=lambda r: r["episode"]):
        if row["task"] in by_task and row["episode"] < trials:
            result = by_task[row["task"]]
            result.successes.append(row["success"])
            result.lengths.append(row["steps"])
            result.episodes.append(row["episode"])
    return EvalResult(list(by_task.values()), list(getattr(actor, "latencies_ms", [])), batch_size=num_envs)
