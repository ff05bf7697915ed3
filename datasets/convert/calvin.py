"""A CALVIN split folder into a store (``convert calvin <split> <store>``).

A split (e.g. ``task_D_D/training``) holds one ``episode_XXXXXXX.npz`` per frame (7-digit
global frame index), ``ep_start_end_ids.npy`` (N, 2) with the first and last frame of each
recorded play sequence, and optionally ``lang_annotations/auto_lang_ann.npy`` (a pickled
dict: ``language.ann`` texts, ``language.task`` ids, ``info.indx`` (start, end) frames, read
as inclusive, as CALVIN's loader does, and cut at the end of their sequence).

Store keys: ``action`` = ``rel_actions`` (7), ``action_abs`` = ``actions`` (7), ``state`` =
``robot_obs`` (15), ``scene_obs`` (24), ``rgb_static`` (200, 200, 3) and ``rgb_gripper``
(84, 84, 3); other frame keys (depth, tactile) with ``extra_keys``. Each annotation becomes a
language segment [start, end + 1) of its episode.

Play sequences run to thousands of frames; to hold a bounded number of frames in memory, a
sequence is cut into store episodes of at most ``max_episode_steps`` frames, at frames that
no annotation window crosses (a cut moves later, never earlier, to the first free frame).
The cuts are a pure function of the split, so a restarted conversion skips the episodes the
store holds under the split's task name and continues with the next cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...progress import progress_bar
from ..stats import refresh_stats
from ..writer import EpisodeWriter
from . import episodes_of_task

FRAME_KEYS = {"rel_actions": "action", "actions": "action_abs", "robot_obs": "state", "scene_obs": "scene_obs",
              "rgb_static": "rgb_static", "rgb_gripper": "rgb_gripper"}
ANNOTATIONS = Path("lang_annotations") / "auto_lang_ann.npy"


def frame_path(split: Path, index: int) -> Path:
    return split / f"episode_{index:07d}.npz"


def read_annotations(split: Path) -> list[tuple[int, int, str, str]]:
    """(first frame, last frame, text, task) of each language annotation; [] without the file."""
    path = split / ANNOTATIONS
    if not path.exists():
        return []
    try:
        raw = np.load(path, allow_pickle=True).item()
        texts, tasks, spans = raw["language"]["ann"], raw["language"]["task"], raw["info"]["indx"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: expected a dict with language.ann, language.task and info.indx ({exc})") from None
    if not (len(texts) == len(tasks) == len(spans)):
        raise ValueError(f"{path}: {len(texts)} texts, {len(tasks)} tasks and {len(spans)} windows differ in number")
    return [(int(s), int(e), str(text), str(task)) for (s, e), text, task in zip(spans, texts, tasks)]


def clamp_to_sequences(annotations: list[tuple], ranges: np.ndarray) -> list[tuple]:
    """Annotations whose window runs past the end of its play sequence end with it (the
    annotator writes ``start + length``, which can be one frame past the recording)."""
    out = []
    for s, e, text, task in annotations:
        inside = [int(last) for first, last in ranges if first <= s <= last]
        out.append((s, min(e, inside[0]) if inside else e, text, task))
    return out


def cuts(start: int, end: int, windows: list[tuple[int, int]], max_steps: int) -> list[tuple[int, int]]:
    """[first, last] frame ranges (inclusive) covering [start, end], each at most ``max_steps``
    long unless an annotation window forces it longer; no window (s, e) is split."""
    covered = np.zeros(end - start + 2, dtype=bool)      # covered[i]: a window spans frames start+i-1 and start+i
    for s, e in windows:
        lo, hi = max(s, start), min(e, end)
        if lo < hi:
            covered[lo - start + 1: hi - start + 1] = True
    pieces, first = [], start
    while first <= end:
        last = min(first + max_steps - 1, end)
        while last < end and covered[last - start + 1]:   # cutting after ``last`` would split a window
            last += 1
        pieces.append((first, last))
        first = last + 1
    return pieces


def read_frames(split: Path, first: int, last: int, keys: dict[str, str], bar) -> dict[str, np.ndarray]:
    """Frames first..last (inclusive) as store arrays (T, ...)."""
    columns: dict[str, list[np.ndarray]] = {store_key: [] for store_key in keys.values()}
    for index in range(first, last + 1):
        path = frame_path(split, index)
        if not path.exists():
            raise FileNotFoundError(f"{path}: frame {index} of the sequence listed in ep_start_end_ids.npy is missing")
        with np.load(path) as frame:
            missing = [k for k in keys if k not in frame.files]
            if missing:
                raise ValueError(f"{path}: no {missing}; it has {sorted(frame.files)}")
            for key, store_key in keys.items():
                columns[store_key].append(frame[key])
        bar.update(1)
    return {k: np.stack(v) for k, v in columns.items()}


def convert_calvin(src: str | Path, out: str | Path, task: str | None = None, max_episode_steps: int = 1000,
                   extra_keys: list[str] = (), overwrite: bool = False, progress: bool = True) -> dict:
    """Every play sequence of the split ``src`` into ``out``; returns counts.

    task: the task name of the split's episodes (default ``calvin/<scene folder>/<split>``)."""
    split = Path(src)
    ids_path = split / "ep_start_end_ids.npy"
    if not ids_path.exists():
        raise FileNotFoundError(f"{ids_path}: missing; a CALVIN split folder holds ep_start_end_ids.npy and "
                                f"episode_XXXXXXX.npz frames")
    ranges = np.load(ids_path)
    if ranges.ndim != 2 or ranges.shape[1] != 2:
        raise ValueError(f"{ids_path}: expected (N, 2) first/last frame ids, got shape {ranges.shape}")
    if int(max_episode_steps) < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    keys = {**FRAME_KEYS, **{k: k for k in extra_keys}}
    annotations = clamp_to_sequences(read_annotations(split), ranges)
    windows = [(s, e) for s, e, _, _ in annotations]
    pieces = [p for start, end in sorted((int(a), int(b)) for a, b in ranges)
              for p in cuts(start, end, windows, int(max_episode_steps))]
    name = task or f"calvin/{split.resolve().parent.name}/{split.name}"
    counts = {"sequences": len(ranges), "episodes": 0, "skipped": 0, "frames": 0, "segments": 0,
              "annotations": len(annotations)}
    with EpisodeWriter(out, overwrite=overwrite) as writer:
        done = episodes_of_task(writer, name)
        if done > len(pieces):
            raise ValueError(f"{out}: holds {done} episodes of task {name!r}, the split cuts into {len(pieces)}")
        counts["skipped"] = done
        total = sum(last - first + 1 for first, last in pieces)
        bar = progress_bar(total=total, initial=sum(last - first + 1 for first, last in pieces[:done]),
                           desc="convert calvin", unit="frame", disable=not progress)
        for first, last in pieces[done:]:
            episode = read_frames(split, first, last, keys, bar)
            segments = [(s - first, e - first + 1, text) for s, e, text, _ in annotations if first <= s and e <= last]
            writer.add_episode(episode, task=name, success=True, segments=segments)
            counts["episodes"] += 1
            counts["frames"] += last - first + 1
            counts["segments"] += len(segments)
        bar.close()
        refresh_stats(writer)
    return counts
