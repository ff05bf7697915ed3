"""The ROS 2 node: a thin layer that connects the real-time runtime (runtime.py) to topics.

Subscriptions (QoS: sensors best-effort, depth 1, so a late sample is replaced rather than
queued; e-stop and instruction reliable):
- ``joint_states`` sensor_msgs/JointState: the low-dim observations, picked by joint name
  through the joint layout (ros_messages.py), in any order;
- one sensor_msgs/Image (or CompressedImage, ``image_transport=compressed``) topic per camera
  the policy reads;
- ``instruction`` std_msgs/String: a task name or its instruction selects the task goal;
- ``estop`` std_msgs/Bool: ``true`` latches the safety layer's e-stop (``false`` does not clear it).

Publications (reliable, depth 1): std_msgs/Float64MultiArray on ``/<controller>/commands``
(``interface=commands``, ros2_control's forward command controllers) or one-point
trajectory_msgs/JointTrajectory on ``/<controller>/joint_trajectory`` (``interface=
joint_trajectory``, the joint trajectory controller); diagnostic_msgs/DiagnosticArray on
``/diagnostics`` with latency, schedule and safety counters. Service ``~/reset``
(std_srvs/Trigger) clears a latched stop and starts the policy again.

A malformed message (unknown or missing joints, wrong sizes, NaN, wrong image encoding or
size) is counted under its reason, logged (throttled) and dropped: it never enters the
observation, so a robot whose sensors send only bad data goes stale and the safety layer
holds, then stops it. Every command passes the safety filter; a stop publishes the hold
command (``commands``) or an empty trajectory (``joint_trajectory``, which makes the
controller hold position) and nothing after it.

``trigger=clock`` ticks at ``rate_hz``; ``trigger=observation`` ticks on each new joint
state (the robot's state clock drives the loop; with none for two periods it ticks anyway,
so that the safety layer sees the observations go stale).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from .ros_node_base import OwnedNode
from .ros_messages import (JointLayout, MessageRejected, command_topic, image_reader, image_topic,
                           joint_state_observation, seconds_stamp)
from .runtime import MonotonicClock, Runtime, RuntimeSettings
from .safety import SafetyFilter, SafetyLimits

SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
COMMAND_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
EVENT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


@dataclass
class NodeSettings:
    node_name: str = "ditpolicy"
    controller: str = "forward_command_controller"
    interface: str = "commands"              # commands | joint_trajectory
    layout: object = "metaworld"             # preset name or {observation: {key: [joints]}, command: [joints]}
    joint_states_topic: str = "/joint_states"
    image_topics: dict = field(default_factory=dict)   # obs key -> topic (default /cameras/<camera>/image_raw)
    image_transport: str = "raw"             # raw | compressed (<topic>/compressed)
    instruction_topic: str = "/instruction"
    estop_topic: str = "/estop"
    diagnostics_topic: str = "/diagnostics"
    diagnostics_hz: float = 1.0
    trigger: str = "clock"                   # clock | observation
    task: str | None = None                  # starting task goal (default: the checkpoint's first)

    def check(self) -> None:
        if self.interface not in ("commands", "joint_trajectory"):
            raise ValueError(f"interface must be commands or joint_trajectory, got {self.interface!r}")
        if self.image_transport not in ("raw", "compressed"):
            raise ValueError(f"image_transport must be raw or compressed, got {self.image_transport!r}")
        if self.trigger not in ("clock", "observation"):
            raise ValueError(f"trigger must be clock or observation, got {self.trigger!r}")
        if not (math.isfinite(self.diagnostics_hz) and self.diagnostics_hz > 0):
            raise ValueError(f"diagnostics_hz must be a positive number, got {self.diagnostics_hz}")

    @property
    def command_topic(self) -> str:
        return command_topic(self.controller, self.interface)

    def image_topic(self, key: str) -> str:
        return image_topic(key, self.image_topics, self.image_transport)


class ObservationClock(MonotonicClock):
    """Ticks on new observations: ``sleep_until`` returns when one arrives (or after ``timeout_s``,
    so that a silent robot still ticks and the safety layer sees it go stale)."""

    def __init__(self, arrived: threading.Event, timeout_s: float):
        self.arrived, self.timeout_s = arrived, timeout_s

    def sleep_until(self, deadline: float) -> None:
        self.arrived.wait(self.timeout_s)
        self.arrived.clear()


class ObservationBuffer:
    """The newest accepted value of each observation part, with its arrival time; thread-safe."""

    def __init__(self, layout: JointLayout, image_shapes: dict[str, list[int]], clock=time.monotonic):
        self.layout, self.image_shapes, self.clock = layout, image_shapes, clock
        self._parts: dict[str, tuple[np.ndarray, float]] = {}
        self._lock = threading.Lock()
        self.arrived = threading.Event()      # set by each accepted joint state
        self.last_arrival = -math.inf         # clock time of the newest accepted joint state
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def put_joint_state(self, msg) -> None:
        obs = joint_state_observation(msg, self.layout)
        now = self.clock()
        with self._lock:
            self._parts.update({k: (v, now) for k, v in obs.items()})
            self.accepted += 1
            self.last_arrival = now
        self.arrived.set()

    def put_image(self, key: str, image: np.ndarray) -> None:
        with self._lock:
            self._parts[key] = (image, self.clock())

    def snapshot(self) -> tuple[dict[str, np.ndarray], float] | None:
        """({key: array}, the oldest part's arrival time), or None until every part has arrived once."""
        wanted = [*self.layout.observation, *self.image_shapes]
        with self._lock:
            if any(k not in self._parts for k in wanted):
                return None
            return {k: self._parts[k][0] for k in wanted}, min(self._parts[k][1] for k in wanted)


class PolicyNode:
    """A policy on a ROS 2 robot. ``run()`` drives it until ``should_stop()``; see the module docstring."""

    def __init__(self, policy, settings: NodeSettings, runtime_settings: RuntimeSettings, limits: SafetyLimits,
                 context=None):
        settings.check()
        runtime_settings.check()
        self.policy, self.settings, self.runtime_settings, self.limits = policy, settings, runtime_settings, limits
        spec = policy.spec
        self.layout = JointLayout.from_config(settings.layout)
        self.layout.check_policy(spec)
        unsupported = [g for g in spec.goals if g != "task"]
        if unsupported:
            raise ValueError(f"this node sets task goals only; the policy also needs {unsupported}")
        self.task = settings.task if settings.task is not None else (spec.tasks[0] if spec.tasks else None)
        self.goal = policy.goal_inputs(self.task, 1)
        SafetyFilter(limits, spec.action_dim)                # limits that do not fit the policy fail here
        self.buffer = ObservationBuffer(self.layout, {k: spec.obs_shapes[k] for k in spec.image_keys})
        self.counts: Counter[str] = Counter()                # commands, stops, instructions, estops, resets
        self.runtime: Runtime | None = None
        self.latched: str | None = None
        self.send_times: list[float] = []                    # monotonic publish time of each command
        self.stop_times: list[float] = []                    # monotonic time of each stop
        self.reaction_ms: list[float] = []                   # per command: newest joint state -> published
        self._reset = threading.Event()
        # no ROS parameter services: settings come from the hydra config
        self.ros = OwnedNode(settings.node_name, context, start_parameter_services=False)
        self.node = self.ros.node
        self._make_endpoints()
        self.ros.spin_in_background("ditpolicy-ros")

    # ------------------------------------------------------------------ ROS endpoints
    def _make_endpoints(self) -> None:
        s, node = self.settings, self.node
        node.create_subscription(JointState, s.joint_states_topic, self._on_joint_state, SENSOR_QOS)
        image_type = CompressedImage if s.image_transport == "compressed" else Image
        for key in self.policy.spec.image_keys:
            node.create_subscription(image_type, s.image_topic(key), lambda msg, k=key: self._on_image(k, msg),
                                     SENSOR_QOS)
        node.create_subscription(String, s.instruction_topic, self._on_instruction, EVENT_QOS)
        node.create_subscription(Bool, s.estop_topic, self._on_estop, EVENT_QOS)
        msg_type = Float64MultiArray if s.interface == "commands" else JointTrajectory
        self.command_pub = node.create_publisher(msg_type, s.command_topic, COMMAND_QOS)
        self.diagnostics_pub = node.create_publisher(DiagnosticArray, s.diagnostics_topic, EVENT_QOS)
        node.create_service(Trigger, "~/reset", self._on_reset)
        node.create_timer(1.0 / s.diagnostics_hz, self.publish_diagnostics)

    def _reject(self, source: str, exc: MessageRejected) -> None:
        self.buffer.rejected[exc.reason] += 1
        self.node.get_logger().warning(f"dropped {source}: {exc}", throttle_duration_sec=2.0)

    def _on_joint_state(self, msg) -> None:
        try:
            self.buffer.put_joint_state(msg)
        except MessageRejected as exc:
            self._reject(self.settings.joint_states_topic, exc)
            return
        time.sleep(0)   # yield the interpreter: a control thread waiting on this state runs now

    def _on_image(self, key: str, msg) -> None:
        shape = self.policy.spec.obs_shapes[key]
        try:
            self.buffer.put_image(key, image_reader(self.settings.image_transport)(msg, shape))
        except MessageRejected as exc:
            self._reject(self.settings.image_topic(key), exc)

    def _on_instruction(self, msg) -> None:
        task = self._task_for(msg.data)
        if task is None:
            self.buffer.rejected["unknown_instruction"] += 1
            self.node.get_logger().warning(f"instruction {msg.data!r} names none of this policy's tasks "
                                           f"{self.policy.spec.tasks}; keeping {self.task!r}")
            return
        self.task, self.goal = task, self.policy.goal_inputs(task, 1)
        if self.runtime is not None:
            self.runtime.executor.goal = self.goal
        self.counts["instructions"] += 1

    def _task_for(self, text: str) -> str | None:
        from ..envs.metaworld_tasks import INSTRUCTIONS

        text = text.strip()
        for task in self.policy.spec.tasks:
            if text in (task, task.removesuffix("-v3"), INSTRUCTIONS.get(task)):
                return task
        return None

    def _on_estop(self, msg) -> None:
        if msg.data:
            self.counts["estops"] += 1
            self.latch("estop")

    def _on_reset(self, request, response):
        response.success = self.latched is not None
        response.message = f"cleared {self.latched}" if self.latched else "nothing to clear"
        self.counts["resets"] += int(response.success)
        self._reset.set()
        return response

    def latch(self, reason: str) -> None:
        """Stop the robot and keep it stopped until ``~/reset``."""
        if self.latched is None:
            self.latched = reason
            self.node.get_logger().error(f"stopped: {reason}; call ~/reset to resume")
        if self.runtime is not None and self.runtime.safety is not None:
            self.runtime.safety.trigger_estop(reason)

    # ------------------------------------------------------------------ the runtime's robot
    def read(self) -> tuple[dict[str, np.ndarray], float]:
        snap = self.buffer.snapshot()
        return snap if snap is not None else ({}, -math.inf)

    def send(self, command: np.ndarray) -> None:
        if self.latched is not None:      # an e-stop between the safety check and here
            return
        self.command_pub.publish(self._command_message(command))
        now = time.monotonic()
        self.send_times.append(now)
        self.reaction_ms.append((now - self.buffer.last_arrival) * 1e3)
        self.counts["commands"] += 1

    def stop(self) -> None:
        self.counts["stops"] += 1
        self.stop_times.append(time.monotonic())
        if self.settings.interface == "joint_trajectory":
            self.command_pub.publish(JointTrajectory(joint_names=list(self.layout.command)))
            return
        hold = self.runtime.safety.held_command() if self.runtime is not None and self.runtime.safety is not None else None
        if hold is not None and self.limits.hold_command is not None:
            self.command_pub.publish(Float64MultiArray(data=[float(v) for v in hold]))

    def _command_message(self, command: np.ndarray):
        values = np.asarray(command, dtype=np.float64)
        if self.settings.interface == "commands":
            return Float64MultiArray(data=values)
        sec, nanosec = seconds_stamp(1.0 / self.runtime_settings.rate_hz)
        point = JointTrajectoryPoint(positions=values)
        point.time_from_start.sec, point.time_from_start.nanosec = sec, nanosec
        return JointTrajectory(joint_names=list(self.layout.command), points=[point])

    # ------------------------------------------------------------------ running
    def wait_for_observation(self, should_stop, timeout_s: float | None = None) -> bool:
        """Block until every observation part has arrived once; False when stopped or timed out."""
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        while self.buffer.snapshot() is None:
            if should_stop() or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def run(self, should_stop=lambda: False, ticks: int | None = None) -> list[dict]:
        """Run the policy until ``should_stop()`` (or ``ticks`` control ticks); one report per
        runtime start (a latched stop waits for ``~/reset``, then starts a fresh runtime; a start
        that had no safe command to hold yet is retried at once and its report says
        ``restarted``)."""
        reports = []
        while not should_stop():
            if not self.wait_for_observation(should_stop):
                break
            clock = None
            if self.settings.trigger == "observation":
                clock = ObservationClock(self.buffer.arrived, 2.0 / self.runtime_settings.rate_hz)
            safety = SafetyFilter(self.limits, self.policy.spec.action_dim)
            self.runtime = Runtime(self.policy, self, self.runtime_settings, safety=safety, clock=clock, goal=self.goal)
            if self.latched is not None:
                safety.trigger_estop(self.latched)
            self._reset.clear()
            report = self.runtime.run(ticks, should_stop=should_stop)
            reports.append(report)
            stopped = report.get("stopped_by") or ""
            if stopped.startswith("safety") and not safety.latched:
                # nothing safe to hold yet (the first observation went stale while the first
                # chunk was computed): start again from fresh observations, no reset needed
                self.node.get_logger().warning(f"no safe command yet ({stopped}); starting again")
                report["restarted"] = True
                self.buffer.arrived.clear()
                self.buffer.arrived.wait(1.0)
                continue
            if stopped.startswith("safety"):
                self.latched = self.latched or stopped
                self.node.get_logger().error(f"robot stopped ({stopped}); call ~/reset to resume")
                while not should_stop() and not self._reset.wait(0.05):
                    pass
                if self._reset.is_set():
                    self.latched = None
                    continue
            if ticks is not None:
                break
        return reports

    def diagnostics(self) -> dict:
        """Counters and the runtime's recent figures, for /diagnostics and logs."""
        out = {"commands": self.counts["commands"], "stops": self.counts["stops"], "estops": self.counts["estops"],
               "resets": self.counts["resets"], "latched": self.latched or "", "task": self.task or "",
               "observations_accepted": self.buffer.accepted,
               **{f"rejected_{k}": v for k, v in sorted(self.buffer.rejected.items())}}
        if self.runtime is not None:
            r = self.runtime.report(window=int(10 * self.runtime_settings.rate_hz))
            out.update(rate_hz=round(r["rate_hz"], 3), inference_p50_ms=round(r["inference_ms"]["p50"], 3),
                       inference_p99_ms=round(r["inference_ms"]["p99"], 3),
                       jitter_p99_ms=round(r["period_jitter_ms"]["p99"], 3), late_requests=r["late_requests"],
                       deadline_misses=r["deadline_misses"], dropped=r["schedule"]["dropped"],
                       starved=r["schedule"]["starved"], delay_estimate_steps=r["delay_estimate_steps"],
                       **{f"safety_{k}": v for k, v in r["safety"].items()})
        return out

    def publish_diagnostics(self) -> None:
        values = self.diagnostics()
        level = DiagnosticStatus.ERROR if self.latched else (
            DiagnosticStatus.WARN if sum(self.buffer.rejected.values()) else DiagnosticStatus.OK)
        status = DiagnosticStatus(level=level, name=f"{self.settings.node_name}: policy",
                                  message=f"stopped: {self.latched}" if self.latched else "running",
                                  hardware_id=self.settings.controller,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.diagnostics_pub.publish(msg)

    def close(self) -> None:
        """Stop spinning, destroy the node and (when it owns it) shut the ROS context down; idempotent."""
        self.ros.close()

    def __enter__(self) -> "PolicyNode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
