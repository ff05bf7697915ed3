"""The ROS 2 verbs: ``deploy robot=ros`` (the policy node), ``sim-robot``, ``record`` and ``convert``.

Each runs until its work is done or Ctrl-C / SIGTERM, then shuts its node down cleanly (no
executor thread left behind). rclpy comes from the ``ros`` extra or a sourced ROS 2 install.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .settings import SettingError, flag, integer, number, optional_positive_int, positive_int


def require_ros(what: str) -> None:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        raise SettingError(f"{what} needs ROS 2's rclpy: pip install 'ditpolicy[ros]' (or source a ROS 2 "
                           f"installation)") from None


@contextmanager
def stop_on_signals():
    """An Event set by Ctrl-C or SIGTERM (the previous handlers come back afterwards)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def node_settings(cfg: DictConfig):
    """NodeSettings from the ``ros`` section (+ the ``node`` section and task of deploy)."""
    from .deploy.ros2_node import NodeSettings

    ros = OmegaConf.to_container(cfg.ros, resolve=True)
    known = {f.name for f in fields(NodeSettings)}
    values = {k: v for k, v in ros.items() if k in known}
    if "node" in cfg:
        values.update(node_name=str(cfg.node.name), trigger=str(cfg.node.trigger),
                      diagnostics_hz=float(cfg.node.diagnostics_hz), task=cfg.task)
    settings = NodeSettings(**values)
    try:
        settings.check()
    except ValueError as exc:
        raise SettingError(f"ros settings: {exc}") from None
    return settings


def deploy_ros(cfg: DictConfig, settings, limits) -> int:
    """``deploy robot=ros``: the policy node until Ctrl-C (or ``node.ticks``); writes deploy.json."""
    require_ros("deploy robot=ros")
    from .deploy.ros2_node import PolicyNode
    from .policies import Policy

    ticks = optional_positive_int(cfg, "node.ticks")
    node_cfg = node_settings(cfg)
    policy = Policy.from_checkpoint(cfg.checkpoint, device=cfg.device)
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint) / "deploy"
    with stop_on_signals() as stop:
        try:
            node = PolicyNode(policy, node_cfg, settings, limits)
        except ValueError as exc:
            raise SettingError(f"deploy: {exc}") from None
        with node:
            print(f"ditpolicy node '{node_cfg.node_name}' ready: {node_cfg.joint_states_topic} -> "
                  f"{node_cfg.command_topic} at {settings.rate_hz:g} Hz ({node_cfg.trigger} trigger); "
                  f"task {node.task!r}; Ctrl-C to stop", flush=True)
            reports = node.run(should_stop=stop.is_set, ticks=ticks)
            diagnostics = node.diagnostics()
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy.json").write_text(json.dumps({"robot": "ros", "runs": reports, "node": diagnostics}, indent=2))
    print(f"stopped after {diagnostics['commands']} commands; report: {out / 'deploy.json'}", flush=True)
    return 0


def sim_robot(cfg: DictConfig) -> int:
    require_ros("sim-robot")
    from .deploy.sim_bridge import ExpertTeleop, SimRobotNode

    topics = OmegaConf.to_container(cfg.ros, resolve=True)
    timeout = float("inf") if cfg.timeout_s is None else number(cfg, "timeout_s", above=0.0)
    with stop_on_signals() as stop:
        robot = SimRobotNode(str(cfg.task), seed=integer(cfg, "seed"), episodes=positive_int(cfg, "episodes"),
                             rate_hz=number(cfg, "rate_hz", above=0.0), ros=topics,
                             cameras=tuple(cfg.cameras), image_size=positive_int(cfg, "image_size"),
                             max_steps=positive_int(cfg, "max_steps"),
                             steps_after_success=integer(cfg, "steps_after_success", 0),
                             wait_for_recorder=flag(cfg, "wait_for_recorder"))
        teleop = None
        if flag(cfg, "expert"):
            teleop = ExpertTeleop(str(cfg.task), robot.context, number(cfg, "expert_rate_hz", above=0.0), topics)
            robot.executor.add_node(teleop.node)
        print(f"sim robot {robot.report.task} ready: {topics['joint_states_topic']}, commands on "
              f"/{topics['controller']}/commands or /joint_trajectory{' (expert driving)' if teleop else ''}", flush=True)
        try:
            report = robot.spin(stop.is_set, timeout, exit_when_done=flag(cfg, "exit_when_done"))
        finally:
            if teleop is not None:
                teleop.node.destroy_node()
            if cfg.out:
                robot.write_report(cfg.out)
            robot.close()
    summary = report.as_dict()
    print(f"{len(report.episodes)} episode(s), success {summary['success_rate']:.2f}, {report.commands} commands, "
          f"{report.nonfinite_commands} non-finite refused" + (f"; report: {cfg.out}" if cfg.out else ""), flush=True)
    return 0


def record(cfg: DictConfig) -> int:
    require_ros("record")
    from .deploy.recorder import Recorder

    duration = float("inf") if cfg.duration_s is None else number(cfg, "duration_s", above=0.0)
    episodes = optional_positive_int(cfg, "episodes")
    recorder = Recorder(cfg.out, node_settings(cfg), str(cfg.task), list(cfg.cameras), str(cfg.ros.record_topic),
                        overwrite=flag(cfg, "overwrite"), min_steps=positive_int(cfg, "min_steps"))
    end = time.monotonic() + duration
    print(f"recording into {cfg.out}: episodes start/stop on {cfg.ros.record_topic} or ~/start, ~/stop; "
          f"Ctrl-C to finish", flush=True)
    with stop_on_signals() as stop:
        try:
            recorder.spin(lambda: stop.is_set() or time.monotonic() > end
                          or (episodes is not None and recorder.written >= episodes))
        finally:
            counts = recorder.close()
    print(f"wrote {recorder.written} episode(s) to {cfg.out}; {json.dumps(counts)}", flush=True)
    return 0


def convert(cfg: DictConfig) -> int:
    if cfg.format != "rosbag":
        raise SettingError(f"format={cfg.format!r}: convert reads format=rosbag")
    try:
        import rosbags  # noqa: F401
    except ImportError:
        raise SettingError("convert rosbag needs the rosbags package: pip install 'ditpolicy[ros]'") from None
    from .deploy.rosbag_convert import convert_rosbag

    counts = convert_rosbag(cfg.input, cfg.out, OmegaConf.to_container(cfg.ros, resolve=True), str(cfg.task or "robot"),
                            list(cfg.cameras), str(cfg.ros.record_topic), overwrite=flag(cfg, "overwrite"),
                            min_steps=positive_int(cfg, "min_steps"), progress=flag(cfg, "progress"))
    print(f"wrote {counts['episodes_written']} episode(s) from {cfg.input} to {cfg.out}; {json.dumps(counts)}")
    return 0
