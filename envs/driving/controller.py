"""Following a plan: pure pursuit for the steering; for the throttle the plan's acceleration
plus feedback on the speed and on the distance behind the plan's current point.

A plan (8, 2) holds ego-frame waypoints 0.5 s apart starting 0.5 s ahead; the follower fixes
it in the world frame when it is given, then at every simulator step aims at the point of the
plan ``lookahead_s`` ahead in time and at the speed the plan moves at around now. Commands
are in physical units (m/s^2, rad) for highway-env's kinematic bicycle model.
"""

from __future__ import annotations

import numpy as np

from .scene import to_ego, to_world

WAYPOINT_DT = 0.5


class PlanFollower:
    def __init__(self, lookahead_s: float = 0.8, speed_gain: float = 2.0, position_gain: float = 1.0,
                 max_acceleration: float = 5.0, max_steering: float = np.pi / 4, wheelbase: float = 5.0):
        self.lookahead_s = lookahead_s
        self.speed_gain, self.position_gain = speed_gain, position_gain      # critically damped along the track
        self.max_acceleration = max_acceleration
        self.max_steering = max_steering
        self.wheelbase = wheelbase
        self.path: np.ndarray | None = None          # (9, 2) world points at t = 0, 0.5, ..., 4 s
        self.elapsed = 0.0

    def set_plan(self, plan: np.ndarray, position: np.ndarray, heading: float) -> None:
        """plan (8, 2) or (16,) ego-frame waypoints, for a vehicle now at ``position``, ``heading``."""
        plan = np.asarray(plan, np.float64).reshape(-1, 2)
        self.path = np.concatenate([np.asarray(position, np.float64)[None], to_world(plan, position, heading)])
        self.elapsed = 0.0

    def point_at(self, t: float) -> np.ndarray:
        """The plan's world position at time t (s) after it was given, linear between waypoints."""
        times = np.arange(len(self.path)) * WAYPOINT_DT
        return np.array([np.interp(t, times, self.path[:, 0]), np.interp(t, times, self.path[:, 1])])

    def planned_speed(self, t: float) -> float:
        """The plan's speed around time t: distance covered over the 0.5 s centred on t."""
        early, late = max(t - 0.25, 0.0), t + 0.25
        return float(np.linalg.norm(self.point_at(late) - self.point_at(early)) / (late - early))

    def command(self, position: np.ndarray, heading: float, speed: float, dt: float) -> tuple[float, float]:
        """(acceleration, steering) for this simulator step; advances the plan clock by dt."""
        if self.path is None:
            raise RuntimeError("PlanFollower.command before set_plan")
        t, position = self.elapsed, np.asarray(position, np.float64)
        behind = to_ego(self.point_at(t), position, heading)[0]             # along-track error, metres
        planned = self.planned_speed(t)
        feed_forward = (self.planned_speed(t + 0.25) - self.planned_speed(max(t - 0.25, 0.0))) / 0.5
        acceleration = np.clip(feed_forward + self.speed_gain * (planned - speed) + self.position_gain * behind,
                               -self.max_acceleration, self.max_acceleration)
        target = to_ego(self.point_at(t + self.lookahead_s), position, heading)
        distance_sq = max(float(target @ target), 1e-6)
        curvature = 2.0 * target[1] / distance_sq                         # pure pursuit
        steering = np.clip(np.arctan(curvature * self.wheelbase), -self.max_steering, self.max_steering)  # bicycle model
        self.elapsed += dt
        return float(acceleration), float(steering)
