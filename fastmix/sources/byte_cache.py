"""The node-local byte cache: byte ranges of remote objects, shared by every rank and worker of a node.

Where: `$FASTMIX_REMOTE_CACHE` (a directory), else `$FASTMIX_CACHE/bytes`, else `$XDG_CACHE_HOME/fastmix/bytes`,
else `~/.cache/fastmix/bytes`. `FASTMIX_REMOTE_CACHE=off` (or `0`, `none`) disables it: every range then
crosses the network each time a process needs it (for datasets far larger than the disk); the per-process
memory of `fastmix.sources.remote_file` remains.

Layout: one directory per object version, `<sha256(url, version)[:2]>/<sha256[:32]>/`, holding files of
fetched ranges, each named by the ranges it holds back to back: `<start>-<end>` (bytes [start, end) of the
object) or `<s1>-<e1>,<s2>-<e2>,...` (the ranges one prefetch fetched from the object: one file create for
them all; a name lists at most 240 characters of ranges). A changed object (another ETag) gets another
directory, so stale bytes are never served; the old one ages out. The LRU unit is the file.

- **Atomic**: a file is written to `.tmp-<pid>-<rand>` in its directory and renamed into place; a reader sees
  a whole file or none (and checks its size against what its name lists). Two processes writing the same
  ranges both rename: the same bytes.
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
from collections.abc import Sequence
from pathlib import Path

from fastmix.errors import ConfigError
from fastmix.sources import cache_dir

ENV_DIR = "FASTMIX_REMOTE_CACHE"
ENV_MAX = "FASTMIX_REMOTE_CACHE_MAX"
DEFAULT_MAX_BYTES = 50 << 30
_OFF = ("off", "0", "none", "no", "false")
_NAME = re.compile(r"^\d+-\d+(,\d+-\d+)*$")  # a cache file: the ranges it holds, back to back
_NAME_CHARS = 240  # a file name lists its ranges in at most this many characters (names end at 255 bytes)
_TEMP = re.compile(r"^\.tmp-(\d+)-")
_TOUCH_EVERY_S = 60.0
_RELIST_S = 0.2


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
        self._names: dict[str, list[tuple[int, int]]] = {}  # every name listed: the ranges it holds ([]: none)
        self._where: dict[tuple[int, int], tuple[str, int]] = {}  # a range: (its file, its offset there)
        self._listed = 0.0
        self._touched: dict[str, float] = {}

    def ranges(self, refresh: bool = False) -> list[tuple[int, int]]:
        """The cached ranges [(start, end)], sorted (listed again when `refresh` and the last listing is more
        than 0.2 s old: what other processes wrote since is found then; only names not seen before are parsed)."""
        if self._ranges is not None and not (refresh and time.monotonic() - self._listed > _RELIST_S):
            return self._ranges
        self._listed = time.monotonic()
        try:
            names = set(os.listdir(self.dir))
        except OSError:
            names = set()
        known = self._names
        if self._ranges is None or not known.keys() <= names:  # the first listing, or files were evicted
            self._names, self._where, self._ranges = {}, {}, []
            for n in names:
                self._add(n, known[n] if n in known else _parse(n))
            self._ranges.sort()
            return self._ranges
        for n in names - known.keys():
            self._add(n, _parse(n), insort=True)
        return self._ranges

    def _add(self, name: str, ranges: list[tuple[int, int]], insort: bool = False) -> None:
        self._names[name] = ranges
        offset = 0
        assert self._ranges is not None
        for r in ranges:
            if r not in self._where:
                if insort:
                    bisect.insort(self._ranges, r)
                else:
                    self._ranges.append(r)
            self._where[r] = (name, offset)
            offset += r[1] - r[0]

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

    def read(self, start: int, end: int, lo: int | None = None, hi: int | None = None) -> bytes | None:
        """Bytes [lo, hi) (default: all) of the cached range [start, end), or None when it is gone, damaged or
        not this user's."""
        hit = self._where.get((start, end))
        if hit is None:
            return None
        name, offset = hit
        lo = start if lo is None else max(lo, start)
        hi = end if hi is None else min(hi, end)
        offset += lo - start
        path = self.dir / name
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_uid != os.geteuid() or st.st_size != sum(e - s for s, e in self._names[name]):
                    return None
                data = os.pread(f.fileno(), hi - lo, offset)
        except OSError:
            self._ranges = None
            return None
        if len(data) != hi - lo:
            return None
        now = time.monotonic()
        if now - self._touched.get(name, -1e9) > _TOUCH_EVERY_S:
            self._touched[name] = now
            with contextlib.suppress(OSError):
                os.utime(path)
        return data

    def write(self, start: int, data: bytes) -> None:
        """Store bytes [start, start + len(data)) (best effort: a full or read-only disk is skipped)."""
        self.write_many([(start, data)])

    def write_many(self, parts: Sequence[tuple[int, bytes]]) -> None:
        """Store the ranges [(start, bytes)] (sorted, not overlapping) in as few files as their names allow:
        one file holds the ranges its name lists (at most 240 characters), back to back (best effort: a full or
        read-only disk is skipped)."""
        group: list[tuple[int, bytes]] = []
        chars = 0
        for s, d in sorted((s, d) for s, d in parts if d):
            n = len(f"{s}-{s + len(d)},")
            if group and chars + n > _NAME_CHARS:
                self._write_file(group)
                group, chars = [], 0
            group.append((s, d))
            chars += n
        if group:
            self._write_file(group)

    def _write_file(self, parts: list[tuple[int, bytes]]) -> None:
        ranges = [(s, s + len(d)) for s, d in parts]
        name = ",".join(f"{s}-{e}" for s, e in ranges)
        try:
            cache_dir.make_private_dirs(self.dir)
            tmp = self.dir / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
            fd = cache_dir.create_private(tmp)
            try:
                for _, d in parts:
                    view = memoryview(d)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / name)
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            return
        if self._ranges is not None and name not in self._names:
            self._add(name, ranges, insort=True)
        _written(self.root, sum(e - s for s, e in ranges))


def _parse(name: str) -> list[tuple[int, int]]:
    """The ranges a file name lists ([] for a name that is not a cache file's)."""
    if not _NAME.match(name):
        return []
    return [(int(a), int(b)) for a, _, b in (r.partition("-") for r in name.split(","))]


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
                if _NAME.match(n):
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
            if _NAME.match(n):
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


__all__ = ["ByteCache", "cache_path", "evict", "max_bytes", "total_bytes"]
