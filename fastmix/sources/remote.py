"""Dataset roots in object storage: URLs, credentials, and one HTTP client with retries, a rate bound and counters.

A root may be `s3://bucket/prefix/<repo>` or `http(s)://host/path/<repo>` (a server that honours `Range`; it
cannot be listed, see `fastmix.sources.remote_mirror`). `pathlib.Path` collapses "//", so `Path("s3://b/x")`
("s3:/b/x") is recognised too: a config's `lerobot_home="s3://bucket/lerobot"` joined with a repo id by
`pathlib` still names the bucket.

**S3 credentials and endpoint**, the standard way (botocore's resolution): `storage_options` (s3fs's names:
`key`, `secret`, `token`, `endpoint_url` or `client_kwargs={"endpoint_url": ...}`, `region_name`, `profile`,
`anon=True`), else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` / `AWS_PROFILE`, the
shared config files, instance roles; the endpoint from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (path-style
addressing), else AWS itself (`https://<bucket>.s3.<region>.amazonaws.com`, region from `AWS_REGION` /
`AWS_DEFAULT_REGION` / the profile, else us-east-1). No credentials: unsigned requests (public buckets).
Requests are signed with botocore's SigV4 and sent with urllib3 (a pool per process).

The `storage_options` given to `LeRobotSource` reach the spawned decode workers through the environment
(`FASTMIX_REMOTE_ROOTS`, JSON {root url: {"options", "manifest"}}, set in the opening process): a secret passed
there is visible to the child processes, as an `AWS_*` variable is.

**Faults**: a timeout, a reset or refused connection, HTTP 408/429/500/502/503/504 are retried with
exponential backoff and full jitter (`Retry-After` honoured) while both bounds hold: `FASTMIX_REMOTE_RETRIES`
attempts after the first (default 8) and `FASTMIX_REMOTE_RETRY_BUDGET_S` seconds since the first attempt
(default 20, below the loader's 30 s worker stall limit); then `RemoteError` naming the URL, the attempts and
the last failure. 404 is `MissingFileError`, 401/403 `RemoteAccessError`, both naming the URL (callers add the
dataset and episode). `FASTMIX_REMOTE_TIMEOUT_S` (default 10) bounds one attempt's connect and each read;
`FASTMIX_REMOTE_MAX_RPS` bounds the requests per second of this process (default: no bound).

**Counters** (`stats()`): requests, bytes, retries and failures by cause, per process. With
`FASTMIX_REMOTE_STATS_DIR` set, each process also writes them to `<dir>/<pid>.json` (atomically, after
each read and at exit); `collect_stats(dir)` sums the files (the decode workers' counters).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from fastmix.errors import ConfigError, FastmixError, MissingFileError
from fastmix.sources.remote_stats import collect_stats, count, dump_stats, reset_stats, stats

SCHEMES = ("s3", "http", "https")
ROOTS_ENV = "FASTMIX_REMOTE_ROOTS"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MANGLED = re.compile(r"^(s3|https?|gs|hf):/(?!/)(.+)$")


class RemoteError(FastmixError, OSError):
    """An object store could not be read within the retry budget (the message names the URL, the attempts and
    the last failure)."""


class RemoteAccessError(RemoteError, PermissionError):
    """The object store refused access (HTTP 401/403): wrong or missing credentials."""


# -- URLs ----------------------------------------------------------------------------------------------------
def as_url(root: Any) -> str | None:
    """The URL `root` names (a str or a Path, also a Path-collapsed "s3:/bucket/x"), or None for a local path.
    gs:// and hf:// are refused with a ConfigError saying what to use instead."""
    if root is None:
        return None
    text = os.fspath(root) if isinstance(root, os.PathLike) else str(root)
    m = _MANGLED.match(text)
    if m and not os.path.exists(text):
        text = f"{m[1]}://{m[2]}"
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if not scheme:
        return None
    if scheme in ("gs", "hf"):
        raise ConfigError(f"dataset root {text}: {scheme}:// is not supported yet; fastmix reads s3:// (any "
                          f"S3-compatible store: for GCS use s3:// with AWS_ENDPOINT_URL=https://storage.googleapis.com "
                          f"and HMAC keys) and http(s):// roots")
    if scheme not in SCHEMES:
        raise ConfigError(f"dataset root {text}: unknown URL scheme {scheme!r}; fastmix reads {', '.join(SCHEMES)}")
    parts = urlsplit(text)
    if not parts.netloc:
        raise ConfigError(f"dataset root {text} names no bucket or host")
    return text.rstrip("/")


def url_join(base: str, *parts: str) -> str:
    """`base` and the relative `parts` joined with "/"."""
    out = base.rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


def is_url(path: Any) -> bool:
    """Whether `path` is a URL of a supported scheme (no Path-collapsed forms: used on FrameRequest paths)."""
    return isinstance(path, str) and path.split("://", 1)[0] in SCHEMES and "://" in path


# -- roots known to this process and its children ----------------------------------------------------------
def register_root(url: str, options: dict[str, Any] | None, manifest: str | None) -> None:
    """Record a root's storage options and object manifest here and in the environment (for spawned workers)."""
    roots = _roots()
    roots[url] = {"options": dict(options or {}), "manifest": manifest}
    os.environ[ROOTS_ENV] = json.dumps(roots)
    _ROOTS_CACHE.clear()


def _roots() -> dict[str, dict]:
    raw = os.environ.get(ROOTS_ENV, "")
    if not raw:
        return {}
    try:
        roots = json.loads(raw)
    except ValueError:
        return {}
    return roots if isinstance(roots, dict) else {}


_ROOTS_CACHE: dict[str, tuple[str, dict]] = {}


def root_of(url: str) -> tuple[str, dict]:
    """(root url, its registration) of the longest registered root that contains `url`; ("", {}) if none."""
    hit = _ROOTS_CACHE.get(url)
    if hit is not None:
        return hit
    best = ("", {})
    for root, reg in _roots().items():
        if url.startswith(root + "/") and len(root) > len(best[0]):
            best = (root, reg)
    _ROOTS_CACHE[url] = best
    return best


def options_for(url: str) -> dict[str, Any]:
    """The storage options registered for the root that contains `url` ({} when none)."""
    return dict(root_of(url)[1].get("options") or {})


# -- settings ------------------------------------------------------------------------------------------------
def _env_float(name: str, default: float) -> float:
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
        return cls(retries=int(_env_float("FASTMIX_REMOTE_RETRIES", 8)),
                   budget_s=_env_float("FASTMIX_REMOTE_RETRY_BUDGET_S", 20.0),
                   timeout_s=_env_float("FASTMIX_REMOTE_TIMEOUT_S", 10.0),
                   max_rps=_env_float("FASTMIX_REMOTE_MAX_RPS", 0.0))


class _RateLimit:
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


@dataclass
class Client:
    """Ranged GETs, HEAD and LIST against one S3 bucket or HTTP host, with the retry policy; thread-safe."""

    scheme: str
    bucket: str  # s3: the bucket; http(s): the host
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import urllib3

        self.policy = Policy.from_env()
        self.rate = _RateLimit(self.policy.max_rps)
        self.pool = urllib3.PoolManager(num_pools=8, maxsize=32, retries=False, block=False,
                                        timeout=urllib3.Timeout(connect=self.policy.timeout_s,
                                                                read=self.policy.timeout_s))
        self.signer = None
        if self.scheme == "s3":
            self._setup_s3()

    # -- S3 settings ---------------------------------------------------------------------------------------
    def _setup_s3(self) -> None:
        try:
            import botocore.session
        except ImportError as e:
            raise ConfigError(f"s3://{self.bucket}: s3:// roots need botocore (credentials, request signing): "
                              f"pip install 'fastmix[remote]'") from e

        o = self.options
        session = botocore.session.Session(profile=o.get("profile"))
        self.region = (o.get("region_name") or (o.get("client_kwargs") or {}).get("region_name")
                       or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                       or _quiet(lambda: session.get_config_variable("region")) or "us-east-1")
        endpoint = (o.get("endpoint_url") or (o.get("client_kwargs") or {}).get("endpoint_url")
                    or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        if endpoint:
            self.base = f"{endpoint.rstrip('/')}/{quote(self.bucket)}"
        else:
            self.base = f"https://{self.bucket}.s3.{self.region}.amazonaws.com"
        self.credentials = None
        if not o.get("anon"):
            key = o.get("key") or o.get("aws_access_key_id")
            secret = o.get("secret") or o.get("aws_secret_access_key")
            if key and secret:
                from botocore.credentials import Credentials

                self.credentials = Credentials(key, secret, o.get("token") or o.get("aws_session_token"))
            else:
                self.credentials = _quiet(session.get_credentials)
        if self.credentials is not None:
            from botocore.auth import S3SigV4Auth

            self.signer = S3SigV4Auth(self.credentials, "s3", self.region)

    def url_for(self, key: str) -> str:
        """The HTTP URL of object `key` (s3) or path `key` (http)."""
        if self.scheme == "s3":
            return f"{self.base}/{quote(key, safe='/-_.~')}"
        return f"{self.scheme}://{self.bucket}/{quote(key, safe='/-_.~%')}"

    def _headers(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        if self.signer is None:
            return headers
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method=method, url=url, headers=headers)
        self.signer.add_auth(req)
        return dict(req.headers.items())

    # -- requests ------------------------------------------------------------------------------------------
    def request(self, method: str, url: str, name: str, headers: dict[str, str] | None = None,
                expect: int | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request, retried per the policy. 404 → MissingFileError, 401/403 →
        RemoteAccessError, exhausted retries → RemoteError; `name` (the s3:// or https:// URL) is named.
        `expect`: the body length a ranged GET must return (a short body is retried)."""
        import urllib3

        p = self.policy
        start = time.monotonic()
        attempt, last = 0, ""
        while True:
            self.rate.wait()
            count(requests=1)
            cause = None
            left = max(p.budget_s - (time.monotonic() - start), 0.1)  # an attempt never outlives the budget
            try:
                r = self.pool.request(method, url, headers=self._headers(method, url, dict(headers or {})),
                                      preload_content=False, redirect=False,
                                      timeout=urllib3.Timeout(connect=min(p.timeout_s, left), read=min(p.timeout_s, left)))
                try:
                    body = r.read() if method != "HEAD" else b""
                except BaseException:
                    r.close()  # a connection broken mid-body never goes back to the pool (its socket is closed)
                    raise
                r.release_conn()
                status = r.status
                count(bytes=len(body))
                if status in _RETRY_STATUS:
                    cause, last = f"http_{status}", f"HTTP {status}"
                elif expect is not None and status == 206 and len(body) != expect:
                    cause, last = "short_body", f"a short body ({len(body)} of {expect} bytes)"
                else:
                    return status, {k.lower(): v for k, v in r.headers.items()}, body
            except (urllib3.exceptions.HTTPError, OSError) as e:
                cause, last = _cause(e), f"{type(e).__name__}: {e}"
                status, r = 0, None
            elapsed = time.monotonic() - start
            delay = min(p.cap_s, p.base_s * (2 ** attempt)) * random.uniform(0.5, 1.0)
            retry_after = _retry_after(r) if r is not None else None
            if retry_after is not None:
                delay = max(delay, min(retry_after, p.cap_s))
            if attempt >= p.retries or elapsed + delay > p.budget_s:
                count(failures=1)
                raise RemoteError(f"{name}: no answer after {attempt + 1} attempt(s) in {elapsed:.1f} s (last: "
                                  f"{last}); the object store is unreachable or overloaded. Retries are bounded by "
                                  f"FASTMIX_REMOTE_RETRIES={p.retries} and FASTMIX_REMOTE_RETRY_BUDGET_S={p.budget_s:g}")
            count(retries=1, **{f"retry_{cause}": 1})
            attempt += 1
            time.sleep(delay)

    def get_range(self, key: str, start: int, end: int, name: str, version: str | None = None) -> bytes:
        """Bytes [start, end) of object `key`; with `version` (its ETag when the dataset was opened), an object
        that has changed since is a RemoteError (its new bytes are never mixed with the old)."""
        url = self.url_for(key)
        status, headers, body = self.request("GET", url, name, {"Range": f"bytes={start}-{end - 1}"},
                                             expect=end - start)
        self._check(status, headers, body, name, "GET")
        etag = headers.get("etag", "").strip('"')
        if version and etag and etag != version:
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
        self._check(status, headers, body, name, "GET")
        return body

    def head(self, key: str, name: str) -> ObjectInfo:
        status, headers, body = self.request("HEAD", self.url_for(key), name)
        self._check(status, headers, body, name, "HEAD")
        return ObjectInfo(int(headers.get("content-length", -1)), _version(headers))

    def list(self, prefix: str, name: str) -> dict[str, ObjectInfo]:
        """{key relative to `prefix`: ObjectInfo} of every object under `prefix` (S3 ListObjectsV2, paginated)."""
        if self.scheme != "s3":
            raise ConfigError(f"{name}: an http(s) server cannot be listed")
        prefix = prefix.strip("/") + "/"
        out: dict[str, ObjectInfo] = {}
        token = None
        while True:
            q = f"list-type=2&prefix={quote(prefix, safe='')}&max-keys=1000"
            if token:
                q += f"&continuation-token={quote(token, safe='')}"
            status, headers, body = self.request("GET", f"{self.base}?{q}", name)
            self._check(status, headers, body, name, "LIST")
            root = ET.fromstring(body)
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for c in root.iter(f"{ns}Contents"):
                key = c.findtext(f"{ns}Key") or ""
                if key.startswith(prefix) and not key.endswith("/"):
                    out[key[len(prefix):]] = ObjectInfo(int(c.findtext(f"{ns}Size") or 0),
                                                        (c.findtext(f"{ns}ETag") or "").strip('"'))
            token = root.findtext(f"{ns}NextContinuationToken")
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true" or not token:
                return out

    def _check(self, status: int, headers: dict[str, str], body: bytes, name: str, what: str) -> None:
        if status in (200, 206):
            return
        detail = _s3_message(body)
        if status == 404:
            raise MissingFileError(f"{name} does not exist (HTTP 404{detail})")
        if status in (401, 403):
            count(failures=1)
            raise RemoteAccessError(
                f"{name}: access denied (HTTP {status}{detail}) on {what}; check the credentials "
                f"(storage_options key/secret/token, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE) and "
                f"that they may read this {'bucket' if self.scheme == 's3' else 'URL'}")
        if status == 416:
            raise RemoteError(f"{name}: the requested range is outside the object (HTTP 416); it may have changed")
        count(failures=1)
        raise RemoteError(f"{name}: HTTP {status}{detail} on {what}")


def _quiet(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a broken profile file must not hide the rest of the resolution
        return None


def _version(headers: dict[str, str]) -> str:
    etag = headers.get("etag", "").strip('"')
    return etag or f"{headers.get('last-modified', '')}/{headers.get('content-length', '')}"


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


def _s3_message(body: bytes) -> str:
    m = re.search(rb"<Code>([^<]*)</Code>", body or b"")
    return f" {m[1].decode(errors='replace')}" if m else ""


# -- clients per process ----------------------------------------------------------------------------------
_CLIENTS: dict[tuple, Client] = {}
_CLIENTS_LOCK = threading.Lock()
_CLIENTS_PID = [os.getpid()]


def client_for(url: str, options: dict[str, Any] | None = None) -> tuple[Client, str]:
    """(the Client of `url`'s bucket or host, the object key / path of `url`). `options` default to the
    registered root's (`options_for`)."""
    opts = options_for(url) if options is None else dict(options)
    parts = urlsplit(url)
    scheme, bucket, key = parts.scheme, parts.netloc, parts.path.lstrip("/")
    ident = (scheme, bucket, hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest())
    with _CLIENTS_LOCK:
        if _CLIENTS_PID[0] != os.getpid():  # a forked child: the parent's sockets are not ours
            _CLIENTS.clear()
            _CLIENTS_PID[0] = os.getpid()
        c = _CLIENTS.get(ident)
        if c is None:
            c = _CLIENTS[ident] = Client(scheme, bucket, opts)
    return c, key


def close_clients() -> None:
    """Close every pooled connection of this process (clients are made again on next use)."""
    with _CLIENTS_LOCK:
        for c in _CLIENTS.values():
            c.pool.clear()
        _CLIENTS.clear()


__all__ = ["Client", "ObjectInfo", "Policy", "RemoteAccessError", "RemoteError", "as_url", "client_for",
           "close_clients", "collect_stats", "count", "dump_stats", "is_url", "options_for", "register_root",
           "reset_stats", "root_of", "stats", "url_join"]
