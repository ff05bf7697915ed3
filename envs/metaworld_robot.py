"""A Meta-World task behind the runtime's robot interface, for closed-loop tests and benchmarks.

The runtime (deploy/runtime.py) talks to a robot through ``read()``, ``send(command)`` and
``stop()``. Here the "robot" is one Meta-World episode: ``send`` steps the simulation once,
``read`` returns the simulation's current state, stamped now (the simulation does not move
between commands, so its state is as fresh as a sensor read at that moment). A stopped robot
refuses further commands, as a real one behind an e-stop does.
"""

from __future__ import annotations

import time

import numpy as np

from .metaworld_env import MetaWorldEnv


class MetaWorldRobot:
    def __init__(self, task: str, seed: int = 0, max_episode_steps: int = 500, clock=time.monotonic):
        self.env = MetaWorldEnv(task, max_episode_steps=max_episode_steps)
        self.clock = clock
        self._obs, _ = self.env.reset(seed=seed)
        self.commands: list[np.ndarray] = []
        self.success = False
        self.stopped = False

    def read(self) -> tuple[dict[str, np.ndarray], float]:
        """The current observation (key -> per-step array) and when it was read."""
        return self._obs, self.clock()

    def send(self, command: np.ndarray) -> None:
        """Execute one command (A,): one simulation step."""
        if self.stopped:
            raise RuntimeError("robot is stopped: reset it before sending commands")
        command = np.asarray(command, dtype=np.float64)
        self.commands.append(command.copy())
        self._obs, _, _, _, info = self.env.step(command)
        self.success = self.success or bool(info["success"])

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.env.close()
