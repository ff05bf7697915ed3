"""LIBERO and robomimic HDF5 demonstrations into a store (``convert libero|robomimic <src> <store>``).

Both write one file per task: ``data/demo_<i>/actions`` (T, 7) and ``data/demo_<i>/obs/<key>``.
What a layout maps (``LAYOUTS``):

- images ``obs/<key>`` (T, H, W, 3) uint8 -> ``rgb_<camera>``, turned the right way up: LIBERO
  stores robosuite's renders rotated by 180 degrees (``flip="180"``); robomimic's writer
  already flips them upright (``flip="none"``). Evaluation renders the same way (upright).
- low-dimensional ``obs/<key>`` -> one ``state`` vector, concatenated in the listed order;
- ``actions`` -> ``action``.

Task name: the file's stem without ``_demo`` (the resume key: a file's demos go in the order
demo_0, demo_1, ... and a restarted conversion skips those already in the store).
Instruction: ``data.attrs["problem_info"]["language_instruction"]`` (LIBERO) when present,
else the file name in words, without LIBERO-90's upper-case scene prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...progress import progress_bar
from ..stats import refresh_stats
from ..writer import EpisodeWriter
from . import episodes_of_task

FLIPS = ("none", "vertical", "180")


@dataclass(frozen=True)
class HDF5Layout:
    images: dict[str, str]              # obs key -> store key
    state: tuple[str, ...]              # obs keys concatenated into ``state``
    flip: str                           # how the stored images are turned upright


LAYOUTS = {
    "libero": HDF5Layout(images={"agentview_rgb": "rgb_agentview", "eye_in_hand_rgb": "rgb_eye_in_hand"},
                         state=("ee_pos", "ee_ori", "gripper_states", "joint_states"), flip="180"),
    "robomimic": HDF5Layout(images={"agentview_image": "rgb_agentview",
                                    "robot0_eye_in_hand_image": "rgb_eye_in_hand"},
                            state=("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"), flip="none"),
}


def upright(frames: np.ndarray, flip: str) -> np.ndarray:
    """(T, H, W, C) frames turned the right way up."""
    if flip == "180":
        return np.ascontiguousarray(frames[:, ::-1, ::-1])
    if flip == "vertical":
        return np.ascontiguousarray(frames[:, ::-1])
    return frames


def demo_names(path: Path, data) -> list[str]:
    """``demo_<i>`` groups in numeric order (demo_2 before demo_10)."""
    names = [n for n in data.keys() if re.fullmatch(r"demo_\d+", n)]
    if not names:
        raise ValueError(f"{path}: group 'data' holds no demo_<i> groups (it has {sorted(data.keys())[:10]})")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def instruction_of(path: Path, data) -> str:
    """LIBERO's ``problem_info.language_instruction``, else the file name in words."""
    info = data.attrs.get("problem_info")
    if info is not None:
        text = json.loads(info if isinstance(info, str) else info.decode()).get("language_instruction", "")
        if text:
            return " ".join(str(text).split())
    words = task_of(path).split("_")
    while words and re.fullmatch(r"[A-Z0-9]+", words[0]):          # LIBERO-90 scene prefix, e.g. KITCHEN_SCENE3
        words = words[1:]
    return " ".join(words)


def task_of(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_demo")] if stem.endswith("_demo") else stem


def read_demo(path: Path, demo, name: str, layout: HDF5Layout) -> dict[str, np.ndarray]:
    """One demo's store arrays: action (T, A), state (T, S), rgb_<camera> (T, H, W, 3)."""
    if "actions" not in demo or "obs" not in demo:
        raise ValueError(f"{path}: data/{name} needs 'actions' and 'obs'; it has {sorted(demo.keys())}")
    obs = demo["obs"]
    missing = [k for k in (*layout.state, *layout.images) if k not in obs]
    if missing:
        raise ValueError(f"{path}: data/{name}/obs has no {missing}; it has {sorted(obs.keys())} "
                         f"(choose others with state_keys=[...] / image_keys={{obs_key: store_key}})")
    actions = np.asarray(demo["actions"])
    out = {"action": actions}
    parts = []
    for key in layout.state:
        value = np.asarray(obs[key])
        parts.append(value.reshape(len(value), -1))
    if parts:
        out["state"] = np.concatenate(parts, axis=1)
    for key, store_key in layout.images.items():
        frames = np.asarray(obs[key])
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"{path}: data/{name}/obs/{key} is {frames.dtype} {frames.shape}; "
                             f"images must be uint8 (T, H, W, C)")
        out[store_key] = upright(frames, layout.flip)
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: data/{name} arrays differ in length: {lengths}")
    return out


def source_files(src: Path) -> list[Path]:
    if src.is_dir():
        files = sorted(src.glob("*.hdf5"))
        if not files:
            raise FileNotFoundError(f"{src}: no *.hdf5 files in this folder")
        return files
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    return [src]


def convert_hdf5(src: str | Path, out: str | Path, layout: str = "libero", flip: str | None = None,
                 state_keys: list[str] | None = None, image_keys: dict[str, str] | None = None,
                 task: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Every demo of the HDF5 file(s) ``src`` into the store ``out``; returns counts.

    flip / state_keys / image_keys override the layout's ("none" | "vertical" | "180";
    obs keys for ``state``; {obs key: store key} for images). task: one task name for all
    files instead of each file's own (a single file only)."""
    try:
        import h5py
    except ImportError:
        raise ImportError("convert libero/robomimic needs h5py: pip install 'ditpolicy[libero]'") from None
    base = LAYOUTS[layout]
    chosen = HDF5Layout(images=dict(base.images if image_keys is None else image_keys),
                        state=tuple(base.state if state_keys is None else state_keys),
                        flip=base.flip if flip is None else str(flip))
    if chosen.flip not in FLIPS:
        raise ValueError(f"flip must be one of {FLIPS}, got {chosen.flip!r}")
    files = source_files(Path(src))
    if task and len(files) > 1:
        raise ValueError(f"task={task!r} names one file's demos; {src} holds {len(files)} files, each its own task")
    counts = {"files": len(files), "episodes": 0, "skipped": 0, "frames": 0}
    with EpisodeWriter(out, overwrite=overwrite) as writer:
        for path in files:
            with h5py.File(path, "r") as f:
                if "data" not in f:
                    raise ValueError(f"{path}: no 'data' group; a {layout} file holds data/demo_<i>/{{actions, obs}}")
                data = f["data"]
                names = demo_names(path, data)
                name_of_task = task or task_of(path)
                done = episodes_of_task(writer, name_of_task)
                if done > len(names):
                    raise ValueError(f"{out}: holds {done} episodes of task {name_of_task!r}, {path} only {len(names)}")
                instruction = instruction_of(path, data)
                bar = progress_bar(total=len(names), initial=done, desc=path.stem[:40], unit="demo",
                                   disable=not progress)
                for name in names[done:]:
                    episode = read_demo(path, data[name], name, chosen)
                    writer.add_episode(episode, task=name_of_task, instruction=instruction, success=True)
                    counts["episodes"] += 1
                    counts["frames"] += len(episode["action"])
                    bar.update(1)
                bar.close()
                counts["skipped"] += done
        refresh_stats(writer)
    return counts
