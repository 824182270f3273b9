"""One HTTP client with retries, a rate bound and counters: the base of every object-store client.

`Client` sends ranged GETs and HEADs to one host over `remote_wire.Wire` (a keep-alive connection per thread), following
redirects itself (up to 5; the Authorization header is dropped when a redirect leaves the host, as `requests`
does; each hop counts as a request). A client with `redirect_ttl_s` (the Hub's: its resolve URLs redirect to
signed CDN URLs) asks a redirect's target directly for that long, and asks the original URL again when the
remembered target answers 401/403/404/410 (the signature expired). It serves `http(s)://` roots as is; `remote_s3.S3Client` (s3://, gs://)
and `remote_hf.HfClient` (hf://) add signing, listing and URL layouts.

**TLS**: `storage_options={"ca_bundle": "/path/ca.pem"}` (else `REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE`,
`CURL_CA_BUNDLE`, else the system's certificates) verifies the server; `{"verify": False}` turns verification
off. `{"headers": {...}}` adds headers to every request (e.g. an Authorization of a private server). A
certificate that does not verify is a RemoteAccessError at once (never retried).

**Faults**: a timeout, a reset or refused connection, HTTP 408/429/500/502/503/504 and a body shorter than the
range asked for are retried with exponential backoff and full jitter (a `Retry-After` is waited for in full)
while both bounds hold: `FASTMIX_REMOTE_RETRIES` attempts after the first (default 8) and
`FASTMIX_REMOTE_RETRY_BUDGET_S` seconds since the first attempt (default 20, below the loader's 30 s worker
stall limit); then `RemoteError` naming the URL, the attempts and the last failure. 404 is `MissingFileError`,
401/403 `RemoteAccessError`, both naming the URL (callers add the dataset and episode).
`FASTMIX_REMOTE_TIMEOUT_S` (default 10) bounds one attempt's connect and each read; `FASTMIX_REMOTE_MAX_RPS`
bounds the requests per second of this process (default: no bound).
"""

from __future__ import annotations

import os
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin

from fastmix.errors import ConfigError, FastmixError, MissingFileError
from fastmix.sources.remote_stats import count
from fastmix.sources.remote_wire import split_url

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5


class RemoteError(FastmixError, OSError):
    """An object store could not be read within the retry budget (the message names the URL, the attempts and
    the last failure)."""


class RemoteAccessError(RemoteError, PermissionError):
    """The object store refused access (HTTP 401/403, a certificate that does not verify): wrong or missing
    credentials or trust settings."""


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {name}={raw!r}") from None


@dataclass
class Policy:
    """Retry and rate settings (seconds, counts), read from the environment when a client is made."""

    retries: int = 8
    budget_s: float = 20.0
    timeout_s: float = 10.0
    base_s: float = 0.05
    cap_s: float = 2.0
    max_rps: float = 0.0

    @classmethod
    def from_env(cls) -> Policy:
        return cls(retries=int(env_float("FASTMIX_REMOTE_RETRIES", 8)),
                   budget_s=env_float("FASTMIX_REMOTE_RETRY_BUDGET_S", 20.0),
                   timeout_s=env_float("FASTMIX_REMOTE_TIMEOUT_S", 10.0),
                   max_rps=env_float("FASTMIX_REMOTE_MAX_RPS", 0.0))


class RateLimit:
    """At most `rps` request starts per second in this process (0: no bound)."""

    def __init__(self, rps: float) -> None:
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            count(rate_waits=1)
            time.sleep(start - now)


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or HEAD says about one object: size in bytes and its version tag (ETag, else
    Last-Modified + size)."""

    size: int
    etag: str


def _ca_bundle(options: dict[str, Any]) -> str | None:
    for value in (options.get("ca_bundle"), os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"),
                  os.environ.get("CURL_CA_BUNDLE")):
        if value:
            return os.fspath(value)
    return None


@dataclass
class Client:
    """Ranged GETs and HEADs against one HTTP(S) host (`bucket`), with the retry policy; thread-safe. Keys are
    paths on the host."""

    scheme: str
    bucket: str  # http(s): the host; s3/gs: the bucket; hf: the repo id
    options: dict[str, Any] = field(default_factory=dict)
    listable = False  # whether `list` works (S3 LIST, the Hub's tree API); plain HTTP cannot be listed
    pinned = False  # whether objects are immutable (a Hub commit): no version check on reads
    redirect_ttl_s = 0.0  # how long a redirect's target is asked directly (0: every request follows it)

    def __post_init__(self) -> None:
        from fastmix.sources.remote_wire import Wire

        self.policy = Policy.from_env()
        self.rate = RateLimit(self.policy.max_rps)
        tls: dict[str, Any] = {}
        if self.options.get("verify") is False:
            tls["verify"] = False
        elif _ca_bundle(self.options):
            tls["ca_certs"] = _ca_bundle(self.options)
        self.pool = Wire(tls)
        self.extra_headers = {str(k): str(v) for k, v in dict(self.options.get("headers") or {}).items()}
        self._redirects: dict[str, tuple[str, float]] = {}
        self._redirect_lock = threading.Lock()
        self.setup()

    def setup(self) -> None:
        """Scheme-specific settings (subclasses)."""

    def url_for(self, key: str) -> str:
        """The HTTP URL of path `key`."""
        return f"{self.scheme}://{self.bucket}/{quote(key.lstrip('/'), safe='/-_.~%')}"

    def headers_for(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with what authenticates a request to `url` (subclasses sign; here the extra headers)."""
        return {**self.extra_headers, **headers}

    # -- requests ------------------------------------------------------------------------------------------
    def request(self, method: str, url: str, name: str, headers: dict[str, str] | None = None,
                expect: int | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request (redirects followed), retried per the policy. 404 →
        MissingFileError, 401/403 → RemoteAccessError (by `check`), exhausted retries → RemoteError; `name`
        (the s3://, hf:// or https:// URL) is named. `expect`: the body length a ranged GET must return."""
        p = self.policy
        start = time.monotonic()
        attempt, last = 0, ""
        while True:
            cause, r = None, None
            timeout = min(p.timeout_s, max(p.budget_s - (time.monotonic() - start), 0.1))  # within the budget
            try:
                status, r, body = self._follow(method, url, dict(headers or {}), timeout, name)
                count(bytes=len(body))
                if status in RETRY_STATUS:
                    cause, last = f"http_{status}", f"HTTP {status}"
                elif expect is not None and status == 206 and len(body) != expect:
                    cause, last = "short_body", f"a short body ({len(body)} of {expect} bytes)"
                else:
                    return status, r.headers, body
            except ssl.SSLCertVerificationError as e:
                count(failures=1)
                raise RemoteAccessError(f"{name}: the server's TLS certificate does not verify ({e}); give its CA "
                                        f"as storage_options={{'ca_bundle': path}} or SSL_CERT_FILE") from None
            except OSError as e:
                cause, last = _cause(e), f"{type(e).__name__}: {e}"
            elapsed = time.monotonic() - start
            delay = min(p.cap_s, p.base_s * (2 ** attempt)) * random.uniform(0.5, 1.0)
            retry_after = _retry_after(r)
            if retry_after is not None:  # the server's word (the Hub's rate limit), within the budget
                delay = max(delay, retry_after)
                last += f", Retry-After: {retry_after:g} s"
            if attempt >= p.retries or elapsed + delay > p.budget_s:
                count(failures=1)
                raise RemoteError(f"{name}: no answer after {attempt + 1} attempt(s) in {elapsed:.1f} s (last: "
                                  f"{last}); the object store is unreachable or overloaded. Retries are bounded by "
                                  f"FASTMIX_REMOTE_RETRIES={p.retries} and FASTMIX_REMOTE_RETRY_BUDGET_S={p.budget_s:g}")
            count(retries=1, **{f"retry_{cause}": 1})
            attempt += 1
            time.sleep(delay)

    def _follow(self, method: str, url: str, headers: dict[str, str], timeout: Any, name: str
                ) -> tuple[int, Any, bytes]:
        """One attempt: the request and the redirects it answers with; (status, response, body). With
        `redirect_ttl_s`, where a URL redirected to is remembered that long and asked directly; a remembered
        target that answers 401/403/404/410 (an expired signed URL) is forgotten and the URL asked again."""
        origin, host = url, split_url(url).netloc
        remembered = self._remembered(origin)
        if remembered is not None:
            url = remembered
        for _ in range(_MAX_REDIRECTS + 2):
            self.rate.wait()
            count(requests=1)
            sent = self.headers_for(method, url, headers) if split_url(url).netloc == host else dict(headers)
            r = self.pool.request(method, url, sent, timeout)
            body = r.body
            if r.status in _REDIRECTS and r.headers.get("Location"):
                count(redirects=1)
                url = urljoin(url, r.headers["Location"])
                continue
            if remembered is not None and url == remembered and r.status in (401, 403, 404, 410):
                count(redirect_expired=1)
                self._redirects.pop(origin, None)
                url, remembered = origin, None
                continue
            if url != origin and self.redirect_ttl_s and r.status in (200, 206):
                with self._redirect_lock:
                    self._redirects[origin] = (url, time.monotonic() + self.redirect_ttl_s)
                    while len(self._redirects) > 4096:
                        self._redirects.pop(next(iter(self._redirects)))
            return r.status, r, body
        raise RemoteError(f"{name}: more than {_MAX_REDIRECTS} redirects (last to {url})")

    def _remembered(self, url: str) -> str | None:
        hit = self._redirects.get(url) if self.redirect_ttl_s else None
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            self._redirects.pop(url, None)
            return None
        count(redirects_remembered=1)
        return hit[0]

    def get_range(self, key: str, start: int, end: int, name: str, version: str | None = None) -> bytes:
        """Bytes [start, end) of object `key`; with `version` (its ETag when the dataset was opened), an object
        that has changed since is a RemoteError (its new bytes are never mixed with the old)."""
        status, headers, body = self.request("GET", self.url_for(key), name, {"Range": f"bytes={start}-{end - 1}"},
                                             expect=end - start)
        self.check(status, body, name, "GET")
        etag = _etag(headers)
        if version and etag and etag != version and not self.pinned:
            raise RemoteError(f"{name} has changed since the dataset was opened (ETag {version!r}, now {etag!r}); "
                              f"open the dataset again to read the new version")
        if status == 200:  # the server ignored Range: the whole object came back
            body = body[start:end]
        if len(body) != end - start:
            raise RemoteError(f"{name}: asked for bytes {start}..{end - 1} but got {len(body)} bytes (status "
                              f"{status}); the object may have changed while it was read")
        return body

    def get(self, key: str, name: str) -> bytes:
        """The whole object `key`."""
        status, headers, body = self.request("GET", self.url_for(key), name)
        self.check(status, body, name, "GET")
        return body

    def head(self, key: str, name: str) -> ObjectInfo:
        status, headers, body = self.request("HEAD", self.url_for(key), name)
        self.check(status, body, name, "HEAD")
        return ObjectInfo(int(headers.get("content-length", -1)), version_of(headers))

    def list(self, prefix: str, name: str) -> dict[str, ObjectInfo]:
        raise ConfigError(f"{name}: an http(s) server cannot be listed")

    def check(self, status: int, body: bytes, name: str, what: str) -> None:
        """Raise the error HTTP `status` means (nothing for 200/206)."""
        if status in (200, 206):
            return
        detail = error_detail(body)
        if status == 404:
            raise MissingFileError(f"{name} does not exist (HTTP 404{detail})")
        if status in (401, 403):
            count(failures=1)
            raise RemoteAccessError(f"{name}: access denied (HTTP {status}{detail}) on {what}; {self.access_hint()}")
        if status == 416:
            raise RemoteError(f"{name}: the requested range is outside the object (HTTP 416); it may have changed")
        count(failures=1)
        raise RemoteError(f"{name}: HTTP {status}{detail} on {what}")

    def access_hint(self) -> str:
        return "check the server's credentials (storage_options={'headers': {'Authorization': ...}})"


def _etag(headers: dict[str, str]) -> str:
    etag = headers.get("etag", "")
    return etag.removeprefix("W/").strip('"')


def version_of(headers: dict[str, str]) -> str:
    """An object's version tag from response headers: the ETag, else Last-Modified/Content-Length."""
    return _etag(headers) or f"{headers.get('last-modified', '')}/{headers.get('content-length', '')}"


def _cause(e: BaseException) -> str:
    text = f"{type(e).__name__} {e}".lower()
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if "refused" in text:
        return "refused"
    return "connection"


def _retry_after(r: Any) -> float | None:
    value = r.headers.get("Retry-After") if r is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_detail(body: bytes) -> str:
    """The error code an S3 XML or Hub JSON error body carries, as " Code" ("" if none)."""
    m = re.search(rb"<Code>([^<]*)</Code>", body or b"") or re.search(rb'"error"\s*:\s*"([^"]{1,200})"', body or b"")
    return f" {m[1].decode(errors='replace')}" if m else ""


__all__ = ["Client", "ObjectInfo", "Policy", "RateLimit", "RemoteAccessError", "RemoteError", "env_float",
           "error_detail", "version_of"]
