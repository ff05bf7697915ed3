"""A bird's-eye frame of the road around the ego car with the plans drawn over it: lanes,
cars (ego green, others blue), every plan of the call thin and orange, the executed one red."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scene import lane_centres, to_world

PX_PER_M, BEHIND_M, AHEAD_M, HALF_WIDTH_M = 6.0, 20.0, 100.0, 10.0


def draw_bev(road, ego, plan: np.ndarray | None = None, plans: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 frame centred on the ego car, x to the right; plans are ego-frame (16,) / (K, 16)."""
    width, height = int((BEHIND_M + AHEAD_M) * PX_PER_M), int(2 * HALF_WIDTH_M * PX_PER_M)
    image = Image.new("RGB", (width, height), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    origin = np.array([ego.position[0] - BEHIND_M, ego.position[1] - HALF_WIDTH_M])

    def px(points: np.ndarray) -> list[tuple[float, float]]:
        p = (np.atleast_2d(points) - origin) * PX_PER_M
        return [(float(x), float(y)) for x, y in p]

    s = road.network.get_lane(ego.lane_index).local_coordinates(ego.position)[0]
    for _, lane in lane_centres(road, ego):
        for side in (-1, 1):
            edge = [lane.position(s + d, side * lane.width_at(s) / 2) for d in (-BEHIND_M, AHEAD_M)]
            draw.line(px(np.array(edge)), fill=(230, 230, 230), width=1)
    for vehicle in road.vehicles:
        c, si = np.cos(vehicle.heading), np.sin(vehicle.heading)
        half = np.array([[vehicle.LENGTH / 2, vehicle.WIDTH / 2]]) * np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]])
        corners = vehicle.position + half @ np.array([[c, si], [-si, c]])
        colour = (60, 200, 90) if vehicle is ego else (70, 110, 220)
        draw.polygon(px(corners), fill=(200, 60, 60) if vehicle.crashed else colour)
    for candidate in [] if plans is None else np.asarray(plans).reshape(-1, 16):
        points = to_world(np.concatenate([[[0, 0]], candidate.reshape(8, 2)]), ego.position, ego.heading)
        draw.line(px(points), fill=(250, 170, 60), width=1)
    if plan is not None:
        points = to_world(np.concatenate([[[0, 0]], np.asarray(plan).reshape(8, 2)]), ego.position, ego.heading)
        draw.line(px(points), fill=(230, 30, 30), width=3)
    return np.asarray(image)
