"""The node-local byte cache: byte ranges of remote objects, shared by every rank and worker of a node.

Where: `$FASTMIX_REMOTE_CACHE` (a directory), else `$FASTMIX_CACHE/bytes`, else `$XDG_CACHE_HOME/fastmix/bytes`,
else `~/.cache/fastmix/bytes`. `FASTMIX_REMOTE_CACHE=off` (or `0`, `none`) disables it: every range then
crosses the network each time a process needs it (for datasets far larger than the disk); the per-process
memory of `fastmix.sources.remote_file` remains.

Layout: one directory per object version, `<sha256(url, version)[:2]>/<sha256[:32]>/`, holding one file per
fetched range, named `<start>-<end>` (bytes [start, end) of the object). A changed object (another ETag) gets
another directory, so stale bytes are never served; the old one ages out.

- **Atomic**: a range is written to `.tmp-<pid>-<rand>` in its directory and renamed into place; a reader sees
  a whole file or none. Two processes fetching the same range both rename: the same bytes.
- **Concurrent processes**: readers take no lock; a file evicted while a process reads it stays readable
  through the open descriptor; a file that vanished before it was opened is a miss.
- **Bounded, LRU**: `FASTMIX_REMOTE_CACHE_MAX` (bytes, or with a K/M/G/T suffix; default 50G). A hit stamps the
  file's mtime (at most once a minute per file and process); after a process has written 1/64 of the bound
  since its last check, it scans the cache under a non-blocking `flock` of `.evict.lock` (one evictor at a
  time) and deletes the least recently used files down to 90 % of the bound, and temporary files of dead
  processes. Directories 0700, files 0600; files of another user are never read.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import threading
import time
from pathlib import Path

from fastmix.errors import ConfigError
from fastmix.sources import cache_dir

ENV_DIR = "FASTMIX_REMOTE_CACHE"
ENV_MAX = "FASTMIX_REMOTE_CACHE_MAX"
DEFAULT_MAX_BYTES = 50 << 30
_OFF = ("off", "0", "none", "no", "false")
_RANGE = re.compile(r"^(\d+)-(\d+)$")
_TEMP = re.compile(r"^\.tmp-(\d+)-")
_TOUCH_EVERY_S = 60.0
_MTIME_SLACK_NS = 50_000_000  # a directory listed this long after its last change: a later change has another mtime


def cache_path() -> Path | None:
    """The cache directory, or None when the cache is off."""
    raw = os.environ.get(ENV_DIR)
    if raw is not None and raw.strip().lower() in _OFF:
        return None
    if raw:
        return Path(raw).expanduser()
    if os.environ.get("FASTMIX_CACHE"):
        return Path(os.environ["FASTMIX_CACHE"]).expanduser() / "bytes"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "fastmix" / "bytes"


def max_bytes() -> int | None:
    raw = os.environ.get(ENV_MAX)
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        return cache_dir.parse_size(raw)
    except ValueError:
        raise ConfigError(f"{ENV_MAX} must be a size like 50G or 500M (or none), got {ENV_MAX}={raw!r}") from None


class ByteCache:
    """The byte ranges of one object version in the node-local cache (see the module docstring)."""

    def __init__(self, root: Path, url: str, version: str) -> None:
        h = hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()
        self.root = root
        self.dir = root / h[:2] / h[:32]
        self._ranges: list[tuple[int, int]] | None = None
        self._names: dict[str, tuple[int, int] | None] = {}  # every name listed: its range (None: not a range)
        self._stamp: tuple[int, int, int] | None = None  # the directory's (mtime ns, inode) at the last listing, and when
        self._touched: dict[str, float] = {}

    def ranges(self, refresh: bool = False) -> list[tuple[int, int]]:
        """The cached ranges [(start, end)], sorted. `refresh`: what other processes wrote since the last
        listing is found (the directory is listed again when its mtime says it changed: one stat otherwise)."""
        if self._ranges is not None and not (refresh and self._changed()):
            return self._ranges
        now = time.time_ns()
        try:
            st = os.stat(self.dir)
            names = os.listdir(self.dir)
        except OSError:
            st, names = None, []
        self._stamp = None if st is None else (st.st_mtime_ns, st.st_ino, now)
        known = self._names
        fresh: dict[str, tuple[int, int] | None] = {}
        for n in names:
            if n in known:
                fresh[n] = known[n]
            else:
                m = _RANGE.match(n)
                fresh[n] = (int(m[1]), int(m[2])) if m else None
        self._names = fresh
        self._ranges = sorted(r for r in fresh.values() if r is not None)
        return self._ranges

    def _changed(self) -> bool:
        """Whether the directory may hold entries the last listing missed: its mtime or inode differ, or the
        listing came within the filesystem's timestamp granularity of its last change (a later change may carry
        the same mtime)."""
        stamp = self._stamp
        if stamp is None:
            return True
        try:
            st = os.stat(self.dir)
        except OSError:
            return True
        return (st.st_mtime_ns, st.st_ino) != stamp[:2] or stamp[2] - stamp[0] < _MTIME_SLACK_NS

    def covering(self, pos: int) -> tuple[int, int] | None:
        """A cached range holding byte `pos` (of those starting closest before it, the one reaching furthest),
        or None."""
        ranges = self.ranges()
        i = bisect.bisect_right(ranges, (pos, 1 << 62))
        best = None
        for s, e in reversed(ranges[max(0, i - 8):i]):
            if pos < e and (best is None or e > best[1]):
                best = (s, e)
        return best

    def read(self, start: int, end: int) -> bytes | None:
        """The whole cached range [start, end), or None when it is gone or not this user's."""
        name = f"{start}-{end}"
        path = self.dir / name
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_uid != os.geteuid():
                    return None
                data = f.read()
        except OSError:
            self._ranges = None
            return None
        if len(data) != end - start:
            return None
        now = time.monotonic()
        if now - self._touched.get(name, -1e9) > _TOUCH_EVERY_S:
            self._touched[name] = now
            with contextlib.suppress(OSError):
                os.utime(path)
        return data

    def write(self, start: int, data: bytes) -> None:
        """Store bytes [start, start + len(data)) (best effort: a full or read-only disk is skipped)."""
        end = start + len(data)
        try:
            cache_dir.make_private_dirs(self.dir)
            tmp = self.dir / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
            fd = cache_dir.create_private(tmp)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / f"{start}-{end}")
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            return
        name = f"{start}-{end}"
        if self._ranges is not None and name not in self._names:
            self._names[name] = (start, end)
            bisect.insort(self._ranges, (start, end))
        _written(self.root, len(data))


# -- the bound ---------------------------------------------------------------------------------------------
_WRITTEN = [0]
_WRITTEN_LOCK = threading.Lock()


def _written(root: Path, n: int) -> None:
    limit = max_bytes()
    if limit is None:
        return
    with _WRITTEN_LOCK:
        _WRITTEN[0] += n
        due = _WRITTEN[0] >= max(limit // 64, 1)
        if due:
            _WRITTEN[0] = 0
    if due:
        evict(root, limit)


def evict(root: Path, limit: int | None = None) -> int:
    """Delete least recently used ranges until the cache holds at most 90 % of `limit` bytes (default: the
    bound), and temporary files of dead processes; returns the bytes deleted (0 when another process is
    evicting)."""
    limit = max_bytes() if limit is None else limit
    try:
        fd = os.open(root / ".evict.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0
        files, total = [], 0
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if st.st_uid != os.geteuid():
                    continue
                m = _TEMP.match(n)
                if m:
                    if not cache_dir.pid_alive(int(m[1])):
                        with contextlib.suppress(OSError):
                            os.unlink(p)
                    continue
                if _RANGE.match(n):
                    files.append((st.st_mtime, st.st_size, p))
                    total += st.st_size
        freed = 0
        if limit is not None and total > limit:
            target = int(limit * 0.9)
            for _, size, p in sorted(files):
                if total - freed <= target:
                    break
                with contextlib.suppress(OSError):
                    os.unlink(p)
                    freed += size
        return freed
    finally:
        os.close(fd)


def total_bytes(root: Path) -> int:
    """Bytes of the cached ranges under `root`."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            if _RANGE.match(n):
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


__all__ = ["ByteCache", "cache_path", "evict", "max_bytes", "total_bytes"]
