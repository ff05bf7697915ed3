"""A robot PC needs no simulator: a fresh venv with only ``pip install .[ros]`` (no mujoco,
gymnasium or metaworld) runs ``ditpolicy deploy`` on a checkpoint, driving a joint trajectory
controller over real topics until Ctrl-C."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from helpers import TINY_POLICY, write_reaching_store  # noqa: E402
from ros_probe import Probe  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAYOUT = "ros.layout={observation: {state: [x, y, goal_x, goal_y]}, command: [vx, vy]}"


def pip(venv: Path, *args):
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


def test_deploy_from_a_venv_with_only_the_ros_extra(tmp_path):
    store, run = tmp_path / "demos.zarr", tmp_path / "run"
    write_reaching_store(store, episodes=4, length=16)
    train = subprocess.run([sys.executable, "-m", "ditpolicy", "train", f"dataset.path={store}", f"run_dir={run}",
                            "train.steps=5", *TINY_POLICY], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]

    source, venv = tmp_path / "src", tmp_path / "robot-venv"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                 "outputs", "runs", "*.zarr", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv, "torch==2.13.0")
    pip(venv, f"{source}[ros]")
    absent = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import importlib.util as u; print([m for m in ('mujoco', 'gymnasium', 'metaworld') "
                             "if u.find_spec(m)])"], capture_output=True, text=True, timeout=60)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr

    probe = Probe("/point_controller/joint_trajectory", trajectory=True)
    node = subprocess.Popen([str(venv / "bin" / "ditpolicy"), "deploy", f"checkpoint={run}", "task=task0", LAYOUT,
                             "ros.controller=point_controller", "ros.interface=joint_trajectory",
                             "safety.position_low=[-1,-1]", "safety.position_high=[1,1]", "safety.hold_command=null",
                             f"out={tmp_path / 'deploy'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    try:
        point, goal = np.array([0.5, -0.5]), np.array([-0.5, 0.5])
        deadline = time.monotonic() + 90
        while len(probe.commands) < 20:
            assert time.monotonic() < deadline and node.poll() is None, node.stdout.read() if node.poll() else ""
            probe.joint_pub.publish(JointState(name=["goal_y", "goal_x", "y", "x"],
                                               position=[goal[1], goal[0], point[1], point[0]]))
            time.sleep(0.05)
        node.send_signal(signal.SIGINT)
        out, _ = node.communicate(timeout=20)
    finally:
        if node.poll() is None:
            node.kill()
        probe.close()
    assert node.returncode == 0, out[-3000:]
    assert "ready" in out and "stopped after" in out
    assert probe.joint_names == ["vx", "vy"]
    sent = np.stack([c for _, c in probe.commands if c.size])
    assert sent.shape[1] == 2 and np.isfinite(sent).all() and np.all(np.abs(sent) <= 1.0)
