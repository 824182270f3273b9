"""Faults of remote roots beyond s3:// (issue 23): retries visible in the loader's stats (SeaweedFS behind the
test proxy, 2 decode workers), a file missing from an https:// server, a Hub that keeps rate-limiting past the
retry budget, a server that ignores `Range`, the Hub's signed CDN URLs expiring mid-run. Servers: `tests/remote_server.py` (SeaweedFS, the proxy) and
`tests/remote_http_server.py` (a static server with Range, a Hub stand-in). Each asserts the values, the
counters, or the exception type, what its message names and a time bound; `no_leaks` checks processes, shared
memory and fds."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from fastmix.errors import MissingFileError
from fastmix.sources import remote, remote_file
from fastmix.sources.lerobot_source import LeRobotSource
from fastmix.sources.remote import RemoteError
from tests.remote_http_server import HubServer, StaticServer, _Handler
from tests.remote_server import KEY, SECRET, isolated_remote, proxy_for, read_frames, serve

s3_server = pytest.fixture(scope="module", name="s3_server")(serve)


@pytest.fixture
def remote_env(tmp_path, monkeypatch):
    """A private fastmix cache and byte cache, short retry bounds; this process's remote state dropped after."""
    yield from isolated_remote(tmp_path, monkeypatch, retry_budget_s=5)


def test_retries_in_workers_show_in_the_loader_stats(no_leaks, s3_server, video_ds, remote_env, monkeypatch):
    """6 answers HTTP 503 while 2 spawned workers read (no byte cache): `MixtureLoader.stats()` sums the main
    process's and the workers' counters: retry_http_503 = 6, and its requests are exactly those the proxy saw
    since the loader was made; the batches are those of the local loader."""
    from fastmix import MixtureLoader

    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", "off")
    url = s3_server.upload(video_ds, "stats/video_ds")

    def run(src) -> tuple[list, dict]:
        loader = MixtureLoader([src], batch_size=8, action_horizon=4, num_workers=2, seed=3, num_batches=6)
        try:
            out = [b["image"].numpy().copy() for b in loader]
        finally:
            loader.close()
        return out, loader.stats()

    with proxy_for(s3_server) as proxy:
        src = LeRobotSource(root=url, storage_options={"key": KEY, "secret": SECRET, "endpoint_url": proxy.endpoint})
        before = proxy.requests
        proxy.fail(6, 503)
        got, stats = run(src)
        seen = proxy.requests - before
    want, local_stats = run(LeRobotSource(root=video_ds))
    assert len(got) == len(want) == 6 and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert stats["retry_http_503"] == 6 and stats["retries"] == 6 and "failures" not in stats
    assert stats["requests"] == seen and stats["range_gets"] > 0
    assert local_stats == {}


def test_a_file_missing_from_an_https_server(no_leaks, dataset_dir, video_ds, remote_env, tmp_path):
    """An https://… root (plain http here) whose server lacks one mp4 (its HEAD is a 404): MissingFileError at
    open naming the root URL, the file and the affected episodes; with require_videos=False, at read: the URL, HTTP 404,
    dataset and episode."""
    root = tmp_path / "served"
    shutil.copytree(video_ds, root / "video_ds")
    rel = LeRobotSource(root=video_ds).meta.episodes.video_file["wrist_image"][0]
    (root / "video_ds" / rel).unlink()
    server = StaticServer(root)
    try:
        url = f"{server.url}/video_ds"
        with pytest.raises(MissingFileError) as info:
            LeRobotSource(root=url)
        msg = str(info.value)
        assert f"dataset 'video_ds' at {url}" in msg and "1 video file(s) are missing" in msg
        assert rel.rsplit("/", 2)[-1] in msg and "episode(s) [*range(0, 8)]" in msg  # (long paths are elided)
        src = LeRobotSource(root=url, require_videos=False)
        with pytest.raises(MissingFileError) as info:
            read_frames(src, np.array([45], dtype=np.int64))
        src.close()
        msg = str(info.value)
        assert f"{url}/{rel}" in msg and "HTTP 404" in msg and "dataset 'video_ds', episode 1" in msg
    finally:
        server.close()
        remote.close_clients()


def test_a_hub_rate_limiting_past_the_budget(no_leaks, video_ds, remote_env, monkeypatch):
    """Every answer HTTP 429 with Retry-After: 1 and a 2.5 s budget: RemoteError within 5 s naming the URL, the
    dataset, HTTP 429, the Retry-After and the bounds; the waits were the server's (at least 2 s)."""
    monkeypatch.setenv("FASTMIX_REMOTE_RETRY_BUDGET_S", "2.5")
    hub = HubServer()
    try:
        hub.push("fastmix-test/video_ds", video_ds)
        hub.fail(1000, 429, retry_after=1.0)
        start = time.monotonic()
        with pytest.raises(RemoteError) as info:
            LeRobotSource(root="hf://datasets/fastmix-test/video_ds", storage_options={"endpoint": hub.url})
        elapsed = time.monotonic() - start
    finally:
        hub.close()
        remote.close_clients()
    assert 2.0 <= elapsed < 5
    msg = str(info.value)
    assert "dataset 'video_ds'" in msg and "hf://datasets/fastmix-test/video_ds" in msg and "HTTP 429" in msg
    assert "Retry-After: 1 s" in msg and "FASTMIX_REMOTE_RETRY_BUDGET_S=2.5" in msg


def test_a_server_that_ignores_range(no_leaks, dataset_dir, video_ds, remote_env):
    """A server that answers every ranged GET with the whole file (200): the frames are still exact (the range
    is cut from the body)."""
    server = StaticServer(dataset_dir)
    original = _Handler.send_file

    def whole(self, path, method, etag, headers=None):
        if "Range" in self.headers:
            del self.headers["Range"]
        return original(self, path, method, etag, headers)

    try:
        _Handler.send_file = whole
        src = LeRobotSource(root=f"{server.url}/video_ds")
        rows = np.array([0, 77, 151, 239], dtype=np.int64)
        local = LeRobotSource(root=video_ds)
        got, want = read_frames(src, rows), read_frames(local, rows)
        src.close()
        local.close()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    finally:
        _Handler.send_file = original
        server.close()
        remote.close_clients()


def test_an_expired_cdn_url_is_resolved_again(no_leaks, video_ds, remote_env, monkeypatch):
    """The Hub's CDN URLs (remembered for 5 minutes) expire mid-run (the CDN answers 403): the resolve is asked
    again, counted (`redirect_expired`), the frames are exact and nothing fails (no byte cache)."""
    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", "off")
    hub = HubServer()
    try:
        hub.push("fastmix-test/video_ds", video_ds)
        src = LeRobotSource(root="hf://datasets/fastmix-test/video_ds", storage_options={"endpoint": hub.url})
        local = LeRobotSource(root=video_ds)
        rows = np.array([0, 77, 151, 239], dtype=np.int64)
        assert all(np.array_equal(a, b) for a, b in zip(read_frames(src, rows).values(), read_frames(local, rows).values(),
                                                         strict=True))
        hub.rotate()
        remote_file.forget_objects()  # nothing held: the reads reach the CDN again
        got, want = read_frames(src, rows[::-1].copy()), read_frames(local, rows[::-1].copy())
        src.close()
        local.close()
    finally:
        hub.close()
        remote.close_clients()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    counts = remote.stats()
    assert counts["redirect_expired"] >= 1 and "failures" not in counts
