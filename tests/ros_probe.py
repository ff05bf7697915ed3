"""A test-side ROS 2 participant: watches the command and diagnostics topics, injects messages,
calls services. Its own rclpy context and executor thread, over real loopback topics."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ditpolicy.deploy.ros2_node import EVENT_QOS, SENSOR_QOS
from ditpolicy.deploy.ros_node_base import OwnedNode


class Probe:
    def __init__(self, command_topic: str = "/forward_command_controller/commands", trajectory: bool = False):
        self.ros = OwnedNode("test_probe")
        self.node = self.ros.node
        self.commands: list[tuple[float, np.ndarray]] = []     # (monotonic arrival, values)
        self.diagnostics: dict[str, dict[str, str]] = {}       # status name -> latest key/values
        self.node.create_subscription(JointTrajectory if trajectory else Float64MultiArray, command_topic,
                                      self._on_command, EVENT_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, EVENT_QOS)
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self.estop_pub = self.node.create_publisher(Bool, "/estop", EVENT_QOS)
        self.pause_pub = self.node.create_publisher(Bool, "/sim_robot/pause_sensors", EVENT_QOS)
        self.ros.spin_in_background("test-probe")

    def _on_command(self, msg):
        if isinstance(msg, JointTrajectory):      # an empty trajectory (a stop) reads as no values
            self.joint_names = list(msg.joint_names)
            values = msg.points[0].positions if msg.points else []
        else:
            values = msg.data
        self.commands.append((time.monotonic(), np.asarray(values, dtype=np.float64)))

    def _on_diagnostics(self, msg):
        for status in msg.status:
            self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def sim_status(self) -> dict[str, str]:
        return next((v for k, v in self.diagnostics.items() if k.startswith("sim_robot")), {})

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            time.sleep(0.02)

    def commands_after(self, t: float) -> list[np.ndarray]:
        return [c for s, c in self.commands if s > t]

    def call_reset(self, service: str = "/ditpolicy/reset", timeout: float = 5.0):
        client = self.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=timeout), f"no service {service}"
        future = client.call_async(Trigger.Request())
        self.wait_for(future.done, timeout, f"{service} to answer")
        return future.result()

    def close(self):
        self.ros.close()


def ditpolicy_process(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ditpolicy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)
