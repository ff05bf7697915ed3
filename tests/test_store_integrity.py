"""Damaged chunks on disk: deleted or with flipped bytes, in low-dim, image and meta arrays.
Opening, reading, sampling and ``ditpolicy verify`` name the store, the array and the chunk."""

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from helpers import make_episode

from ditpolicy.datasets import (
    CorruptChunkError, DemoStore, EpisodeWriter, MissingChunkError, SequenceSampler, compute_stats,
)
from ditpolicy.datasets.verify import verify_store

LENGTHS = (5, 9, 3)


def write_store(path, format_version=2):
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, n) for n in LENGTHS]
    with EpisodeWriter(path, format_version=format_version) as writer:
        for i, episode in enumerate(episodes):
            writer.add_episode(episode, task=f"task{i % 2}", seed=i)
    return episodes


def flip_bytes(file, offset=None):
    data = bytearray(open(file, "rb").read())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x5A
    open(file, "wb").write(bytes(data))


def verify_cli(path):
    return subprocess.run([sys.executable, "-m", "ditpolicy", "verify", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_new_arrays_carry_checksums_and_verify_passes(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    codecs = [c["name"] for c in zarr.open_group(str(path), mode="r")["data/rgb"].metadata.to_dict()["codecs"]]
    assert codecs == ["ditpolicy.image", "crc32c"]
    codecs = [c["name"] for c in zarr.open_group(str(path), mode="r")["data/action"].metadata.to_dict()["codecs"]]
    assert codecs == ["bytes", "zstd", "crc32c"]
    report = verify_store(str(path))
    assert report.ok, report.text()
    assert "format     v2 (crc32c on every chunk)" in report.text()


def test_corrupt_action_chunk_is_named_at_open_and_by_verify(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    flip_bytes(path / "data" / "action" / "c.0.0")
    with pytest.raises(CorruptChunkError, match=rf"store {path}: data/action chunk c.0.0 \(steps 0..16\) is corrupt: "
                                                "checksum mismatch"):
        DemoStore.open(path)
    out = verify_cli(path)
    assert out.returncode == 1
    assert "data/action chunk c.0.0 (steps 0..16) is corrupt: checksum mismatch" in out.stdout
    assert f"ditpolicy verify: 1 problem(s) in store {path}" in out.stderr
    assert "result     FAILED" in out.stdout


def test_deleted_action_chunk_is_named_at_open_and_by_verify(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    os.remove(path / "data" / "action" / "c.0.0")
    with pytest.raises(MissingChunkError, match=rf"store {path}: data/action chunk c.0.0 \(steps 0..16\) is missing"):
        DemoStore.open(path)
    report = verify_store(str(path))
    assert not report.ok and report.problems == ["data/action chunk c.0.0 (steps 0..16) is missing"]


def test_corrupt_image_chunk_is_named_by_every_read(tmp_path):
    path = tmp_path / "s.zarr"
    episodes = write_store(path)
    flip_bytes(path / "data" / "rgb" / "c.6.0.0.0")
    store = DemoStore.open(path)  # images are not decoded at open
    np.testing.assert_array_equal(store.episode(0)["rgb"], episodes[0]["rgb"])
    message = rf"store {path}: data/rgb chunk c.6.0.0.0 \(steps 6\) is corrupt: checksum mismatch"
    with pytest.raises(CorruptChunkError, match=message):
        store.episode(1)
    with pytest.raises(CorruptChunkError, match=message):
        SequenceSampler(store, ["state", "rgb"], n_obs=2, horizon=4)  # caches every frame
    lazy = SequenceSampler(store, ["state", "rgb"], n_obs=2, horizon=4, image_cache_bytes=0)
    with pytest.raises(CorruptChunkError, match=message):
        lazy.sample_batch(np.arange(len(lazy)))
    with pytest.raises(CorruptChunkError, match=message):
        compute_stats(store)
    report = verify_store(str(path))
    assert report.problems == ["data/rgb chunk c.6.0.0.0 (steps 6) is corrupt: checksum mismatch "
                               "(the bytes on disk changed after they were written)"]


def test_deleted_image_chunk_is_named_at_open(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    os.remove(path / "data" / "rgb" / "c.6.0.0.0")
    os.remove(path / "data" / "rgb" / "c.7.0.0.0")
    with pytest.raises(MissingChunkError, match=rf"store {path}: data/rgb chunk c.6.0.0.0 \(steps 6\) is missing "
                                                r"from the store \(2 chunks missing in all\)"):
        DemoStore.open(path)
    out = verify_cli(path)
    assert out.returncode == 1 and "data/rgb chunk c.7.0.0.0 (steps 7) is missing" in out.stdout


def test_damaged_meta_chunk_is_named(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    flip_bytes(path / "meta" / "episode_ends" / "c.0", offset=-1)
    with pytest.raises(CorruptChunkError, match=r"meta/episode_ends chunk c.0 \(rows 0..2\) is corrupt"):
        DemoStore.open(path)


def test_v1_store_without_checksums_still_opens_and_is_checked(tmp_path):
    path = tmp_path / "v1.zarr"
    episodes = write_store(path, format_version=1)
    raw = zarr.open_group(str(path), mode="r")
    assert raw.attrs["ditpolicy"]["version"] == 1
    assert [c["name"] for c in raw["data/action"].metadata.to_dict()["codecs"]] == ["bytes", "zstd"]
    store = DemoStore.open(path)
    np.testing.assert_array_equal(store.episode(2)["rgb"], episodes[2]["rgb"])
    report = verify_store(str(path))
    assert report.ok and "no chunk checksums" in report.text()
    # a truncated zstd chunk cannot be decoded: named, not a codec traceback
    chunk = path / "data" / "state" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(CorruptChunkError, match=r"data/state chunk c/0/0 \(steps 0..16\) is corrupt: cannot be decoded"):
        DemoStore.open(path)
    os.remove(chunk)
    with pytest.raises(MissingChunkError, match=r"data/state chunk c/0/0 \(steps 0..16\) is missing"):
        DemoStore.open(path)


def test_v1_action_free_chunks_that_zarr_skipped_are_not_damage(tmp_path):
    path = tmp_path / "video.zarr"
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, format_version=1) as writer:
        writer.add_episode(make_episode(rng, 4), task="t")
    # a v1 writer let zarr skip all-zero chunks: an action-free store had no action chunk at all
    os.remove(path / "data" / "action" / "c" / "0" / "0")
    with pytest.raises(MissingChunkError, match="data/action chunk c/0/0"):
        DemoStore.open(path)
    root = zarr.open_group(str(path), mode="r+")
    root["meta/has_action"][0] = False
    assert DemoStore.open(path).has_action.tolist() == [False]


def test_chunk_listing_through_the_zarr_store_api_matches_the_local_listing(tmp_path):
    from ditpolicy.datasets.chunks import missing_chunks, present_chunks

    path = tmp_path / "s.zarr"
    write_store(path)
    os.remove(path / "data" / "rgb" / "c.3.0.0.0")
    root = zarr.open_group(str(path), mode="r")
    local = present_chunks(root, "data/rgb", str(path))
    generic = present_chunks(root, "data/rgb", None)
    assert sorted(map(tuple, local)) == sorted(map(tuple, generic)) and len(local) == sum(LENGTHS) - 1
    assert missing_chunks(root, "data/rgb", sum(LENGTHS), None).tolist() == [[3, 0, 0, 0]]
