"""Full check of a store (``ditpolicy verify``): the commit record, every chunk of every array
(present, checksum, decodable), finite low-dim values, the meta tables. Unlike
``DemoStore.open`` it does not stop at the first problem: it lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checks import (
    absent_chunks, check_episode_ends, check_lengths, checked_arrays, committed_rows, first_nonfinite,
)
from .chunks import chunk_key, chunk_rows, describe_chunk, expected_chunks, has_checksum, read_chunk
from .errors import StoreError
from .lock import current_holder, describe_holder
from .store import DemoStore

MAX_LISTED = 20  # problems listed per array; the rest are counted


@dataclass
class VerifyReport:
    store: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        out = list(self.lines)
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out += [f"  - {p}" for p in self.problems]
        out.append(f"result     {'OK' if self.ok else 'FAILED'}")
        return "\n".join(out)


def _message(exc: StoreError) -> str:
    """The error text without its 'store <path>: ' prefix (the report names the store once)."""
    text = str(exc)
    prefix = f"store {exc.store}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _check_array(store: DemoStore, name: str, presence_checked: bool) -> tuple[list[str], int, bool]:
    """Problems of one array, its chunk count, and whether it carries checksums."""
    arr = store.zarr_array(name)
    n_rows = committed_rows(store, name)
    problems: list[str] = []
    if arr.shape[0] < n_rows:
        return [f"{name} holds {arr.shape[0]} rows but the commit record needs {n_rows}"], 0, has_checksum(arr)
    absent = {tuple(int(c) for c in row) for row in absent_chunks(store, name)} if presence_checked else set()
    for coords in sorted(absent):
        problems.append(f"{describe_chunk(arr, name, coords, n_rows)} is missing")
    wanted = expected_chunks(arr, n_rows)
    episode_ends = store.episode_ends if name.startswith("data/") else None
    for coords in wanted:
        coords = tuple(int(c) for c in coords)
        if coords in absent:
            continue
        try:
            values = read_chunk(store.path, name, arr, coords, n_rows, hint=False)
        except StoreError as exc:
            problems.append(_message(exc))
            continue
        first, last = chunk_rows(arr, coords, n_rows)
        row = first_nonfinite(np.asarray(values)[: last - first + 1])
        if row is not None and episode_ends is not None:
            step = first + row
            episode = int(np.searchsorted(episode_ends, step, side="right"))
            problems.append(f"{name} holds NaN/inf at step {step} (episode {episode}), "
                            f"in chunk {chunk_key(arr, coords)}")
        elif row is not None:
            problems.append(f"{name} holds NaN/inf at row {first + row}")
    if len(problems) > MAX_LISTED:
        problems = problems[:MAX_LISTED] + [f"{name}: {len(problems) - MAX_LISTED} more problems not listed"]
    return problems, len(wanted), has_checksum(arr)


def _check_tables(store: DemoStore) -> list[str]:
    problems = []
    if store.n_episodes:
        ids = store.task_ids
        if ids.min() < 0 or ids.max() >= len(store.tasks):
            problems.append(f"meta/task_id holds ids outside the task table of {len(store.tasks)} names")
        text_ids = store.meta_array("instruction_id")[: store.n_episodes]
        if text_ids.min() < -1 or text_ids.max() >= len(store.texts):
            problems.append(f"meta/instruction_id holds ids outside the text table of {len(store.texts)} texts")
    return problems


def verify_store(path: str) -> VerifyReport:
    """Check everything; ``report.ok`` is False when anything is wrong."""
    report = VerifyReport(str(path))
    try:
        store = DemoStore.open(path, check=False)
    except StoreError as exc:
        report.lines.append(f"store      {path}")
        report.problems.append(_message(exc))
        return report
    checksums = "crc32c on every chunk" if store.version >= 2 else "no chunk checksums (written before v2)"
    report.lines += [
        f"store      {store.path}",
        f"format     v{store.version} ({checksums})",
        f"committed  {store.n_episodes} episodes, {store.n_steps} steps, {store.record.get('n_segments', 0)} segments",
    ]
    try:
        check_lengths(store)
        check_episode_ends(store)
        report.problems += _check_tables(store)
    except StoreError as exc:
        report.problems.append(_message(exc))
    presence = set(checked_arrays(store))
    names = [f"data/{key}" for key in store.key_kinds]
    names += [f"meta/{n}" for n in ("episode_ends", "task_id", "instruction_id", "success", "has_action", "seed",
                                    "segments") if store.has_array(f"meta/{n}")]
    report.lines.append("arrays:")
    tails = []
    for name in names:
        problems, n_chunks, checksum = _check_array(store, name, name in presence)
        report.problems += problems
        arr = store.zarr_array(name)
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        if name not in presence:
            status += " (chunk presence not checkable: v1 skipped all-zero chunks)"
        report.lines.append(f"  {name:<22} {str(arr.shape):<20} {str(arr.dtype):<8} {n_chunks:>7} chunks  "
                            f"{'crc32c' if checksum else 'no-crc':<7} {status}")
        if arr.shape[0] > committed_rows(store, name):
            tails.append(f"{name} +{arr.shape[0] - committed_rows(store, name)}")
    report.lines.append(f"statistics {store.stats_status}")
    if tails:
        report.lines.append(f"uncommitted rows past the commit (a killed or running writer; the next writer "
                            f"cuts them): {', '.join(tails)}")
    holder = current_holder(store.path) if store.local_dir else None
    report.lines.append(f"writer     {describe_holder(holder) if holder is not None else 'none (the store is not locked)'}")
    return report
