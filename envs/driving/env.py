"""``DrivingEnv``: highway-env's highway with IDM/MOBIL traffic, driven by plans.

Each ``step(plan)`` follows the plan (16,) = 8 ego-frame waypoints for 0.5 s, i.e. five
10 Hz simulator steps of the pure-pursuit follower, and returns the scene vector
``{"state": (53,)}``. With ``expert=True`` the ego car is highway-env's own IDM/MOBIL driver
(lane changes included) and ``step()`` takes no plan: demonstrations and the expert baseline.
The episode ends on a collision (terminated) or after ``duration_s`` (truncated).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from .controller import WAYPOINT_DT, PlanFollower
from .scene import SCENE_DIM, scene_vector

SIM_HZ = 10
SUBSTEPS = int(round(WAYPOINT_DT * SIM_HZ))
PLAN_DIM = 16
MAX_ACCELERATION, MAX_STEERING = 5.0, np.pi / 4
TASKS = {"highway": "drive along the highway"}


def highway_config(lanes: int, vehicles: int, density: float, duration_s: float) -> dict:
    return {
        "observation": {"type": "Kinematics"},          # unused: the scene vector is ours
        "action": {"type": "ContinuousAction", "acceleration_range": [-MAX_ACCELERATION, MAX_ACCELERATION],
                   "steering_range": [-MAX_STEERING, MAX_STEERING]},
        "simulation_frequency": SIM_HZ, "policy_frequency": SIM_HZ, "lanes_count": lanes,
        "vehicles_count": vehicles, "vehicles_density": density, "duration": duration_s,
        "offroad_terminal": False,
    }


class DrivingEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str = "highway", lanes: int = 3, vehicles: int = 20, density: float = 1.0,
                 duration_s: float = 30.0, expert: bool = False, expert_speed: float = 28.0,
                 render_mode: str | None = None):
        import highway_env  # noqa: F401  (registers highway-v0)

        if task not in TASKS:
            raise ValueError(f"unknown driving task {task!r}; choose from {sorted(TASKS)}")
        self.task, self.instruction = task, TASKS[task]
        self.expert, self.expert_speed = expert, float(expert_speed)
        config = highway_config(lanes, vehicles, density, duration_s)
        self._env = gym.make(f"{task}-v0", config=config, render_mode=render_mode)
        self.observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-np.inf, np.inf, (SCENE_DIM,), np.float32)})
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (PLAN_DIM,), np.float32)
        self.follower = PlanFollower(max_acceleration=MAX_ACCELERATION, max_steering=MAX_STEERING)
        self.trace: list[np.ndarray] = []        # ego (x, y, heading, speed) at every simulator step
        self.safety: list[tuple[float, bool]] = []   # (time to collision with the car ahead, on road) per step

    @property
    def road(self):
        return self._env.unwrapped.road

    @property
    def ego(self):
        return self._env.unwrapped.vehicle

    def pose(self) -> np.ndarray:
        ego = self.ego
        return np.array([*ego.position, ego.heading, ego.speed])

    def reset(self, seed: int | None = None, options=None):
        self._env.reset(seed=seed)
        if self.expert:
            self._become_expert()
        self.trace, self.safety = [self.pose()], [self.safety_now()]
        return self._observation(), {}

    def safety_now(self) -> tuple[float, bool]:
        """(time to collision with the car ahead in the ego's lane, s (inf when not closing), on road)."""
        ego = self.ego
        front, _ = self.road.neighbour_vehicles(ego, ego.lane_index)
        ttc = np.inf
        if front is not None:
            lane = self.road.network.get_lane(ego.lane_index)
            gap = lane.local_coordinates(front.position)[0] - lane.local_coordinates(ego.position)[0] \
                - (front.LENGTH + ego.LENGTH) / 2
            closing = ego.speed - front.speed
            ttc = max(gap, 0.0) / closing if closing > 0 else np.inf
        return float(ttc), bool(ego.on_road)

    def _become_expert(self) -> None:
        """Swap the ego car for an IDM/MOBIL vehicle in the same place, aiming at expert_speed."""
        from highway_env.vehicle.behavior import IDMVehicle

        env, ego = self._env.unwrapped, self.ego
        driver = IDMVehicle(self.road, ego.position.copy(), ego.heading, ego.speed, target_speed=self.expert_speed)
        self.road.vehicles[self.road.vehicles.index(ego)] = driver
        env.controlled_vehicles = [driver]

    def step(self, plan: np.ndarray | None = None):
        if not self.expert:
            plan = np.asarray(plan, np.float64)
            if plan.shape != (PLAN_DIM,) or not np.all(np.isfinite(plan)):
                raise ValueError(f"a plan is {PLAN_DIM} finite numbers (8 ego-frame waypoints), got shape "
                                 f"{plan.shape}")
            self.follower.set_plan(plan, self.ego.position, self.ego.heading)
        reward, terminated, truncated, info = 0.0, False, False, {}
        for _ in range(SUBSTEPS):
            command = np.zeros(2)
            if not self.expert:
                ego = self.ego
                acceleration, steering = self.follower.command(ego.position, ego.heading, ego.speed, 1 / SIM_HZ)
                command = np.array([acceleration / MAX_ACCELERATION, steering / MAX_STEERING])
            _, r, terminated, truncated, info = self._env.step(command)
            reward += float(r)
            self.trace.append(self.pose())
            self.safety.append(self.safety_now())
            if terminated or truncated:
                break
        info = {"crashed": bool(self.ego.crashed), "on_road": bool(self.ego.on_road), "speed": float(self.ego.speed)}
        return self._observation(), reward, bool(terminated), bool(truncated), info

    def _observation(self) -> dict[str, np.ndarray]:
        return {"state": scene_vector(self.road, self.ego)}

    def render(self):
        return self._env.render()

    def close(self):
        self._env.close()
