"""ROS 2 messages <-> policy arrays, with every check a robot needs before data moves.

Works on the fields of the messages only (``msg.name``, ``msg.position``, ``msg.data``, ...),
so the same functions read messages from live rclpy subscriptions and from rosbag2 files
(``rosbags`` deserialises into objects with the same fields). Nothing here imports rclpy.

A :class:`JointLayout` says which named joints make up each low-dimensional observation key
and which joints the action drives. A JointState may list joints in any order (as
``joint_state_broadcaster`` does); values are picked by name. A message that cannot be read
raises :class:`MessageRejected` with a short ``reason`` (counted per reason by the node and
the recorder) and a detail naming the field.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

REASONS = ("missing_joints", "duplicate_joints", "size_mismatch", "nonfinite", "image_encoding", "image_size",
           "image_decode", "empty")
RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8")


class MessageRejected(ValueError):
    """A message that must not reach the policy; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _metaworld_state_names() -> list[str]:
    pose = ["x", "y", "z", "qx", "qy", "qz", "qw"]
    frame = ["hand_x", "hand_y", "hand_z", "gripper_opening"] + [f"obj{i}_{p}" for i in (1, 2) for p in pose]
    return frame + [f"prev_{n}" for n in frame] + ["goal_x", "goal_y", "goal_z"]


@dataclass(frozen=True)
class JointLayout:
    """observation: low-dim obs key -> joint names (values in that order); command: the action's joint names."""

    observation: dict[str, tuple[str, ...]]
    command: tuple[str, ...]

    @classmethod
    def from_config(cls, value) -> "JointLayout":
        """A preset name (``metaworld``) or a mapping ``{observation: {key: [names]}, command: [names]}``."""
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"joint layout {value!r}: unknown preset; presets: {sorted(PRESETS)}, or give "
                                 f"{{observation: {{key: [joint names]}}, command: [joint names]}}")
            return PRESETS[value]
        if not isinstance(value, Mapping) or set(value) != {"observation", "command"}:
            raise ValueError("joint layout: expected a preset name or a mapping with exactly the keys "
                             f"observation and command, got {value!r}")
        obs = value["observation"]
        if not isinstance(obs, Mapping):
            raise ValueError(f"joint layout observation: expected key -> [joint names], got {obs!r}")
        layout = cls({str(k): tuple(str(n) for n in v) for k, v in obs.items()}, tuple(str(n) for n in value["command"]))
        for key, names in [*layout.observation.items(), ("command", layout.command)]:
            if not names or len(set(names)) != len(names):
                raise ValueError(f"joint layout {key}: joint names must be a non-empty list without repeats, "
                                 f"got {list(names)}")
        return layout

    def check_policy(self, spec) -> None:
        """ValueError naming the key when the layout does not fit the policy's observations and actions."""
        for key in spec.obs_keys:
            if key in spec.image_keys:
                continue
            if key not in self.observation:
                raise ValueError(f"joint layout: the policy reads {key!r} but the layout maps only "
                                 f"{sorted(self.observation)}")
            want = int(np.prod(spec.obs_shapes[key]))
            if len(self.observation[key]) != want:
                raise ValueError(f"joint layout observation.{key}: {len(self.observation[key])} joints for a "
                                 f"policy input of size {want}")
        if len(self.command) != spec.action_dim:
            raise ValueError(f"joint layout command: {len(self.command)} joints for a policy action of size "
                             f"{spec.action_dim}")

    @property
    def joints(self) -> tuple[str, ...]:
        """Every observed joint name, each once, in first-use order."""
        return tuple(dict.fromkeys(n for names in self.observation.values() for n in names))


_MW_STATE = tuple(_metaworld_state_names())
PRESETS: dict[str, JointLayout] = {
    # The simulated Meta-World arm of sim_bridge.py: its 39 state values as named joints;
    # commands are hand displacements (x, y, z) and the gripper effort, each in [-1, 1].
    "metaworld": JointLayout({"state": _MW_STATE, "proprio": _MW_STATE[:4]},
                             ("hand_dx", "hand_dy", "hand_dz", "gripper_effort")),
}


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(values)
    if bad.any():
        raise MessageRejected("nonfinite", f"{what} has non-finite values at {np.flatnonzero(bad)[:5].tolist()}")
    return values


def joint_values(names: Sequence[str], values: Sequence[float], wanted: Sequence[str], what: str) -> np.ndarray:
    """The values of the ``wanted`` joints (in that order) from parallel ``names`` / ``values``: (J,) float64."""
    names = list(names)
    values = np.asarray(values, dtype=np.float64)
    if len(names) == 0:
        raise MessageRejected("missing_joints", f"{what} names no joints (name is empty)")
    if values.shape != (len(names),):
        raise MessageRejected("size_mismatch", f"{what} has {len(names)} names but {values.size} values")
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MessageRejected("duplicate_joints", f"{what} repeats joint(s) {dup[:5]}")
    missing = [n for n in wanted if n not in index]
    if missing:
        raise MessageRejected("missing_joints", f"{what} lacks joint(s) {missing[:5]}"
                                                f"{' ...' if len(missing) > 5 else ''}")
    return _finite(values[[index[n] for n in wanted]], what)


def joint_state_observation(msg, layout: JointLayout) -> dict[str, np.ndarray]:
    """sensor_msgs/JointState -> {obs key: (D,) float32} by the layout (positions)."""
    values = joint_values(msg.name, msg.position, layout.joints, "JointState.position")
    by_name = dict(zip(layout.joints, values))
    return {key: np.array([by_name[n] for n in names], dtype=np.float32) for key, names in layout.observation.items()}


def image_array(msg, shape: Sequence[int] | None = None) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8) -> (H, W, 3) uint8 RGB, checked against ``shape``."""
    encoding = str(msg.encoding).lower()
    if encoding not in RGB_ENCODINGS:
        raise MessageRejected("image_encoding", f"Image.encoding {msg.encoding!r}; accepted: {list(RGB_ENCODINGS)}")
    channels = 4 if encoding.endswith("a8") else 3
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if h < 1 or w < 1 or step < w * channels or data.size != h * step:
        raise MessageRejected("size_mismatch", f"Image {h}x{w} {encoding} with step {step} needs {h * step} "
                                               f"bytes, got {data.size}")
    image = data.reshape(h, step)[:, :w * channels].reshape(h, w, channels)[..., :3]
    if encoding.startswith("bgr"):
        image = image[..., ::-1]
    return _checked_size(np.ascontiguousarray(image), shape, "Image")


def compressed_image_array(msg, shape: Sequence[int] | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png) -> (H, W, 3) uint8 RGB, checked against ``shape``."""
    from PIL import Image, UnidentifiedImageError

    fmt = str(msg.format).lower()
    if fmt and not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise MessageRejected("image_encoding", f"CompressedImage.format {msg.format!r}; accepted: jpeg, png")
    try:
        with Image.open(io.BytesIO(bytes(msg.data))) as img:
            image = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MessageRejected("image_decode", f"CompressedImage ({msg.format!r}, {len(msg.data)} bytes): {exc}") from None
    return _checked_size(image, shape, "CompressedImage")


def _checked_size(image: np.ndarray, shape, what: str) -> np.ndarray:
    if shape is not None and tuple(image.shape) != tuple(shape):
        raise MessageRejected("image_size", f"{what} is {image.shape}, the policy takes {tuple(shape)}")
    return image


def trajectory_command(msg, joints: Sequence[str]) -> np.ndarray:
    """trajectory_msgs/JointTrajectory -> (A,) float64: the first point's positions of ``joints``."""
    if not msg.points:
        raise MessageRejected("empty", "JointTrajectory has no points (a stop request)")
    return joint_values(msg.joint_names, msg.points[0].positions, joints, "JointTrajectory.points[0].positions")


def array_command(msg, size: int) -> np.ndarray:
    """std_msgs/Float64MultiArray -> (A,) float64, of exactly ``size`` values."""
    values = np.asarray(msg.data, dtype=np.float64)
    if values.size == 0:
        raise MessageRejected("empty", "Float64MultiArray has no data (a stop request)")
    if values.shape != (size,):
        raise MessageRejected("size_mismatch", f"Float64MultiArray has {values.size} values, expected {size}")
    return _finite(values, "Float64MultiArray.data")


def command_topic(controller: str, interface: str) -> str:
    """Where ros2_control's controllers listen: ``/<controller>/commands`` or ``/<controller>/joint_trajectory``."""
    return f"/{controller.strip('/')}/{interface}"


def image_topic(key: str, image_topics: Mapping[str, str], transport: str = "raw") -> str:
    """The topic of camera observation ``key`` (default ``/cameras/<camera>/image_raw`` for ``rgb_<camera>``);
    image_transport's ``/compressed`` sub-topic when ``transport`` is compressed."""
    topic = image_topics.get(key) or f"/cameras/{key.removeprefix('rgb_')}/image_raw"
    return f"{topic}/compressed" if transport == "compressed" else topic


def command_values(msg, layout: JointLayout) -> np.ndarray:
    """(A,) command of either controller interface: a JointTrajectory (has ``points``) or a Float64MultiArray."""
    if hasattr(msg, "points"):
        return trajectory_command(msg, layout.command)
    return array_command(msg, len(layout.command))


def image_reader(transport: str):
    """The converter for an image topic's messages: ``raw`` (Image) or ``compressed`` (CompressedImage)."""
    return compressed_image_array if transport == "compressed" else image_array


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time -> seconds (float)."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_stamp(seconds: float) -> tuple[int, int]:
    """Seconds -> (sec, nanosec) for builtin_interfaces Time / Duration."""
    sec = math.floor(seconds)
    return int(sec), int(round((seconds - sec) * 1e9)) % 1_000_000_000
