"""A lean HTTP/1.1 transport for the object-store clients: keep-alive connections per host, shared by threads.

`Wire.request(method, url, headers, timeout_s)` sends one request and reads the whole response (status, headers,
body) over an idle connection to that host (plain TCP or TLS; a new one when none is idle), and puts it back
when the response was framed (Content-Length or chunked) and the server did not say it closes. It does what a ranged GET
needs and no more: no redirects (the caller follows them), no decompression, no cookies, no proxies.

Why not urllib3: a ranged GET of a few KiB cost ~0.6 ms of client CPU through urllib3 (its URL parsing and
pool-key normalisation, http.client's header parsing through the `email` package), the same order as the
server's own work; the decode workers of a cold epoch make one such request per sample. The bytes on the wire
are the same (HTTP/1.1, `Host` as urllib3 sends it).

Faults surface as `OSError`s the caller retries: a timeout (`TimeoutError`, "timed out"), a refused or reset
connection (`ConnectionError`), a response cut short (`IncompleteResponse`: fewer body bytes than framed, or no
complete header block). A connection found closed by its peer before reuse is replaced without a request being
sent on it; one that fails after a request was sent is not retried here (the caller's retry policy counts it).
A TLS certificate that does not verify raises `ssl.SSLCertVerificationError` (the caller makes it a clear error,
never retried). `clear()` closes every connection.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, urlsplit

split_url = lru_cache(maxsize=4096)(urlsplit)  # the URLs of a dataset's objects recur request after request

_MAX_HEAD = 64 << 10  # bytes of a response's status line and headers
_NO_BODY = frozenset({204, 304})


class IncompleteResponse(ConnectionError):
    """The connection ended before the response did (a cut header block or body)."""


class Headers(dict):
    """Response headers by lower-cased name (repeated headers joined with ", "); `get` ignores case."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)


class Response:
    """status (int), headers (`Headers`), body (bytes)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class _Conn:
    """One open connection and the bytes read past the last response."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, bytearray()

    def dropped(self) -> bool:
        """Whether the peer closed (or sent something unasked) while the connection was idle."""
        if self.sock.fileno() < 0 or self.buf:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def fill(self) -> None:
        """Read what the socket has (at least one byte); EOF raises IncompleteResponse."""
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise IncompleteResponse("the server closed the connection before the response ended")
        self.buf += chunk

    def take(self, n: int) -> bytes:
        """Exactly `n` bytes (read straight into the result past what is buffered)."""
        have = len(self.buf)
        if have >= n:
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        out = bytearray(n)
        out[:have] = self.buf
        self.buf.clear()
        view, got = memoryview(out), have
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise IncompleteResponse(f"the connection closed after {got} of {n} body bytes")
            got += k
        return bytes(out)

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            if len(self.buf) > _MAX_HEAD:
                raise IncompleteResponse("a response line longer than 64 KiB")
            self.fill()


class Wire:
    """Keep-alive HTTP/1.1 connections per (scheme, host, port), shared by the threads: a request takes an idle
    one (the most recently used) or opens one, and puts it back after a framed response — as many connections
    as requests run at once. `tls`: {"verify": False} or {"ca_certs": path} (else the system's certificates)."""

    def __init__(self, tls: dict[str, Any] | None = None) -> None:
        tls = tls or {}
        self._tls = tls
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple, list[_Conn]] = {}
        self._all: set[_Conn] = set()
        self._lock = threading.Lock()

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=self._tls.get("ca_certs"))
            if self._tls.get("verify") is False:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    def _take(self, key: tuple) -> _Conn | None:
        """An idle connection to `key` that its peer has not closed (closed ones are dropped), or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None or not conn.dropped():
                return conn
            self._close(conn)

    def _connect(self, scheme: str, host: str, port: int, timeout_s: float) -> _Conn:
        sock = socket.create_connection((host, port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        conn = _Conn(sock)
        with self._lock:
            self._all.add(conn)
        return conn

    def _close(self, conn: _Conn) -> None:
        with self._lock:
            self._all.discard(conn)
        try:
            conn.sock.close()
        except OSError:
            pass

    def request(self, method: str, url: str, headers: dict[str, str], timeout_s: float) -> Response:
        """One request and its whole response (no body read for HEAD, 204, 304)."""
        parts = split_url(url)
        key = _endpoint(parts)
        conn = self._take(key) or self._connect(*key, timeout_s)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header(parts)}", "Accept-Encoding: identity"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "accept-encoding")]
        try:
            conn.sock.settimeout(timeout_s)
            conn.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            response, reusable = _read_response(conn, method)
        except BaseException:
            self._close(conn)
            raise
        with self._lock:
            if reusable and conn in self._all:  # not closed by clear() meanwhile
                self._idle.setdefault(key, []).append(conn)
                return response
        self._close(conn)
        return response

    def clear(self) -> None:
        """Close every connection (idle or in use)."""
        with self._lock:
            conns, self._all, self._idle = list(self._all), set(), {}
        for conn in conns:
            try:
                conn.sock.close()
            except OSError:
                pass


@lru_cache(maxsize=256)
def _endpoint(parts: SplitResult) -> tuple[str, str, int]:
    scheme = parts.scheme
    return scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80)


@lru_cache(maxsize=256)
def host_header(parts: SplitResult) -> str:
    """The Host header of a request to the `urlsplit` result `parts` (the port only when not the scheme's
    default; what a signer must sign)."""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is None or (parts.scheme, port) in (("https", 443), ("http", 80)):
        return host
    return f"{host}:{port}"


def _read_response(conn: _Conn, method: str) -> tuple[Response, bool]:
    """(the response, whether the connection may carry another request)."""
    buf = conn.buf
    while True:
        while buf[:2] == b"\r\n":  # stray line ends before a status line
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > _MAX_HEAD:
            raise IncompleteResponse("a response head longer than 64 KiB")
        conn.fill()
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[:end + 4]
    try:
        version, code = lines[0].split(b" ", 2)[:2]
        status = int(code)
    except ValueError:
        raise IncompleteResponse(f"not an HTTP status line: {lines[0][:80]!r}") from None
    headers = Headers()
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        old = dict.get(headers, name)
        dict.__setitem__(headers, name, value if old is None else f"{old}, {value}")
    if 100 <= status < 200:  # an interim response: the real one follows
        return _read_response(conn, method)
    get = dict.get
    keep = version == b"HTTP/1.1" and get(headers, "connection", "").lower() != "close"
    if method == "HEAD" or status in _NO_BODY:
        return Response(status, headers, b""), keep
    if "chunked" in get(headers, "transfer-encoding", "").lower():
        return Response(status, headers, _chunked(conn)), keep
    length = get(headers, "content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise IncompleteResponse(f"a Content-Length that is not a number: {length!r}") from None
        body = conn.take(n)
        return Response(status, headers, body), keep
    while True:  # no framing: the body ends with the connection
        try:
            conn.fill()
        except IncompleteResponse:
            body = bytes(conn.buf)
            conn.buf.clear()
            return Response(status, headers, body), False


def _chunked(conn: _Conn) -> bytes:
    parts = []
    while True:
        line = conn.line()
        try:
            n = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise IncompleteResponse(f"a bad chunk size line {line[:40]!r}") from None
        if n == 0:
            while conn.line():  # trailers
                pass
            return b"".join(parts)
        parts.append(conn.take(n))
        if conn.take(2) != b"\r\n":
            raise IncompleteResponse("a chunk not followed by CRLF")


__all__ = ["Headers", "IncompleteResponse", "Response", "Wire", "host_header", "split_url"]
