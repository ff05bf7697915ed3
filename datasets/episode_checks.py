"""Checks of an episode before the writer touches the store: a refused episode writes nothing.

An episode is a dict key -> (T, ...) array, all with the same T >= 1:
- images: uint8 (T, H, W, C), stored as they are;
- everything else numeric (bool, int, float), stored as float32: NaN/inf and values beyond
  the float32 range are refused (they would be stored as inf), naming the key and step;
- strings and objects are refused naming the key (text belongs in ``task``/``instruction``
  or segments, which must be ``str``; None is refused, pass "" for none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .checks import ACTION_KEY, first_nonfinite
from .errors import BadEpisodeError

NUMERIC_KINDS = "biuf"


def kind_of(value: np.ndarray) -> str:
    """uint8 arrays with (H, W, C) frames are images; everything else is low-dim float32."""
    return "image" if value.dtype == np.uint8 and value.ndim == 4 else "lowdim"


@dataclass
class CheckedEpisode:
    """An episode ready to write: arrays in their stored dtype, the kind of each new key."""

    data: dict[str, np.ndarray]
    length: int
    has_action: bool
    segments: list[tuple[int, int, str]]
    new_keys: dict[str, str] = field(default_factory=dict)


def check_text(store: str, name: str, value) -> str:
    if not isinstance(value, str):
        raise BadEpisodeError(store, f"{name} must be a string, got {value!r} ({type(value).__name__}); "
                                     f"pass '' for no {name}; episode not written")
    return value


def _stored_value(store: str, key: str, value: np.ndarray, kind: str) -> np.ndarray:
    """``value`` as it will be stored (uint8 images, float32 otherwise), or BadEpisodeError."""
    if kind == "image":
        if value.dtype != np.uint8:
            raise BadEpisodeError(store, f"data/{key} holds images of the store, which are uint8, but the episode "
                                         f"gives {value.dtype}; episode not written")
        return value
    row = first_nonfinite(value)
    if row is not None:
        raise BadEpisodeError(store, f"data/{key} of the new episode holds NaN/inf at step {row}; episode not written")
    with np.errstate(over="ignore", invalid="ignore"):
        out = value.astype(np.float32)
    row = first_nonfinite(out)
    if row is not None:
        values = value.reshape(len(value), -1)[row]
        worst = values[np.argmax(np.abs(values.astype(np.float64)))]
        raise BadEpisodeError(store, f"data/{key} value {float(worst):g} at step {row} is beyond the float32 range "
                                     f"(|x| <= {np.finfo(np.float32).max:.4g}) and would be stored as inf; "
                                     "episode not written")
    return out


def check_episode(
    store: str,
    data: dict[str, np.ndarray],
    kinds: dict[str, str],
    shapes: dict[str, tuple[int, ...]],
    has_action: bool | None,
    segments: Iterable[tuple[int, int, str]] = (),
) -> CheckedEpisode:
    """Check an episode against the store's keys ``kinds`` and per-step ``shapes``."""
    if not isinstance(data, dict) or not data:
        raise BadEpisodeError(store, "episode has no arrays (expected a dict key -> (T, ...) array)")
    for key in data:
        if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
            raise BadEpisodeError(store, f"bad key {key!r}: keys are non-empty strings without '/' or a leading '.'")
    data = {k: np.asarray(v) for k, v in data.items()}
    for key, value in data.items():
        if value.dtype.kind not in NUMERIC_KINDS:
            raise BadEpisodeError(store, f"data/{key} has dtype {value.dtype}, which is not numeric: only numbers "
                                         "and uint8 images are stored (text goes in task/instruction); episode not written")
        if value.ndim == 0:
            raise BadEpisodeError(store, f"data/{key} is a scalar; per-step arrays need a time axis (T, ...)")
    has_action = ACTION_KEY in data if has_action is None else bool(has_action)
    lengths = {k: v.shape[0] for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise BadEpisodeError(store, f"ragged episode: arrays have different lengths {lengths}")
    length = next(iter(lengths.values()))
    if length == 0:
        raise BadEpisodeError(store, "episode has zero steps")
    if kinds:
        if ACTION_KEY not in data and ACTION_KEY in kinds:
            data[ACTION_KEY] = np.zeros((length,) + tuple(shapes[ACTION_KEY]), np.float32)
        missing, extra = set(kinds) - set(data), set(data) - set(kinds)
        if missing or extra:
            raise BadEpisodeError(
                store, f"episode keys differ from the store: missing {sorted(missing)}, unexpected {sorted(extra)}")
    out, new_keys = {}, {}
    for key, value in data.items():
        kind = kinds.get(key) or kind_of(value)
        value = _stored_value(store, key, value, kind)
        if key in kinds and value.shape[1:] != tuple(shapes[key]):
            raise BadEpisodeError(
                store, f"data/{key}: episode frames have shape {value.shape[1:]}, store holds {tuple(shapes[key])}")
        if key not in kinds:
            new_keys[key] = kind
        out[key] = value
    checked_segments = []
    for segment in segments:
        seg_start, seg_end, text = segment
        if not 0 <= int(seg_start) < int(seg_end) <= length:
            raise BadEpisodeError(store, f"segment ({seg_start}, {seg_end}) outside episode of {length} steps")
        checked_segments.append((int(seg_start), int(seg_end), check_text(store, "segment text", text)))
    return CheckedEpisode(out, length, has_action, checked_segments, new_keys)
