"""The real-time runtime: timing and accounting under a fake clock, then closed-loop in MuJoCo.

Under the fake clock the control loop's time advances only when it sleeps, and (lockstep)
each sleep waits until the inference thread is idle, so every chunk arrives exactly one tick
after its request and all counts are known in advance. The Meta-World test runs the real
clock at 20 Hz against a real MuJoCo robot.
"""

import math
import time

import numpy as np
import pytest
import torch

from ditpolicy.config import policy_config
from ditpolicy.datasets import Normalizer
from ditpolicy.deploy.runtime import Runtime, RuntimeSettings
from ditpolicy.deploy.safety import SafetyFilter, SafetyLimits
from ditpolicy.policies import DiffusionPolicy, PolicySpec


def make_policy(state_dim=4, action_dim=2, tasks=("a",)) -> DiffusionPolicy:
    spec = PolicySpec.from_config(policy_config(["policy.d_model=32", "policy.denoiser.n_layers=1",
                                                 "policy.denoiser.n_heads=2", "policy.inference_steps=2"]),
                                  {"state": [state_dim]}, [], action_dim, list(tasks))
    stats = {"state": {"min": -np.ones(state_dim), "max": np.ones(state_dim)},
             "action": {"min": -np.ones(action_dim), "max": np.ones(action_dim)}}
    torch.manual_seed(0)
    return DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()


class LockstepClock:
    """Fake time: advances only in sleep_until, which first waits for the inference thread."""

    def __init__(self, oversleep: dict[int, float] | None = None):
        self.t = 100.0
        self.sleeps = 0
        self.oversleep = oversleep or {}
        self.runtime = None

    def now(self) -> float:
        return self.t

    def sleep_until(self, deadline: float) -> None:
        if self.runtime is not None:
            while self.runtime._busy.is_set():
                time.sleep(0.0005)
        self.t = max(self.t, deadline) + self.oversleep.get(self.sleeps, 0.0)
        self.sleeps += 1


class PointRobot:
    """A 2-D point that moves by each command; its observation (position, goal) is read on the
    given clock, and can be made non-finite or frozen in time at chosen reads."""

    def __init__(self, clock, bad_reads=(), freeze_after=None):
        self.clock, self.bad_reads, self.freeze_after = clock, set(bad_reads), freeze_after
        self.position = np.zeros(2)
        self.sent: list[np.ndarray] = []
        self.reads = 0
        self.stopped = False
        self._frozen_stamp = None

    def read(self):
        self.reads += 1
        state = np.concatenate([self.position, [0.5, -0.5]]).astype(np.float32)
        if self.reads in self.bad_reads:
            state[1] = np.nan
        stamp = self.clock.now()
        if self.freeze_after is not None and len(self.sent) >= self.freeze_after:
            self._frozen_stamp = self._frozen_stamp if self._frozen_stamp is not None else stamp
            stamp = self._frozen_stamp
        return {"state": state}, stamp

    def send(self, command):
        assert not self.stopped
        self.sent.append(np.array(command, dtype=np.float64))
        self.position = self.position + 0.05 * np.asarray(command)

    def stop(self):
        self.stopped = True


def run(settings, steps, robot_kwargs=None, oversleep=None, safety=None):
    clock = LockstepClock(oversleep)
    robot = PointRobot(clock, **(robot_kwargs or {}))
    runtime = Runtime(make_policy(), robot, settings, safety=safety, clock=clock)
    clock.runtime = runtime
    return runtime.run(steps), robot, runtime


@pytest.mark.parametrize("rtc", [None, "inpaint"])
def test_chunks_arrive_one_tick_late_and_every_action_is_accounted_for(rtc):
    report, robot, runtime = run(RuntimeSettings(rate_hz=20, rtc=rtc, n_action_steps=4), steps=40)
    requests = 1 + len(range(4, 40, 4))                   # the first chunk, then every 4 steps
    assert report["ticks"] == 40 and len(robot.sent) == 40
    assert report["schedule"] == {"chunks": requests, "dropped": requests - 1, "executed": 40, "blended": 0,
                                  "starved": 0}
    assert report["late_requests"] == 0 and report["deadline_misses"] == 0
    assert report["rate_hz"] == pytest.approx(20.0)
    assert report["inference_ms"]["calls"] == requests and len(report["inference_ms"]["warmup"]) == 1
    assert all(np.isfinite(c).all() for c in robot.sent)


def test_synchronous_ticks_use_each_chunk_in_the_tick_that_asked():
    report, robot, runtime = run(RuntimeSettings(rate_hz=20, rtc="inpaint", n_action_steps=1, synchronous=True),
                                 steps=12)
    assert report["schedule"]["chunks"] == 12 and report["schedule"]["dropped"] == 0
    assert report["inference_ms"]["calls"] == 12 and report["late_requests"] == 0
    assert report["delay_estimate_steps"] >= 0 and len(robot.sent) == 12


def test_deadline_misses_and_jitter_are_measured():
    period = 0.05
    # tick k's sleep is the clock's k-th: tick 7 starts 0.7 periods late, tick 20 0.3 periods late
    report, _, runtime = run(RuntimeSettings(rate_hz=20), steps=30, oversleep={7: 0.7 * period, 20: 0.3 * period})
    assert report["deadline_misses"] == 1                  # 0.7 of a period late counts, 0.3 does not
    assert report["period_jitter_ms"]["p99"] == pytest.approx(0.7 * period * 1e3, rel=0.05)
    assert report["period_jitter_ms"]["p50"] == pytest.approx(0.0, abs=1e-6)


def test_ensemble_blending_is_counted():
    report, _, _ = run(RuntimeSettings(rate_hz=20, blending="ensemble", n_action_steps=4), steps=24)
    # chunks of 16 requested every 4 steps overlap: from the second chunk on, every step blends
    assert report["schedule"]["blended"] == 24 - 5
    assert report["schedule"]["starved"] == 0


def test_bad_observations_never_enter_the_history_and_are_counted():
    report, robot, runtime = run(RuntimeSettings(rate_hz=20), steps=20, robot_kwargs={"bad_reads": {6, 7, 12}})
    assert report["rejected_observations"] == 3
    assert len(robot.sent) == 20 and all(np.isfinite(c).all() for c in robot.sent)
    assert np.isfinite(runtime.executor.history()["state"]).all()


def test_stale_observations_hold_then_stop_the_robot():
    limits = SafetyLimits(position_low=[-1, -1], position_high=[1, 1], hold_after_s=0.12, stop_after_s=0.32)
    report, robot, _ = run(RuntimeSettings(rate_hz=20), steps=40, robot_kwargs={"freeze_after": 10},
                           safety=SafetyFilter(limits, 2))
    # the stamp freezes at tick 10: ages 0.05, 0.10 pass (ticks 11, 12), 0.15 .. 0.30 hold (13-16), 0.35 stops
    assert report["safety_holds"] == 4 and report["safety"]["stale_hold"] == 4
    assert report["safety_stops"] == 1 and report["stopped_by"].startswith("safety")
    assert robot.stopped and len(robot.sent) == 17
    assert all(np.array_equal(h, robot.sent[12]) for h in robot.sent[13:])   # holds repeat the last safe command


def test_settings_are_checked():
    with pytest.raises(ValueError, match="rate_hz"):
        RuntimeSettings(rate_hz=0).check()
    with pytest.raises(ValueError, match="rtc"):
        RuntimeSettings(rtc="guided").check()


def test_closed_loop_in_metaworld_at_a_fixed_rate():
    from ditpolicy.envs.metaworld_robot import MetaWorldRobot

    policy = make_policy(state_dim=39, action_dim=4, tasks=("reach-v3",)).set_inference_mode("trace")
    robot = MetaWorldRobot("reach-v3", seed=3)
    limits = SafetyLimits(position_low=-np.ones(4), position_high=np.ones(4), max_delta=0.5)
    runtime = Runtime(policy, robot, RuntimeSettings(rate_hz=20, rtc="inpaint"), safety=SafetyFilter(limits, 4))
    report = runtime.run(60)
    robot.close()
    assert report["ticks"] == 60 and len(robot.commands) == 60
    assert abs(report["rate_hz"] - 20) / 20 < 0.05
    assert report["deadline_misses"] == 0 and report["schedule"]["starved"] == 0
    sent = np.stack(robot.commands)
    assert np.all(np.abs(sent) <= 1 + 1e-9) and np.all(np.abs(np.diff(sent, axis=0)) <= 0.5 + 1e-9)
    assert report["inference_ms"]["calls"] == math.ceil(60 / policy.spec.n_action_steps)


def test_cli_settings_errors_name_the_key(tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ditpolicy", *args], capture_output=True, text=True, timeout=300)

    bad_safety = cli("deploy", f"checkpoint={tmp_path}", "safety.max_delta=-1")
    assert bad_safety.returncode == 2 and "max_delta" in bad_safety.stderr
    bad_rate = cli("deploy", f"checkpoint={tmp_path}", "runtime.rate_hz=0")
    assert bad_rate.returncode == 2 and "rate_hz" in bad_rate.stderr
