"""Stores on fsspec URLs (s3://, gs://, http(s)://, ...) read through a local chunk cache.

``DemoStore.open("s3://bucket/demos.zarr", cache_dir=...)`` reads the store through zarr's
fsspec store, keeping every chunk it fetches under ``cache_dir`` and reading it from there
afterwards (every process of a node, and later runs). The cache of a store is filed under
the hash of its URL and of its root metadata, which holds the commit record: a store that
grew or was rewritten has another record, so its chunks are fetched anew, never read stale.
Metadata files are always read from the remote. The remote store is never written.
Protocols beyond http need their fsspec package (``s3fs``, ``gcsfs``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from zarr.storage import FsspecStore, WrapperStore

LOCAL_PROTOCOLS = ("file", "memory")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ditpolicy/stores`` (``~/.cache/ditpolicy/stores``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ditpolicy" / "stores"


def is_remote(path: str) -> bool:
    """A URL whose reads leave the machine (not a local path, file:// or memory://)."""
    return "://" in path and path.split("://", 1)[0].split("::")[-1] not in LOCAL_PROTOCOLS


def open_location(path: str, cache_dir: str | Path | None = None):
    """What ``zarr.open_group`` opens for ``path``: the path itself, or for a remote URL a
    read-only zarr store whose chunks are cached in ``cache_dir`` (``ChunkCache``)."""
    if not is_remote(path):
        return path
    import fsspec

    protocol = path.split("://", 1)[0]
    try:
        fs, root = fsspec.url_to_fs(path)
        record = fs.cat_file(f"{root.rstrip('/')}/zarr.json")
    except (ImportError, ValueError) as exc:
        raise ValueError(f"cannot read {protocol}:// URLs ({exc})") from None
    except FileNotFoundError:
        return path                                      # zarr names what is missing
    folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / _digest(path.encode()) / _digest(record)
    return ChunkCache(FsspecStore.from_url(path, read_only=True), folder)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class ChunkCache(WrapperStore):
    """A read-only zarr store that keeps each whole chunk it reads in ``folder``."""

    def __init__(self, store, folder: Path):
        super().__init__(store)
        self.folder = Path(folder)

    async def get(self, key, prototype, byte_range=None):
        if byte_range is not None or key.endswith("zarr.json"):
            return await self._store.get(key, prototype, byte_range)
        local = self.folder / key
        if local.is_file():
            return prototype.buffer.from_bytes(local.read_bytes())
        value = await self._store.get(key, prototype)
        if value is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{local.name}.{os.getpid()}.part")
            partial.write_bytes(value.to_bytes())
            os.replace(partial, local)                     # readers never see half a chunk
        return value
