"""Scripted collection: run Meta-World's shipped expert policies and write the successful
episodes to a zarr demonstration store, continuing a store that already holds some."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..datasets import DemoStore, EpisodeWriter, StoreError
from ..datasets.stats import refresh_stats
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
    """One task of a collect run: ``existing`` successful episodes were already in the store,
    ``kept`` were added by this run from ``attempts`` expert rollouts (seeds from ``first_seed``)."""

    task: str
    existing: int = 0
    kept: int = 0
    attempts: int = 0
    steps: int = 0
    first_seed: int = 0
    lengths: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.kept / max(self.attempts, 1)

    @property
    def total(self) -> int:
        return self.existing + self.kept


def _positive(name: str, value, integer: bool = True):
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer) if integer else (int, float, np.number))
    if not ok or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def resume_point(store: DemoStore, task: str, base_seed: int) -> tuple[int, int]:
    """(successful episodes of ``task`` in the store, the seed to continue from).

    Continues after the last recorded seed of the task, so no reset seed is used twice;
    refuses episodes of the task that have no recorded seed (stores from before seeds).
    """
    names = np.asarray(store.tasks + [""], dtype=object)
    mine = names[store.task_ids] == task if store.n_episodes else np.zeros(0, bool)
    seeds = store.seeds[mine]
    if (seeds < 0).any():
        raise StoreError(store.path, f"holds {int((seeds < 0).sum())} episodes of {task} without a recorded seed "
                                     "(written before seeds were stored), so collect cannot add to it without "
                                     "repeating seeds; pass overwrite=true to start over, or collect into a new out")
    existing = int((store.success & mine).sum())
    return existing, max(base_seed, int(seeds.max()) + 1) if len(seeds) else base_seed


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
    wait: float = 0.0,
    action_free: bool = False,
) -> list[TaskReport]:
    """Bring ``out`` to ``episodes`` successful expert episodes per task.

    An existing store is continued: episodes already there count toward the target and new
    rollouts use the seeds after the last recorded one of each task (a collect that was killed
    and rerun neither repeats seeds nor overshoots). ``overwrite`` starts from an empty store.
    Failed attempts are retried (up to ``max_attempts_factor`` times the missing episodes
    per task) and stored only with ``keep_failed``; each episode's reset seed is stored.
    ``action_free`` stores the observations and frames without the expert's actions (flagged
    action-free): video-only episodes, as a joint video-action policy trains on.
    """
    _positive("episodes", episodes)
    _positive("image_size", image_size)
    _positive("max_episode_steps", max_episode_steps)
    _positive("max_attempts_factor", max_attempts_factor, integer=False)
    tasks = resolve_tasks(task)
    reports = []
    with EpisodeWriter(out, overwrite=overwrite, wait=wait) as writer:
        store = writer.reader()
        plan = [resume_point(store, name, seed * COLLECT_SEED_STRIDE + i * 1009) for i, name in enumerate(tasks)]
        missing = [max(episodes - existing, 0) for existing, _ in plan]
        bar = progress_bar(total=sum(missing), desc="collect", unit="ep", disable=not progress)
        for name, (existing, first_seed), needed in zip(tasks, plan, missing):
            report = TaskReport(name, existing=existing, first_seed=first_seed)
            reports.append(report)
            if needed == 0:
                continue
            env = MetaWorldEnv(name, cameras=cameras, image_size=image_size, max_episode_steps=max_episode_steps)
            expert = make_expert(name)
            max_attempts = max(int(np.ceil(needed * max_attempts_factor)), needed)
            while report.kept < needed and report.attempts < max_attempts:
                episode_seed = first_seed + report.attempts
                data, success = run_expert_episode(env, expert, episode_seed, steps_after_success)
                length = len(data["action"])
                report.attempts += 1
                if success or keep_failed:
                    if action_free:
                        data = {k: v for k, v in data.items() if k != "action"}
                    writer.add_episode(data, task=name, instruction=env.instruction, success=success, seed=episode_seed,
                                       has_action=not action_free)
                    report.steps += length
                if success:
                    report.kept += 1
                    report.lengths.append(length)
                    bar.update(1)
                bar.set_postfix(task=name, rate=f"{report.success_rate:.2f}", refresh=False)
            env.close()
        bar.close()
        refresh_stats(writer)
    return reports


def complete_store(task: str | list[str], episodes: int, out: str | Path, **options) -> list[TaskReport]:
    """``collect`` for scripts that reuse a store: brings it to ``episodes`` per task and prints
    the report table only when episodes were added."""
    reports = collect(task, episodes=episodes, out=str(out), **options)
    if any(r.kept for r in reports):
        print(format_reports(reports))
    return reports


def format_reports(reports: list[TaskReport]) -> str:
    """A table: task, episodes already there, kept by this run, total, tries, expert success rate, mean length."""
    lines = [f"{'task':<28} {'had':>5} {'kept':>5} {'total':>6} {'tries':>6} {'expert_sr':>9} {'mean_len':>8}"]
    for r in reports:
        mean_len = f"{np.mean(r.lengths):>8.1f}" if r.lengths else f"{'-':>8}"
        rate = f"{r.success_rate:>9.3f}" if r.attempts else f"{'-':>9}"
        lines.append(f"{r.task:<28} {r.existing:>5} {r.kept:>5} {r.total:>6} {r.attempts:>6} {rate} {mean_len}")
    had, kept, tries = (sum(getattr(r, f) for r in reports) for f in ("existing", "kept", "attempts"))
    rate = f"{kept / tries:>9.3f}" if tries else f"{'-':>9}"
    lines.append(f"{'total':<28} {had:>5} {kept:>5} {had + kept:>6} {tries:>6} {rate}")
    return "\n".join(lines)
