"""Training windows over a demonstration store.

A window is anchored at a *current* step t of an episode. It holds the observation history
steps t-n_obs+1 .. t and the action chunk t .. t+H-1. Steps before the episode start repeat
the first frame, steps after its end repeat the last one; both are flagged in pad masks.
Every step of an episode is a current step once, unless ``pad_after`` limits how many action
steps may run past the end.

The window table is built by a numba kernel; gathering a batch is one fancy-index per key,
so low-dim sampling runs at hundreds of thousands of windows a second.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .store import ACTION_KEY, DemoStore

DEFAULT_IMAGE_CACHE_BYTES = 4 << 30


@njit(cache=True)
def _last_current_step(start: int, end: int, horizon: int, pad_after: int) -> int:
    """The last current step of episode [start, end) whose chunk pads at most pad_after steps."""
    return min(end - 1, end - horizon + pad_after)


@njit(cache=True)
def build_windows(episode_ends: np.ndarray, episode_mask: np.ndarray, horizon: int, pad_after: int) -> np.ndarray:
    """(W, 3) int64 rows of (episode start, episode end, current step), global step indices.

    episode_ends: (E,) exclusive ends; episode_mask: (E,) bool, episodes to draw from.
    A current step t is kept when t + horizon - 1 <= end - 1 + pad_after.
    """
    starts = np.zeros_like(episode_ends)
    starts[1:] = episode_ends[:-1]
    count = 0
    for e in range(episode_ends.shape[0]):
        if episode_mask[e]:
            count += max(_last_current_step(starts[e], episode_ends[e], horizon, pad_after) - starts[e] + 1, 0)
    out = np.empty((count, 3), dtype=np.int64)
    row = 0
    for e in range(episode_ends.shape[0]):
        if not episode_mask[e]:
            continue
        for t in range(starts[e], _last_current_step(starts[e], episode_ends[e], horizon, pad_after) + 1):
            out[row, 0] = starts[e]
            out[row, 1] = episode_ends[e]
            out[row, 2] = t
            row += 1
    return out


def split_episodes(n_episodes: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_mask, val_mask), disjoint by episode; at least one training episode."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = min(int(round(n_episodes * val_fraction)), max(n_episodes - 1, 0))
    if val_fraction > 0 and n_episodes > 1:
        n_val = max(n_val, 1)
    order = np.random.default_rng(seed).permutation(n_episodes)
    val = np.zeros(n_episodes, bool)
    val[order[:n_val]] = True
    return ~val, val


class SequenceSampler:
    """Windows of ``n_obs`` observations and ``horizon`` actions from a store.

    Batches are dicts of numpy arrays: each obs key (B, n_obs, ...), ``action`` (B, H, A),
    ``obs_is_pad`` (B, n_obs) bool, ``action_is_pad`` (B, H) bool, ``task_id`` (B,) int64.

    ``future_keys`` add ``future_<key>`` (B, F, ...): the frames ``future_offsets`` (F,) steps
    after the current one (the last frame repeated past the episode's end). ``action_free``
    also draws windows from action-free episodes (their actions are the store's zeros) and
    adds ``has_action`` (B,) bool; ``action_free_share`` caps the share of rows ``draw`` takes
    from them (``None``: their share of the windows), so that plentiful video does not crowd the
    labelled windows out of the batch.
    """

    def __init__(
        self,
        store: DemoStore,
        obs_keys: list[str],
        n_obs: int = 2,
        horizon: int = 16,
        pad_after: int | None = None,
        episode_mask: np.ndarray | None = None,
        action_key: str = ACTION_KEY,
        image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
        future_keys: list[str] = (),
        future_offsets: list[int] = (),
        action_free: bool = False,
        action_free_share: float | None = None,
    ):
        if n_obs < 1 or horizon < 1:
            raise ValueError(f"n_obs and horizon must be >= 1, got n_obs={n_obs}, horizon={horizon}")
        if future_keys and not len(future_offsets):
            raise ValueError(f"future_keys {list(future_keys)} need future_offsets (steps after the current one)")
        for key in list(obs_keys) + list(future_keys) + [action_key]:
            store.array(key)  # raises a MissingKeyError naming the store and key
        self.store = store
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self.n_obs = n_obs
        self.horizon = horizon
        self.pad_after = horizon - 1 if pad_after is None else pad_after
        mask = np.ones(store.n_episodes, bool) if episode_mask is None else np.asarray(episode_mask, bool)
        self.future_keys = list(future_keys)
        self.action_free = bool(action_free)
        if not self.action_free:
            mask = mask & store.has_action
        self.windows = build_windows(store.episode_ends, mask, horizon, self.pad_after)
        self.arrays: dict[str, np.ndarray | object] = {}
        for key in set(self.obs_keys) | set(self.future_keys) | {action_key}:
            arr = store.array(key)
            nbytes = store.n_steps * int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
            lowdim = key not in store.image_keys
            self.arrays[key] = store.read(key) if (lowdim or nbytes <= image_cache_bytes) else arr
        step_episode = np.repeat(np.arange(store.n_episodes), store.episode_lengths)
        self.step_task = store.task_ids[step_episode] if store.n_episodes else np.zeros(0, np.int64)
        self.step_has_action = store.has_action[step_episode] if store.n_episodes else np.zeros(0, bool)
        self._groups = self._draw_groups(action_free_share)
        self._future_offsets = np.asarray(list(future_offsets), dtype=np.int64)
        self._obs_offsets = np.arange(-n_obs + 1, 1, dtype=np.int64)
        self._act_offsets = np.arange(horizon, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def _draw_groups(self, share: float | None) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(labelled rows, action-free rows, share of draws from the latter) when ``share`` caps
        the action-free windows' share below what they hold; None when draws are uniform."""
        if share is not None and not 0.0 <= float(share) < 1.0:
            raise ValueError(f"action_free_share must be in [0, 1) (the most of each batch taken from action-free "
                             f"episodes), got {share}")
        if share is None or not self.action_free:
            return None
        free = ~self.step_has_action[self.windows[:, 2]]
        labelled_rows, free_rows = np.flatnonzero(~free), np.flatnonzero(free)
        if not len(labelled_rows) or not len(free_rows) or len(free_rows) <= float(share) * len(self.windows):
            return None
        return labelled_rows, free_rows, float(share)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) window rows drawn with ``rng``: uniform over the windows, or, with
        ``action_free_share`` s in force, each row from the action-free windows with probability s
        and uniform within its group."""
        if self._groups is None:
            return rng.integers(0, len(self.windows), n)
        labelled_rows, free_rows, share = self._groups
        from_free = rng.random(n) < share
        rows = labelled_rows[rng.integers(0, len(labelled_rows), n)]
        rows[from_free] = free_rows[rng.integers(0, len(free_rows), n)][from_free]
        return rows

    def indices(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Step indices and pad masks of windows ``rows``: obs (B, n_obs), action (B, H)."""
        w = self.windows[rows]
        start, end, cur = w[:, 0:1], w[:, 1:2], w[:, 2:3]
        obs = cur + self._obs_offsets
        act = cur + self._act_offsets
        return {
            "obs": np.maximum(obs, start), "obs_is_pad": obs < start,
            "action": np.minimum(act, end - 1), "action_is_pad": act >= end,
            "current": cur[:, 0],
        }

    def sample_batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        idx = self.indices(rows)
        batch = {}
        for key in self.obs_keys:
            batch[key] = self._gather(key, idx["obs"])
        batch[self.action_key] = self._gather(self.action_key, idx["action"])
        batch["obs_is_pad"] = idx["obs_is_pad"]
        batch["action_is_pad"] = idx["action_is_pad"]
        batch["task_id"] = self.step_task[idx["current"]]
        if self.future_keys:
            end = self.windows[rows, 1:2]
            future = np.minimum(idx["current"][:, None] + self._future_offsets, end - 1)   # (B, F)
            for key in self.future_keys:
                batch[f"future_{key}"] = self._gather(key, future)
        if self.action_free:
            batch["has_action"] = self.step_has_action[idx["current"]]
        return batch

    def __getitem__(self, row: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.sample_batch(np.array([row])).items()}

    def _gather(self, key: str, steps: np.ndarray) -> np.ndarray:
        arr = self.arrays[key]
        if isinstance(arr, np.ndarray):
            return arr[steps]
        flat, inverse = np.unique(steps.ravel(), return_inverse=True)
        frames = arr.get_orthogonal_selection((flat,))
        return frames[inverse].reshape(steps.shape + frames.shape[1:])
