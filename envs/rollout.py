"""Vectorised policy rollouts in Meta-World with action chunking.

Episodes of a task run in waves over a gymnasium ``SyncVectorEnv`` (autoreset off): every
env of a wave resets with its own seed and a ``ChunkExecutor`` (policies/control.py) drives
all of them: it observes every step, predicts one chunk for all envs in one batched call when
its queue is empty, and executes the first ``n_action_steps`` actions of each chunk, so the
policy sees consecutive observations as in training. An episode succeeds the first time
``info["success"]`` is true.

Episode i of a task always has the same seed, for its environment and for the policy's
sampling noise, whichever wave or process runs it: ``shard=(rank, world)`` runs episodes
rank, rank + world, ... of every task, and ``merge_results`` of every rank's result equals
the single-process result (sharded evaluation under torchrun).

Chunk latency excludes the first call at each batch size, which builds the traced graphs;
that warm-up is reported on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np

from ..policies.control import ChunkExecutor
from ..progress import progress_bar
from .metaworld_env import MetaWorldEnv
from .video import write_video

EVAL_SEED_BASE = 1_000_000_007  # far from every collection seed


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def episode_seed(seed: int, task_index: int, episode: int) -> int:
    """The seed of episode ``episode`` of the task at ``task_index``: environment and noise."""
    return seed + EVAL_SEED_BASE + task_index * 10_007 + episode


@dataclass
class TaskResult:
    task: str
    successes: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    episodes: list[int] = field(default_factory=list)     # episode index of each entry
    returns: list[float] = field(default_factory=list)    # summed reward up to success or the step limit

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else 0.0

    def as_dict(self) -> dict:
        lo, hi = wilson_interval(int(np.sum(self.successes)), len(self.successes))
        return {"task": self.task, "episodes": len(self.successes), "success_rate": self.success_rate,
                "ci95": [lo, hi], "mean_length": float(np.mean(self.lengths)) if self.lengths else 0.0,
                "mean_return": float(np.mean(self.returns)) if self.returns else 0.0,
                "per_episode": {"episode": list(self.episodes), "success": list(self.successes),
                                "length": list(self.lengths), "return": list(self.returns)}}


@dataclass
class EvalResult:
    tasks: list[TaskResult]
    chunk_latency_ms: list[float]
    batch_size: int
    videos: list[str] = field(default_factory=list)
    warmup_ms: list[float] = field(default_factory=list)   # first chunk at each batch size (graph building)

    @property
    def mean_success(self) -> float:
        return float(np.mean([s for t in self.tasks for s in t.successes])) if self.tasks else 0.0

    def as_dict(self) -> dict:
        n = sum(len(t.successes) for t in self.tasks)
        k = sum(int(np.sum(t.successes)) for t in self.tasks)
        lat = np.asarray(self.chunk_latency_ms) if self.chunk_latency_ms else np.zeros(1)
        return {
            "mean_success": self.mean_success, "ci95": list(wilson_interval(k, n)), "episodes": n,
            "mean_task_success": float(np.mean([t.success_rate for t in self.tasks])) if self.tasks else 0.0,
            "mean_length": float(np.mean([l for t in self.tasks for l in t.lengths])) if n else 0.0,
            "chunk_latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                 "batch_size": self.batch_size, "calls": len(self.chunk_latency_ms),
                                 "warmup_ms": [float(w) for w in self.warmup_ms]},
            "tasks": [t.as_dict() for t in self.tasks], "videos": self.videos,
        }

    def table(self) -> str:
        lines = [f"{'task':<28} {'success':>8} {'95% CI':>15} {'episodes':>9} {'mean_len':>9}"]
        for t in self.tasks:
            d = t.as_dict()
            lines.append(f"{t.task:<28} {d['success_rate']:>8.3f} {_ci(d):>15} {d['episodes']:>9} {d['mean_length']:>9.1f}")
        d = self.as_dict()
        lines.append(f"{'mean':<28} {d['mean_success']:>8.3f} {_ci(d):>15} {d['episodes']:>9} {d['mean_length']:>9.1f}")
        lat = d["chunk_latency_ms"]
        warmup = f"; warm-up (graph building) {max(self.warmup_ms):.0f} ms, not counted" if self.warmup_ms else ""
        lines.append(f"chunk inference latency (batch {lat['batch_size']}): p50 {lat['p50']:.2f} ms, "
                     f"p99 {lat['p99']:.2f} ms over {lat['calls']} calls{warmup}")
        return "\n".join(lines)


def _ci(row: dict) -> str:
    return f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]"


def run_task(policy, task: str, task_index: int, episodes: list[int], max_episode_steps: int,
             executor: ChunkExecutor, seed: int, video_dir: Path | None, n_videos: int, bar=None
             ) -> tuple[TaskResult, list[str]]:
    """The seeded episodes ``episodes`` (indices) of one task, ``executor.batch_size`` envs at a time."""
    spec = policy.spec
    cameras = [k[len("rgb_"):] for k in spec.image_keys]
    image_size = spec.obs_shapes[spec.image_keys[0]][0] if cameras else 84
    # envs never terminate on success (gymnasium refuses to step a terminated env with autoreset
    # off); success is tracked here and a wave stops once every active env has succeeded
    make = partial(MetaWorldEnv, task, cameras=cameras, image_size=image_size, max_episode_steps=max_episode_steps)
    n_envs = executor.batch_size
    envs = gym.vector.SyncVectorEnv([make] * n_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    goal = policy.goal_inputs(spec.tasks.index(task) if task in spec.tasks else 0, n_envs)
    result, videos = TaskResult(task), []
    done_episodes = 0
    while done_episodes < len(episodes):
        ids = episodes[done_episodes:done_episodes + n_envs]
        wave = len(ids)
        padded = ids + [ids[-1] + 1 + i for i in range(n_envs - wave)]   # idle envs fill the batch
        seeds = [episode_seed(seed, task_index, e) for e in padded]
        obs, _ = envs.reset(seed=seeds)
        executor.reset(goal, seeds=seeds)
        executor.observe(obs)
        success = np.zeros(n_envs, bool)
        length = np.full(n_envs, max_episode_steps)
        returns = np.zeros(n_envs)
        active = np.arange(n_envs) < wave
        record = video_dir is not None and len(videos) < n_videos
        frames = [envs.envs[0].render()] if record else []
        t = 0
        while t < max_episode_steps and (active & ~success).any():
            running = active & ~success
            obs, reward, _, truncated, info = envs.step(executor.act())
            executor.observe(obs)
            returns[running] += np.asarray(reward, np.float64)[running]
            t += 1
            newly = info["success"].astype(bool) & ~success
            length[newly] = t
            success |= newly
            if record and not success[0]:
                frames.append(envs.envs[0].render())
            if truncated.any():
                break
        for i in range(wave):
            result.successes.append(bool(success[i]))
            result.lengths.append(int(length[i]))
            result.episodes.append(ids[i])
            result.returns.append(float(returns[i]))
        done_episodes += wave
        if bar is not None:
            bar.update(wave)
            bar.set_postfix(task=task, success=f"{result.success_rate:.2f}", refresh=False)
        if record and frames:
            path = video_dir / f"{task}_ep{ids[0]:03d}_{'success' if success[0] else 'fail'}.mp4"
            write_video(path, frames)
            videos.append(str(path))
    envs.close()
    return result, videos


def evaluate(policy, tasks: list[str], episodes: int = 50, num_envs: int = 10, max_episode_steps: int = 500,
             n_action_steps: int | None = None, steps: int | None = None, seed: int = 0,
             video_dir: str | Path | None = None, videos_per_task: int = 1, progress: bool = True,
             warm_start: float = 0.0, executor: ChunkExecutor | None = None,
             shard: tuple[int, int] = (0, 1)) -> EvalResult:
    """Success of ``policy`` on each task over ``episodes`` seeded episodes.

    ``shard=(rank, world)``: run only episodes rank, rank + world, ... of each task.

    ``warm_start``: start each chunk's sampler from the rest of the previous chunk at that
    noise level (control.py). ``executor``: drive the envs with this one (its batch size is
    the number of envs) instead of a plain ChunkExecutor, e.g. one that simulates an inference
    delay (deploy/simulated_delay.py)."""
    policy.eval()
    rank, world = shard
    mine = list(range(episodes))[rank::world]
    if executor is None:
        executor = ChunkExecutor(policy, batch_size=max(1, min(num_envs, episodes)), n_action_steps=n_action_steps,
                                 steps=steps, warm_start=warm_start)
    results, videos = [], []
    bar = progress_bar(total=len(mine) * len(tasks), desc="eval", unit="ep", disable=not progress)
    for index, task in enumerate(tasks):
        result, task_videos = run_task(policy, task, index, mine, max_episode_steps, executor, seed,
                                       Path(video_dir) if video_dir else None, videos_per_task, bar)
        results.append(result)
        videos += task_videos
    bar.close()
    return EvalResult(results, executor.latencies_ms, batch_size=executor.batch_size, videos=videos,
                      warmup_ms=executor.warmup_ms)


def merge_results(parts: list[EvalResult]) -> EvalResult:
    """One result from the results of disjoint episode shards: every task's episodes in index
    order, latencies and videos pooled."""
    tasks = []
    for i, first in enumerate(parts[0].tasks):
        rows = sorted(row for part in parts for row in zip(part.tasks[i].episodes, part.tasks[i].successes,
                                                           part.tasks[i].lengths, part.tasks[i].returns))
        tasks.append(TaskResult(first.task, [bool(r[1]) for r in rows], [int(r[2]) for r in rows],
                                [int(r[0]) for r in rows], [float(r[3]) for r in rows]))
    return EvalResult(tasks, [x for p in parts for x in p.chunk_latency_ms], parts[0].batch_size,
                      [v for p in parts for v in p.videos], [w for p in parts for w in p.warmup_ms])


def plot_success(result: EvalResult, path: str | Path, title: str = "success rate") -> None:
    """Bar plot of per-task success with 95% confidence intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t.as_dict() for t in result.tasks]
    names = [r["task"].removesuffix("-v3") for r in rows]
    rates = np.array([r["success_rate"] for r in rows])
    err = np.array([[r["success_rate"] - r["ci95"][0], r["ci95"][1] - r["success_rate"]] for r in rows]).T
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(rows) + 2), 3.6))
    ax.bar(names, rates, yerr=err, capsize=4, color="#4C72B0")
    ax.axhline(result.mean_success, color="#C44E52", linestyle="--", label=f"mean {result.mean_success:.2f}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
