"""Simulation environments, scripted experts and rollouts."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
