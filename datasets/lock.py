"""The writer lock of a local demonstration store: one writer at a time.

The lock is ``fcntl.flock(LOCK_EX)`` on ``<store>/writer.lock``. The kernel releases a flock
when its holder exits for any reason (SIGKILL included), so a lock left by a killed writer is
simply free for the next one; nothing has to guess whether a pid is still alive. While a
writer holds the lock, the file holds its identity as JSON ``{"pid", "host", "since",
"command"}`` so that a refused writer can name it. A clean release empties the file; a
writer that finds it non-empty took over from a writer that died holding the lock
(``StoreLock.took_over_from``).

flock works between processes of one machine on local file systems (and on NFS v4, which
maps it onto byte-range locks). Two ``StoreLock`` objects in one process also exclude each
other, since each opens the file anew.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import StoreError, StoreLockedError

LOCK_FILE = "writer.lock"
POLL_SECONDS = 0.05
UNNAMED_GRACE_SECONDS = 1.0  # a new holder writes its identity right after taking the lock
MIN_TRY_SECONDS = 0.25  # even wait=0 retries this long: a reader's probe holds the lock for microseconds


def _read_holder(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        holder = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict | None) -> str:
    """'pid 12 on host h since 2025-01-01T10:00:00Z (ditpolicy collect ...)' or 'unknown holder'."""
    if not holder:
        return "an unnamed writer (it has not written its identity yet)"
    text = f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


class StoreLock:
    """Exclusive writer lock of the store at ``store_path`` (a local directory).

    >>> lock = StoreLock("demos.zarr").acquire(wait=10.0)   # waits up to 10 s
    >>> lock.release()
    """

    def __init__(self, store_path: str | Path):
        self.store = str(store_path)
        if "://" in self.store:
            raise StoreError(self.store, "writing needs a local store (the writer lock is a local file); "
                                         "write locally and copy the finished store")
        self.file = Path(self.store) / LOCK_FILE
        self._fd: int | None = None
        self.took_over_from: dict | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0) -> "StoreLock":
        """Take the lock; wait up to ``wait`` seconds (``math.inf``: no limit) for a holder to go.

        Raises StoreLockedError naming the holder when it is still held.
        """
        if self._fd is not None:
            return self
        if wait < 0:
            raise ValueError(f"wait must be >= 0 seconds, got {wait}")
        if Path(self.store).exists() and not Path(self.store).is_dir():
            raise StoreError(self.store, "is a file, not a store directory")
        try:
            Path(self.store).mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(self.store, f"cannot open the writer lock {self.file} ({exc.strerror}); "
                                         "writing needs a writable local directory") from exc
        started = time.monotonic()
        unnamed_since = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            now = time.monotonic()
            holder = _read_holder(self.file)
            if holder is None:  # taken this instant, or probed by a reader: give it a moment
                unnamed_since = unnamed_since or now
            else:
                unnamed_since = None
            in_grace = unnamed_since is not None and now - unnamed_since < UNNAMED_GRACE_SECONDS
            if now - started >= max(wait, MIN_TRY_SECONDS) and not in_grace:
                os.close(fd)
                waited = f" after waiting {wait:g} s" if wait else ""
                raise StoreLockedError(
                    self.store,
                    f"another writer holds the store{waited}: {describe_holder(holder)}; lock file {self.file}. "
                    "Wait for it to finish (EpisodeWriter(..., wait=<seconds>)), or stop it; a killed "
                    "writer's lock is released by the kernel",
                )
            time.sleep(POLL_SECONDS)
        previous = os.pread(fd, 1 << 16, 0)
        if previous.strip():
            try:
                self.took_over_from = json.loads(previous)
            except json.JSONDecodeError:
                self.took_over_from = {"raw": previous.decode(errors="replace")}
        me = {
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])[:200] if sys.argv and sys.argv[0] else "",
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the holder record and drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:  # the store directory may have been removed under us
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def current_holder(store_path: str | Path) -> dict | None:
    """The identity of the writer holding a local store now, or None when it is free.

    Probes with a shared, non-blocking flock that is dropped at once; a writer starting in that
    instant waits briefly for it (see UNNAMED_GRACE_SECONDS) instead of being refused.
    """
    file = Path(store_path) / LOCK_FILE
    if "://" in str(store_path) or not file.exists():
        return None
    fd = os.open(file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(file) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
