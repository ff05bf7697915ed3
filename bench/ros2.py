"""End-to-end latency of the ROS 2 policy node: from a JointState message to the command it
causes, over real loopback topics, and what the node adds over bare inference. Prints a table
and writes JSON.

    python bench/ros2.py                                  # the default policy, untrained weights
    python bench/ros2.py --checkpoint outputs/demo/run --calls 1000

A robot process publishes a JointState, waits for the command, records the round trip and
publishes the next state at ``--rate``; the node ticks on each state (``trigger=observation``).
Three configurations, measured in one run, in turn:
- ``ros-echo``: a bare rclpy node that publishes a fixed command from its JointState
  callback: the round trip of the ROS 2 transport and executors alone, the floor for any
  Python node on this machine.
- ``infer-every-tick``: the policy node predicts a chunk in every tick and sends its first
  action (synchronous, one action per chunk), so the round trip holds one inference.
- ``chunked``: the checkpoint's own chunking, inference overlapped in the background; a
  tick sends the planned action, so no inference sits in the round trip.
What the node adds, timed inside it on one clock ("in node"): from the joint state's arrival
in its callback to the command's publish call, less that tick's inference (paired tick by
tick): message checks, the observation history, the schedule, the safety filter, building
the command and the hand-over between threads. "Node adds" estimates the same from the
robot's side: round trip - the echo's median round trip - median inference.
Run it alone on the machine: other processes on the cores distort every figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

NAMES_PRESET = "metaworld"
COMMANDS = "/forward_command_controller/commands"


def robot(calls: int, rate: float, out: str, seed: int) -> None:
    """The robot side: publish a state, wait for its command, at ``rate``; round trips (ms) to ``out``."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from ditpolicy.deploy.ros2_node import COMMAND_QOS, SENSOR_QOS
    from ditpolicy.deploy.ros_messages import PRESETS
    from ditpolicy.deploy.ros_node_base import OwnedNode

    bench_robot = OwnedNode("bench_robot")
    node = bench_robot.node
    names = list(PRESETS[NAMES_PRESET].observation["state"])
    got = threading.Event()
    node.create_subscription(Float64MultiArray, COMMANDS, lambda msg: got.set(), COMMAND_QOS)
    pub = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
    rng = np.random.default_rng(seed)
    round_trips, lost = [], 0
    bench_robot.spin_in_background("bench-robot")

    def state() -> JointState:
        return JointState(name=names, position=[float(v) for v in np.clip(rng.normal(size=len(names)), -2, 2)])

    deadline = time.monotonic() + 120           # until the node answers (its graphs are built)
    while not got.is_set() and time.monotonic() < deadline:
        pub.publish(state())
        got.wait(0.1)
    time.sleep(0.5)
    next_t = time.monotonic()
    while len(round_trips) < calls:
        msg = state()
        got.clear()
        t0 = time.perf_counter()
        pub.publish(msg)
        if got.wait(timeout=2.0):
            round_trips.append((time.perf_counter() - t0) * 1e3)
        else:
            lost += 1
        next_t = max(next_t + 1.0 / rate, time.monotonic())
        time.sleep(max(0.0, next_t - time.monotonic()))
    Path(out).write_text(json.dumps({"round_trip_ms": round_trips, "lost": lost}))
    bench_robot.close()


def run_robot(name: str, calls: int, rate: float, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    subprocess.run([sys.executable, __file__, "--robot", "--calls", str(calls), "--rate", str(rate),
                    "--robot-out", str(out)], check=True, timeout=calls * 2 / rate + 600)
    return json.loads(out.read_text())


def percentiles(values) -> dict:
    return {"p50": float(np.median(values)), "p99": float(np.percentile(values, 99))}


def measure_echo(calls: int, rate: float, warmup: int, tmp: Path) -> dict:
    """A bare rclpy node answering each JointState with a fixed command from its callback."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from ditpolicy.deploy.ros2_node import COMMAND_QOS, SENSOR_QOS
    from ditpolicy.deploy.ros_node_base import OwnedNode

    echo = OwnedNode("bench_echo")
    node = echo.node
    pub = node.create_publisher(Float64MultiArray, COMMANDS, COMMAND_QOS)
    node.create_subscription(JointState, "/joint_states",
                             lambda msg: pub.publish(Float64MultiArray(data=[0.0] * 4)), SENSOR_QOS)
    echo.spin_in_background("bench-echo")
    data = run_robot("echo", calls + warmup, rate, tmp)
    echo.close()
    rt = np.asarray(data["round_trip_ms"])[warmup:]
    return {"config": "ros-echo", "calls": int(rt.size), "lost": data["lost"], "round_trip_ms": percentiles(rt),
            "inference_ms": {"p50": 0.0, "p99": 0.0}, "node_added_ms": {"p50": 0.0, "p99": 0.0}}


def measure(policy, name: str, calls: int, rate: float, synchronous: bool, n_action_steps, steps, warmup: int,
            echo_ms: float, tmp: Path) -> dict:
    """One node configuration against one robot process."""
    from ditpolicy.deploy.ros2_node import NodeSettings, PolicyNode
    from ditpolicy.deploy.runtime import RuntimeSettings
    from ditpolicy.deploy.safety import SafetyLimits

    settings = RuntimeSettings(rate_hz=rate, synchronous=synchronous, n_action_steps=n_action_steps, steps=steps)
    limits = SafetyLimits(position_low=-np.ones(4), position_high=np.ones(4), hold_after_s=1.0, stop_after_s=5.0)
    task = policy.spec.tasks[0] if policy.spec.tasks else None
    node = PolicyNode(policy, NodeSettings(trigger="observation", layout=NAMES_PRESET, task=task), settings, limits)
    stop = threading.Event()
    runner = threading.Thread(target=lambda: node.run(stop.is_set), daemon=True)
    runner.start()
    data = run_robot(name, calls + warmup, rate, tmp)
    stop.set()
    runner.join(timeout=10)
    inference = np.asarray(node.runtime.executor.latencies_ms) if node.runtime else np.zeros(0)
    # per command: newest joint state's arrival -> publish; the last runtime's commands, each
    # answering a fresh state (a tick without one, after the robot stopped, is left out)
    reaction = np.asarray(node.reaction_ms[-len(node.runtime.tick_times):])
    fresh = reaction < 1e3 / rate
    node.close()
    rt = np.asarray(data["round_trip_ms"])[warmup:]
    row = {"config": name, "calls": int(rt.size), "lost": data["lost"], "round_trip_ms": percentiles(rt)}
    if synchronous:
        # tick k predicts chunk k (one per tick) and sends its first action: pair them
        inside = (reaction - inference[:reaction.size])[fresh][warmup:]
        row["inference_ms"] = percentiles(inference[:reaction.size][fresh][warmup:])
        added = rt - row["inference_ms"]["p50"] - echo_ms
    else:
        inside = reaction[fresh][warmup:]                   # no inference inside the tick
        row["inference_ms"] = percentiles(inference[1:])
        added = rt - echo_ms
    row["node_added_ms"] = percentiles(added)
    row["in_node_ms"] = percentiles(inside)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the default policy with untrained weights")
    parser.add_argument("--calls", type=int, default=500, help="timed messages per configuration")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20.0, help="joint states per second")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default="outputs/bench/ros2.json")
    parser.add_argument("--robot", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--robot-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.robot:
        robot(args.calls, args.rate, args.robot_out, args.seed)
        return

    import tempfile

    import torch

    from ditpolicy.policies import Policy

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        policy = Policy.from_checkpoint(args.checkpoint, device="cpu")
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from latency import default_policy

        policy = default_policy().set_inference_mode("trace")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"measuring ros-echo ({args.calls} messages at {args.rate:g} Hz) ...", flush=True)
        rows = [measure_echo(args.calls, args.rate, args.warmup, Path(tmp))]
        echo_ms = rows[0]["round_trip_ms"]["p50"]
        for name, sync, n_act in (("infer-every-tick", True, 1), ("chunked", False, None)):
            print(f"measuring {name} ({args.calls} messages at {args.rate:g} Hz) ...", flush=True)
            rows.append(measure(policy, name, args.calls, args.rate, sync, n_act, args.steps, args.warmup, echo_ms,
                                Path(tmp)))
    print(f"\n{'config':<18} {'round trip p50/p99 ms':>22} {'inference p50/p99 ms':>22} {'node adds p50/p99 ms':>22} "
          f"{'in node p50/p99 ms':>20}")
    for r in rows:
        fmt = lambda d: f"{d['p50']:.3f} / {d['p99']:.3f}" if d else "-"  # noqa: E731
        print(f"{r['config']:<18} {fmt(r['round_trip_ms']):>22} {fmt(r['inference_ms']):>22} "
              f"{fmt(r['node_added_ms']):>22} {fmt(r.get('in_node_ms')):>20}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "rate_hz": args.rate, "threads": args.threads,
                               "sampler_steps": args.steps or policy.spec.inference_steps, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
