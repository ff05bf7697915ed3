"""One LIBERO task's environment with the store's observation keys.

Observations: ``state`` (15) = end-effector position (3), orientation as an axis-angle (3),
gripper finger positions (2), joint positions (7) — the order the LIBERO converter writes
(ee_pos, ee_ori, gripper_states, joint_states); cameras ``rgb_agentview`` and
``rgb_eye_in_hand`` (S, S, 3), turned upright (robosuite renders them rotated by 180 degrees,
and the converter turns the recorded ones the same way). With ``objects=True`` also
``object_state`` (10 per object of interest, in the task's BDDL order: world position (3),
quaternion x, y, z, w (4), position relative to the end effector in its frame (3)) — privileged state, for
policies trained on the scripted expert's demos without cameras. Actions: 7-D OSC deltas,
gripper -1 open / +1 closed.
"""

from __future__ import annotations

import numpy as np

from .suites import NOOP, SETTLE_STEPS, LiberoTask

CAMERAS = {"agentview": "agentview_image", "eye_in_hand": "robot0_eye_in_hand_image"}
OBJECT_FIELDS = ("pos", "quat", "to_robot0_eef_pos")      # per object of interest: 3 + 4 + 3


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis * angle (3,)."""
    x, y, z, w = quat
    w = float(np.clip(w, -1.0, 1.0))
    s = np.sqrt(max(1.0 - w * w, 0.0))
    if s < 1e-8:
        return np.zeros(3)
    return np.array([x, y, z]) / s * 2.0 * np.arccos(w)


class LiberoEnv:
    """``reset(episode)``: initial state ``episode`` of the task, then the settle steps;
    ``step(action)`` -> (obs, success)."""

    def __init__(self, task: LiberoTask, cameras: list[str] = (), image_size: int = 128, objects: bool = False):
        from libero.libero.envs.env_wrapper import ControlEnv

        unknown = set(cameras) - set(CAMERAS)
        if unknown:
            raise ValueError(f"LIBERO cameras are {sorted(CAMERAS)}; got {sorted(unknown)}")
        self.task, self.cameras, self.objects = task, list(cameras), objects
        names = [CAMERAS[c].removesuffix("_image") for c in self.cameras]
        self.env = ControlEnv(bddl_file_name=task.bddl_file, use_camera_obs=bool(names),
                              has_offscreen_renderer=bool(names), camera_names=names or ["agentview"],
                              camera_heights=image_size, camera_widths=image_size)
        self.env.seed(0)
        self.steps = 0                  # simulator steps since the last reset, settle steps included
        self.raw: dict = {}             # the simulator's last observation (privileged state, for experts)

    def observation(self, raw: dict) -> dict[str, np.ndarray]:
        self.raw = raw
        state = np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                                raw["robot0_gripper_qpos"], raw["robot0_joint_pos"]]).astype(np.float32)
        obs = {"state": state}
        if self.objects:
            obs["object_state"] = np.concatenate([raw[f"{name}_{field}"] for name in self.env.env.obj_of_interest
                                                  for field in OBJECT_FIELDS]).astype(np.float32)
        for cam in self.cameras:
            obs[f"rgb_{cam}"] = np.ascontiguousarray(raw[CAMERAS[cam]][::-1, ::-1])
        return obs

    def reset(self, episode: int | None = None, seed: int | None = None) -> dict[str, np.ndarray]:
        """Initial state ``episode`` (evaluation), or with ``episode=None`` a fresh placement
        drawn by the task's own sampler from ``seed`` (collection: never an evaluation state)."""
        if episode is None:
            self.env.seed(int(seed or 0))
            raw = self.env.reset()
        elif not 0 <= episode < len(self.task.init_states):
            raise ValueError(f"{self.task.name}: episode {episode}; the task ships "
                             f"{len(self.task.init_states)} initial states")
        else:
            self.env.reset()
            raw = self.env.set_init_state(self.task.init_states[episode])
        self.steps = 0
        for _ in range(SETTLE_STEPS):
            raw, _, _, _ = self.env.step(NOOP)
            self.steps += 1
        return self.observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        action = np.asarray(action, np.float64)
        if action.shape != (7,) or not np.isfinite(action).all():
            raise ValueError(f"{self.task.name}: a LIBERO action is 7 finite numbers, got {action}")
        raw, _, done, _ = self.env.step(action)
        self.steps += 1
        return self.observation(raw), bool(done or self.env.check_success())

    def close(self) -> None:
        self.env.close()
