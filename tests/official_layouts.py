"""Writers of the official on-disk layouts the converters read, with random contents: the
keys, dtypes, shapes and file names of LIBERO's and robomimic's HDF5 demos and of a CALVIN
split folder. Each returns what it wrote, for round-trip checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LIBERO_LOWDIM = {"ee_pos": 3, "ee_ori": 3, "ee_states": 6, "gripper_states": 2, "joint_states": 7}
ROBOMIMIC_LOWDIM = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}


def _demo(group, rng, length: int, lowdim: dict[str, int], images: list[str], size: int) -> dict:
    written = {"actions": rng.uniform(-1, 1, (length, 7)), "obs": {}}
    group.create_dataset("actions", data=written["actions"])                     # float64, as recorded
    group.create_dataset("rewards", data=np.zeros(length))
    dones = np.zeros(length, dtype=np.uint8)
    dones[-1] = 1
    group.create_dataset("dones", data=dones)
    group.create_dataset("states", data=rng.normal(size=(length, 47)))
    group.attrs["num_samples"] = length
    obs = group.create_group("obs")
    for key, dim in lowdim.items():
        written["obs"][key] = rng.normal(size=(length, dim))
        obs.create_dataset(key, data=written["obs"][key])
    for key in images:
        written["obs"][key] = rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8)
        obs.create_dataset(key, data=written["obs"][key])
    return written


def write_libero_hdf5(path: Path, instruction: str | None, lengths: list[int], seed: int = 0, size: int = 16) -> list:
    """A LIBERO task file (``<task>_demo.hdf5``): data attrs ``problem_info`` (JSON with the
    instruction), ``env_args``, ``bddl_file_name``, ``num_demos``, ``total``; each demo with
    ``obs/{agentview_rgb, eye_in_hand_rgb}`` (stored upside down) and the low-dim keys."""
    import h5py

    rng = np.random.default_rng(seed)
    demos = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if instruction is not None:
            data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                     "domain_name": "robosuite", "language_instruction": instruction})
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation", "env_kwargs": {}})
        data.attrs["bddl_file_name"] = f"libero/bddl_files/{path.stem}.bddl"
        data.attrs["num_demos"] = len(lengths)
        data.attrs["total"] = int(sum(lengths))
        for i, length in enumerate(lengths):
            group = data.create_group(f"demo_{i}")
            demos.append(_demo(group, rng, length, LIBERO_LOWDIM, ["agentview_rgb", "eye_in_hand_rgb"], size))
            group.attrs["init_state"] = rng.normal(size=47)
            group.create_dataset("robot_states", data=rng.normal(size=(length, 9)))
    return demos


def write_robomimic_hdf5(path: Path, lengths: list[int], seed: int = 0, size: int = 16) -> list:
    """A robomimic file: data attrs ``total`` and ``env_args``; demos with ``model_file``,
    ``obs`` and ``next_obs``; ``mask/{train, valid}`` listing demo names as bytes."""
    import h5py

    rng = np.random.default_rng(seed)
    demos = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = int(sum(lengths))
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i, length in enumerate(lengths):
            group = data.create_group(f"demo_{i}")
            written = _demo(group, rng, length, ROBOMIMIC_LOWDIM, ["agentview_image", "robot0_eye_in_hand_image"],
                            size)
            group.attrs["model_file"] = "<mujoco/>"
            nxt = group.create_group("next_obs")
            for key, value in written["obs"].items():
                nxt.create_dataset(key, data=np.roll(value, -1, axis=0))
            demos.append(written)
        names = np.array([f"demo_{i}".encode() for i in range(len(lengths))], dtype="S8")
        mask = f.create_group("mask")
        mask.create_dataset("train", data=names[: max(1, len(names) - 1)])
        mask.create_dataset("valid", data=names[max(1, len(names) - 1):])
    return demos


def write_calvin_split(split: Path, sequences: list[tuple[int, int]], annotations: list[tuple[int, int, str, str]],
                       seed: int = 0, static: int = 20, gripper: int = 12) -> dict[int, dict]:
    """A CALVIN split folder: ``episode_XXXXXXX.npz`` per frame (7-digit global index) with
    actions, rel_actions, robot_obs, scene_obs, rgb_static, rgb_gripper, rgb_tactile and the
    depth maps; ``ep_start_end_ids.npy`` (N, 2) inclusive; ``lang_annotations/auto_lang_ann.npy``
    (a pickled dict). Image sides are small here (200 and 84 in the real data)."""
    rng = np.random.default_rng(seed)
    split.mkdir(parents=True, exist_ok=True)
    frames = {}
    for first, last in sequences:
        for index in range(first, last + 1):
            frame = {"actions": rng.normal(size=7), "rel_actions": rng.uniform(-1, 1, 7),
                     "robot_obs": rng.normal(size=15), "scene_obs": rng.normal(size=24),
                     "rgb_static": rng.integers(0, 256, (static, static, 3), dtype=np.uint8),
                     "rgb_gripper": rng.integers(0, 256, (gripper, gripper, 3), dtype=np.uint8),
                     "rgb_tactile": rng.integers(0, 256, (8, 6, 6), dtype=np.uint8),
                     "depth_static": rng.random((static, static)).astype(np.float32),
                     "depth_gripper": rng.random((gripper, gripper)).astype(np.float32),
                     "depth_tactile": rng.random((8, 6, 2)).astype(np.float32)}
            np.savez_compressed(split / f"episode_{index:07d}.npz", **frame)
            frames[index] = frame
    np.save(split / "ep_start_end_ids.npy", np.array(sequences, dtype=np.int64))
    (split / "lang_annotations").mkdir(exist_ok=True)
    language = {"ann": [a[2] for a in annotations], "task": [a[3] for a in annotations],
                "emb": rng.normal(size=(len(annotations), 1, 384)).astype(np.float32)}
    info = {"episodes": [], "indx": [(a[0], a[1]) for a in annotations]}
    np.save(split / "lang_annotations" / "auto_lang_ann.npy", {"language": language, "info": info}, allow_pickle=True)
    return frames
