"""Scripted collection: run Meta-World's shipped expert policies and write the successful
episodes to a zarr demonstration store."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..datasets import EpisodeWriter
from ..datasets.stats import write_store_stats
from ..progress import progress_bar
from .metaworld_env import MetaWorldEnv
from .metaworld_tasks import resolve_tasks

COLLECT_SEED_STRIDE = 100_003  # collection seeds never meet evaluation seeds (see envs.rollout)


def make_expert(task: str):
    """The shipped scripted policy of a task: (39,) state -> (4,) action in [-1, 1]."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task]()
    return lambda state: np.clip(policy.get_action(state), -1.0, 1.0).astype(np.float32)


@dataclass
class TaskReport:
    task: str
    kept: int = 0
    attempts: int = 0
    steps: int = 0
    lengths: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.kept / max(self.attempts, 1)


def run_expert_episode(env: MetaWorldEnv, expert, seed: int, steps_after_success: int = 5):
    """One expert rollout. Returns (per-key (T, ...) arrays incl. ``action``, success)."""
    obs, _ = env.reset(seed=seed)
    frames: dict[str, list] = {key: [] for key in obs}
    frames["action"] = []
    success, after = False, 0
    while True:
        action = expert(env.raw_state)
        for key, value in obs.items():
            frames[key].append(value)
        frames["action"].append(action)
        obs, _, terminated, truncated, info = env.step(action)
        if info["success"]:
            success = True
        if success:
            after += 1
        if (success and after > steps_after_success) or terminated or truncated:
            break
    return {key: np.stack(values) for key, values in frames.items()}, success


def collect(
    task: str | list[str] = "reach-v3",
    episodes: int = 10,
    out: str = "data/demos.zarr",
    seed: int = 0,
    cameras: list[str] | tuple[str, ...] = (),
    image_size: int = 84,
    max_episode_steps: int = 500,
    steps_after_success: int = 5,
    max_attempts_factor: float = 2.0,
    keep_failed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[TaskReport]:
    """Collect ``episodes`` successful expert episodes per task into ``out``.

    Failed attempts are retried (up to ``max_attempts_factor * episodes`` attempts per task)
    and stored only with ``keep_failed``; the per-task expert success rate is reported.
    """
    tasks = resolve_tasks(task)
    writer = EpisodeWriter(out, overwrite=overwrite)
    reports = []
    bar = progress_bar(total=episodes * len(tasks), desc="collect", unit="ep", disable=not progress)
    for task_index, name in enumerate(tasks):
        env = MetaWorldEnv(name, cameras=cameras, image_size=image_size, max_episode_steps=max_episode_steps)
        expert = make_expert(name)
        report = TaskReport(name)
        max_attempts = max(int(np.ceil(episodes * max_attempts_factor)), episodes)
        while report.kept < episodes and report.attempts < max_attempts:
            episode_seed = seed * COLLECT_SEED_STRIDE + task_index * 1009 + report.attempts
            data, success = run_expert_episode(env, expert, episode_seed, steps_after_success)
            report.attempts += 1
            if success or keep_failed:
                writer.add_episode(data, task=name, instruction=env.instruction, success=success)
                report.steps += len(data["action"])
            if success:
                report.kept += 1
                report.lengths.append(len(data["action"]))
                bar.update(1)
            bar.set_postfix(task=name, rate=f"{report.success_rate:.2f}", refresh=False)
        env.close()
        reports.append(report)
    bar.close()
    write_store_stats(out)
    return reports


def format_reports(reports: list[TaskReport]) -> str:
    """A table: task, kept, attempts, expert success rate, mean length."""
    lines = [f"{'task':<28} {'kept':>5} {'tries':>6} {'expert_sr':>9} {'mean_len':>8}"]
    for r in reports:
        mean_len = np.mean(r.lengths) if r.lengths else float("nan")
        lines.append(f"{r.task:<28} {r.kept:>5} {r.attempts:>6} {r.success_rate:>9.3f} {mean_len:>8.1f}")
    kept, tries = sum(r.kept for r in reports), sum(r.attempts for r in reports)
    lines.append(f"{'total':<28} {kept:>5} {tries:>6} {kept / max(tries, 1):>9.3f}")
    return "\n".join(lines)
