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


def _smooth_frames(rng, length: int, height: int, width: int) -> np.ndarray:
    """Frames a video codec keeps close: a colour gradient with a square moving across it."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, int(rng.integers(0, 256)))], -1)
    frames = np.repeat(base[None], length, axis=0).astype(np.uint8)
    for t in range(length):
        top, left = (3 * t) % (height - 12), (5 * t) % (width - 12)
        frames[t, top:top + 12, left:left + 12] = 255
    return frames


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """An mp4 as LeRobot encodes it: AV1 (SVT-AV1), yuv420p, a key frame every 2 frames."""
    import os

    import imageio_ffmpeg

    os.environ.setdefault("SVT_LOG", "1")                       # SVT-AV1: errors only
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=fps, codec="libsvtav1",
                                         pix_fmt_out="yuv420p", macro_block_size=1,
                                         output_params=["-g", "2", "-crf", "30"], ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_lerobot_dataset(root: Path, lengths: list[int], tasks: list[str], version: str = "v2.1", seed: int = 0,
                          fps: int = 10, cameras: tuple[str, ...] = ("top", "wrist"), size: tuple[int, int] = (48, 64),
                          episodes_per_file: int = 3) -> list[dict]:
    """A LeRobot dataset folder in layout v2.1 (one parquet and one mp4 per camera per episode,
    meta/episodes.jsonl, tasks.jsonl, episodes_stats.jsonl) or v3.0 (``episodes_per_file``
    episodes per parquet and mp4 file, meta/episodes/chunk-000/file-000.parquet,
    meta/tasks.parquet). Episode i has task ``tasks[i % len(tasks)]``. Returns per episode
    the state, action and the frames given to the encoder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    height, width = size
    features = {f"observation.images.{cam}": {
        "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
        "info": {"video.height": height, "video.width": width, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                 "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}
        for cam in cameras}
    features.update({
        "observation.state": {"dtype": "float32", "shape": [6], "names": [f"joint_{i}" for i in range(6)]},
        "action": {"dtype": "float32", "shape": [6], "names": [f"joint_{i}" for i in range(6)]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None}})
    task_list = list(dict.fromkeys(tasks))
    episodes, start = [], 0
    for i, length in enumerate(lengths):
        episodes.append({"state": rng.normal(size=(length, 6)).astype(np.float32),
                         "action": rng.normal(size=(length, 6)).astype(np.float32),
                         "frames": {cam: _smooth_frames(rng, length, height, width) for cam in cameras},
                         "task": tasks[i % len(tasks)], "start": start})
        start += length

    def table(ids: list[int]) -> pa.Table:
        rows = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
                                "task_index", "next.done")}
        for i in ids:
            e = episodes[i]
            for t in range(len(e["action"])):
                rows["observation.state"].append(e["state"][t].tolist())
                rows["action"].append(e["action"][t].tolist())
                rows["timestamp"].append(np.float32(t / fps))
                rows["frame_index"].append(t)
                rows["episode_index"].append(i)
                rows["index"].append(e["start"] + t)
                rows["task_index"].append(task_list.index(e["task"]))
                rows["next.done"].append(t == len(e["action"]) - 1)
        vector = pa.list_(pa.float32())
        return pa.table({"observation.state": pa.array(rows["observation.state"], vector),
                         "action": pa.array(rows["action"], vector),
                         "timestamp": pa.array(rows["timestamp"], pa.float32()),
                         **{k: pa.array(rows[k], pa.int64()) for k in ("frame_index", "episode_index", "index",
                                                                         "task_index")},
                         "next.done": pa.array(rows["next.done"], pa.bool_())})

    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": version, "robot_type": "so100", "total_episodes": len(lengths),
            "total_frames": int(sum(lengths)), "total_tasks": len(task_list), "chunks_size": 1000, "fps": fps,
            "splits": {"train": f"0:{len(lengths)}"}, "features": features}
    if version.startswith("v2"):
        info.update(total_videos=len(lengths) * len(cameras), total_chunks=1,
                    data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                    video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
        for i, e in enumerate(episodes):
            path = root / info["data_path"].format(episode_chunk=0, episode_index=i)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table([i]), path)
            for cam in cameras:
                _write_video(root / info["video_path"].format(episode_chunk=0, video_key=f"observation.images.{cam}",
                                                              episode_index=i), e["frames"][cam], fps)
        (meta / "episodes.jsonl").write_text("".join(json.dumps({"episode_index": i, "tasks": [e["task"]],
                                                                 "length": len(e["action"])}) + "\n"
                                                     for i, e in enumerate(episodes)))
        (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": j, "task": t}) + "\n"
                                                  for j, t in enumerate(task_list)))
        (meta / "episodes_stats.jsonl").write_text("".join(json.dumps({"episode_index": i, "stats": {}}) + "\n"
                                                           for i in range(len(episodes))))
    else:
        info.update(data_files_size_in_mb=100, video_files_size_in_mb=500,
                    data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                    video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
        rows = []
        for f, first in enumerate(range(0, len(episodes), episodes_per_file)):
            ids = list(range(first, min(first + episodes_per_file, len(episodes))))
            path = root / info["data_path"].format(chunk_index=0, file_index=f)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table(ids), path)
            offset = 0.0
            for cam in cameras:
                _write_video(root / info["video_path"].format(video_key=f"observation.images.{cam}", chunk_index=0,
                                                              file_index=f),
                             np.concatenate([episodes[i]["frames"][cam] for i in ids]), fps)
            for i in ids:
                length = len(episodes[i]["action"])
                row = {"episode_index": i, "tasks": [episodes[i]["task"]], "length": length,
                       "data/chunk_index": 0, "data/file_index": f, "dataset_from_index": episodes[i]["start"],
                       "dataset_to_index": episodes[i]["start"] + length,
                       "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
                for cam in cameras:
                    key = f"videos/observation.images.{cam}"
                    row.update({f"{key}/chunk_index": 0, f"{key}/file_index": f, f"{key}/from_timestamp": offset,
                                f"{key}/to_timestamp": offset + length / fps})
                offset += length / fps
                rows.append(row)
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), meta / "episodes" / "chunk-000" / "file-000.parquet")
        pq.write_table(pa.table({"task_index": pa.array(range(len(task_list)), pa.int64()),
                                 "__index_level_0__": task_list}), meta / "tasks.parquet")
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    return episodes
