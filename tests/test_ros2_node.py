"""Record -> train -> deploy over real ROS 2 topics on loopback, against a MuJoCo arm.

The scripted expert drives ``ditpolicy sim-robot`` over the command topic while ``ditpolicy
record`` writes the episodes; a small policy trained on that store then runs in the policy
node against a fresh sim robot: it must solve the task at the configured command rate while
NaN joint states are injected, latch on an e-stop, resume on ~/reset, and stop the arm when
the robot's sensors go silent.
"""

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from ros_probe import Probe, ditpolicy_process  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from ditpolicy.deploy.ros_messages import PRESETS  # noqa: E402

TASK = "button-press-topdown-v3"
RATE = 20.0
SMALL = ["policy.d_model=64", "policy.denoiser.n_layers=2", "policy.horizon=8", "policy.n_action_steps=4",
         "train.batch_size=64", "train.lr=1e-3", "train.warmup_steps=50", "train.progress=false",
         "train.val_every=0", "train.save_every=100000"]


def finish(proc: subprocess.Popen, timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ros")
    store, run = root / "recorded.zarr", root / "run"
    recorder = ditpolicy_process("record", f"out={store}", f"task={TASK}", "episodes=20")
    sim = ditpolicy_process("sim-robot", f"task={TASK}", "episodes=20", "expert=true", "rate_hz=100",
                            "expert_rate_hz=100", "wait_for_recorder=true", "timeout_s=150")
    sim_out = finish(sim, 200)
    record_out = finish(recorder, 60)
    train = subprocess.run([sys.executable, "-m", "ditpolicy", "train", f"dataset.path={store}", f"run_dir={run}",
                            "train.steps=600", *SMALL], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    return store, run, sim_out + record_out


def test_recorded_topics_make_a_training_store(recorded_run):
    from ditpolicy.datasets import DemoStore

    store_path, _, output = recorded_run
    assert "20 episode(s), success 1.00" in output and "wrote 20 episode(s)" in output
    store = DemoStore.open(store_path)
    assert store.n_episodes == 20 and {store.task_name(e) for e in range(20)} == {TASK}
    assert store.instruction(0) == "press the button from the top"
    assert set(store.keys) == {"state", "proprio", "action"}
    state, action = store.read("state"), store.read("action")
    assert np.array_equal(state[:, :4], store.read("proprio"))
    assert np.all(np.abs(action) <= 1.0) and np.abs(action).mean() > 0.1
    # each command is paired with the state it was computed from: consecutive states differ
    ends = store.episode_ends
    same = [np.array_equal(state[t], state[t + 1]) for t in range(len(state) - 1) if t + 1 not in set(ends)]
    assert np.mean(same) < 0.02
    verify = subprocess.run([sys.executable, "-m", "ditpolicy", "verify", str(store_path)], capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def inject_nan_states(probe: Probe, stop: threading.Event) -> None:
    names = list(PRESETS["metaworld"].observation["state"])
    while not stop.is_set():
        probe.joint_pub.publish(JointState(name=names, position=[float("nan")] * len(names)))
        time.sleep(0.1)


def test_policy_node_drives_the_sim_robot_safely(recorded_run, tmp_path):
    from ditpolicy.deploy.ros2_node import NodeSettings, PolicyNode
    from ditpolicy.deploy.runtime import RuntimeSettings
    from ditpolicy.deploy.safety import SafetyLimits
    from ditpolicy.policies import Policy

    _, run, _ = recorded_run
    sim_report = tmp_path / "sim.json"
    sim = ditpolicy_process("sim-robot", f"task={TASK}", "episodes=2", "seed=500", "exit_when_done=false",
                            f"out={sim_report}", "timeout_s=240")
    probe = Probe()
    limits = SafetyLimits(position_low=-np.ones(4), position_high=np.ones(4), hold_after_s=0.2, stop_after_s=1.0,
                          hold_command=[0.0, 0.0, 0.0, None])
    node = PolicyNode(Policy.from_checkpoint(run), NodeSettings(task=TASK), RuntimeSettings(rate_hz=RATE, rtc="inpaint"),
                      limits)
    stop, nan_stop, reports = threading.Event(), threading.Event(), []
    runner = threading.Thread(target=lambda: reports.extend(node.run(stop.is_set)))
    injector = threading.Thread(target=inject_nan_states, args=(probe, nan_stop))
    try:
        runner.start()
        injector.start()
        # 1. both episodes solved through the node, NaN joint states arriving all along
        probe.wait_for(lambda: probe.sim_status().get("done") == "True", 90, "the sim robot's two episodes")
        t_done = time.monotonic()
        nan_stop.set()
        injector.join()
        stamps = np.array([s for s, _ in probe.commands if s <= t_done])
        sent = np.stack([c for _, c in probe.commands])
        assert np.isfinite(sent).all(), "a non-finite command reached the robot"
        assert node.buffer.rejected["nonfinite"] >= 10
        steady = stamps[stamps > stamps[0] + 1.0]
        rate = (len(steady) - 1) / (steady[-1] - steady[0])
        assert abs(rate - RATE) / RATE < 0.05, f"command rate {rate:.2f} Hz"
        print(f"closed loop: {rate:.3f} Hz command rate, {node.buffer.rejected['nonfinite']} NaN joint states "
              f"refused, {len(sent)} commands, all finite")

        # 2. an e-stop latches: nothing moves the arm after it, and Bool(false) does not clear it
        t_estop = time.monotonic()
        probe.estop_pub.publish(Bool(data=True))
        time.sleep(0.5)
        probe.estop_pub.publish(Bool(data=False))
        time.sleep(0.7)
        after = probe.commands_after(t_estop + 2 / RATE)
        assert node.latched == "estop"
        assert len(after) <= 1 and all(np.all(c[:3] == 0) for c in after), after
        diag = probe.diagnostics["ditpolicy: policy"]
        assert diag["latched"] == "estop" and int(diag["rejected_nonfinite"]) >= 10

        # 3. ~/reset clears the latch and the policy runs again
        t_reset = time.monotonic()
        assert probe.call_reset().success
        probe.wait_for(lambda: len(probe.commands_after(t_reset)) >= 10, 10, "commands after the reset")
        assert node.latched is None

        # 4. sensors go silent: the hold command (hand still) after hold_after_s, a stop after stop_after_s
        stops_before = len(node.stop_times)
        t_pause = time.monotonic()
        probe.pause_pub.publish(Bool(data=True))
        probe.wait_for(lambda: len(node.stop_times) > stops_before, 5, "the watchdog stop")
        stopped_after = node.stop_times[-1] - t_pause
        assert limits.stop_after_s - 0.05 <= stopped_after <= limits.stop_after_s + 2 / RATE + 0.05, stopped_after
        print(f"watchdog: stop {stopped_after:.3f} s after the sensors went silent (stop_after_s "
              f"{limits.stop_after_s})")
        held = [c for s, c in probe.commands if t_pause + limits.hold_after_s + 2 / RATE < s]
        assert held and all(np.all(c[:3] == 0) for c in held)
        time.sleep(0.5)
        assert not probe.commands_after(node.stop_times[-1] + 0.1)
        assert node.latched.startswith("safety: stale_stop")
    finally:
        stop.set()
        nan_stop.set()
        runner.join(timeout=10)
        node.close()
        probe.close()
        sim.send_signal(signal.SIGINT)
        sim_out = finish(sim, 20)
    assert not runner.is_alive()
    latched = [r["stopped_by"] for r in reports if not r.get("restarted")]     # startup retries aside
    assert latched[:2] == ["safety: estop", "safety: stale_stop"]
    report = json.loads(sim_report.read_text())
    assert [e["success"] for e in report["episodes"]] == [True, True], sim_out
    assert report["nonfinite_commands"] == 0


def test_deploy_command_runs_until_ctrl_c(recorded_run, tmp_path):
    _, run, _ = recorded_run
    proc = ditpolicy_process("deploy", f"checkpoint={run}", f"out={tmp_path}")
    lines = []
    deadline = time.monotonic() + 60
    while not any("ready" in line for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
        lines.append(proc.stdout.readline())
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out = finish(proc, 15)
    assert time.monotonic() - t0 < 10
    assert "stopped after 0 commands" in out
    report = json.loads((tmp_path / "deploy.json").read_text())
    assert report["robot"] == "ros" and report["node"]["commands"] == 0
    bad = subprocess.run([sys.executable, "-m", "ditpolicy", "deploy", f"checkpoint={run}",
                          "ros.layout={observation: {state: [a, b]}, command: [x]}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "observation.state: 2 joints for a policy input of size 39" in bad.stderr
