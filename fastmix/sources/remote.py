"""Dataset roots in object storage: URLs, the roots known to this process, and one client per store and host.

A root may be `s3://bucket/prefix/<repo>` (`remote_s3`), `gs://bucket/prefix/<repo>` (GCS's XML API, S3's
protocol with HMAC keys: `remote_s3`), `hf://datasets/<org>/<name>[@revision]` (the Hub, its revision pinned to
a commit at open: `remote_hf`) or `http(s)://host/path/<repo>` (a server that honours `Range`; it cannot be
listed, the dataset's files are found from its metadata: `fastmix.sources.remote_mirror`). `pathlib.Path`
collapses "//", so `Path("s3://b/x")` ("s3:/b/x") is recognised too: a config's
`lerobot_home="s3://bucket/lerobot"` joined with a repo id by `pathlib` still names the bucket.

Requests, retries, TLS and the rate bound: `fastmix.sources.remote_http` (over `remote_wire`'s keep-alive
HTTP/1.1 connections, shared by the threads of a process). The `storage_options` given to `LeRobotSource` reach the spawned decode workers through the environment
(`FASTMIX_REMOTE_ROOTS`, JSON {root url: {"options", "manifest"}}, set in the opening process): a secret passed
there is visible to the child processes, as an `AWS_*` variable is.

**Counters** (`stats()`): requests, bytes, retries and failures by cause, byte-cache hits, per process; every
process that registers a root or inherits one writes them to `$FASTMIX_REMOTE_STATS_DIR/<pid>.json` and
`collect_stats` sums them (`fastmix.sources.remote_stats`; `MixtureLoader.stats()` sums its workers').
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit

from fastmix.errors import ConfigError
from fastmix.sources import remote_stats
from fastmix.sources.remote_http import Client, ObjectInfo, Policy, RemoteAccessError, RemoteError
from fastmix.sources.remote_stats import collect_stats, count, dump_stats, reset_stats, stats

SCHEMES = ("s3", "gs", "hf", "http", "https")
ROOTS_ENV = "FASTMIX_REMOTE_ROOTS"
_MANGLED = re.compile(r"^(s3|https?|gs|hf):/(?!/)(.+)$")


# -- URLs ----------------------------------------------------------------------------------------------------
def as_url(root: Any) -> str | None:
    """The URL `root` names (a str or a Path, also a Path-collapsed "s3:/bucket/x"), or None for a local path;
    an unknown scheme or a URL without a bucket / host / repo is a ConfigError."""
    if root is None:
        return None
    text = os.fspath(root) if isinstance(root, os.PathLike) else str(root)
    m = _MANGLED.match(text)
    if m and not os.path.exists(text):
        text = f"{m[1]}://{m[2]}"
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if not scheme:
        return None
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
    return isinstance(path, str) and "://" in path and path.split("://", 1)[0] in SCHEMES


# -- roots known to this process and its children ----------------------------------------------------------
def register_root(url: str, options: dict[str, Any] | None, manifest: str | None) -> None:
    """Record a root's storage options and object manifest here and in the environment (for spawned workers);
    counters are then written for collection (`remote_stats.ensure_stats_dir`)."""
    roots = _roots()
    roots[url] = {"options": dict(options or {}), "manifest": manifest}
    os.environ[ROOTS_ENV] = json.dumps(roots)
    _ROOTS_CACHE.clear()
    remote_stats.ensure_stats_dir()


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


# -- clients per process ----------------------------------------------------------------------------------
_CLIENTS: dict[tuple, Client] = {}
_CLIENTS_LOCK = threading.Lock()
_CLIENTS_PID = [os.getpid()]


def client_for(url: str, options: dict[str, Any] | None = None) -> tuple[Client, str]:
    """(the Client of `url`'s bucket, host or Hub repo, the object key / path of `url` in it). `options`
    default to the registered root's (`options_for`; for hf:// they carry the commit pinned at open)."""
    opts = options_for(url) if options is None else dict(options)
    scheme = url.split("://", 1)[0]
    if scheme == "hf":
        from fastmix.sources.remote_hf import HfClient, parse

        bucket, revision, key = parse(url)
        if revision and not opts.get("_commit"):
            opts["_commit"] = revision  # a root not opened here: its revision as written
        kind: type[Client] = HfClient
    else:
        parts = urlsplit(url)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if scheme in ("s3", "gs"):
            from fastmix.sources.remote_s3 import S3Client

            kind = S3Client
        else:
            kind = Client
    ident = (scheme, bucket, hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest())
    with _CLIENTS_LOCK:
        if _CLIENTS_PID[0] != os.getpid():  # a forked child: the parent's sockets are not ours
            _CLIENTS.clear()
            _CLIENTS_PID[0] = os.getpid()
        c = _CLIENTS.get(ident)
        if c is None:
            c = _CLIENTS[ident] = kind(scheme, bucket, opts)
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
