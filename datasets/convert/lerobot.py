"""A LeRobot dataset folder into a store (``convert lerobot <dataset> <store>``).

Reads the on-disk layouts v2.0 / v2.1 (one parquet file and one mp4 per camera per episode,
``meta/episodes.jsonl``, ``meta/tasks.jsonl``) and v3.0 (many episodes per parquet and mp4
file, ``meta/episodes/chunk-*/file-*.parquet`` with each episode's rows and video time span),
as ``meta/info.json``'s ``codebase_version`` says.

Store keys: ``action``; ``observation.state`` -> ``state``; camera features (dtype ``video``
or ``image``) ``observation.images.<cam>`` -> ``rgb_<cam>``; other numeric features by their
name after ``observation.``, dots as underscores. The bookkeeping columns (index, frame and
episode index, timestamp, task index, ``next.*``) are left out. Each episode's first task
text is its instruction; the store task is ``lerobot/<dataset folder>``, the resume key.

Videos (AV1 by default in LeRobot, also H.264) are decoded with imageio-ffmpeg's ffmpeg, one
stream per file read front to back: frames are taken in order, so an episode's k-th row is
the k-th frame of its span (v3: from ``from_timestamp * fps``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...progress import progress_bar
from ..stats import refresh_stats
from ..writer import EpisodeWriter
from . import episodes_of_task

BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


def store_key(feature: str, dtype: str) -> str:
    """The store key of a LeRobot feature name."""
    if dtype in ("video", "image"):
        camera = feature.removeprefix("observation.images.").removeprefix("observation.")
        return f"rgb_{camera.replace('.', '_')}"
    if feature == "observation.state":
        return "state"
    return feature.removeprefix("observation.").replace(".", "_")


@dataclass
class Episode:
    """Where one source episode lives."""
    index: int
    length: int
    instruction: str
    data_file: Path
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)    # feature -> (mp4, start time s)


class VideoStream:
    """Frames of one mp4, decoded front to back; ``take(first, n)`` returns frames first..first+n-1."""

    def __init__(self, path: Path):
        import imageio_ffmpeg

        if not path.exists():
            raise FileNotFoundError(f"{path}: video file listed by the dataset is missing")
        self.path = path
        self._frames = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(self._frames)
        self.width, self.height = meta["size"]
        self.position = 0

    def take(self, first: int, n: int) -> np.ndarray:
        if first < self.position:
            raise ValueError(f"{self.path}: frame {first} asked after frame {self.position - 1}")
        out = np.empty((n, self.height, self.width, 3), np.uint8)
        while self.position < first + n:
            raw = next(self._frames, None)
            if raw is None:
                raise ValueError(f"{self.path}: ends at frame {self.position}; the dataset needs frames "
                                 f"{first}..{first + n - 1}")
            if self.position >= first:
                out[self.position - first] = np.frombuffer(raw, np.uint8).reshape(self.height, self.width, 3)
            self.position += 1
        return out

    def close(self) -> None:
        self._frames.close()


def read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; a LeRobot dataset folder holds meta/info.json, data/ and videos/")
    info = json.loads(path.read_text())
    for key in ("codebase_version", "fps", "features", "data_path"):
        if key not in info:
            raise ValueError(f"{path}: no {key!r}")
    return info


def jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def episodes_v2(root: Path, info: dict) -> list[Episode]:
    """v2.0 / v2.1: one parquet and one mp4 per camera per episode, chunks of ``chunks_size``."""
    size = int(info.get("chunks_size", 1000))
    videos = [name for name, f in info["features"].items() if f["dtype"] == "video"]
    episodes = []
    for row in sorted(jsonl(root / "meta" / "episodes.jsonl"), key=lambda r: r["episode_index"]):
        index = int(row["episode_index"])
        chunk = index // size
        data = root / info["data_path"].format(episode_chunk=chunk, episode_index=index)
        paths = {v: (root / info["video_path"].format(episode_chunk=chunk, video_key=v, episode_index=index), 0.0)
                 for v in videos}
        tasks = row.get("tasks") or [""]
        episodes.append(Episode(index, int(row["length"]), str(tasks[0]), data, paths))
    return episodes


def episodes_v3(root: Path, info: dict) -> list[Episode]:
    """v3.0: episodes share parquet and mp4 files; meta/episodes/*.parquet says where each is."""
    import pyarrow.parquet as pq

    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root / 'meta' / 'episodes'}: no episode metadata parquet files")
    videos = [name for name, f in info["features"].items() if f["dtype"] == "video"]
    episodes = []
    for path in files:
        table = pq.read_table(path).to_pylist()
        for row in table:
            def where(prefix: str, template: str, **names) -> Path:
                return root / template.format(chunk_index=int(row[f"{prefix}/chunk_index"]),
                                              file_index=int(row[f"{prefix}/file_index"]), **names)
            try:
                data = where("data", info["data_path"])
                paths = {v: (where(f"videos/{v}", info["video_path"], video_key=v),
                             float(row[f"videos/{v}/from_timestamp"])) for v in videos}
            except KeyError as exc:
                raise ValueError(f"{path}: episode {row.get('episode_index')} has no column {exc}") from None
            tasks = row.get("tasks") or [""]
            episodes.append(Episode(int(row["episode_index"]), int(row["length"]), str(tasks[0]), data, paths))
    return sorted(episodes, key=lambda e: e.index)


class ParquetFiles:
    """The parquet file being converted, read once: a v3 file holds many consecutive episodes."""

    def __init__(self):
        self.path, self.table = None, None

    def rows(self, episode: Episode):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if episode.data_file != self.path:
            if not episode.data_file.exists():
                raise FileNotFoundError(f"{episode.data_file}: parquet file of episode {episode.index} is missing")
            self.path, self.table = episode.data_file, pq.read_table(episode.data_file)
        return self.table.filter(pc.equal(self.table.column("episode_index"), episode.index))


def read_rows(episode: Episode, features: dict, files: ParquetFiles) -> dict[str, np.ndarray]:
    """The episode's parquet rows as store arrays (T, ...): numeric and image features."""
    import io

    from PIL import Image

    table = files.rows(episode)
    if table.num_rows != episode.length:
        raise ValueError(f"{episode.data_file}: episode {episode.index} has {table.num_rows} rows, "
                         f"its metadata says {episode.length}")
    order = np.argsort(np.asarray(table.column("frame_index")), kind="stable")
    out = {}
    for name, feature in features.items():
        dtype = feature["dtype"]
        if name in BOOKKEEPING or name.startswith("next.") or dtype in ("video", "string", "bool"):
            continue
        if name not in table.column_names:
            raise ValueError(f"{episode.data_file}: no column {name!r} (listed in meta/info.json features)")
        column = table.column(name).to_pylist()
        if dtype == "image":
            frames = [np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")) for cell in column]
            out[store_key(name, dtype)] = np.stack(frames)[order]
        else:
            out[store_key(name, dtype)] = np.asarray(column, dtype=np.float64).reshape(len(column), -1)[order]
    return out


def convert_lerobot(src: str | Path, out: str | Path, task: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Every episode of the LeRobot dataset folder ``src`` into ``out``; returns counts."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("convert lerobot needs pyarrow: pip install 'ditpolicy[lerobot]'") from None
    root = Path(src)
    info = read_info(root)
    version = str(info["codebase_version"])
    if version.startswith("v2"):
        episodes = episodes_v2(root, info)
    elif version.startswith("v3"):
        episodes = episodes_v3(root, info)
    else:
        raise ValueError(f"{root / 'meta' / 'info.json'}: codebase_version {version!r}; reads v2.0, v2.1 and v3.0")
    fps = float(info["fps"])
    name = task or f"lerobot/{root.resolve().name}"
    counts = {"version": version, "episodes": 0, "skipped": 0, "frames": 0}
    streams: dict[str, VideoStream] = {}          # camera -> its open file
    files = ParquetFiles()
    with EpisodeWriter(out, overwrite=overwrite) as writer:
        done = episodes_of_task(writer, name)
        if done > len(episodes):
            raise ValueError(f"{out}: holds {done} episodes of task {name!r}, {root} only {len(episodes)}")
        counts["skipped"] = done
        bar = progress_bar(total=len(episodes), initial=done, desc="convert lerobot", unit="ep", disable=not progress)
        try:
            for episode in episodes[done:]:
                data = read_rows(episode, info["features"], files)
                for feature, (path, start) in episode.videos.items():
                    first = int(round(start * fps))
                    stream = streams.get(feature)
                    if stream is None or stream.path != path or stream.position > first:
                        if stream is not None:
                            stream.close()
                        stream = streams[feature] = VideoStream(path)
                    data[store_key(feature, "video")] = stream.take(first, episode.length)
                writer.add_episode(data, task=name, instruction=episode.instruction, success=True)
                counts["episodes"] += 1
                counts["frames"] += episode.length
                bar.update(1)
        finally:
            for stream in streams.values():
                stream.close()
        bar.close()
        refresh_stats(writer)
    return counts
