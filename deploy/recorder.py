"""Records demonstrations from ROS 2 topics into a zarr store, one episode at a time.

Listens to the same topics as the policy node (ros2_node.py): joint states, camera images,
the instruction, and the commands an operator or expert sends to the controller. Episodes
are cut by ``/record`` (std_msgs/Bool: true starts, false ends) or by the services
``~/start`` and ``~/stop`` (std_srvs/Trigger); each finished episode goes through the
crash-safe writer at once (datasets/writer.py), so a recorder killed mid-session keeps every
episode it finished. Statistics are written on ``close()``.
"""

from __future__ import annotations

from pathlib import Path

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ..datasets import EpisodeWriter
from ..datasets.stats import refresh_stats
from .episode_assembly import EpisodeAssembler
from .ros2_node import EVENT_QOS, NodeSettings
from .ros_node_base import OwnedNode
from .ros_messages import JointLayout, MessageRejected, command_values, image_reader


# Sensors best-effort (as any publisher offers) but deep: a step is lost if its state is dropped
# while an episode is being written.
RECORD_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)


def sent_at(info) -> float:
    """When the publisher sent the message (s), from rclpy's message info."""
    return info["source_timestamp"] * 1e-9


class Recorder:
    """Topics -> episodes -> ``out`` store; ``task`` names every episode (the policy's task goal)."""

    def __init__(self, out: str | Path, settings: NodeSettings, task: str, cameras: list[str] = (),
                 record_topic: str = "/record", overwrite: bool = False, min_steps: int = 2, context=None):
        settings.check()
        self.settings, self.task, self.out = settings, task, str(out)
        self.layout = JointLayout.from_config(settings.layout)
        self.image_keys = [f"rgb_{cam}" for cam in cameras]
        self.assembler = EpisodeAssembler(self.layout, self.image_keys, min_steps)
        self.writer = EpisodeWriter(out, overwrite=overwrite)
        self.written = 0
        self.ros = OwnedNode("ditpolicy_recorder", context)
        node = self.ros.node
        node.create_subscription(JointState, settings.joint_states_topic,
                                 lambda m, info: self.assembler.joint_state(m, sent_at(info)), RECORD_QOS)
        image_type = CompressedImage if settings.image_transport == "compressed" else Image
        for key in self.image_keys:
            node.create_subscription(image_type, settings.image_topic(key),
                                     lambda m, info, k=key: self._on_image(k, m, sent_at(info)), RECORD_QOS)
        command_type = Float64MultiArray if settings.interface == "commands" else JointTrajectory
        node.create_subscription(command_type, settings.command_topic, self._on_command, EVENT_QOS)
        node.create_subscription(String, settings.instruction_topic,
                                 lambda m: self.assembler.set_instruction(m.data), EVENT_QOS)
        node.create_subscription(Bool, record_topic, lambda m: self.start() if m.data else self.stop(), EVENT_QOS)
        node.create_service(Trigger, "~/start", lambda req, res: self._service(res, self.start))
        node.create_service(Trigger, "~/stop", lambda req, res: self._service(res, self.stop))

    def _on_image(self, key: str, msg, stamp: float) -> None:
        try:
            self.assembler.image(key, image_reader(self.settings.image_transport)(msg), stamp)
        except MessageRejected as exc:
            self.assembler.counts[f"rejected_{exc.reason}"] += 1

    def _on_command(self, msg, info) -> None:
        try:
            self.assembler.command(command_values(msg, self.layout), sent_at(info))
        except MessageRejected as exc:
            self.assembler.counts[f"rejected_command_{exc.reason}"] += 1

    def _service(self, response, action):
        before = self.written
        action()
        response.success = True
        response.message = f"recording={self.assembler.recording}, episodes written {self.written} (+{self.written - before})"
        return response

    def _write(self, finished) -> None:
        if finished is not None:
            data, instruction = finished
            self.writer.add_episode(data, task=self.task, instruction=instruction, success=True)
            self.written += 1
            self.ros.node.get_logger().info(f"episode {self.written}: {len(data['action'])} steps -> {self.out}")

    def start(self) -> None:
        self._write(self.assembler.start())

    def stop(self) -> None:
        self._write(self.assembler.stop())

    def spin(self, should_stop=lambda: False) -> None:
        while not should_stop():
            self.ros.executor.spin_once(timeout_sec=0.05)

    def close(self) -> dict:
        """Finish the open episode, write statistics, release the store; the counts."""
        if self.ros.closed:
            return dict(self.assembler.counts)
        self.stop()
        refresh_stats(self.writer)
        self.writer.close()
        self.ros.close()
        return dict(self.assembler.counts)
