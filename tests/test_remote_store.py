"""Stores on URLs: read over HTTP from a server on loopback, chunks cached locally, a store
that grew on the server read anew, and a training run from the URL."""

import functools
import http.server
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import TINY_POLICY, write_reaching_store

from ditpolicy.datasets import DemoStore, EpisodeWriter


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        self.requests.append(self.path)


@pytest.fixture
def served(tmp_path):
    """(directory served, base URL, list of requested paths)."""
    root = tmp_path / "srv"
    root.mkdir()
    CountingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", CountingHandler.requests
    server.shutdown()
    server.server_close()


def chunk_requests(requests: list[str]) -> list[str]:
    return [r for r in requests if r.rsplit("/", 1)[-1].startswith("c.") or "/c/" in r]


def test_a_store_over_http_reads_as_the_local_copy_and_caches_its_chunks(served, tmp_path):
    root, base, requests = served
    write_reaching_store(root / "demos.zarr", episodes=4, length=20, image=True)
    local = DemoStore.open(root / "demos.zarr")
    remote = DemoStore.open(f"{base}/demos.zarr", cache_dir=tmp_path / "cache")
    assert remote.n_episodes == local.n_episodes == 4
    for key in ("state", "action"):
        assert np.array_equal(remote.read(key), local.read(key))
    assert np.array_equal(remote.array("rgb_cam")[:], local.array("rgb_cam")[:])
    fetched = chunk_requests(requests)
    assert fetched                                               # chunks came over HTTP ...
    assert list((tmp_path / "cache").rglob("c*"))                # ... and were kept
    requests.clear()
    again = DemoStore.open(f"{base}/demos.zarr", cache_dir=tmp_path / "cache")
    assert np.array_equal(again.array("rgb_cam")[:], local.array("rgb_cam")[:])
    assert chunk_requests(requests) == []                        # the second read is local


def test_a_store_that_grew_on_the_server_is_not_read_stale(served, tmp_path):
    root, base, _ = served
    write_reaching_store(root / "demos.zarr", episodes=3, length=20)
    first = DemoStore.open(f"{base}/demos.zarr", cache_dir=tmp_path / "cache")
    first.read("state")
    with EpisodeWriter(root / "demos.zarr") as writer:             # the last partial chunk is rewritten
        rng = np.random.default_rng(5)
        writer.add_episode({"state": rng.normal(size=(20, 4)).astype(np.float32),
                            "action": rng.uniform(-1, 1, (20, 2)).astype(np.float32)}, task="task0")
    grown = DemoStore.open(f"{base}/demos.zarr", cache_dir=tmp_path / "cache")
    assert grown.n_episodes == 4
    assert np.array_equal(grown.read("state"), DemoStore.open(root / "demos.zarr").read("state"))


def test_a_missing_remote_store_names_the_url(served, tmp_path):
    _, base, _ = served
    with pytest.raises(Exception, match=f"store {base}/absent.zarr"):
        DemoStore.open(f"{base}/absent.zarr", cache_dir=tmp_path / "cache")


def test_training_reads_its_store_from_a_url_in_loader_workers(served, tmp_path):
    root, base, _ = served
    write_reaching_store(root / "demos.zarr", episodes=4, length=20, image=True)
    out = subprocess.run([sys.executable, "-m", "ditpolicy", "train", f"dataset.path={base}/demos.zarr",
                          f"dataset.cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}", *TINY_POLICY,
                          "dataset.obs_keys=[state,rgb_cam]", "dataset.loader.workers=1", "train.steps=3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step_0000003" / "model.safetensors").exists()
    assert list((tmp_path / "cache").rglob("c*"))
