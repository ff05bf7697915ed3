"""Errors raised for bad demonstration stores; every message names the store and the key."""

from __future__ import annotations


class StoreError(ValueError):
    """A demonstration store cannot be read or written as asked."""

    def __init__(self, store: str, message: str):
        self.store = str(store)
        super().__init__(f"store {self.store}: {message}")


class MissingKeyError(StoreError, KeyError):
    """A required array or attribute is absent."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class StoreVersionError(StoreError):
    """The store was written by a newer format version than this ditpolicy reads."""


class BadEpisodeError(StoreError):
    """An episode handed to the writer is malformed (shapes, dtypes, NaN/inf, overflow)."""


class StoreLockedError(StoreError):
    """Another writer holds the store's writer lock."""


class CorruptChunkError(StoreError):
    """A chunk of an array fails its checksum or cannot be decoded."""


class MissingChunkError(StoreError):
    """A chunk inside the committed extent of an array is absent from the store."""
