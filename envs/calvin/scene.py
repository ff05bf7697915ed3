"""A chain's symbolic initial scene as CALVIN's simulator state, exactly as the official
evaluation sets it (scene D, the validation scene of every published split).

The robot always starts from one fixed pose. ``scene_obs`` (24,): slider and drawer joints,
button and switch joints, lightbulb and LED states, then position and Euler angles (6) of the
red, blue and pink blocks. A block "on the table" takes one of two table slots and every block
is turned about z by a random angle in pi/2 +- pi/8; both draws come from numpy's legacy
generator seeded with the 32-bit FNV-1 hash of the scene's values as text, so one symbolic
scene always gives the same state.
"""

from __future__ import annotations

import numpy as np

# tool position (3), Euler angles (3), gripper width, 7 arm joints, gripper action (open)
ROBOT_OBS = np.array([0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
                      -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0])
SLIDER_LEFT = np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01])
SLIDER_RIGHT = np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01])
TABLE_SLOTS = (np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
               np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]))
BLOCK_TURN = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)
SCENE_KEYS = ("led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block", "grasped")
SLIDER_OPEN, DRAWER_OPEN, SWITCH_ON = 0.28, 0.22, 0.088


def fnv1_32(text: str) -> int:
    """32-bit FNV-1 of the text's UTF-16-LE bytes (the hash the official evaluation seeds with)."""
    h = 0
    for byte in text.encode("utf-16-le"):
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= byte
    return h


def scene_seed(initial_state: dict) -> int:
    """The seed of a symbolic scene: the hash of ``str(dict.values())`` over plain ints and strings
    in the official key order (numpy scalars would print differently and change it)."""
    missing = [k for k in SCENE_KEYS if k not in initial_state]
    if missing:
        raise ValueError(f"CALVIN initial scene lacks {missing}: a scene holds {list(SCENE_KEYS)}")
    ordered = {k: (str(v) if isinstance(v, str) else int(v)) for k, v in
               ((k, initial_state[k]) for k in SCENE_KEYS)}
    return fnv1_32(str(ordered.values()))


def block_place(name: str, initial_state: dict, slots: list[np.ndarray]) -> np.ndarray:
    place = initial_state[f"{name}_block"]
    if place == "slider_right":
        return SLIDER_RIGHT
    if place == "slider_left":
        return SLIDER_LEFT
    if name == "red" or (name == "blue" and initial_state["red_block"] != "table"):
        return slots[0]
    return slots[1]


def initial_scene(initial_state: dict) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs (15,), scene_obs (24,)) of a chain's symbolic initial scene."""
    rng = np.random.RandomState(scene_seed(initial_state))
    slots = list(TABLE_SLOTS)
    rng.shuffle(slots)
    scene = np.zeros(24)
    scene[0] = SLIDER_OPEN if initial_state["slider"] == "left" else 0.0
    scene[1] = DRAWER_OPEN if initial_state["drawer"] == "open" else 0.0
    scene[3] = SWITCH_ON if initial_state["lightbulb"] == 1 else 0.0
    scene[4], scene[5] = initial_state["lightbulb"], initial_state["led"]
    for i, name in enumerate(("red", "blue", "pink")):
        start = 6 + 6 * i
        scene[start:start + 3] = block_place(name, initial_state, slots)
        scene[start + 5] = rng.uniform(*BLOCK_TURN)
    return ROBOT_OBS.copy(), scene
