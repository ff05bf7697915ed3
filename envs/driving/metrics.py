"""Driving scores in the spirit of NAVSIM's PDM score, from one episode's 10 Hz trace.

- ``no_collision`` (NC): 1 without a collision, else 0 (a multiplier);
- ``drivable`` (DAC): 1 if the ego stayed on the road the whole episode, else 0 (a multiplier);
- ``progress`` (EP): distance along the road over the IDM/MOBIL expert's on the same seed,
  capped at 1;
- ``ttc`` (TTC): 1 if the time to collision with the car ahead in the ego's lane never fell
  below ``TTC_MIN_S``, else 0;
- ``comfort`` (C): 1 if longitudinal acceleration, jerk, lateral acceleration and yaw rate
  (0.5 s moving averages) stayed within NAVSIM's bounds, else 0.

``score = NC * DAC * (5 EP + 5 TTC + 2 C) / 12``, NAVSIM's weights without its direction term.
``plan_diversity``: how far apart the K plans of one call are.
"""

from __future__ import annotations

import numpy as np

TTC_MIN_S = 1.0
LON_ACCEL = (-4.05, 2.40)       # m/s^2
MAX_JERK = 4.13                 # m/s^3
MAX_LAT_ACCEL = 4.89            # m/s^2
MAX_YAW_RATE = 0.95             # rad/s


def smooth(x: np.ndarray, n: int = 5) -> np.ndarray:
    return np.convolve(x, np.ones(n) / n, mode="valid") if len(x) >= n else x


def comfortable(trace: np.ndarray, dt: float) -> bool:
    """trace (T, 4): x, y, heading, speed at steps of dt seconds."""
    if len(trace) < 8:
        return True
    speed, heading = smooth(trace[:, 3]), smooth(np.unwrap(trace[:, 2]))
    accel = np.diff(speed) / dt
    jerk = np.diff(smooth(accel, 3)) / dt
    yaw_rate = np.diff(heading) / dt
    lateral = speed[1:] * yaw_rate
    return bool(np.all((accel >= LON_ACCEL[0]) & (accel <= LON_ACCEL[1])) and np.all(np.abs(jerk) <= MAX_JERK)
                and np.all(np.abs(lateral) <= MAX_LAT_ACCEL) and np.all(np.abs(yaw_rate) <= MAX_YAW_RATE))


def episode_scores(trace: np.ndarray, safety: list[tuple[float, bool]], crashed: bool, expert_progress_m: float,
                   dt: float) -> dict:
    """The score and its parts for one episode (see the module docstring)."""
    progress_m = float(trace[-1, 0] - trace[0, 0])             # highway lanes run along x
    min_ttc = float(min(t for t, _ in safety)) if safety else float("inf")
    parts = {
        "no_collision": 0.0 if crashed else 1.0,
        "drivable": 1.0 if all(on_road for _, on_road in safety) else 0.0,
        "progress": float(np.clip(progress_m / max(expert_progress_m, 1.0), 0.0, 1.0)),
        "ttc": 1.0 if min_ttc >= TTC_MIN_S else 0.0,
        "comfort": 1.0 if comfortable(trace, dt) else 0.0,
    }
    score = parts["no_collision"] * parts["drivable"] * (5 * parts["progress"] + 5 * parts["ttc"]
                                                          + 2 * parts["comfort"]) / 12
    return {"score": score, **parts, "progress_m": progress_m, "min_ttc_s": min_ttc}


def plan_diversity(plans: np.ndarray) -> float:
    """Mean distance between the waypoints of two different plans, over the mean distance the
    plans travel: 0 when all K plans (K, 8, 2) coincide."""
    plans = np.asarray(plans, np.float64).reshape(len(plans), -1, 2)
    if len(plans) < 2:
        return 0.0
    gaps = np.linalg.norm(plans[:, None] - plans[None], axis=-1).mean(axis=-1)       # (K, K)
    k = len(plans)
    travel = np.linalg.norm(plans[:, -1], axis=-1).mean()
    return float(gaps.sum() / (k * (k - 1)) / max(travel, 1e-6))
