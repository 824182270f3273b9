"""The S3 client fastmix reads byte ranges with, against the clients the issue named: the same object on the same
local S3-compatible server (SeaweedFS), the same random 4 KiB ranges, one at a time (the decode workers' pattern:
a ranged GET per work item and file, small ranges, many of them).

Group "s3 ranged GET 4 KiB" (requests/s):

* fastmix (primary) — `fastmix.sources.remote.client_for(url).get_range` (its own keep-alive HTTP/1.1 transport,
  SigV4 signed).
* obstore (reference) — `obstore.get_range` on an `S3Store` (Rust object_store), when `obstore` is importable.
* s3fs (reference) — `S3FileSystem.cat_file(path, start, end)` (aiobotocore), when `s3fs` is importable. The
  project does not install it: a newer s3fs pulls an fsspec that breaks lerobot's `datasets` pin.

extra_info records `client_cpu_ms` (CPU time, user + system, of this process per request: the client's own cost,
what the decode workers pay) and `server_cpu_ms` (the server's per request). On a 2-core machine where the store
shares the cores, CPU per request is what bounds a cold epoch; wall time includes the server's.
Run: python -m pytest benchmarks/bench_clients.py --benchmark-enable -o python_files='bench_*.py' -q
(`pip install obstore` / s3fs into a throwaway environment for their rows.)
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
RANGE = 4096
OBJECT = 8 << 20
REQUESTS = 200 if QUICK else 1000  # per round
ROUNDS = 2 if QUICK else 3
GROUP = f"s3 ranged GET {RANGE // 1024} KiB"


@pytest.fixture(scope="module")
def store():
    """SeaweedFS with one random object of OBJECT bytes; stopped and its files removed at the end."""
    from tests.remote_server import start_server

    tmp = Path(tempfile.mkdtemp(prefix="fastmix-bench-clients-"))
    (tmp / "obj").mkdir()
    blob = os.urandom(OBJECT)
    (tmp / "obj" / "blob.bin").write_bytes(blob)
    server = start_server()
    try:
        url = server.upload(tmp / "obj", "bench-clients/obj") + "/blob.bin"
        yield server, url, blob
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def fastmix_get(server, url: str) -> Callable[[int], bytes]:
    from fastmix.sources.remote import client_for
    from tests.remote_server import KEY, SECRET

    client, key = client_for(url, {"key": KEY, "secret": SECRET, "endpoint_url": server.endpoint})
    return lambda start: client.get_range(key, start, start + RANGE, "bench")


def obstore_get(server, url: str) -> Callable[[int], bytes]:
    obs = pytest.importorskip("obstore", reason="obstore is not installed (pip install obstore)")
    from obstore.store import S3Store

    from tests.remote_server import BUCKET, KEY, SECRET

    store = S3Store(BUCKET, endpoint=server.endpoint, access_key_id=KEY, secret_access_key=SECRET,
                    region="us-east-1", client_options={"allow_http": True})
    path = url.split(f"s3://{BUCKET}/", 1)[1]
    return lambda start: bytes(obs.get_range(store, path, start=start, end=start + RANGE))


def s3fs_get(server, url: str) -> Callable[[int], bytes]:
    s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (kept out: it would move lerobot's fsspec pin)")
    from tests.remote_server import KEY, SECRET

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=server.endpoint)
    path = url.removeprefix("s3://")
    return lambda start: fs.cat_file(path, start=start, end=start + RANGE)


CLIENTS = {"fastmix": (fastmix_get, "fastmix"), "obstore": (obstore_get, "reference"),
           "s3fs": (s3fs_get, "reference")}


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@pytest.mark.parametrize("client", list(CLIENTS))
def test_ranged_get(benchmark, store, client: str) -> None:
    server, url, blob = store
    make, role = CLIENTS[client]
    get = make(server, url)
    rng = random.Random(0)
    starts = [rng.randrange(0, OBJECT - RANGE) for _ in range(REQUESTS)]
    for s in starts[:20]:  # warm-up (connections open, credentials resolved): every client gets the object's bytes
        assert get(s) == blob[s:s + RANGE]

    def run() -> int:
        for s in starts:
            get(s)
        return len(starts)

    benchmark.group = GROUP
    benchmark.extra_info.update(role=role, items=REQUESTS, unit="requests", format="bytes",
                                desc=f"{client}: {REQUESTS} ranged GETs of {RANGE} B at random offsets, one at a time")
    cpu0, srv0, wall0 = time.process_time(), _cpu_s(server.pid), time.perf_counter()
    assert benchmark.pedantic(run, rounds=ROUNDS, iterations=1) == REQUESTS
    n = ROUNDS * REQUESTS
    benchmark.extra_info.update(client_cpu_ms=round((time.process_time() - cpu0) / n * 1e3, 3),
                                server_cpu_ms=round((_cpu_s(server.pid) - srv0) / n * 1e3, 3),
                                wall_ms=round((time.perf_counter() - wall0) / n * 1e3, 3),
                                load_avg=round(os.getloadavg()[0], 2))
