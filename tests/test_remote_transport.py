"""The request path of remote reads: the lean HTTP/1.1 transport (`remote_wire`), SigV4 signing
(`remote_s3.sign_v4`), the joining of nearby ranges within a byte budget (`RemoteObject.missing`) and the byte
cache's multi-range files (`ByteCache.write_many`) under concurrent writers and a writer killed mid-write.

References: botocore's own SigV4 signer (frozen clock), a real SeaweedFS (it verifies every signature), the
requests and connections a TCP proxy in front of it counts, the dataset's local files (bytes and frames), and
raw sockets answering with chunked, unframed and interim responses.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastmix.sources import byte_cache, remote, remote_budget, remote_file, remote_prefetch
from fastmix.sources.lerobot_source import LeRobotSource
from fastmix.sources.remote_wire import IncompleteResponse, Wire
from tests.remote_server import KEY, SECRET, isolated_remote, proxy_for, read_frames, serve

s3_server = pytest.fixture(scope="module", name="s3_server")(serve)


@pytest.fixture(scope="module")
def s3_video(s3_server, video_ds) -> str:
    return s3_server.upload(video_ds, "transport/video_ds")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A private fastmix cache and byte cache; this process's remote objects, clients, counters and byte
    budget start empty and are dropped after."""
    yield from isolated_remote(tmp_path, monkeypatch)


# -- signing --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "session/token=="])
def test_sigv4_signature_equals_botocores(monkeypatch, token):
    """The Authorization header equals botocore's S3SigV4Auth for the same request and instant: path-style
    and virtual-host URLs, default and explicit ports, escaped keys, a LIST query, extra headers, a session
    token."""
    import botocore.auth
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from fastmix.sources import remote_s3

    instant = time.gmtime(1796551459)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(*instant[:6]))
    monkeypatch.setattr(remote_s3.time, "gmtime", lambda *a: instant)
    creds = Credentials("AKIDEXAMPLE", "wJalr/XUtnFEMI+K7MDENG", token)
    cases = [("http://127.0.0.1:8333/bucket/a%20b/c~d_e.mp4", {"Range": "bytes=0-99"}),
             ("https://bkt.s3.eu-west-1.amazonaws.com/x/y.parquet", {"Range": "bytes=5-9", "X-Extra": " a  b "}),
             ("https://s3.example.com:443/bkt/k", {}),
             ("http://127.0.0.1:8333/bucket?list-type=2&prefix=a%2Fb%20c%2F&max-keys=1000&continuation-token=a%2Bc%3D",
              {})]
    keys: dict = {}
    for url, headers in cases:
        req = AWSRequest(method="GET", url=url, headers=dict(headers))
        S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
        mine = remote_s3.sign_v4(creds.get_frozen_credentials(), "eu-west-1", "GET", url, headers, keys)
        assert mine["Authorization"] == req.headers["Authorization"], url
        assert mine["X-Amz-Date"] == req.headers["X-Amz-Date"]
        assert mine.get("X-Amz-Security-Token") == req.headers.get("X-Amz-Security-Token")
    assert len(keys) == 1  # the signing key is derived once per day and region


# -- the transport --------------------------------------------------------------------------------------------
def test_ranged_gets_reuse_kept_alive_connections(s3_server, s3_video, video_ds, fresh):
    """Ranged GETs through a proxy that counts: every GET is one request the proxy saw, connections are kept
    alive and shared (40 GETs from 4 threads: at most 4 connections), and every range equals the local file's
    bytes; `close_clients` closes them (a later GET connects again)."""
    path = next(p for p in sorted(Path(video_ds).rglob("*.mp4")))
    rel = path.relative_to(video_ds).as_posix()
    data = path.read_bytes()
    with proxy_for(s3_server) as proxy:
        src = LeRobotSource(root=s3_video, storage_options={"key": KEY, "secret": SECRET,
                                                             "endpoint_url": proxy.endpoint})
        src.close()
        client, key = remote.client_for(f"{s3_video}/{rel}")
        before_requests, before_conns = proxy.requests, proxy.connections
        spans = [(i * 997 % (len(data) - 600), i * 997 % (len(data) - 600) + 300 + i) for i in range(40)]
        errors: list = []

        def get(part: list) -> None:
            try:
                for a, b in part:
                    assert client.get_range(key, a, b, "test") == data[a:b]
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=get, args=(spans[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert proxy.requests - before_requests == len(spans)
        assert proxy.connections - before_conns <= 4
        remote.close_clients()
        client, key = remote.client_for(f"{s3_video}/{rel}")
        assert client.get_range(key, 10, 20, "test") == data[10:20]
        assert proxy.connections - before_conns <= 5


class _RawServer:
    """A one-connection-at-a-time TCP server answering each request with the next canned response (bytes)
    and closing the connection after those marked so; counts connections."""

    def __init__(self, responses: list[tuple[bytes, bool]]) -> None:
        self.responses, self.connections = list(responses), 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.responses:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                buf = b""
                while self.responses:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                    if b"\r\n\r\n" not in buf:
                        break
                    buf = buf.split(b"\r\n\r\n", 1)[1]
                    body, close = self.responses.pop(0)
                    conn.sendall(body)
                    if close:
                        break

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


def test_the_wire_reads_every_framing_and_pools_only_framed_responses():
    """Content-Length, chunked (with an extension and a trailer), an interim 100 before the response, a 206
    with headers in any case, and a body ended by the connection (Connection: close / no length): each body
    exact; the connection is reused while responses are framed and replaced after one that was not."""
    responses = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n", False),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 206 Partial\r\ncontent-length: 2\r\nETAG: \"v1\"\r\n\r\nxy", False),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew", False),
    ]
    server = _RawServer(responses)
    wire = Wire()
    try:
        got = [wire.request("GET", server.url, {}, 5.0) for _ in range(5)]
    finally:
        wire.clear()
        server.close()
    assert [r.body for r in got] == [b"hello", b"abcde", b"xy", b"until the end", b"new"]
    assert [r.status for r in got] == [200, 200, 206, 200, 200]
    assert got[2].headers.get("ETag") == '"v1"' and got[2].headers["etag"] == '"v1"'
    assert server.connections == 2  # reused through the first four; a new one after the unframed body


@pytest.mark.parametrize("response", [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                                      b"HTTP/1.1 200 OK\r\nContent-Le", b""])
def test_a_response_cut_short_is_an_incomplete_response(response):
    """A body shorter than its Content-Length, a cut header block and no answer at all each raise
    IncompleteResponse (a ConnectionError: the client's retry policy retries it) and the connection is
    closed, not pooled."""
    server = _RawServer([(response, True)])
    wire = Wire()
    try:
        with pytest.raises(IncompleteResponse):
            wire.request("GET", server.url, {}, 5.0)
        assert not wire._all
    finally:
        wire.clear()
        server.close()


# -- joining nearby ranges ------------------------------------------------------------------------------------
def _read_through_proxy(s3_server, s3_video, rows, monkeypatch, overfetch: float) -> tuple[dict, int, dict]:
    monkeypatch.setenv("FASTMIX_REMOTE_OVERFETCH", str(overfetch))
    monkeypatch.setattr(remote_file, "_OVERFETCH", remote_budget.Overfetch())
    remote_file.forget_objects()
    remote.close_clients()
    with proxy_for(s3_server) as proxy:
        src = LeRobotSource(root=s3_video, storage_options={"key": KEY, "secret": SECRET,
                                                             "endpoint_url": proxy.endpoint})
        urls = {r.path for r in src.frame_requests(rows)}
        for url in urls:
            remote_file.object_for(url).sample_index()  # headers first: what follows is the frames' ranges
        remote.reset_stats()
        before = proxy.requests
        got = read_frames(src, rows)
        seen = proxy.requests - before
        src.close()
    return got, seen, remote.stats()


def test_nearby_ranges_are_joined_within_the_byte_budget(s3_server, s3_video, video_ds, fresh, monkeypatch,
                                                         tmp_path):
    """Random rows read into an empty cache, once with no budget for gaps and once with 0.25: with the budget
    the proxy sees fewer requests (each counted by it, equal to the client's count), the bytes fetched stay
    within 1.25x the bytes needed (the no-budget run fetches exactly the needed parts), and both equal the
    local frames bit for bit."""
    rows = np.sort(np.random.default_rng(3).choice(240, 48, replace=False)).astype(np.int64)
    want = read_frames(LeRobotSource(root=video_ds), rows)
    runs = {}
    for i, overfetch in enumerate((0.0, 0.25)):
        monkeypatch.setenv("FASTMIX_REMOTE_CACHE", str(tmp_path / f"bytes-{i}"))
        got, seen, counts = _read_through_proxy(s3_server, s3_video, rows, monkeypatch, overfetch)
        assert all(np.array_equal(got[k], want[k]) for k in want)
        assert seen == counts["requests"] == counts["range_gets"]
        runs[overfetch] = counts
    exact, joined = runs[0.0], runs[0.25]
    assert joined["range_gets"] < exact["range_gets"], (exact, joined)
    assert exact["range_bytes"] < joined["range_bytes"] <= 1.25 * exact["range_bytes"], (exact, joined)


def test_the_budget_joins_the_smallest_gaps_first():
    """`remote_budget.Overfetch.allow` on hand-made parts: the smallest gaps are joined first, never one over merge_gap;
    the extra bytes never exceed overfetch x the needed bytes over calls, and one call draws at most twice its
    own allowance from what earlier calls left."""
    budget = remote_budget.Overfetch()
    parts = [(0, 100), (110, 200), (300, 400), (405, 500), (10_000, 10_100)]  # gaps 10, 100, 5, 9500; 485 needed
    assert budget.allow(parts, merge_gap=1000, overfetch=0.1) == {0, 2}  # 5, then 5 + 10 fit 48.5; + 100 does not
    assert budget.allow(parts, merge_gap=1000, overfetch=0.0) == set()
    assert budget.bank == pytest.approx(48.5 - 15)  # what the first call left unspent
    budget = remote_budget.Overfetch()
    assert budget.allow(parts, merge_gap=1000, overfetch=0.5) == {0, 1, 2}
    assert budget.allow(parts, merge_gap=50, overfetch=100.0) == {0, 2}
    assert budget.extra <= 100.0 * budget.needed
    budget = remote_budget.Overfetch()
    budget.bank = 1e9  # a long history of unspent allowance: one call draws at most twice its own
    assert budget.allow(parts, merge_gap=10**6, overfetch=0.1) == {0, 1, 2}  # 115 <= 48.5 + 97; + 9500 is not


# -- the byte cache's multi-range files -------------------------------------------------------------------------
def _writer(root: str, blob: bytes, seed: int, rounds: int) -> None:
    """In a spawned process: write random sets of ranges of `blob` to the cache, one file per set."""
    cache = byte_cache.ByteCache(Path(root), "s3://b/o", "v1")
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        starts = np.sort(rng.choice(len(blob) // 100, 6, replace=False)) * 100
        cache.write_many([(int(s), blob[s:s + 50 + int(rng.integers(0, 50))]) for s in starts])


def test_concurrent_writers_of_multi_range_files(tmp_path, monkeypatch):
    """Two processes write overlapping multi-range files into one object's directory at once while this one
    lists and reads: every range read, at any time, is the object's own bytes; no temporary file is left."""
    monkeypatch.setenv(byte_cache.ENV_MAX, "1G")
    blob = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), blob, seed, 150)) for seed in (1, 2)]
    for p in procs:
        p.start()
    reader = byte_cache.ByteCache(tmp_path, "s3://b/o", "v1")
    checked = 0
    try:
        while any(p.is_alive() for p in procs) or not checked:
            reader._listed = 0.0
            for a, b in list(reader.ranges(refresh=True)):
                data = reader.read(a, b)
                if data is not None:
                    assert data == blob[a:b], (a, b)
                    checked += 1
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert checked > 0 and not [p for p in reader.dir.iterdir() if p.name.startswith(".tmp")]
    for a, b in byte_cache.ByteCache(tmp_path, "s3://b/o", "v1").ranges():
        assert reader.read(a, b) == blob[a:b]


def _slow_writer(root: str, ready) -> None:
    """In a spawned process: write three ranges into one file, pausing after the first bytes (the parent
    kills it there)."""
    real = os.write

    def slow(fd: int, data) -> int:
        n = real(fd, bytes(data[:10]))
        ready.set()
        time.sleep(60)
        return n

    os.write = slow
    byte_cache.ByteCache(Path(root), "s3://b/o", "v1").write_many([(0, b"a" * 100), (200, b"b" * 50)])


def test_a_writer_killed_mid_write_leaves_nothing_readable_and_its_file_is_swept(tmp_path, monkeypatch):
    """A process SIGKILLed while writing a multi-range file leaves only its temporary file: no reader lists a
    range from it, and the next eviction pass deletes it (its pid is dead)."""
    monkeypatch.setenv(byte_cache.ENV_MAX, "1G")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_slow_writer, args=(str(tmp_path), ready))
    proc.start()
    try:
        assert ready.wait(60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
    reader = byte_cache.ByteCache(tmp_path, "s3://b/o", "v1")
    temps = [p for p in reader.dir.iterdir() if p.name.startswith(".tmp")]
    assert len(temps) == 1 and temps[0].stat().st_size == 10
    assert reader.ranges(refresh=True) == [] and reader.covering(0) is None
    byte_cache.evict(tmp_path)
    assert not list(reader.dir.iterdir())
    reader.write_many([(0, b"a" * 100), (200, b"b" * 50)])
    again = byte_cache.ByteCache(tmp_path, "s3://b/o", "v1")
    assert again.ranges() == [(0, 100), (200, 250)] and again.read(200, 250) == b"b" * 50


def test_a_damaged_multi_range_file_is_a_miss(tmp_path):
    """A cache file whose size differs from what its name lists (damaged, or replaced) is never served."""
    cache = byte_cache.ByteCache(tmp_path, "s3://b/o", "v1")
    cache.write_many([(0, b"x" * 10), (20, b"y" * 10)])
    (path,) = list(cache.dir.iterdir())
    assert path.name == "0-10,20-30"
    path.write_bytes(b"x" * 15)
    fresh_reader = byte_cache.ByteCache(tmp_path, "s3://b/o", "v1")
    assert fresh_reader.ranges() == [(0, 10), (20, 30)]
    assert fresh_reader.read(20, 30) is None and fresh_reader.read(0, 10) is None


def test_overfetch_must_be_a_fraction(monkeypatch):
    from fastmix.errors import ConfigError

    monkeypatch.setenv("FASTMIX_REMOTE_OVERFETCH", "-1")
    with pytest.raises(ConfigError, match="FASTMIX_REMOTE_OVERFETCH"):
        remote_prefetch.overfetch()


def test_a_read_loads_only_its_part_of_a_large_cached_range(s3_server, s3_video, video_ds, fresh):
    """The byte cache holds a whole mp4 as one range (one GET of every byte); a process that then reads 100
    bytes in the middle loads those 100 bytes from it (counted `cache_bytes`), not the whole range, and gets the
    file's bytes; a sub-range read of a multi-range cache file is the bytes at its offset."""
    path = next(p for p in sorted(Path(video_ds).rglob("*.mp4")))
    url = f"{s3_video}/{path.relative_to(video_ds).as_posix()}"
    data = path.read_bytes()
    LeRobotSource(root=s3_video, storage_options={"key": KEY, "secret": SECRET,
                                                  "endpoint_url": s3_server.endpoint}).close()
    assert remote_file.object_for(url).fetch_missing(0, len(data)) is not None  # cached as one range
    remote_file.forget_objects()
    remote.reset_stats()
    middle = len(data) // 2
    assert remote_file.object_for(url).pread(middle, 100) == data[middle:middle + 100]
    counts = remote.stats()
    assert counts["cache_bytes"] == 100 and counts["cache_hits"] == 1 and "range_gets" not in counts
    cache = byte_cache.ByteCache(fresh / "sub", "s3://b/o", "v1")
    cache.write_many([(0, b"a" * 10), (20, bytes(range(10)))])
    assert cache.ranges() == [(0, 10), (20, 30)]
    assert cache.read(20, 30, 23, 26) == bytes([3, 4, 5]) and cache.read(20, 30, 15, 40) == bytes(range(10))
