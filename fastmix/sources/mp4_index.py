"""The sample table of an mp4's video track (from its `moov` box): where each compressed frame lies in the file.

Used to turn requested timestamps into the byte ranges a decoder reads: from the keyframe before each frame
to the frame (plus, with B-frames, the frames the decoder needs before it outputs it), so a remote video is
fetched by those ranges only. A file without a usable table (fragmented mp4, no video track, a damaged box)
gives None: the reader then fetches by read-ahead, and decoding is unchanged either way — ranges only decide
what is fetched before the decoder asks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
_MAX_MOOV = 256 << 20
EARLY_S = 5e-5  # FrameReader's default tolerance_s / 2: a frame this close before a time ends its search


@dataclass(frozen=True)
class SampleIndex:
    """Per sample, in decode order: pts_s float64 (N,) presentation time in seconds (edit list applied, as
    FFmpeg reports it), offset int64 (N,) and size int64 (N,) in bytes, sync bool (N,) keyframes.
    reorder: whether presentation order differs from decode order (B-frames). extent: (first, end) byte of the
    sample data."""

    pts_s: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    sync: np.ndarray
    reorder: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "_order", np.argsort(self.pts_s, kind="stable"))
        object.__setattr__(self, "_sorted_pts", self.pts_s[self._order])
        keys = np.flatnonzero(self.sync)
        object.__setattr__(self, "_keys", keys if len(keys) and keys[0] == 0 else np.concatenate([[0], keys]))
        gaps = np.diff(self.pts_s[self._keys]) if len(self._keys) > 1 else np.array([0.0])
        object.__setattr__(self, "key_interval_s", float(gaps.max()) if len(gaps) else 0.0)
        object.__setattr__(self, "extent", (int(self.offset.min()), int((self.offset + self.size).max())))

    def sample_at(self, t: float) -> int:
        """Decode index of the sample presented nearest to `t` seconds."""
        pts = self._sorted_pts
        k = int(pts.searchsorted(t))
        if k > 0 and (k == len(pts) or abs(float(pts[k - 1]) - t) <= abs(float(pts[k]) - t)):
            k -= 1
        return int(self._order[k])

    def start_of(self, t: float) -> int:
        """Decode index of the keyframe a forward decode to time `t` starts from: the last keyframe presented at
        or before `t` (or the first sample), without reordered frames."""
        k = int(self._sorted_pts.searchsorted(t, side="right")) - 1
        return self.key_of(int(self._order[max(k, 0)]))

    def span(self, t: float, early_s: float = EARLY_S) -> tuple[int, int]:
        """(first, last) decode indices read to output the frame nearest `t`. Without reordered frames: from
        the keyframe at or before `t + early_s` (`start_of`) to the first frame at or after `t - early_s`, as
        FrameReader decodes them (`early_s`: its tolerance_s / 2). With reordered frames: the nearest frame's
        keyframe to it, plus the frames presented up to it and two more."""
        if not self.reorder:
            n = len(self.pts_s)
            last = min(int(self._sorted_pts.searchsorted(t - early_s, side="left")), n - 1)
            return self.start_of(t + early_s), last
        i = self.sample_at(t)
        key = self.key_of(i)
        nxt = np.searchsorted(self._keys, i, side="right")
        stop = int(self._keys[nxt]) if nxt < len(self._keys) else len(self.pts_s)
        gop = np.arange(key, stop)
        shown = gop[self.pts_s[gop] <= self.pts_s[i]]
        return key, min(int(shown.max()) + 2, len(self.pts_s) - 1)

    def key_of(self, i: int) -> int:
        """Decode index of the keyframe at or before sample `i` (decode order)."""
        return int(self._keys[self._keys.searchsorted(i, side="right") - 1])

    def seek_ahead(self, cur_t: float, t: float, early_s: float = EARLY_S) -> bool | None:
        """Whether a forward decode from the frame at `cur_t` to the frame at `t` (> cur_t) should seek: the
        keyframe it would start from lies past the frame after the current one (seeking then decodes fewer
        frames and reads fewer bytes). None with reordered frames (the caller decides by time)."""
        if self.reorder:
            return None
        return self.start_of(t + early_s) > self.sample_at(cur_t) + 1

    def ranges(self, times: Sequence[float]) -> list[tuple[int, int]]:
        """Byte ranges [(start, end)] a forward decode of the sorted `times` reads, merged where they touch.
        Two frames are decoded straight through when the second's keyframe is not past the frame after the
        first (`seek_ahead`); with reordered frames, when they are closer than a keyframe interval (as
        FrameReader decodes them)."""
        spans: list[list[int]] = []
        prev_t = None
        for t in sorted(times):
            a, b = self.span(t)
            if (self.reorder and spans and prev_t is not None and t - prev_t <= self.key_interval_s
                    and a >= spans[-1][0]):
                spans[-1][1] = max(spans[-1][1], b)
            elif spans and a <= spans[-1][1] + 1:
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b])
            prev_t = t
        out: list[tuple[int, int]] = []
        for a, b in spans:
            sl = slice(a, b + 1)
            lo, hi = int(self.offset[sl].min()), int((self.offset[sl] + self.size[sl]).max())
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out


def _boxes(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                return
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield kind, pos + head, pos + size
        pos += size


def find_moov(pread: Callable[[int, int], bytes], file_size: int) -> bytes | None:
    """The bytes of the top-level `moov` box, walking the top-level box headers with `pread(offset, n)`."""
    pos = 0
    while pos + 8 <= file_size:
        head = pread(pos, min(16, file_size - pos))
        if len(head) < 8:
            return None
        size, kind = struct.unpack_from(">I4s", head, 0)
        hsize = 8
        if size == 1:
            if len(head) < 16:
                return None
            size, hsize = struct.unpack_from(">Q", head, 8)[0], 16
        elif size == 0:
            size = file_size - pos
        if size < hsize:
            return None
        if kind == b"moov":
            if size > _MAX_MOOV or pos + size > file_size:
                return None
            return pread(pos, size)
        pos += size
    return None


def _full(data: bytes, a: int) -> tuple[int, int]:
    """(version, first byte after the full-box header)."""
    return data[a], a + 4


def parse(moov: bytes) -> SampleIndex | None:
    """The SampleIndex of the first video track of a `moov` box, or None when it has none usable."""
    try:
        movie_scale = 0
        for kind, a, _ in _boxes(moov, 8, len(moov)):
            if kind == b"mvhd":
                v, p = _full(moov, a)
                movie_scale = struct.unpack_from(">I", moov, p + (16 if v == 1 else 8))[0]
        for kind, a, b in _boxes(moov, 8, len(moov)):
            if kind == b"trak":
                boxes: dict[bytes, tuple[int, int]] = {}
                _collect(moov, a, b, boxes)
                if b"hdlr" in boxes and moov[boxes[b"hdlr"][0] + 8:boxes[b"hdlr"][0] + 12] == b"vide":
                    return _track(moov, boxes, movie_scale)
    except (struct.error, ValueError, IndexError, ZeroDivisionError):
        return None
    return None


def _collect(data: bytes, a: int, b: int, out: dict[bytes, tuple[int, int]]) -> None:
    for kind, s, e in _boxes(data, a, b):
        if kind in _CONTAINERS:
            _collect(data, s, e, out)
        else:
            out.setdefault(kind, (s, e))


def _table(data: bytes, box: tuple[int, int] | None, cols: int, fmt: str = ">u4") -> np.ndarray | None:
    if box is None:
        return None
    _, p = _full(data, box[0])
    n = struct.unpack_from(">I", data, p)[0]
    width = np.dtype(fmt).itemsize * cols
    if p + 4 + n * width > box[1]:
        raise ValueError("table runs past its box")
    return np.frombuffer(data, dtype=fmt, count=n * cols, offset=p + 4).reshape(n, cols).astype(np.int64)


def _track(d: bytes, boxes: dict[bytes, tuple[int, int]], movie_scale: int) -> SampleIndex | None:
    v, p = _full(d, boxes[b"mdhd"][0])
    scale = struct.unpack_from(">I", d, p + (16 if v == 1 else 8))[0]
    # sizes
    _, p = _full(d, boxes[b"stsz"][0])
    const, n = struct.unpack_from(">II", d, p)
    if n == 0:
        return None
    size = (np.full(n, const, dtype=np.int64) if const
            else np.frombuffer(d, dtype=">u4", count=n, offset=p + 8).astype(np.int64))
    # offsets: chunks from stco/co64, samples per chunk from stsc
    chunk_off = (_table(d, boxes.get(b"stco"), 1) if b"stco" in boxes
                 else _table(d, boxes.get(b"co64"), 1, ">u8"))
    stsc = _table(d, boxes.get(b"stsc"), 3)
    if chunk_off is None or stsc is None or not len(stsc):
        return None
    chunk_off = chunk_off[:, 0]
    nchunks = len(chunk_off)
    firsts = stsc[:, 0] - 1
    per = np.zeros(nchunks, dtype=np.int64)
    bounds = np.append(firsts, nchunks)
    for (f, spc), nxt in zip(stsc[:, :2].tolist(), bounds[1:].tolist(), strict=True):
        per[f - 1:nxt] = spc
    if per.sum() < n:
        return None
    chunk_of = np.repeat(np.arange(nchunks), per)[:n]
    csum = np.concatenate([[0], np.cumsum(size)])
    first_in_chunk = np.concatenate([[0], np.cumsum(per)])[:nchunks]
    offset = chunk_off[chunk_of] + csum[:n] - csum[first_in_chunk[chunk_of]]
    # times
    stts = _table(d, boxes.get(b"stts"), 2)
    deltas = np.repeat(stts[:, 1], stts[:, 0])[:n] if stts is not None else np.ones(n, dtype=np.int64)
    dts = np.concatenate([[0], np.cumsum(deltas)])[:n]
    cts = np.zeros(n, dtype=np.int64)
    ctts_box = boxes.get(b"ctts")
    if ctts_box is not None:
        ctts = _table(d, ctts_box, 2, ">i4" if d[ctts_box[0]] == 1 else ">u4")
        cts = np.repeat(ctts[:, 1], ctts[:, 0])[:n]
        cts = np.pad(cts, (0, n - len(cts)))
    shift = 0.0
    elst = boxes.get(b"elst")
    if elst is not None and movie_scale:
        v, p = _full(d, elst[0])
        count = struct.unpack_from(">I", d, p)[0]
        p += 4
        empty = 0
        for _ in range(count):
            if v == 1:
                dur, media = struct.unpack_from(">Qq", d, p)
                p += 16
            else:
                dur, media = struct.unpack_from(">Ii", d, p)
                p += 8
            p += 4
            if media == -1:
                empty += dur
                continue
            shift = empty / movie_scale - media / scale
            break
    pts = (dts + cts) / scale + shift
    stss = _table(d, boxes.get(b"stss"), 1)
    sync = np.zeros(n, dtype=bool)
    if stss is None:
        sync[:] = True
    else:
        idx = stss[:, 0] - 1
        sync[idx[(idx >= 0) & (idx < n)]] = True
    return SampleIndex(pts.astype(np.float64), offset.astype(np.int64), size, sync,
                       bool(np.any(np.diff(pts) < 0)))


__all__ = ["SampleIndex", "find_moov", "parse"]
