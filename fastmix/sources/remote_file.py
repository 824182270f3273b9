"""Remote objects read by byte ranges: a seekable file object for PyAV and pyarrow.

`RemoteObject(url)` is one object version (its size and ETag from the root's manifest, else one HEAD): the
byte ranges this process holds (`memory`, a process-wide LRU bounded by `FASTMIX_REMOTE_MEMORY`, default
256M), the node-local `byte_cache.ByteCache` under it, and, for an mp4, its sample table (`mp4_index`), read
once. A read at a position held nowhere fetches one ranged GET from there (read-ahead: 64 KiB for videos,
the exact bytes for parquet); a read never returns bytes past the range it hit (a short read), so the decoder
asks again where the next range begins instead of fetching what it will not read.

Gaps served as zeros: FFmpeg reads through a short forward seek (under its 32 KiB short-seek threshold plus
its 32 KiB buffer) instead of seeking, so between two prefetched frame ranges of an mp4 it reads bytes it
throws away. A `RemoteFile` with `zero_fill` (set by `remote_video.RemoteVideo` once the container is open and
the sample table known) answers a read inside the file's sample data that neither memory nor the byte cache
holds with zeros instead of fetching it, and records the span (`zero_served`). Such a file is demuxed packet by
packet and any packet that overlaps a zero-served span gets its real bytes (`real_packets`: `pread`, fetched
then) before decoding, so decoded frames are those of the real file. (Only files with reordered frames are
demuxed at all: the others are decoded from their packets, `remote_video`.)

What a work item reads is fetched before it is decoded, concurrently: `fastmix.sources.remote_prefetch`.
Objects are kept per process in an LRU of 4096 (`object_for`); `RemoteFile(obj)` is one cursor over one.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from fastmix.sources import byte_cache, mp4_index, remote
from fastmix.sources.remote import ObjectInfo
from fastmix.sources.remote_budget import Overfetch

VIDEO_READAHEAD = 64 << 10  # fetched past a read that misses, while the file's sample table is unknown
INDEXED_READAHEAD = 4 << 10  # ... once it is known (prefetch fetches the frames; misses are box headers)
HEADER_READAHEAD = 16 << 10  # the first read of an mp4 (its top-level boxes; the moov of a faststart file)
# FFmpeg reads through a forward seek shorter than this (its 32 KiB short-seek threshold plus what its 32 KiB
# buffer holds) instead of seeking; such gaps are served as zeros (`RemoteFile.zero_fill`), not fetched
FFMPEG_READ_THROUGH = 64 << 10
_ZEROS = bytes(64 << 10)
_NO_INDEX = object()


def _env_size(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    from fastmix.sources.cache_dir import parse_size

    try:
        value = parse_size(raw)
    except ValueError:
        from fastmix.errors import ConfigError

        raise ConfigError(f"{name} must be a size like 256M, got {name}={raw!r}") from None
    return default if value is None else value


class _Memory:
    """Process-wide LRU of the byte ranges held by RemoteObjects, bounded in bytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[int, int], tuple[RemoteObject, int]] = OrderedDict()
        self.nbytes = 0
        self.max_bytes = _env_size("FASTMIX_REMOTE_MEMORY", 256 << 20)

    def add(self, obj: RemoteObject, start: int, size: int) -> None:
        drop = []
        with self.lock:
            self.entries[(id(obj), start)] = (obj, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes and len(self.entries) > 1:
                (_, s), (o, n) = self.entries.popitem(last=False)
                self.nbytes -= n
                drop.append((o, s))
        for o, s in drop:
            o._forget(s)

    def touch(self, obj: RemoteObject, start: int) -> None:
        with self.lock:
            k = (id(obj), start)
            if k in self.entries:
                self.entries.move_to_end(k)

    def remove(self, obj: RemoteObject, start: int) -> None:
        with self.lock:
            hit = self.entries.pop((id(obj), start), None)
            if hit is not None:
                self.nbytes -= hit[1]


_MEMORY = _Memory()


class RemoteObject:
    """One version of one remote object: its ranges in memory and in the byte cache, and its sample table."""

    def __init__(self, url: str, info: ObjectInfo | None = None) -> None:
        self.url = url
        self.client, self.key = remote.client_for(url)
        info = info or object_info(url)
        self.size, self.version = info.size, info.etag
        root = byte_cache.cache_path()
        self.disk = byte_cache.ByteCache(root, url, self.version) if root is not None else None
        self.lock = threading.RLock()
        self._starts: list[int] = []
        self._data: dict[int, bytes] = {}
        self._index: Any = None
        self._index_lock = threading.Lock()
        self._zeroed: list[tuple[int, int]] = []  # spans served as zeros (sorted, merged)

    # -- held ranges ---------------------------------------------------------------------------------------
    def _held(self, pos: int) -> tuple[int, bytes] | None:
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0:
            s = self._starts[i]
            d = self._data[s]
            if pos < s + len(d):
                return s, d
        return None

    def _next_start(self, pos: int) -> int:
        i = bisect.bisect_right(self._starts, pos)
        return self._starts[i] if i < len(self._starts) else self.size

    def _insert(self, start: int, data: bytes) -> None:
        """Hold bytes [start, start+len) (only the parts not held yet: ranges never overlap)."""
        end = start + len(data)
        with self.lock:
            for a, b in self._gaps(start, end):
                piece = data if (a, b) == (start, end) else data[a - start:b - start]
                bisect.insort(self._starts, a)
                self._data[a] = piece
                _MEMORY.add(self, a, len(piece))

    def _forget(self, start: int) -> None:
        with self.lock:
            if self._data.pop(start, None) is not None:
                self._starts.remove(start)

    @property
    def index_bytes(self) -> int:
        """Bytes of the sample table held (0 before it is read)."""
        index = self._index
        if index is None or index is _NO_INDEX:
            return 0
        return sum(a.nbytes for a in (index.pts_s, index.offset, index.size, index.sync, index._order, index._keys,
                                    index._sorted_pts))

    def forget_all(self) -> None:
        with self.lock:
            for s in list(self._starts):
                _MEMORY.remove(self, s)
            self._starts.clear()
            self._data.clear()
            self._zeroed.clear()
            self._index = None

    def _gaps(self, a: int, b: int) -> list[tuple[int, int]]:
        """Parts of [a, b) not held in memory."""
        out, pos = [], a
        i = max(bisect.bisect_right(self._starts, a) - 1, 0)
        while pos < b and i < len(self._starts):
            s = self._starts[i]
            e = s + len(self._data[s])
            if e <= pos:
                i += 1
                continue
            if s >= b:
                break
            if s > pos:
                out.append((pos, min(s, b)))
            pos = max(pos, e)
            i += 1
        if pos < b:
            out.append((pos, b))
        return out

    # -- reading -------------------------------------------------------------------------------------------
    def read_at(self, pos: int, n: int, readahead: int, zero_fill: bool = False) -> bytes:
        """Up to `n` bytes at `pos` (at least one unless pos is at the end), from one held range. With
        `zero_fill`, a position inside the sample data (known sample table) held neither in memory nor in the
        byte cache reads as zeros up to the next held byte (recorded, see `zero_served`) instead of a GET."""
        if pos >= self.size or n <= 0:
            return b""
        tried_disk = False
        while True:
            with self.lock:
                hit = self._held(pos)
                if hit is not None:
                    s, d = hit
                    _MEMORY.touch(self, s)
                    return d[pos - s:pos - s + n]
                stop = self._next_start(pos)
            extent = self._data_extent() if zero_fill else None
            if extent is not None and extent[0] <= pos < extent[1]:
                if not tried_disk:  # what the byte cache holds is real: load it, then look again (a gap is
                    tried_disk = True  # read through, not parsed: the cache is not listed again for it)
                    missing = self._from_disk(pos, min(stop, extent[1]), refresh=False)
                    if not missing or missing[0][0] != pos:
                        continue
                    stop = missing[0][1]
                return self._zeros(pos, min(n, stop - pos, extent[1] - pos, len(_ZEROS)))
            self._fill(pos, min(stop, self.size, pos + max(n, readahead)))

    def _data_extent(self) -> tuple[int, int] | None:
        index = self._index
        return None if index is None or index is _NO_INDEX else index.extent

    def _zeros(self, pos: int, n: int) -> bytes:
        end = pos + n
        with self.lock:
            z = self._zeroed
            i = bisect.bisect_left(z, (pos, pos))
            if i > 0 and z[i - 1][1] >= pos:  # extends the span before
                i -= 1
                pos = z[i][0]
                end = max(end, z[i][1])
                del z[i]
            while i < len(z) and z[i][0] <= end:
                end = max(end, z[i][1])
                del z[i]
            z.insert(i, (pos, end))
        return _ZEROS[:n]

    def zero_served(self, pos: int, n: int) -> bool:
        """Whether any of bytes [pos, pos + n) was served as zeros (`read_at` with zero_fill)."""
        with self.lock:
            z = self._zeroed
            i = bisect.bisect_right(z, (pos + n, pos + n))
            return i > 0 and z[i - 1][1] > pos

    def pread(self, pos: int, n: int, readahead: int = 0) -> bytes:
        """Exactly bytes [pos, min(pos + n, size))."""
        parts, end = [], min(pos + n, self.size)
        while pos < end:
            chunk = self.read_at(pos, end - pos, readahead)
            if not chunk:
                break
            parts.append(chunk)
            pos += len(chunk)
        return b"".join(parts)

    def _from_disk(self, a: int, b: int, refresh: bool = True) -> list[tuple[int, int]]:
        """Load what the byte cache holds of [a, b); returns the parts still missing. refresh: list the cache
        again (at most every 0.2 s) before calling a part missing (another process may have fetched it)."""
        if self.disk is None:
            return [(a, b)]
        missing, pos = [], a
        refreshed = not refresh
        while pos < b:
            r = self.disk.covering(pos)
            if r is None and not refreshed:
                self.disk.ranges(refresh=True)
                refreshed = True
                continue
            if r is not None:
                hi = min(b, r[1])  # only the part asked for: a cached range may span many frames' packets
                data = self.disk.read(*r, pos, hi)
                if data is not None:
                    remote.count(cache_hits=1, cache_bytes=len(data))
                    self._insert(pos, data)
                    pos = hi
                    continue
            ranges = self.disk.ranges()
            i = bisect.bisect_right(ranges, (pos, 1 << 62))
            nxt = min(ranges[i][0], b) if i < len(ranges) else b
            missing.append((pos, nxt))
            pos = nxt
        return missing

    def _fill(self, a: int, b: int) -> None:
        """Hold [a, b): from the byte cache where it has it, else one ranged GET per missing part."""
        missing = self._from_disk(a, b)
        if missing and missing[0][0] == a:  # the caller reads from `a`: fetch only when the cache lacks it
            self._fetch(*missing[0])

    def _fetch(self, a: int, b: int, store: bool = True) -> tuple[int, bytes]:
        """GET [a, b) and hold it; `store`: write it to the byte cache now (else the caller does, with others:
        `store_many`). Returns (a, the bytes)."""
        data = self.client.get_range(self.key, a, b, self.url, self.version)
        remote.count(range_gets=1, range_bytes=len(data))
        self._insert(a, data)
        if store and self.disk is not None:
            self.disk.write(a, data)
        return a, data

    def store_many(self, parts: Sequence[tuple[int, bytes]]) -> None:
        """Write fetched ranges [(start, bytes)] to the byte cache in one file (`ByteCache.write_many`)."""
        if self.disk is not None and parts:
            self.disk.write_many(parts)

    def missing(self, ranges: Sequence[tuple[int, int]], merge_gap: int, overfetch: float = 0.25
                ) -> list[tuple[int, int]]:
        """The GETs that make `ranges` held: of the parts of `ranges` held neither in memory nor in the byte
        cache (cached parts are loaded), runs of parts joined into one GET across their gaps — the smallest
        gaps first, each at most `merge_gap` bytes, while the bytes this process fetched across gaps stay
        within `overfetch` times the bytes its prefetches needed (`remote_budget.Overfetch.allow`: one request
        per nearby range, not one per frame; at most 1 + overfetch times the bytes over the process's life)."""
        parts: list[tuple[int, int]] = []
        for a, b in _merge((max(a, 0), min(b, self.size)) for a, b in ranges):
            with self.lock:
                gaps = self._gaps(a, b)
            parts += [p for g in gaps for p in self._from_disk(*g)]
        joined = _OVERFETCH.allow(parts, merge_gap, overfetch)
        out: list[list[int]] = []
        for j, (a, b) in enumerate(parts):
            if j - 1 in joined:
                out[-1][1] = b
            else:
                out.append([a, b])
        return [(a, b) for a, b in out]

    def fetch_missing(self, a: int, b: int, store: bool = True) -> tuple[int, bytes] | None:
        """Fetch [a, b) (only its parts not held: a merged range may span held ones); (start, bytes) fetched,
        None when all was held. `store`: as for `_fetch`."""
        with self.lock:
            gaps = self._gaps(a, b)
        if gaps:
            return self._fetch(gaps[0][0], gaps[-1][1], store)
        return None

    # -- mp4 -----------------------------------------------------------------------------------------------
    def sample_index(self) -> mp4_index.SampleIndex | None:
        """The video sample table (read once; None when the file has none usable)."""
        with self._index_lock:
            if self._index is None:
                moov = mp4_index.find_moov(lambda p, n: self.pread(p, n, HEADER_READAHEAD), self.size)
                index = mp4_index.parse(moov) if moov else None
                self._index = _NO_INDEX if index is None else index
        return None if self._index is _NO_INDEX else self._index


class RemoteFile(io.RawIOBase):
    """A read-only, seekable file over a RemoteObject (what PyAV and pyarrow are given). A read returns the
    bytes of one held range (a short read: PyAV asks again); `whole_reads` (pyarrow, which takes a short read
    for the end of the file) returns all that was asked. `zero_fill`: reads inside the sample data held
    nowhere are zeros (`RemoteObject.read_at`; for a demuxer whose packets are checked with `zero_served`)."""

    def __init__(self, obj: RemoteObject, readahead: int | None = None, whole_reads: bool = False) -> None:
        super().__init__()
        self.obj, self._readahead, self.pos, self.whole_reads = obj, readahead, 0, whole_reads
        self.zero_fill = False
        self.name = obj.url

    @property
    def readahead(self) -> int:
        """Bytes fetched past a read that misses (default: by whether the mp4's sample table is known)."""
        if self._readahead is not None:
            return self._readahead
        index = self.obj._index
        return INDEXED_READAHEAD if index is not None and index is not _NO_INDEX else VIDEO_READAHEAD

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.obj.size}[whence]
        self.pos = max(0, base + int(offset))
        return self.pos

    def size(self) -> int:
        return self.obj.size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or self.whole_reads:
            n = self.obj.size - self.pos if n is None or n < 0 else n
            data = self.obj.pread(self.pos, n, self.readahead)
        else:
            data = self.obj.read_at(self.pos, n, self.readahead, self.zero_fill)
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def real_packets(packets: Any, obj: RemoteObject) -> Any:
    """The demuxed `packets` (PyAV) of `obj`, each one that overlaps bytes served as zeros given its real bytes
    (fetched now unless held)."""
    for packet in packets:
        if packet.size and obj.zero_served(packet.pos, packet.size):
            packet.update(obj.pread(packet.pos, packet.size))
        yield packet


_OVERFETCH = Overfetch()  # the process's prefetch byte budget


def _merge(ranges: Any) -> list[tuple[int, int]]:
    """Sorted ranges, those that overlap or touch merged."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        elif b > a:
            out.append([a, b])
    return [(a, b) for a, b in out]


# -- object info and objects per process ------------------------------------------------------------------
_INFO: dict[str, ObjectInfo] = {}
_MANIFESTS: dict[str, dict[str, list]] = {}
_OBJECTS: OrderedDict[str, RemoteObject] = OrderedDict()
_OBJECTS_LOCK = threading.Lock()
_MAX_OBJECTS = 4096
_MAX_INDEX_BYTES = 64 << 20  # sample tables kept per process (a 30k-frame mp4's is ~1 MB)


def _manifest(path: str) -> dict[str, list]:
    hit = _MANIFESTS.get(path)
    if hit is None:
        try:
            with open(path, encoding="utf-8") as f:
                hit = json.load(f).get("objects", {})
        except (OSError, ValueError):
            hit = {}
        _MANIFESTS[path] = hit
    return hit


def object_info(url: str) -> ObjectInfo:
    """Size and version of `url`: from its registered root's manifest (written at open), else one HEAD."""
    hit = _INFO.get(url)
    if hit is not None:
        return hit
    root, reg = remote.root_of(url)
    entry = _manifest(reg["manifest"]).get(url[len(root) + 1:]) if reg.get("manifest") else None
    if entry is not None:
        info = ObjectInfo(int(entry[0]), str(entry[1]))
    else:
        client, key = remote.client_for(url)
        info = client.head(key, url)
    _INFO[url] = info
    return info


def object_for(url: str, info: ObjectInfo | None = None) -> RemoteObject:
    """The process's RemoteObject of `url` (made on first use; LRU of 4096 objects whose sample tables hold
    at most 64 MiB: an evicted object drops its held bytes and table, read again from the byte cache)."""
    with _OBJECTS_LOCK:
        obj = _OBJECTS.get(url)
        if obj is not None and (info is None or (info.size, info.etag) == (obj.size, obj.version)):
            _OBJECTS.move_to_end(url)
            return obj
    obj = RemoteObject(url, info)
    with _OBJECTS_LOCK:
        _OBJECTS[url] = obj
        index_bytes = sum(o.index_bytes for o in _OBJECTS.values())
        while len(_OBJECTS) > 1 and (len(_OBJECTS) > _MAX_OBJECTS or index_bytes > _MAX_INDEX_BYTES):
            old = _OBJECTS.popitem(last=False)[1]
            index_bytes -= old.index_bytes
            old.forget_all()
    return obj


def forget_objects() -> None:
    """Drop every object, its held bytes and the object infos of this process (tests; after a dataset change)."""
    with _OBJECTS_LOCK:
        for obj in _OBJECTS.values():
            obj.forget_all()
        _OBJECTS.clear()
    _INFO.clear()
    _MANIFESTS.clear()


__all__ = ["FFMPEG_READ_THROUGH", "RemoteFile", "RemoteObject", "forget_objects", "object_for", "object_info",
           "real_packets"]
