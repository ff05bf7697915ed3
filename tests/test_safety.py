"""Safety layer: limits, pure checks and the latching filter, checked on random inputs."""

import ast
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ditpolicy.deploy import safety
from ditpolicy.deploy.safety import (
    RULES,
    SafetyFilter,
    SafetyLimits,
    clamp_position,
    inside_workspace,
    is_finite,
    limit_step,
    staleness,
)

FAST = settings(max_examples=200, deadline=None)
TOL = 1e-9

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
special = st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300])
any_float = st.one_of(finite, finite, finite, special)  # mostly ordinary values


def vec(shape, elements=finite):
    return hnp.arrays(np.float64, shape, elements=elements)


@st.composite
def limits_and_dim(draw, workspace=None):
    """Random valid limits for a random action dimension A in 1..5."""
    a = draw(st.integers(1, 5))
    kw = {}
    if draw(st.booleans()):
        low = draw(vec(a, st.floats(-10, 10)))
        kw["position_low"] = low
        kw["position_high"] = low + draw(vec(a, st.floats(0, 20)))  # zero width included
    for name, top in (("max_delta", 2.0), ("max_velocity", 50.0)):
        kind = draw(st.sampled_from(["none", "scalar", "per_dim"]))
        if kind == "scalar":
            kw[name] = draw(st.floats(0, top))
        elif kind == "per_dim":
            kw[name] = draw(vec(a, st.floats(0, top)))
    if workspace if workspace is not None else draw(st.booleans()):
        low = draw(vec(3, st.floats(-1, 1)))
        kw["workspace_low"], kw["workspace_high"] = low, low + draw(vec(3, st.floats(0, 1)))
    hold = draw(st.floats(0, 1))
    kw["hold_after_s"], kw["stop_after_s"] = hold, hold + draw(st.floats(0, 2))
    return SafetyLimits(**kw), a


def bound_of(limits, dt):
    """min(max_delta, max_velocity * dt) per dim, computed here independently; inf = none."""
    b = np.inf
    if limits.max_delta is not None:
        b = np.minimum(b, limits.max_delta)
    if limits.max_velocity is not None:
        b = np.minimum(b, limits.max_velocity * dt)
    return b


def readonly(x):
    x = np.array(x, dtype=np.float64)
    x.setflags(write=False)  # any in-place write by the code under test raises
    return x


# ---------------------------------------------------------------- pure functions


@FAST
@given(data=st.data())
def test_clamp_is_within_limits_idempotent_and_pure(data):
    limits, a = data.draw(limits_and_dim())
    cmd = readonly(data.draw(vec(a, st.one_of(finite, st.sampled_from([1e300, -1e300])))))
    out, clamped = clamp_position(cmd, limits)
    if limits.position_low is None:
        np.testing.assert_array_equal(out, cmd)
        assert not clamped
        return
    assert np.all(out >= limits.position_low) and np.all(out <= limits.position_high)
    outside = np.any((cmd < limits.position_low) | (cmd > limits.position_high))
    assert clamped == outside
    np.testing.assert_array_equal(out == cmd, ~((cmd < limits.position_low) | (cmd > limits.position_high)))
    again, clamped_again = clamp_position(out, limits)
    np.testing.assert_array_equal(again, out)
    assert not clamped_again
    assert out is not cmd


@FAST
@given(data=st.data(), dt=st.floats(1e-3, 0.1))
def test_limit_step_bounds_the_step_and_moves_toward_cmd(data, dt):
    limits, a = data.draw(limits_and_dim())
    cmd = readonly(data.draw(vec(a)))
    last = readonly(data.draw(vec(a)))
    out, limited = limit_step(cmd, last, limits, dt)
    bound = bound_of(limits, dt)
    step = np.abs(out - last)
    assert np.all(step <= bound + TOL)
    # Never overshoots: each dim lies between last and cmd, and equals cmd when allowed.
    assert np.all(np.minimum(last, cmd) <= out) and np.all(out <= np.maximum(last, cmd))
    within = np.abs(cmd - last) <= bound
    np.testing.assert_array_equal(out[within], cmd[within])
    assert limited == bool(np.any(~within))
    # No previous command: nothing to measure a step from.
    free, limited_free = limit_step(cmd, None, limits, dt)
    np.testing.assert_array_equal(free, cmd)
    assert not limited_free


def test_limit_step_needs_dt_for_velocity_and_a_finite_last():
    limits = SafetyLimits(max_velocity=1.0)
    for dt in (None, 0.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="dt"):
            limit_step(np.zeros(2), np.zeros(2), limits, dt)
    with pytest.raises(ValueError, match="last command"):
        limit_step(np.zeros(2), np.array([0.0, math.nan]), limits, 0.1)
    out, limited = limit_step(np.array([1.0, -1.0]), np.zeros(2), SafetyLimits(max_velocity=2.0, max_delta=0.5), 0.1)
    np.testing.assert_allclose(out, [0.2, -0.2])  # velocity * dt is the tighter bound here
    assert limited


@FAST
@given(data=st.data())
def test_inside_workspace_matches_the_box(data):
    low = data.draw(vec(3, st.floats(-1, 1)))
    limits = SafetyLimits(workspace_low=low, workspace_high=low + data.draw(vec(3, st.floats(0, 1))))
    pos = readonly(data.draw(vec(3, st.one_of(st.floats(-2, 2), special))))
    expected = all(lo <= p <= hi for p, lo, hi in zip(pos, limits.workspace_low, limits.workspace_high))
    assert inside_workspace(pos, limits) == expected
    assert inside_workspace(limits.workspace_low, limits) and inside_workspace(limits.workspace_high, limits)
    assert inside_workspace(pos, SafetyLimits())  # no box, no limit
    with pytest.raises(ValueError, match=r"\(3,\)"):
        inside_workspace(np.zeros(2), limits)


@FAST
@given(hold=st.floats(0, 5), extra=st.floats(0, 5), t0=st.floats(-1e3, 1e3))
def test_staleness_thresholds_are_exact(hold, extra, t0):
    limits = SafetyLimits(hold_after_s=hold, stop_after_s=hold + extra)
    stop = limits.stop_after_s
    up = lambda x: math.nextafter(x, math.inf)  # noqa: E731
    assert staleness(0.0, 0.0, limits) == "fresh"
    assert staleness(hold, 0.0, limits) == "fresh"  # exactly at the threshold: the milder state
    assert staleness(up(hold), 0.0, limits) == ("hold" if up(hold) <= stop else "stop")
    assert staleness(stop, 0.0, limits) == ("hold" if stop > hold else "fresh")
    assert staleness(up(stop), 0.0, limits) == "stop"
    assert staleness(0.0, up(stop), limits) == "stop"  # stamped ahead of now: clocks disagree
    assert staleness(0.0, hold, limits) == "fresh"
    for now, obs in ((math.nan, 0.0), (0.0, math.nan), (math.inf, 0.0)):
        assert staleness(now, obs, limits) == "stop"
    # Any time origin: the decision follows the age the two stamps give.
    now = t0 + up(stop)
    age = abs(now - t0)
    assert staleness(now, t0, limits) == ("stop" if age > stop else "hold" if age > hold else "fresh")


def test_is_finite():
    assert is_finite(np.zeros(3)) and is_finite([1.0, -2.0])
    for bad in (math.nan, math.inf, -math.inf):
        assert not is_finite([0.0, bad])


# ---------------------------------------------------------------- SafetyLimits


def test_from_dict_builds_readonly_arrays():
    limits = SafetyLimits.from_dict({
        "position_low": [-1, -2], "position_high": [1, 2], "max_velocity": 0.5, "max_delta": [0.1, 0.2],
        "workspace_low": [0, 0, 0], "workspace_high": [1, 1, 1], "hold_after_s": 0.1, "stop_after_s": 2})
    np.testing.assert_array_equal(limits.position_low, [-1.0, -2.0])
    assert limits.position_low.dtype == np.float64 and not limits.position_low.flags.writeable
    assert limits.action_dim == 2 and limits.stop_after_s == 2.0
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"position_low": [-1, -2], "position_high": [1, 2]})
    np.testing.assert_array_equal(SafetyLimits.from_dict(cfg).position_high, [1.0, 2.0])
    assert SafetyLimits.from_dict({}).position_low is None


@pytest.mark.parametrize("d, field", [
    ({"position_low": [0, 1], "position_high": [1, 0]}, "position_low"),          # low > high
    ({"position_low": [0, 0], "position_high": [1, 1, 1]}, "position_high"),      # lengths differ
    ({"position_low": [0, 0]}, "position_high"),                                  # one side only
    ({"position_low": [0, math.nan], "position_high": [1, 1]}, "position_low"),   # non-finite
    ({"position_low": [0, 0], "position_high": [1, math.inf]}, "position_high"),
    ({"position_low": [], "position_high": []}, "position_low"),
    ({"position_low": [[0, 0]], "position_high": [[1, 1]]}, "position_low"),
    ({"max_velocity": -1.0}, "max_velocity"),                                     # negative
    ({"max_delta": [0.1, -0.1]}, "max_delta"),
    ({"max_delta": math.nan}, "max_delta"),
    ({"max_delta": "fast"}, "max_delta"),
    ({"max_delta": True}, "max_delta"),
    ({"position_low": [0, 0], "position_high": [1, 1], "max_delta": [1, 1, 1]}, "max_delta"),
    ({"max_velocity": [1, 1], "max_delta": [1, 1, 1]}, "max_delta"),
    ({"workspace_low": [0, 0], "workspace_high": [1, 1]}, "workspace_low"),       # not (3,)
    ({"workspace_low": [0, 0, 2], "workspace_high": [1, 1, 1]}, "workspace_low"),
    ({"hold_after_s": 2.0, "stop_after_s": 1.0}, "hold_after_s"),
    ({"hold_after_s": -0.1}, "hold_after_s"),
    ({"stop_after_s": math.inf}, "stop_after_s"),
    ({"stop_after_s": "1s"}, "stop_after_s"),
    ({"max_delt": 0.1}, "max_delt"),                                              # misspelt key
    ({"position_low": [0, 0], "position_high": [1, 1], "hold_command": [0, 0, 0]}, "hold_command"),
    ({"hold_command": [0, math.inf]}, "hold_command"),
    ({"hold_command": ["stop"]}, "hold_command"),
])
def test_from_dict_errors_name_the_field(d, field):
    with pytest.raises(ValueError, match=field):
        SafetyLimits.from_dict(d)


# ---------------------------------------------------------------- SafetyFilter


@st.composite
def scenario(draw):
    """Limits, A and a sequence of filter calls (cmd, age, ee position, dt, e-stop trigger)."""
    limits, a = draw(limits_and_dim())
    n = draw(st.integers(1, 10))
    # Ages cluster around the thresholds so that every staleness state shows up.
    ages = draw(st.lists(st.one_of(st.floats(0, limits.hold_after_s),
                                   st.sampled_from([limits.hold_after_s, limits.stop_after_s]),
                                   st.floats(0, limits.stop_after_s * 1.5 + 0.1)), min_size=n, max_size=n))
    cmds = draw(vec((n, a), any_float))
    ees = draw(vec((n, 3), st.one_of(st.floats(-1.5, 2.5), special)))
    dts = draw(vec(n, st.floats(1e-3, 0.1)))
    estops = draw(vec(n, st.integers(0, 15))) == 0
    return limits, a, list(zip(cmds, ages, ees, dts, estops))


@FAST
@given(scenario())
def test_filter_against_an_independent_model(case):
    limits, a, steps = case
    filt = SafetyFilter(limits, a)
    counts = dict.fromkeys(RULES, 0)
    latched, last = False, None
    for cmd, age, ee, dt, estop in steps:
        if estop:
            filt.trigger_estop("operator")
            latched = True
        ee_arg = ee if limits.workspace_low is not None else None
        cmd_in = readonly(cmd)
        d = filt.filter(cmd_in, now=age, observation_time=0.0, ee_position=ee_arg, dt=dt)

        # The model: which rules fire, and what comes out.
        if latched:
            kind, reasons = "stop", ("estop",)
        elif age > limits.stop_after_s:
            kind, reasons, latched = "stop", ("stale_stop",), True
        elif age > limits.hold_after_s:
            kind, reasons = "hold", ("stale_hold",)
        else:
            rejected = []
            if not np.all(np.isfinite(cmd)):
                rejected.append("nonfinite")
            if ee_arg is not None and not np.all((ee >= limits.workspace_low) & (ee <= limits.workspace_high)):
                rejected.append("workspace")
            if rejected:
                kind, reasons = "hold", tuple(rejected)
            else:
                target = cmd
                reasons = ()
                if limits.position_low is not None:
                    target = np.minimum(np.maximum(cmd, limits.position_low), limits.position_high)
                    if np.any(target != cmd):
                        reasons += ("position",)
                if last is not None and np.any(np.abs(target - last) > bound_of(limits, dt)):
                    reasons += ("step",)
                kind = "clamped" if reasons else "pass"
        if kind == "hold" and last is None:
            kind = "stop"  # nothing safe to hold yet
        for r in reasons:
            counts[r] += 1

        assert (d.kind, d.reasons) == (kind, reasons)
        assert filt.latched == latched
        if kind == "stop":
            assert d.command is None
            continue
        out = d.command
        assert out.shape == (a,) and out.dtype == np.float64 and np.all(np.isfinite(out))
        if limits.position_low is not None:
            assert np.all(out >= limits.position_low) and np.all(out <= limits.position_high)
        if kind == "hold":
            np.testing.assert_array_equal(out, last)
        else:
            # A non-finite or out-of-workspace input is never what comes out.
            assert np.all(np.isfinite(cmd))
            assert ee_arg is None or inside_workspace(ee_arg, limits)
            if last is not None:
                assert np.all(np.abs(out - last) <= bound_of(limits, dt) + TOL)
                if limits.max_delta is not None:
                    assert np.all(np.abs(out - last) <= limits.max_delta + TOL)
                if limits.max_velocity is not None:
                    assert np.all(np.abs(out - last) <= limits.max_velocity * dt + TOL)
            if kind == "pass":
                np.testing.assert_array_equal(out, cmd)
            last = out.copy()
        out += 1.0  # the caller owns its copy; the filter's last safe command is unaffected
        np.testing.assert_array_equal(filt.last_command, last)

    assert filt.counts == counts
    summary = filt.summary()
    assert summary["counts"] == counts and summary["calls"] == len(steps) and summary["latched"] == latched


@FAST
@given(data=st.data(), via_staleness=st.booleans())
def test_latch_persists_until_reset(data, via_staleness):
    limits, a = data.draw(limits_and_dim(workspace=False))
    filt = SafetyFilter(limits, a)
    zero = np.zeros(a)
    filt.filter(zero, now=0.0, observation_time=0.0, dt=0.01)
    if via_staleness:
        assert filt.filter(zero, now=limits.stop_after_s + 1.0, observation_time=0.0, dt=0.01).kind == "stop"
    else:
        filt.trigger_estop("operator")
    assert filt.latched
    n = data.draw(st.integers(0, 10))
    calls = list(zip(data.draw(vec((n, a), any_float)), data.draw(vec(n, st.floats(-5, 5)))))
    for cmd, age in calls:  # fresh, stale, finite or not: nothing clears the latch
        d = filt.filter(cmd, now=age, observation_time=0.0, dt=0.01)
        assert (d.kind, d.command, d.reasons) == ("stop", None, ("estop",))
        assert filt.latched
    assert filt.counts["estop"] == len(calls)
    filt.reset()
    assert not filt.latched and filt.last_command is None
    d = filt.filter(zero, now=0.0, observation_time=0.0, dt=0.01)
    assert d.kind in ("pass", "clamped") and np.all(np.isfinite(d.command))


def test_hold_repeats_the_last_safe_command_and_stop_without_one_does_not_latch():
    limits = SafetyLimits(position_low=[-1, -1], position_high=[1, 1], max_delta=0.5)
    filt = SafetyFilter(limits, 2)
    d = filt.filter([0.0, math.nan], now=0.0, observation_time=0.0)
    assert (d.kind, d.command, d.reasons) == ("stop", None, ("nonfinite",)) and not filt.latched
    assert filt.filter([0.2, 0.0], now=0.0, observation_time=0.0).kind == "pass"
    d = filt.filter([math.inf, 0.0], now=0.0, observation_time=0.0)
    assert d.kind == "hold" and d.command.tolist() == [0.2, 0.0]
    d = filt.filter([5.0, 0.0], now=0.0, observation_time=0.0)
    assert (d.kind, d.reasons) == ("clamped", ("position", "step")) and d.command.tolist() == [0.7, 0.0]
    d = filt.filter([0.0, 0.0], now=0.5, observation_time=0.0)
    assert (d.kind, d.reasons) == ("hold", ("stale_hold",)) and d.command.tolist() == [0.7, 0.0]


def test_hold_command_stops_motion_and_keeps_the_null_dims():
    """Displacement robots: a hold sends the hold command (hand still), keeping the gripper's last command."""
    limits = SafetyLimits.from_dict({"position_low": [-1] * 3, "position_high": [1] * 3,
                                     "hold_command": [0.0, 0.0, None]})
    assert np.isnan(limits.hold_command[2]) and not limits.hold_command.flags.writeable
    filt = SafetyFilter(limits, 3)
    d = filt.filter([0.0, math.nan, 0.0], now=0.0, observation_time=0.0)
    assert d.kind == "stop" and not filt.latched            # nothing known yet for the null dim
    filt.filter([0.5, -0.5, 0.8], now=0.0, observation_time=0.0)
    for cmd, now in (([math.nan, 0, 0], 0.0), ([0.5, -0.5, 0.8], 0.5)):   # non-finite, stale
        d = filt.filter(cmd, now=now, observation_time=0.0)
        assert d.kind == "hold" and d.command.tolist() == [0.0, 0.0, 0.8]
    assert filt.last_command.tolist() == [0.5, -0.5, 0.8]   # a hold is not a new safe command
    still = SafetyFilter(SafetyLimits(hold_command=[0.0, 0.0]), 2)
    assert still.filter([math.nan, 0.0], now=0.0, observation_time=0.0).command.tolist() == [0.0, 0.0]


def test_initial_command_seeds_the_step_limit():
    limits = SafetyLimits(position_low=[-1.0], position_high=[1.0], max_delta=0.1)
    filt = SafetyFilter(limits, 1, initial_command=[0.5])
    assert filt.filter([-1.0], now=0.0, observation_time=0.0).command.tolist() == [0.4]
    for bad in ([2.0], [math.nan]):
        with pytest.raises(ValueError, match="initial_command"):
            filt.reset(bad)


def test_programming_errors_raise():
    filt = SafetyFilter(SafetyLimits(max_velocity=1.0, workspace_low=[0, 0, 0], workspace_high=[1, 1, 1]), 3)
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        filt.filter(np.zeros(4), now=0.0, observation_time=0.0, ee_position=np.zeros(3), dt=0.1)
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        filt.filter(np.zeros((1, 3)), now=0.0, observation_time=0.0, ee_position=np.zeros(3), dt=0.1)
    with pytest.raises(ValueError, match="ee_position"):
        filt.filter(np.zeros(3), now=0.0, observation_time=0.0, dt=0.1)
    with pytest.raises(ValueError, match="dt"):
        filt.filter(np.zeros(3), now=0.0, observation_time=0.0, ee_position=np.zeros(3))
    with pytest.raises(ValueError, match="action_dim"):
        SafetyFilter(SafetyLimits(position_low=[0, 0], position_high=[1, 1]), 3)
    assert sum(filt.counts.values()) == 0  # a programming error is not a robot event


def test_module_imports_numpy_only():
    tree = ast.parse(open(safety.__file__).read())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots <= {"__future__", "math", "collections", "dataclasses", "numpy"}, roots
