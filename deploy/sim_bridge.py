"""A simulated Meta-World arm on ROS 2 topics, so the policy node runs closed-loop with no hardware.

The robot (:class:`SimRobotNode`) publishes what a ros2_control robot would:
Topic names are those of the ``ros`` config section (defaults shown).

- ``/joint_states`` sensor_msgs/JointState: the 39 state values as named joints (the
  ``metaworld`` joint layout, ros_messages.py), at ``rate_hz`` and right after each command;
- ``/cameras/<camera>/image_raw`` sensor_msgs/Image (rgb8) per camera asked for, with each state;
- ``/instruction`` std_msgs/String (the task's instruction) and ``/record`` std_msgs/Bool
  (true when an episode starts, false when it ends), which the recorder uses to cut episodes;
- ``/diagnostics``: episode, success and command counts.

It executes each command it receives, on ``/<controller>/commands`` (Float64MultiArray) or
``/<controller>/joint_trajectory`` (the first point of a JointTrajectory): one simulation
step per command, as a robot whose controller takes each command on arrival. A non-finite
command is counted and never executed; an empty trajectory is a stop. An episode ends
``steps_after_success`` commands after success, or after ``max_steps`` commands; the next
starts from the next seed (the first once a recorder subscribes to ``/record``, with
``wait_for_recorder``). ``/sim_robot/pause_sensors`` (Bool) silences the sensors, to test
what the node does when its observations stop.

:class:`ExpertTeleop` drives the robot as an operator would: Meta-World's scripted expert
reads ``/joint_states`` and publishes commands on the same topic the policy node uses.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from .ros2_node import COMMAND_QOS, EVENT_QOS, SENSOR_QOS
from .ros_node_base import OwnedNode
from .ros_messages import PRESETS, MessageRejected, command_topic, command_values, image_topic, joint_state_observation

LAYOUT = PRESETS["metaworld"]
DEFAULT_TOPICS = {"controller": "forward_command_controller", "joint_states_topic": "/joint_states", "image_topics": {},
                  "instruction_topic": "/instruction", "record_topic": "/record", "diagnostics_topic": "/diagnostics"}


@dataclass
class EpisodeResult:
    seed: int
    success: bool = False
    commands: int = 0
    start_s: float = 0.0
    success_s: float | None = None


@dataclass
class SimReport:
    task: str
    episodes: list[EpisodeResult] = field(default_factory=list)
    commands: int = 0
    nonfinite_commands: int = 0
    rejected_commands: int = 0
    stops: int = 0
    command_times: list[float] = field(default_factory=list)   # monotonic arrival time of each executed command

    def as_dict(self) -> dict:
        d = asdict(self)
        d["success_rate"] = float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0
        d.pop("command_times")
        return d


class SimRobotNode:
    """A Meta-World task as a ROS 2 robot; see the module docstring."""

    def __init__(self, task: str = "reach-v3", seed: int = 0, episodes: int = 1, rate_hz: float = 20.0,
                 ros: Mapping | None = None, cameras: tuple[str, ...] = (), image_size: int = 84,
                 max_steps: int = 300, steps_after_success: int = 5, wait_for_recorder: bool = False, context=None,
                 node_name: str = "sim_robot"):
        from ..envs.metaworld_env import MetaWorldEnv

        self.env = MetaWorldEnv(task, cameras=list(cameras), image_size=image_size, max_episode_steps=max_steps + 1)
        self.cameras, self.max_steps, self.steps_after_success = list(cameras), max_steps, steps_after_success
        self.first_seed, self.n_episodes = seed, episodes
        self.report = SimReport(self.env.task)
        self.done = threading.Event()
        self.sensors_paused = False
        self._lock = threading.Lock()
        self._after_success = 0
        self.ros = OwnedNode(node_name, context)
        self.context, self.executor = self.ros.context, self.ros.executor
        self.node = node = self.ros.node
        ros = {**DEFAULT_TOPICS, **(ros or {})}
        self.state_pub = node.create_publisher(JointState, ros["joint_states_topic"], SENSOR_QOS)
        self.image_pubs = {cam: node.create_publisher(Image, image_topic(f"rgb_{cam}", ros["image_topics"]), SENSOR_QOS)
                           for cam in self.cameras}
        self.instruction_pub = node.create_publisher(String, ros["instruction_topic"], EVENT_QOS)
        self.record_pub = node.create_publisher(Bool, ros["record_topic"], EVENT_QOS)
        self.diagnostics_pub = node.create_publisher(DiagnosticArray, ros["diagnostics_topic"], EVENT_QOS)
        for msg_type, interface in ((Float64MultiArray, "commands"), (JointTrajectory, "joint_trajectory")):
            node.create_subscription(msg_type, command_topic(ros["controller"], interface), self._execute, COMMAND_QOS)
        node.create_subscription(Bool, f"/{node_name}/pause_sensors", self._on_pause, EVENT_QOS)
        node.create_timer(1.0 / rate_hz, self.publish_state)
        node.create_timer(1.0, self.publish_diagnostics)
        self.wait_for_recorder = wait_for_recorder
        self._obs, _ = self.env.reset(seed=seed)

    # ------------------------------------------------------------------ episodes
    @property
    def episode(self) -> EpisodeResult | None:
        return self.report.episodes[-1] if self.report.episodes else None

    def _maybe_start(self) -> None:
        """The first episode starts once a recorder listens on /record (when waiting for one)."""
        if not self.report.episodes and (not self.wait_for_recorder or self.record_pub.get_subscription_count() > 0):
            self._start_episode()

    def _start_episode(self) -> None:
        result = EpisodeResult(seed=self.first_seed + len(self.report.episodes), start_s=time.monotonic())
        self.report.episodes.append(result)
        self._obs, _ = self.env.reset(seed=result.seed)
        self._after_success = 0
        self.instruction_pub.publish(String(data=self.env.instruction))
        self.record_pub.publish(Bool(data=True))
        self.publish_state()

    def _end_episode(self) -> None:
        self.record_pub.publish(Bool(data=False))
        if len(self.report.episodes) >= self.n_episodes:
            self.done.set()
        else:
            self._start_episode()

    # ------------------------------------------------------------------ commands
    def _execute(self, msg) -> None:
        try:
            command = command_values(msg, LAYOUT)
        except MessageRejected as exc:
            if exc.reason == "empty":
                self.report.stops += 1
            elif exc.reason == "nonfinite":
                self.report.nonfinite_commands += 1
            else:
                self.report.rejected_commands += 1
            return
        if self.done.is_set() or self.episode is None:
            return
        with self._lock:
            self._obs, _, _, _, info = self.env.step(command)
            self.report.commands += 1
            self.report.command_times.append(time.monotonic())
            episode = self.episode
            episode.commands += 1
            if info["success"] and not episode.success:
                episode.success, episode.success_s = True, time.monotonic() - episode.start_s
            self._after_success += int(episode.success)
            finished = self._after_success > self.steps_after_success or episode.commands >= self.max_steps
        self.publish_state()
        if finished:
            self._end_episode()

    def _on_pause(self, msg) -> None:
        self.sensors_paused = bool(msg.data)

    # ------------------------------------------------------------------ sensors
    def publish_state(self) -> None:
        if self.sensors_paused:
            return
        with self._lock:
            state = self.env.raw_state.copy()
            images = {cam: self._obs[f"rgb_{cam}"] for cam in self.cameras}
        stamp = self.node.get_clock().now().to_msg()
        msg = JointState(name=list(LAYOUT.observation["state"]), position=[float(v) for v in state])
        msg.header.stamp = stamp
        self.state_pub.publish(msg)
        for cam, image in images.items():
            img = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", step=image.shape[1] * 3,
                        data=image.tobytes())
            img.header.stamp = stamp
            self.image_pubs[cam].publish(img)

    def publish_diagnostics(self) -> None:
        r = self.report
        values = {"episode": len(r.episodes), "success": bool(self.episode and self.episode.success), "commands": r.commands,
                  "nonfinite_commands": r.nonfinite_commands, "stops": r.stops, "done": self.done.is_set()}
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name="sim_robot: " + r.task, message="running",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.diagnostics_pub.publish(DiagnosticArray(status=[status]))

    # ------------------------------------------------------------------ lifecycle
    def spin(self, should_stop=lambda: False, timeout_s: float = math.inf, exit_when_done: bool = True) -> SimReport:
        """Serve commands until every episode ran (``exit_when_done``), ``should_stop()`` or the timeout."""
        deadline = time.monotonic() + timeout_s
        while not should_stop() and time.monotonic() < deadline and not (exit_when_done and self.done.is_set()):
            self._maybe_start()
            self.executor.spin_once(timeout_sec=0.01)
        return self.report

    def write_report(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.report.as_dict(), indent=2))

    def close(self) -> None:
        if self.ros.closed:
            return
        self.ros.close()
        self.env.close()


class ExpertTeleop:
    """Meta-World's scripted expert as an operator: /joint_states in, commands out, at ``rate_hz``."""

    def __init__(self, task: str, context, rate_hz: float = 20.0, ros: Mapping | None = None):
        from ..envs.collect import make_expert
        from ..envs.metaworld_tasks import resolve_tasks

        self.expert = make_expert(resolve_tasks(task)[0])
        ros = {**DEFAULT_TOPICS, **(ros or {})}
        self.node = Node("expert_teleop", context=context)
        self._state: np.ndarray | None = None
        self.node.create_subscription(JointState, ros["joint_states_topic"], self._on_state, SENSOR_QOS)
        self.pub = self.node.create_publisher(Float64MultiArray, command_topic(ros["controller"], "commands"),
                                              COMMAND_QOS)
        self.node.create_timer(1.0 / rate_hz, self._tick)

    def _on_state(self, msg) -> None:
        self._state = joint_state_observation(msg, LAYOUT)["state"].astype(np.float64)

    def _tick(self) -> None:
        if self._state is not None:
            self.pub.publish(Float64MultiArray(data=[float(v) for v in self.expert(self._state)]))
            self._state = None      # one command per new state: the operator waits to see the arm move
