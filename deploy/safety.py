"""Safety layer between a policy and a robot: limits, pure checks and a latching filter.

Every command passes through :class:`SafetyFilter` before it is sent. The filter only
ever emits a finite command inside the position limits, at most ``max_delta`` (and
``max_velocity * dt``) away from the previous safe command, or no command at all.
The checks are also available as pure functions; none of them mutates its inputs.
Shapes: ``A`` is the action dimension, commands are (A,) float arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

RULES = ("nonfinite", "workspace", "position", "step", "stale_hold", "stale_stop", "estop")


def _field_array(name: str, value, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A read-only finite float64 copy of ``value``; ValueError naming ``name`` otherwise."""
    if isinstance(value, (bool, np.bool_, str)):
        raise ValueError(f"safety limit {name}: expected a number or list of numbers, got {value!r}")
    try:
        arr = np.array(value if np.ndim(value) == 0 or isinstance(value, np.ndarray) else list(value),
                       dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"safety limit {name}: expected a number or list of numbers, got {value!r}") from None
    if shape is not None and arr.shape != shape:
        raise ValueError(f"safety limit {name}: expected shape {shape}, got {arr.shape}")
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(f"safety limit {name}: expected a number or a non-empty list, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"safety limit {name}: values must be finite, got {arr.tolist()}")
    arr.setflags(write=False)  # the dataclass is frozen; so are its arrays
    return arr


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value for ==
class SafetyLimits:
    """Limits for commands of dimension A. ``None`` disables a rule.

    position_low, position_high: (A,) bounds on the command itself (e.g. joint limits).
    max_velocity: scalar or (A,), units/s; |cmd - last| / dt may not exceed it.
    max_delta: scalar or (A,), units per control step; |cmd - last| may not exceed it.
    (Arrays are stored as read-only float64 copies; a scalar limit as a 0-d array.)
    workspace_low, workspace_high: (3,) box the caller's end-effector position must lie in.
    hold_after_s: an observation older than this holds the last safe command.
    stop_after_s: an observation older than this stops and latches the e-stop.
    hold_command: (A,) what a hold sends, for robots whose commands are velocities or
    displacements (re-sending the last one would keep moving); a NaN entry keeps that dim's
    last safe command (e.g. ``[0, 0, 0, nan]``: stop the hand, keep the gripper's grip).
    None: re-send the last safe command (position interfaces).
    """

    position_low: np.ndarray | None = None
    position_high: np.ndarray | None = None
    max_velocity: np.ndarray | float | None = None
    max_delta: np.ndarray | float | None = None
    workspace_low: np.ndarray | None = None
    workspace_high: np.ndarray | None = None
    hold_after_s: float = 0.2
    stop_after_s: float = 1.0
    hold_command: np.ndarray | None = None

    def __post_init__(self):
        # Validate on construction, not only in from_dict: limits built in code are just as
        # likely to be wrong, and a wrong limit is only discovered when the robot moves.
        for name in ("position_low", "position_high", "max_velocity", "max_delta", "workspace_low", "workspace_high"):
            if getattr(self, name) is not None:
                shape = (3,) if name.startswith("workspace") else None
                object.__setattr__(self, name, _field_array(name, getattr(self, name), shape))
                if name.startswith("max_") and np.any(getattr(self, name) < 0):
                    raise ValueError(f"safety limit {name}: must be >= 0, got {getattr(self, name).tolist()}")
        for low, high in (("position_low", "position_high"), ("workspace_low", "workspace_high")):
            lo, hi = getattr(self, low), getattr(self, high)
            if (lo is None) != (hi is None):
                raise ValueError(f"safety limit {low if lo is None else high}: set both {low} and {high}, or neither")
            if lo is not None and lo.shape != hi.shape:
                raise ValueError(f"safety limit {high}: length {hi.size} differs from {low} ({lo.size})")
            if lo is not None and np.any(lo > hi):
                raise ValueError(f"safety limit {low}: {lo.tolist()} exceeds {high} {hi.tolist()}")
        if self.hold_command is not None:
            try:
                hold = np.array([math.nan if v is None else v for v in np.ravel(np.asarray(self.hold_command, dtype=object))],
                                dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"safety limit hold_command: expected numbers or null, got {self.hold_command!r}") from None
            if hold.size == 0 or np.isinf(hold).any():
                raise ValueError(f"safety limit hold_command: expected finite numbers or null per dim, got {hold.tolist()}")
            hold.setflags(write=False)
            object.__setattr__(self, "hold_command", hold)
        n = self.action_dim
        for name in ("max_velocity", "max_delta", "hold_command"):
            v = getattr(self, name)
            if v is not None and v.ndim == 1 and n is not None and v.size != n:
                raise ValueError(f"safety limit {name}: length {v.size} differs from the other per-dim limits ({n})")
        for name in ("hold_after_s", "stop_after_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"safety limit {name}: expected seconds as a number, got {v!r}")
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"safety limit {name}: must be finite and >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.hold_after_s > self.stop_after_s:
            raise ValueError(f"safety limit hold_after_s: {self.hold_after_s} exceeds stop_after_s {self.stop_after_s}")

    @property
    def action_dim(self) -> int | None:
        """A as fixed by the per-dim limits, or None when every limit is scalar or unset."""
        for name in ("position_low", "max_velocity", "max_delta", "hold_command"):
            v = getattr(self, name)
            if v is not None and v.ndim == 1:
                return v.size
        return None

    @classmethod
    def from_dict(cls, d: Mapping) -> SafetyLimits:
        """Limits from a hydra/yaml mapping (lists become arrays); unknown keys are errors."""
        if not isinstance(d, Mapping):
            raise ValueError(f"safety limits: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:  # a misspelt key would otherwise silently disable its limit
            raise ValueError(f"safety limits: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{str(k): v for k, v in d.items()})


def _vector(x, name: str, size: int | None = None) -> np.ndarray:
    """``x`` as a 1-D float64 copy, with a ValueError naming the expected shape otherwise."""
    arr = np.array(x, dtype=np.float64)
    if arr.ndim != 1 or (size is not None and arr.size != size):
        want = f"({size},)" if size is not None else "(A,)"
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    return arr


def is_finite(cmd) -> bool:
    """True when every entry of ``cmd`` is finite (no NaN, no inf)."""
    return bool(np.all(np.isfinite(np.asarray(cmd, dtype=np.float64))))


def clamp_position(cmd, limits: SafetyLimits) -> tuple[np.ndarray, bool]:
    """(A,) command clipped into [position_low, position_high], and whether it moved.

    Idempotent. NaN entries stay NaN (and do not count as clamped); reject them first.
    """
    cmd = _vector(cmd, "command", limits.action_dim)
    if limits.position_low is None:
        return cmd, False
    clamped = bool(np.any((cmd < limits.position_low) | (cmd > limits.position_high)))
    return np.clip(cmd, limits.position_low, limits.position_high), clamped


def step_bound(limits: SafetyLimits, dt: float | None) -> np.ndarray | None:
    """Largest allowed |cmd - last| per dim: min(max_delta, max_velocity * dt); None = unlimited."""
    bound = limits.max_delta
    if limits.max_velocity is not None:
        if dt is None or isinstance(dt, bool) or not math.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt: max_velocity is set, so dt must be a finite time > 0 s, got {dt!r}")
        by_velocity = limits.max_velocity * float(dt)
        bound = by_velocity if bound is None else np.minimum(bound, by_velocity)
    return bound


def limit_step(cmd, last, limits: SafetyLimits, dt: float | None = None) -> tuple[np.ndarray, bool]:
    """(A,) command moved at most the step bound away from ``last`` (A,), and whether it was.

    No limit when ``last`` is None (nothing to measure the step from).
    """
    cmd = _vector(cmd, "command", limits.action_dim)
    bound = step_bound(limits, dt)
    if last is None or bound is None:
        return cmd, False
    last = _vector(last, "last command", cmd.size)
    if not is_finite(last):
        raise ValueError(f"last command: must be finite, got {last.tolist()}")
    diff = cmd - last
    over = np.abs(diff) > bound  # NaN stays NaN either way: reject non-finite commands first
    # Dims within the bound keep cmd exactly: last + (cmd - last) can round past cmd and,
    # at a position limit, one ulp outside it.
    out = np.where(over, last + np.clip(diff, -bound, bound), cmd)
    return out, bool(np.any(over))


def inside_workspace(position, limits: SafetyLimits) -> bool:
    """True when the (3,) end-effector position lies in the workspace box (boundary included).

    A non-finite position is outside: not knowing where the arm is is not safe.
    """
    position = _vector(position, "ee_position", 3)
    if limits.workspace_low is None:
        return True
    return bool(np.all((position >= limits.workspace_low) & (position <= limits.workspace_high)))


def staleness(now: float, observation_time: float, limits: SafetyLimits) -> str:
    """Classify an observation stamped ``observation_time`` at ``now`` (s): "fresh", "hold" or "stop".

    Age exactly at a threshold is still the milder state. A timestamp ahead of ``now`` by more
    than a threshold counts the same as one that far behind: the clocks disagree, so the
    data's real age is unknown. A non-finite age is "stop".
    """
    age = abs(float(now) - float(observation_time))
    if not math.isfinite(age) or age > limits.stop_after_s:
        return "stop"
    return "hold" if age > limits.hold_after_s else "fresh"


@dataclass(frozen=True, eq=False)
class Decision:
    """What to do this control step.

    kind: "pass" (command unchanged), "clamped" (command limited), "hold" (re-send the last
    safe command), "stop" (send nothing; stop the robot).
    command: (A,) float64 array to send, None for "stop".
    reasons: names of the rules that fired (see ``RULES``).
    """

    kind: str
    command: np.ndarray | None
    reasons: tuple[str, ...] = ()


class SafetyFilter:
    """Stateful filter: latched e-stop, last safe command and rule counts.

    Each ``filter`` call decides in this order, the first stage that fires deciding:
    latched e-stop -> "stop"; observation too old -> latch and "stop"; old -> "hold";
    non-finite command or end-effector outside the workspace -> "hold" (a NaN never becomes
    a command); else the position clamp and the step limit -> "clamped" or "pass". Only
    "pass" and "clamped" update the last safe command, so a hold always re-sends a command
    that met every limit. Only ``reset`` clears the latch.
    The first command after construction or ``reset`` is not step-limited unless
    ``initial_command`` (the robot's present command, (A,)) is given. With nothing safe to
    hold yet, a hold becomes a "stop" without latching, so a start-up before the first
    observation arrives does not need a reset.
    """

    def __init__(self, limits: SafetyLimits, action_dim: int, initial_command=None):
        if int(action_dim) < 1:
            raise ValueError(f"action_dim: must be >= 1, got {action_dim}")
        if limits.action_dim is not None and limits.action_dim != action_dim:
            raise ValueError(f"action_dim: {action_dim} differs from the limits' length {limits.action_dim}")
        self.limits = limits
        self.action_dim = int(action_dim)
        self.counts: dict[str, int] = {rule: 0 for rule in RULES}
        self.kinds: dict[str, int] = {k: 0 for k in ("pass", "clamped", "hold", "stop")}
        self._latch_reason: str | None = None
        self.reset(initial_command)

    @property
    def latched(self) -> bool:
        return self._latch_reason is not None

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._last is None else self._last.copy()

    def trigger_estop(self, reason: str = "estop") -> None:
        """Latch the e-stop: every later ``filter`` call is "stop" until ``reset``."""
        if self._latch_reason is None:  # keep the first reason: it is the cause
            self._latch_reason = str(reason)

    def reset(self, initial_command=None) -> None:
        """Clear the latch and the last safe command (optionally seeding it). Counts are kept."""
        last = None
        if initial_command is not None:
            last = _vector(initial_command, "initial_command", self.action_dim)
            if not is_finite(last) or clamp_position(last, self.limits)[1]:
                raise ValueError(f"initial_command: must be finite and inside the position limits, got {last.tolist()}")
        self._last = last
        self._latch_reason = None

    def held_command(self) -> np.ndarray | None:
        """What a hold sends: the last safe command, with the limits' hold_command over it."""
        hold = self.limits.hold_command
        if hold is None:
            return self._last
        if self._last is None:
            return None if np.isnan(hold).any() else clamp_position(hold, self.limits)[0]
        return clamp_position(np.where(np.isnan(hold), self._last, hold), self.limits)[0]

    def _decide(self, kind: str, command, reasons: tuple[str, ...]) -> Decision:
        for rule in reasons:
            self.counts[rule] += 1
        if kind == "hold" and command is None:
            kind = "stop"  # nothing safe to hold yet
        self.kinds[kind] += 1
        if kind in ("pass", "clamped"):
            self._last = command
        # The caller gets its own copy: writing to it must not change the last safe command.
        return Decision(kind, None if command is None else command.copy(), reasons)

    def filter(self, cmd, now: float, observation_time: float, ee_position=None,
               dt: float | None = None) -> Decision:
        """Decide on one (A,) command; ``ee_position`` (3,) is required when a workspace is set."""
        # Programming errors raise whatever the robot's state: they would recur every step.
        cmd = _vector(cmd, "command", self.action_dim)
        if self.limits.workspace_low is not None and ee_position is None:
            raise ValueError("ee_position: the limits define a workspace, so pass the (3,) end-effector position")
        if ee_position is not None:
            ee_position = _vector(ee_position, "ee_position", 3)
        step_bound(self.limits, dt)  # raises for a missing dt even before the first command

        if self.latched:
            return self._decide("stop", None, ("estop",))
        state = staleness(now, observation_time, self.limits)
        if state == "stop":
            self.trigger_estop("stale_stop")
            return self._decide("stop", None, ("stale_stop",))
        if state == "hold":
            return self._decide("hold", self.held_command(), ("stale_hold",))

        # Both rejections are checked so that each is counted when both fire.
        rejected = []
        if not is_finite(cmd):
            rejected.append("nonfinite")
        if ee_position is not None and not inside_workspace(ee_position, self.limits):
            rejected.append("workspace")
        if rejected:
            return self._decide("hold", self.held_command(), tuple(rejected))

        # Clamp first, then limit the step from the last safe command (itself inside the
        # position limits): the result lies between the two, so both limits hold at once.
        out, clamped = clamp_position(cmd, self.limits)
        out, limited = limit_step(out, self._last, self.limits, dt)
        reasons = (("position",) if clamped else ()) + (("step",) if limited else ())
        return self._decide("clamped" if reasons else "pass", out, reasons)

    def summary(self) -> dict:
        """Counts per rule and per decision kind, and the latch state, for logs."""
        return {"counts": dict(self.counts), "decisions": dict(self.kinds),
                "calls": sum(self.kinds.values()), "latched": self.latched,
                "latch_reason": self._latch_reason}
