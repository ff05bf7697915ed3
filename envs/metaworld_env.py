"""A gymnasium environment over one Meta-World v3 task.

Observations are a dict:
- ``state``    (39,) float32: hand xyz, gripper opening, two object poses, the previous
               frame of those 18 values, goal xyz (the goal is observable, as in MT10/MT50).
- ``proprio``  (4,) float32: hand xyz and gripper opening.
- ``rgb_<camera>`` (S, S, 3) uint8 for each camera asked for, upright.

Each reset draws a new object and goal placement from the environment's seeded generator,
so ``reset(seed=s)`` gives the same scene for the same s. ``info["success"]`` is a bool.
"""

from __future__ import annotations

import atexit
import os
import weakref

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from .metaworld_tasks import INSTRUCTIONS, resolve_tasks

ROTATED_CAMERAS = ("corner", "corner2", "corner3", "corner4")  # these render upside down
CAMERAS = ROTATED_CAMERAS + ("topview", "gripperPOV", "behindGripper")
DEFAULT_VIDEO_CAMERA = "corner"


def _make_raw_env(task: str):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[task]()
    env._partially_observable = False  # goal position in the observation (MT benchmarks)
    env._freeze_rand_vec = False
    env._set_task_called = True
    env.seeded_rand_vec = True
    try:  # cached with the goal bounds of the partially observable setting
        del env.sawyer_observation_space
    except AttributeError:
        pass
    env.model.vis.quality.shadowsize = 0  # shadows and MSAA off: 5-7x faster CPU rendering
    env.model.vis.quality.offsamples = 0
    return env


_LIVE_RENDERERS: "weakref.WeakSet[CameraRenderer]" = weakref.WeakSet()


def _close_live_renderers() -> None:
    """Free GL contexts before MuJoCo's own exit hook tears down EGL (avoids noisy __del__ errors)."""
    for renderer in list(_LIVE_RENDERERS):
        renderer.close()


class CameraRenderer:
    """Offscreen renders of named cameras at one resolution, upright."""

    def __init__(self, model, height: int, width: int):
        self.height, self.width = height, width
        self._renderer = mujoco.Renderer(model, height, width)
        if not _LIVE_RENDERERS:  # registered after MuJoCo's GL hook, so it runs before it
            atexit.unregister(_close_live_renderers)
            atexit.register(_close_live_renderers)
        _LIVE_RENDERERS.add(self)

    def render(self, data, camera: str) -> np.ndarray:
        self._renderer.update_scene(data, camera=camera)
        image = self._renderer.render()
        if camera in ROTATED_CAMERAS:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with dict observations; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "reach-v3",
        cameras: list[str] | tuple[str, ...] = (),
        image_size: int = 84,
        max_episode_steps: int = 500,
        terminate_on_success: bool = False,
        render_mode: str | None = "rgb_array",
        video_size: tuple[int, int] = (240, 320),
    ):
        self.task = resolve_tasks(task)[0] if isinstance(task, str) else task
        for cam in cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown Meta-World camera {cam!r}; choose from {CAMERAS}")
        self.instruction = INSTRUCTIONS[self.task]
        self.cameras = list(cameras)
        self.image_size = int(image_size)
        self._env = _make_raw_env(self.task)
        self.max_episode_steps = min(int(max_episode_steps), int(self._env.max_path_length))
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.video_size = tuple(video_size)
        self._camera_renderer: CameraRenderer | None = None
        self._video_renderer: CameraRenderer | None = None
        obs_spaces = {
            "state": spaces.Box(-np.inf, np.inf, (39,), np.float32),
            "proprio": spaces.Box(-np.inf, np.inf, (4,), np.float32),
        }
        for cam in self.cameras:
            obs_spaces[f"rgb_{cam}"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._steps = 0
        self._seeded = False

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            self._env.seed(int(seed) if seed is not None else int(self.np_random.integers(2**31)))
            self._seeded = True
        raw, _ = self._env.reset()
        self._steps = 0
        return self._observe(raw), {"success": False, "task": self.task}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(4), -1.0, 1.0)
        raw, reward, _, _, info = self._env.step(action)
        self._steps += 1
        success = bool(info.get("success", 0.0) > 0.5)
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps
        return self._observe(raw), float(reward), terminated, truncated, {"success": success, "task": self.task}

    def render(self) -> np.ndarray:
        """An upright (H, W, 3) frame of the video camera, for mp4 recordings."""
        if self._video_renderer is None:
            self._video_renderer = CameraRenderer(self._env.model, *self.video_size)
        return self._video_renderer.render(self._env.data, DEFAULT_VIDEO_CAMERA)

    def close(self) -> None:
        for renderer in (self._camera_renderer, self._video_renderer):
            if renderer is not None:
                renderer.close()
        self._camera_renderer = self._video_renderer = None
        self._env.close()

    # ------------------------------------------------------------------ helpers
    @property
    def raw_state(self) -> np.ndarray:
        """The (39,) float64 state the scripted experts read."""
        return self._last_raw

    def _observe(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        self._last_raw = np.asarray(raw, dtype=np.float64)
        obs = {"state": self._last_raw.astype(np.float32), "proprio": self._last_raw[:4].astype(np.float32)}
        if self.cameras:
            if self._camera_renderer is None:
                self._camera_renderer = CameraRenderer(self._env.model, self.image_size, self.image_size)
            for cam in self.cameras:
                obs[f"rgb_{cam}"] = self._camera_renderer.render(self._env.data, cam)
        return obs
