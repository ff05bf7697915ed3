"""rosbag2 -> zarr: a bag written with ``rosbags`` (sqlite3, as ``ros2 bag record`` writes) is
converted through the CLI; the store holds exactly the (state, command) pairs of each episode."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rosbags")

from rosbags.rosbag2 import Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from ditpolicy.datasets import DemoStore  # noqa: E402
from ditpolicy.deploy.ros_messages import PRESETS  # noqa: E402

TS = get_typestore(Stores.ROS2_JAZZY)
NAMES = list(PRESETS["metaworld"].observation["state"])
COMMANDS = "/forward_command_controller/commands"


def joint_state(values, t_ns, names=NAMES):
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    return TS.types["sensor_msgs/msg/JointState"](
        header=Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id=""), name=list(names),
        position=np.asarray(values, dtype=np.float64), velocity=np.zeros(0), effort=np.zeros(0))


def command(values):
    layout = TS.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return TS.types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, dtype=np.float64))


def write_bag(path, episodes, marked=True, bad=True):
    """Each episode: (states (T, 39), actions (T, 4)); state t is recorded 10 ms before action t."""
    String, Bool = TS.types["std_msgs/msg/String"], TS.types["std_msgs/msg/Bool"]
    with Writer(path, version=9) as writer:
        conn = {topic: writer.add_connection(topic, kind, typestore=TS) for topic, kind in [
            ("/joint_states", "sensor_msgs/msg/JointState"), (COMMANDS, "std_msgs/msg/Float64MultiArray"),
            ("/instruction", "std_msgs/msg/String"), ("/record", "std_msgs/msg/Bool")]}

        def put(topic, msg, t):
            writer.write(conn[topic], t, TS.serialize_cdr(msg, msg.__msgtype__))

        t = 10**9
        for i, (states, actions) in enumerate(episodes):
            put("/instruction", String(data=f"episode {i}"), t)
            if marked:
                put("/record", Bool(data=True), t + 1)
            for state, action in zip(states, actions):
                t += 50_000_000
                put("/joint_states", joint_state(state, t), t)
                if bad:   # malformed states between the good ones: refused, never paired
                    put("/joint_states", joint_state(np.full(39, np.nan), t + 1), t + 1)
                    put("/joint_states", joint_state(state[:20], t + 2, NAMES[:20]), t + 2)
                put(COMMANDS, command(action), t + 10_000_000)
            if marked:
                put("/record", Bool(data=False), t + 20_000_000)
            put(COMMANDS, command(np.ones(4)), t + 30_000_000)     # between episodes: skipped
            t += 10**9


def make_episodes(rng, lengths):
    return [(rng.normal(size=(n, 39)), rng.uniform(-1, 1, size=(n, 4))) for n in lengths]


def convert(*args):
    return subprocess.run([sys.executable, "-m", "ditpolicy", "convert", *args], capture_output=True, text=True,
                          timeout=120)


def test_bag_episodes_become_store_episodes(tmp_path, rng):
    episodes = make_episodes(rng, [12, 7])
    write_bag(tmp_path / "bag", episodes)
    out = convert("rosbag", str(tmp_path / "bag"), str(tmp_path / "demos.zarr"), "task=reach-v3", "progress=false")
    assert out.returncode == 0, out.stderr
    assert "wrote 2 episode(s)" in out.stdout and '"rejected_nonfinite": 19' in out.stdout
    assert '"rejected_missing_joints": 19' in out.stdout and '"skipped_outside_episode": 2' in out.stdout
    store = DemoStore.open(tmp_path / "demos.zarr")
    assert store.episode_lengths.tolist() == [12, 7]
    assert [store.instruction(e) for e in range(2)] == ["episode 0", "episode 1"]
    assert store.task_name(1) == "reach-v3" and store.stats_status == "current"
    for e, (states, actions) in enumerate(episodes):
        data = store.episode(e)
        np.testing.assert_array_equal(data["state"], states.astype(np.float32))
        np.testing.assert_array_equal(data["proprio"], states[:, :4].astype(np.float32))
        np.testing.assert_array_equal(data["action"], actions.astype(np.float32))


def test_a_bag_without_record_marks_is_one_episode_and_errors_name_the_topic(tmp_path, rng):
    write_bag(tmp_path / "bag", make_episodes(rng, [5, 6]), marked=False, bad=False)
    out = convert("rosbag", str(tmp_path / "bag"), str(tmp_path / "demos.zarr"), "progress=false")
    assert out.returncode == 0, out.stderr
    assert DemoStore.open(tmp_path / "demos.zarr").episode_lengths.tolist() == [5 + 1 + 6 + 1]
    missing = convert("rosbag", str(tmp_path / "bag"), str(tmp_path / "other.zarr"), "ros.controller=arm_controller")
    assert missing.returncode == 1 and "no topic /arm_controller/commands" in missing.stderr
    absent = convert("rosbag", str(tmp_path / "nope"), str(tmp_path / "other.zarr"))
    assert absent.returncode == 1 and "nope" in absent.stderr
