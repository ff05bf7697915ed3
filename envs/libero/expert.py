"""A privileged-state expert for LIBERO-Object's pick-and-place tasks: it reads the object's
and the basket's positions from the simulator and drives the end effector through waypoints
with 7-D OSC delta actions (position only, gripper -1 open / +1 closed).

Phases: above the object, down to it, close, lift, over the basket, down into it, open. Each
moving phase ends when the end effector is within ``reach`` of its waypoint (or after
``patience`` steps), the gripper phases after a fixed number of steps.
"""

from __future__ import annotations

import numpy as np

OSC_STEP = 0.05                    # metres per step at an action of 1 (OSC_POSE output range)


def hand_yaw(quat: np.ndarray) -> float:
    """Heading of the hand's x axis in the horizontal plane, from an (x, y, z, w) quaternion."""
    x, y, z, w = quat
    return float(np.arctan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z)))


class PickPlaceExpert:
    """``act(raw_obs) -> action (7,)``; ``raw_obs`` is robosuite's observation dict."""

    def __init__(self, target: str, container: str = "basket_1", gain: float = 0.5, reach: float = 0.012,
                 patience: int = 60, grasp_steps: int = 12, hover: float = 0.12, carry_height: float = 0.30,
                 grasp_depth: float = 0.0, drop_height: float = 0.16, yaw: float = 0.0):
        self.target, self.container = target, container
        self.gain, self.reach, self.patience = gain, reach, patience
        self.grasp_steps, self.hover, self.carry, self.depth, self.drop = (grasp_steps, hover, carry_height,
                                                                           grasp_depth, drop_height)
        self.yaw, self.start_yaw = yaw, None       # turn of the hand about the vertical, radians
        self.phase, self.count = 0, 0

    def waypoint(self, raw: dict) -> tuple[np.ndarray | None, float]:
        """(position to reach or None to hold, gripper command) of the current phase."""
        obj, box, eef = raw[f"{self.target}_pos"], raw[f"{self.container}_pos"], raw["robot0_eef_pos"]
        phases = [
            (obj + [0, 0, self.hover], -1.0),                            # above the object
            (obj + [0, 0, self.depth], -1.0),                            # down to it
            (None, 1.0),                                                 # close
            (np.array([eef[0], eef[1], self.carry]), 1.0),               # lift
            (np.array([box[0], box[1], self.carry]), 1.0),               # over the basket
            (box + [0, 0, self.drop], 1.0),                              # down into it
            (None, -1.0),                                                # open
            (np.array([eef[0], eef[1], self.carry]), -1.0),              # back up
        ]
        return phases[min(self.phase, len(phases) - 1)]

    def act(self, raw: dict) -> np.ndarray:
        target, grip = self.waypoint(raw)
        eef = raw["robot0_eef_pos"]
        action = np.zeros(7)
        action[6] = grip
        self.count += 1
        if target is None:
            if self.count >= self.grasp_steps:
                self.phase, self.count = self.phase + 1, 0
            return action
        heading = hand_yaw(raw["robot0_eef_quat"])
        if self.start_yaw is None:
            self.start_yaw = heading
        turn = np.angle(np.exp(1j * (self.start_yaw + self.yaw - heading)))
        action[5] = np.clip(2.0 * turn, -1.0, 1.0)
        error = target - eef
        action[:3] = np.clip(self.gain * error / OSC_STEP * 2, -1.0, 1.0)
        if np.linalg.norm(error) < self.reach or self.count >= self.patience:
            self.phase, self.count = self.phase + 1, 0
        return action
