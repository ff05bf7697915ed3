"""Planners and the IDM/MOBIL expert on held-out seeds of ``DrivingEnv``: the score and its
parts per episode (metrics.py), planning latency, plan diversity, bird's-eye videos.

Evaluation seeds start at ``EVAL_SEED``, far from the collection seeds (0, 1, ...). The expert
drives every evaluation seed first: its distance is the progress reference of that seed.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from ...progress import progress_bar
from ..video import write_video
from .bev import draw_bev
from .env import SIM_HZ, DrivingEnv
from .metrics import episode_scores, plan_diversity

EVAL_SEED = 100_000
PARTS = ("score", "no_collision", "drivable", "progress", "ttc", "comfort")


def drive_expert(env: DrivingEnv, seed: int) -> dict:
    """One expert episode: its scores against itself (progress 1 unless it crashed early)."""
    env.reset(seed=seed)
    done, info = False, {"crashed": False}
    while not done:
        _, _, terminated, truncated, info = env.step()
        done = terminated or truncated
    trace = np.asarray(env.trace)
    return episode_scores(trace, env.safety, info["crashed"], float(trace[-1, 0] - trace[0, 0]), 1 / SIM_HZ)


def drive_planner(env: DrivingEnv, policy, seed: int, steps: int | None, expert_progress_m: float,
                  frames: list | None = None) -> dict:
    """One episode of a trained planner: every 0.5 s it plans from the last n_obs scenes."""
    obs, _ = env.reset(seed=seed)
    torch.manual_seed(seed)
    history = deque([obs["state"]] * policy.spec.n_obs, maxlen=policy.spec.n_obs)     # padded like training
    goal = policy.goal_inputs(env.task if env.task in policy.spec.tasks else None, 1)
    latencies, diversities, done, info = [], [], False, {"crashed": False}
    while not done:
        batch = {"state": torch.as_tensor(np.stack(history))[None].to(policy.device), **goal}
        start = time.perf_counter()
        chunk, heads = policy.predict_action_chunks(batch, steps, return_heads=True)
        latencies.append((time.perf_counter() - start) * 1e3)
        plan = chunk[0, 0].cpu().numpy()
        plans = heads["plans"][0, :, 0].cpu().numpy() if "plans" in heads else None
        if plans is not None:
            diversities.append(plan_diversity(plans))
        if frames is not None:
            frames.append(draw_bev(env.road, env.ego, plan, plans))
        obs, _, terminated, truncated, info = env.step(plan)
        history.append(obs["state"])
        done = terminated or truncated
    scores = episode_scores(np.asarray(env.trace), env.safety, info["crashed"], expert_progress_m, 1 / SIM_HZ)
    return {**scores, "latency_ms": latencies, "diversity": float(np.mean(diversities)) if diversities else 0.0}


def sampled_diversity(policy, states: np.ndarray, k: int, steps: int | None) -> float:
    """Mean plan diversity over scenes ``states`` (N, n_obs, 53): the K plans of one call for a
    process with several chains (anchors), else K plans drawn with independent noise."""
    goal = policy.goal_inputs(policy.spec.tasks[0] if policy.spec.tasks else None, 1)
    values = []
    for scene in states:
        fan_out = policy.process.fan_out
        n = 1 if fan_out > 1 else k
        batch = {"state": torch.as_tensor(scene)[None].expand(n, *scene.shape).to(policy.device),
                 **{key: v.expand(n, *v.shape[1:]) for key, v in goal.items()}}
        chunks, heads = policy.predict_action_chunks(batch, steps, return_heads=True)
        plans = heads["plans"][0, :, 0] if fan_out > 1 else chunks[:, 0]
        values.append(plan_diversity(plans.cpu().numpy()))
    return float(np.mean(values))


def summarize(rows: list[dict]) -> dict:
    summary = {part: float(np.mean([r[part] for r in rows])) for part in PARTS}
    latency = [ms for r in rows for ms in r.get("latency_ms", [])]
    if latency:
        summary["latency_ms"] = {"p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99))}
        summary["diversity"] = float(np.mean([r["diversity"] for r in rows]))
    summary["episodes"] = len(rows)
    return summary


def drive_experts(seeds: list[int], progress: bool = True, **env_options) -> list[dict]:
    """The expert's scores on each seed (its progress is every planner's reference)."""
    env = DrivingEnv(expert=True, **env_options)
    rows = [drive_expert(env, s) for s in progress_bar(iterable=seeds, desc="expert", unit="ep", disable=not progress)]
    env.close()
    return rows


def evaluate_driving(policy, episodes: int = 200, steps: int | None = None, seed: int = EVAL_SEED,
                     video_dir: str | Path | None = None, videos: int = 1, progress: bool = True,
                     experts: list[dict] | None = None, **env_options) -> dict:
    """{"planner": summary, "expert": summary, "per_episode": [...]} over ``episodes`` seeds;
    ``experts``: the expert's rows for these seeds when already driven (drive_experts)."""
    seeds = list(range(seed, seed + episodes))
    experts = experts if experts is not None else drive_experts(seeds, progress, **env_options)
    env = DrivingEnv(**env_options)
    warm = {"state": torch.zeros(1, policy.spec.n_obs, *policy.spec.obs_shapes["state"], device=policy.device),
            **policy.goal_inputs(env.task if env.task in policy.spec.tasks else None, 1)}
    policy.predict_action_chunks(warm, steps)          # builds the traced graphs: not a planning latency
    bar = progress_bar(total=episodes, desc="planner", unit="ep", disable=not progress)
    planned = []
    for i, (s, expert) in enumerate(zip(seeds, experts)):
        frames = [] if video_dir is not None and i < videos else None
        planned.append(drive_planner(env, policy, s, steps, expert["progress_m"], frames))
        if frames:
            write_video(Path(video_dir) / f"driving_seed{s}.mp4", frames, fps=2)
        bar.set_postfix(score=f"{np.mean([r['score'] for r in planned]):.3f}", refresh=False)
        bar.update(1)
    bar.close()
    env.close()
    per_episode = [{"seed": s, **{k: v for k, v in p.items() if k != "latency_ms"},
                    "expert": {k: e[k] for k in PARTS}} for s, p, e in zip(seeds, planned, experts)]
    return {"planner": summarize(planned), "expert": summarize(experts), "per_episode": per_episode}


def format_table(results: dict[str, dict]) -> str:
    """One row per evaluated driver (name -> summary)."""
    lines = [f"{'driver':<24} " + " ".join(f"{p:>12}" for p in PARTS) + f" {'diversity':>9} {'p50 ms':>7} {'p99 ms':>7}"]
    for name, s in results.items():
        latency = s.get("latency_ms", {})
        lines.append(f"{name:<24} " + " ".join(f"{s[p]:>12.3f}" for p in PARTS)
                     + f" {s.get('diversity', float('nan')):>9.3f} {latency.get('p50', float('nan')):>7.2f}"
                     + f" {latency.get('p99', float('nan')):>7.2f}")
    return "\n".join(lines)
