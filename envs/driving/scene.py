"""The scene as one vector: ego state, nearby vehicles and lane geometry, in the ego frame.

Layout (``SCENE_DIM`` = 5 + 8 x 5 + 4 x 2 = 53 numbers, roughly unit scale):
- ego (5): speed / 30, sin and cos of the heading relative to its lane, lateral offset from
  the lane centre / lane width, lane index / (lanes - 1);
- agents (8 x 5), nearest first within ``RANGE`` metres: presence, dx / 50, dy / 10 (ego
  frame), relative vx / 20, vy / 20 (ego frame); absent rows are zeros;
- lanes (4 x 2): presence, lateral offset of the lane centre in the ego frame / 10.
"""

from __future__ import annotations

import numpy as np

N_AGENTS, N_LANES, RANGE = 8, 4, 80.0
SCENE_DIM = 5 + N_AGENTS * 5 + N_LANES * 2


def to_ego(points: np.ndarray, position: np.ndarray, heading: float) -> np.ndarray:
    """World points (..., 2) in the frame of a vehicle at ``position`` facing ``heading``."""
    c, s = np.cos(heading), np.sin(heading)
    d = np.asarray(points, np.float64) - position
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def to_world(points: np.ndarray, position: np.ndarray, heading: float) -> np.ndarray:
    """Ego-frame points (..., 2) back in the world frame (the inverse of ``to_ego``)."""
    c, s = np.cos(heading), np.sin(heading)
    p = np.asarray(points, np.float64)
    return np.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]], axis=-1) + position


def lane_centres(road, vehicle) -> list:
    """The lanes parallel to the vehicle's lane: (lane index, lane), left to right."""
    start, end, _ = vehicle.lane_index
    return [((start, end, i), lane) for i, lane in enumerate(road.network.graph[start][end])]


def scene_vector(road, ego) -> np.ndarray:
    """(SCENE_DIM,) float32 observation of the road around ``ego``."""
    lanes = lane_centres(road, ego)
    lane = road.network.get_lane(ego.lane_index)
    s, lateral = lane.local_coordinates(ego.position)
    width = lane.width_at(s)
    heading = ego.heading - lane.heading_at(s)
    ego_part = [ego.speed / 30.0, np.sin(heading), np.cos(heading), lateral / width,
                ego.lane_index[2] / max(len(lanes) - 1, 1)]
    agents = np.zeros((N_AGENTS, 5))
    others = [v for v in road.vehicles if v is not ego]
    if others:
        rel = to_ego(np.array([v.position for v in others]), ego.position, ego.heading)
        dist = np.linalg.norm(rel, axis=1)
        order = [i for i in np.argsort(dist) if dist[i] <= RANGE][:N_AGENTS]
        velocity = to_ego(np.array([v.velocity for v in others]), np.zeros(2), ego.heading) \
            - to_ego(ego.velocity[None], np.zeros(2), ego.heading)
        for row, i in enumerate(order):
            agents[row] = [1.0, rel[i, 0] / 50.0, rel[i, 1] / 10.0, velocity[i, 0] / 20.0, velocity[i, 1] / 20.0]
    lane_part = np.zeros((N_LANES, 2))
    for row, (_, other) in enumerate(lanes[:N_LANES]):
        centre = other.position(s, 0.0)
        lane_part[row] = [1.0, to_ego(centre, ego.position, ego.heading)[1] / 10.0]
    return np.concatenate([ego_part, agents.ravel(), lane_part.ravel()]).astype(np.float32)
