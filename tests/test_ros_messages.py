"""ROS 2 messages -> policy arrays: joints picked by name, every malformed message refused with its reason.

Real message classes from the ``ros`` extra (sensor_msgs, std_msgs, trajectory_msgs)."""

import io

import numpy as np
import pytest

pytest.importorskip("rclpy")

from PIL import Image as PILImage  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from ditpolicy.deploy.ros_messages import (PRESETS, JointLayout, MessageRejected, array_command,  # noqa: E402
                                           compressed_image_array, image_array, image_topic,
                                           joint_state_observation, trajectory_command)

LAYOUT = JointLayout.from_config({"observation": {"arm": ["j1", "j2", "j3"], "grip": ["finger"]},
                                  "command": ["j1", "j2", "j3", "finger"]})


def joint_state(names, positions):
    return JointState(name=list(names), position=[float(p) for p in positions])


def rejected(reason, fn, *args):
    with pytest.raises(MessageRejected) as info:
        fn(*args)
    assert info.value.reason == reason, str(info.value)
    return str(info.value)


def test_joint_states_are_read_by_name_in_any_order():
    obs = joint_state_observation(joint_state(["finger", "j3", "extra", "j1", "j2"], [0.04, 3, 9, 1, 2]), LAYOUT)
    assert obs["arm"].tolist() == [1, 2, 3] and obs["grip"].dtype == np.float32
    assert obs["grip"].tolist() == pytest.approx([0.04])


def test_malformed_joint_states_are_rejected_with_the_reason():
    assert "j2" in rejected("missing_joints", joint_state_observation, joint_state(["j1", "j3", "finger"], [1, 3, 0]), LAYOUT)
    rejected("missing_joints", joint_state_observation, joint_state([], []), LAYOUT)
    rejected("size_mismatch", joint_state_observation, joint_state(["j1", "j2", "j3", "finger"], [1, 2, 3]), LAYOUT)
    rejected("duplicate_joints", joint_state_observation,
             joint_state(["j1", "j1", "j2", "j3", "finger"], [1, 1, 2, 3, 0]), LAYOUT)
    assert "[1]" in rejected("nonfinite", joint_state_observation,
                             joint_state(["j1", "j2", "j3", "finger"], [1, np.nan, 3, 0]), LAYOUT)
    rejected("nonfinite", joint_state_observation, joint_state(["j1", "j2", "j3", "finger"], [1, 2, np.inf, 0]), LAYOUT)
    # a NaN on a joint the policy does not read is no reason to drop the message
    obs = joint_state_observation(joint_state(["j1", "j2", "j3", "finger", "other"], [1, 2, 3, 0, np.nan]), LAYOUT)
    assert np.isfinite(obs["arm"]).all()


def test_images_are_converted_to_rgb_and_checked():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = Image(height=2, width=3, encoding="rgb8", step=9, data=rgb.tobytes())
    assert np.array_equal(image_array(msg, (2, 3, 3)), rgb)
    bgr = Image(height=2, width=3, encoding="bgr8", step=9, data=rgb[..., ::-1].tobytes())
    assert np.array_equal(image_array(bgr, (2, 3, 3)), rgb)
    padded = np.zeros((2, 12), np.uint8)            # rows padded to a 12-byte step
    padded[:, :9] = rgb.reshape(2, 9)
    assert np.array_equal(image_array(Image(height=2, width=3, encoding="rgb8", step=12, data=padded.tobytes())), rgb)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 255, np.uint8)], axis=-1)
    assert np.array_equal(image_array(Image(height=2, width=3, encoding="rgba8", step=12, data=rgba.tobytes())), rgb)
    assert "mono8" in rejected("image_encoding", image_array,
                               Image(height=2, width=3, encoding="mono8", step=3, data=bytes(6)), None)
    rejected("size_mismatch", image_array, Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(10)), None)
    rejected("image_size", image_array, msg, (4, 4, 3))


def test_compressed_images_are_decoded_and_checked():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    msg = CompressedImage(format="rgb8; png compressed bgr8", data=buf.getvalue())
    assert np.array_equal(compressed_image_array(msg, (4, 5, 3)), rgb)
    rejected("image_decode", compressed_image_array, CompressedImage(format="jpeg", data=b"not an image"), None)
    rejected("image_encoding", compressed_image_array, CompressedImage(format="theora", data=buf.getvalue()), None)
    rejected("image_size", compressed_image_array, msg, (8, 8, 3))


def test_commands_read_from_both_controller_interfaces():
    point = JointTrajectoryPoint(positions=[0.4, 0.1, 0.2, 0.3])
    traj = JointTrajectory(joint_names=["finger", "j1", "j2", "j3"], points=[point])
    assert trajectory_command(traj, LAYOUT.command).tolist() == [0.1, 0.2, 0.3, 0.4]
    rejected("empty", trajectory_command, JointTrajectory(joint_names=list(LAYOUT.command)), LAYOUT.command)
    assert array_command(Float64MultiArray(data=[1.0, 2.0]), 2).tolist() == [1.0, 2.0]
    rejected("size_mismatch", array_command, Float64MultiArray(data=[1.0, 2.0, 3.0]), 2)
    rejected("nonfinite", array_command, Float64MultiArray(data=[1.0, float("nan")]), 2)


def test_layouts_are_checked_against_the_policy():
    from test_runtime import make_policy

    policy = make_policy(state_dim=39, action_dim=4)
    PRESETS["metaworld"].check_policy(policy.spec)
    with pytest.raises(ValueError, match="observation.state: 3 joints for a policy input of size 39"):
        JointLayout.from_config({"observation": {"state": ["a", "b", "c"]}, "command": ["x"] * 1}).check_policy(policy.spec)
    with pytest.raises(ValueError, match="command: 3 joints"):
        JointLayout({"state": PRESETS["metaworld"].observation["state"]}, ("a", "b", "c")).check_policy(policy.spec)
    with pytest.raises(ValueError, match="unknown preset"):
        JointLayout.from_config("franka")
    with pytest.raises(ValueError, match="without repeats"):
        JointLayout.from_config({"observation": {"state": ["a", "a"]}, "command": ["x"]})
    assert image_topic("rgb_wrist", {}) == "/cameras/wrist/image_raw"
    assert image_topic("rgb_wrist", {"rgb_wrist": "/wrist/color"}, "compressed") == "/wrist/color/compressed"
