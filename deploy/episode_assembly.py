"""Demonstration episodes from a stream of robot messages, live (recorder.py) or from a bag (rosbag_convert.py).

Each command is one step: it is paired with the newest observation stamped before it (every
part: joint-state keys and camera frames). Stamps are the publishers' send times (live) or
the recording times (bags), so a command processed before the joint state it was computed
from is still paired with that state: a command waits until a joint state stamped after it
arrives (messages of one publisher arrive in order), or until the episode ends. Commands
before the first complete observation, and outside an episode, are skipped and counted. ``start()`` opens an episode
(finishing an open one), ``stop()`` finishes it; a finished episode of at least
``min_steps`` steps is returned as ``(data, instruction)`` with data key -> (T, ...) arrays
(low-dim float32, images uint8 (T, H, W, 3), ``action`` (T, A)).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque

import numpy as np

from .ros_messages import JointLayout, MessageRejected, joint_state_observation


class EpisodeAssembler:
    def __init__(self, layout: JointLayout, image_keys: list[str] = (), min_steps: int = 2, history: int = 256):
        self.layout, self.image_keys, self.min_steps = layout, list(image_keys), int(min_steps)
        self.instruction = ""
        self.recording = False
        self.counts: Counter[str] = Counter()   # steps, skipped_*, rejected_*, episodes, too_short
        self._parts: dict[str, deque[tuple[float, np.ndarray]]] = defaultdict(lambda: deque(maxlen=history))
        self._pending: list[tuple[float, np.ndarray]] = []
        self._steps: list[tuple[dict[str, np.ndarray], np.ndarray]] = []

    # ------------------------------------------------------------------ inputs
    def joint_state(self, msg, stamp: float) -> bool:
        """Take a sensor_msgs/JointState sent at ``stamp`` (s); False (counted) when it is malformed."""
        try:
            obs = joint_state_observation(msg, self.layout)
        except MessageRejected as exc:
            self.counts[f"rejected_{exc.reason}"] += 1
            return False
        for key, value in obs.items():
            self._parts[key].append((stamp, value))
        self._pair(until=stamp)
        return True

    def image(self, key: str, image: np.ndarray, stamp: float) -> None:
        self._parts[key].append((stamp, image))

    def set_instruction(self, text: str) -> None:
        self.instruction = str(text)

    def command(self, action: np.ndarray, stamp: float) -> bool:
        """One step: ``action`` (A,) sent at ``stamp``; False when it was skipped (no episode open)."""
        if not self.recording:
            self.counts["skipped_outside_episode"] += 1
            return False
        self._pending.append((stamp, np.asarray(action, dtype=np.float32)))
        return True

    def _newest_before(self, key: str, stamp: float):
        for t, value in reversed(self._parts.get(key, ())):
            if t <= stamp:
                return value
        return None

    def _pair(self, until: float) -> None:
        """Pair the pending commands stamped before ``until`` with their observations."""
        keep = []
        for stamp, action in self._pending:
            if stamp > until:
                keep.append((stamp, action))
                continue
            obs = {k: self._newest_before(k, stamp) for k in [*self.layout.observation, *self.image_keys]}
            if any(v is None for v in obs.values()):
                self.counts["skipped_no_observation"] += 1
                continue
            self._steps.append((obs, action))
            self.counts["steps"] += 1
        self._pending = keep

    # ------------------------------------------------------------------ episodes
    def start(self):
        """Open an episode; returns the one it finishes, if any (see ``stop``)."""
        finished = self.stop()
        self.recording = True
        return finished

    def stop(self):
        """Close the open episode: ``(data, instruction)``, or None when none was open or it is too short."""
        self._pair(until=float("inf"))
        steps, was_recording = self._steps, self.recording
        self._steps, self.recording = [], False
        if not was_recording:
            return None
        if len(steps) < self.min_steps:
            self.counts["too_short"] += 1
            return None
        data = {k: np.stack([obs[k] for obs, _ in steps]) for k in steps[0][0]}
        data["action"] = np.stack([a for _, a in steps])
        self.counts["episodes"] += 1
        return data, self.instruction
