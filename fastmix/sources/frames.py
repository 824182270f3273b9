"""Camera frames: video (mp4, decoded with PyAV) and images stored in parquet (PNG bytes, decoded with PyAV;
row groups read once into a bounded byte LRU).

`FrameReader.read(requests, out)` groups requests by file. For a video it sorts the timestamps and makes one
forward decoding pass over the file: it seeks to the keyframe before a target only when that skips frames
(the target lies more than one keyframe interval ahead), otherwise it keeps decoding. The frame returned for
a timestamp is the decoded frame nearest to it, which must lie within `tolerance_s` — what LeRobotDataset's
"pyav" backend returns. Open containers live in a bounded LRU (one single-threaded codec context each).

A path may be an s3:// URL (`fastmix.sources.remote_file`): read by byte ranges; `read` (or `prefetch` before
it) first fetches, concurrently, what the frames decode from (one request per file and nearby range); remote
failures raise RemoteError / MissingFileError naming the request.

Frames are uint8 (H, W, C) RGB. Where they land is the caller's: `read(requests, out, store=...)` hands each
decoded frame to a store hook (`Store`; default `store_frame`, a plain copy into `out[key][slot]`), so a
wrapper can put it straight into another layout or dtype without a copy through a scratch row.
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from av.video.reformatter import VideoReformatter

from fastmix.errors import DatasetFormatError, DecodeError, MissingFileError
from fastmix.sources import remote
from fastmix.sources.remote import RemoteError, is_url
from fastmix.sources.remote_file import RemoteFile, object_for
from fastmix.sources.remote_prefetch import prefetch_ranges, prefetch_videos
from fastmix.sources.remote_video import RemoteVideo

_UNKNOWN_KEY_INTERVAL_S = 1.0  # assumed keyframe spacing until two keyframes of a file have been seen

# store(dest, slot, frame): write the uint8 (H, W, C) `frame` into row `slot` of `dest` (= out[key]); raise
# ValueError when it does not fit (FrameReader re-raises it as a DecodeError naming the request)
Store = Callable[[np.ndarray, int, np.ndarray], None]


def store_frame(dest: np.ndarray, slot: int, frame: np.ndarray) -> None:
    """The default `Store`: `dest[slot] = frame`, for a destination of rows shaped like the frame."""
    if dest.shape[1:] != frame.shape:
        raise ValueError(f"decoded frame has shape {frame.shape}, the output expects {dest.shape[1:]}")
    dest[slot] = frame


@dataclass(frozen=True, slots=True)
class FrameRequest:
    """One camera frame to decode into `out[key][slot]` (uint8 HWC).

    path: absolute mp4 path (video) or parquet path (image-in-parquet). timestamp: seconds in the file's own
    timeline (v3.0: from_timestamp + frame timestamp), video only. row: row in the parquet file for image
    features, -1 for video. episode, dataset: for error messages.
    """

    slot: int
    key: str
    path: str
    timestamp: float
    row: int
    episode: int
    dataset: str


def _where(req: FrameRequest) -> str:
    return (f"dataset '{req.dataset}', episode {req.episode}, key {req.key!r}, file {req.path}"
            + (f", timestamp {req.timestamp:.6f} s" if req.row < 0 else f", row {req.row}"))


class _OpenVideo:
    """One open container, its decode position and what it has learned about the keyframe spacing."""

    def __init__(self, path: str) -> None:
        # an .mp4 is opened with its demuxer named: no format probing (a part of every open, which matters when
        # a mixture has thousands of files and most reads open one)
        fmt = "mp4" if path.lower().endswith(".mp4") else None
        self.remote = RemoteVideo(path, fmt) if is_url(path) else None  # by byte ranges, the sample table first
        self.index = self.remote.index if self.remote is not None else None
        self.container = (self.remote.container if self.remote is not None
                          else av.open(path, format=fmt, metadata_errors="ignore"))
        if not self.container.streams.video:
            self.container.close()
            raise DecodeError(f"file {path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "NONE"
        self.stream.thread_count = 1
        self.time_base = float(self.stream.time_base)
        self._tb: tuple[int, int] | None = None  # the frames' time base (numerator, denominator)
        self.rgb = VideoReformatter()  # one swscale context per open file, not one per frame
        self.frames: Iterable[av.VideoFrame] | None = None
        self.prev: tuple[float, av.VideoFrame] | None = None  # frame decoded just before `cur`
        self.cur: tuple[float, av.VideoFrame] | None = None
        self.last_key_s: float | None = None
        self.early_s = 0.0  # seek_before's: a remote decode starts at the keyframe at or before t + early_s
        # known from the sample table, if any: seek exactly where the prefetched ranges begin
        self.key_interval_s: float | None = (self.index.key_interval_s or None) if self.index is not None else None

    def seek(self, t: float) -> None:
        """Position the decoder at the last keyframe at or before `t` seconds (a remote file: `t + early_s` of
        the last `seek_before`, `RemoteVideo.frames_from`)."""
        if self.remote is not None:
            self.frames = self.remote.frames_from(self.stream, t, self.early_s)
        else:
            self.container.seek(int(round(max(t, 0.0) / self.time_base)), backward=True, any_frame=False,
                                stream=self.stream)
            self.frames = self.container.decode(self.stream)
        self.prev = self.cur = None
        self.last_key_s = None

    def seek_before(self, t: float, early_s: float = 0.0) -> None:
        """Seek so that the first decoded frame lies at or before `t` (+ early_s), and decode it into `cur`.

        A seek lands on the keyframe the container index places before `t`, but with open GOPs (HEVC CRA
        keyframes) the frames shown before that keyframe are dropped when decoding starts there, so the first
        frame can lie past `t`. Then seek further back (one keyframe interval, doubling) until it does not,
        or the start of the file is reached."""
        back = 0.0
        self.early_s = early_s
        while True:
            self.seek(t - back)
            if not self.advance() or self.cur is None or self.cur[0] <= t + early_s or t - back <= 0.0:
                return
            step = self.key_interval_s if self.key_interval_s is not None else _UNKNOWN_KEY_INTERVAL_S / 4
            back = max(2.0 * back, step)

    def advance(self) -> bool:
        """Decode the next frame into `cur` (old `cur` → `prev`); False at the end of the stream."""
        if self.frames is None:
            self.seek(0.0)
        try:
            frame = next(self.frames)  # type: ignore[arg-type]
        except (StopIteration, av.error.EOFError):
            return False
        if frame.pts is None:
            raise DecodeError("decoded a frame without a presentation timestamp")
        if self._tb is None:
            tb = frame.time_base
            self._tb = (tb.numerator, tb.denominator)
        pts_s = (frame.pts * self._tb[0]) / self._tb[1]  # int / int: correctly rounded, as float(Fraction)
        if frame.key_frame:
            if self.last_key_s is not None and pts_s > self.last_key_s:
                gap = pts_s - self.last_key_s
                self.key_interval_s = gap if self.key_interval_s is None else max(self.key_interval_s, gap)
            self.last_key_s = pts_s
        self.prev, self.cur = self.cur, (pts_s, frame)
        return True

    def needs_seek(self, t: float) -> bool:
        """Whether reaching `t` by seeking beats decoding forward from the current position."""
        if self.cur is None:
            return True
        cur_s = self.cur[0]
        if t < cur_s:  # behind us: fine only if the frame before `cur` still brackets t
            return self.prev is None or t < self.prev[0]
        ahead = self.index.seek_ahead(cur_s, t) if self.index is not None else None
        if ahead is not None:  # from the sample table: seek when the target's keyframe lies ahead
            return ahead
        interval = self.key_interval_s if self.key_interval_s is not None else _UNKNOWN_KEY_INTERVAL_S
        return t - cur_s > interval

    def nearest(self, t: float, early_s: float = 0.0) -> tuple[float, av.VideoFrame]:
        """Decode forward until a frame at or after `t - early_s` (or the end); the nearer of it and its
        predecessor.

        early_s: a frame that lies less than `early_s` before `t` ends the search without decoding the
        frame after it. It is still the nearest frame whenever frames are at least 2 * early_s apart (the
        next one would lie more than early_s after t); LeRobot's float32 timestamps often sit a few ns
        above the frame's pts, so this saves one decode per such request.
        """
        if self.needs_seek(t):
            self.seek_before(t, early_s)
        stop = t - early_s
        while self.cur is None or self.cur[0] < stop:
            if not self.advance():
                break
        if self.cur is None:
            raise DecodeError(f"no frame could be decoded at or after {t:.6f} s")
        if self.prev is not None and abs(self.prev[0] - t) <= abs(self.cur[0] - t):
            return self.prev
        return self.cur

    def close(self) -> None:
        self.container.close()


class _OpenParquet:
    """One open image parquet file and its row-group layout. Reads are plain (not memory-mapped): a
    memory-mapped column chunk pays a page fault per 4 KiB and reads much slower on first touch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.remote = object_for(path) if is_url(path) else None  # a URL: footer and column chunks by range
        source = RemoteFile(self.remote, readahead=0, whole_reads=True) if self.remote is not None else path
        self.file = pq.ParquetFile(source, memory_map=False)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.metadata.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def locate(self, row: int) -> tuple[int, int]:
        """(row group, row inside it) of file row `row`."""
        rg = int(np.searchsorted(self.starts, row, side="right")) - 1
        if row < 0 or rg >= len(self.starts) - 1:
            raise DecodeError(f"row {row} is outside the file ({int(self.starts[-1])} rows)")
        return rg, row - int(self.starts[rg])

    def read_column(self, key: str, rg: int) -> pa.Array:
        """The image bytes of column `key` in row group `rg` (binary array, one entry per row)."""
        column = self.file.read_row_group(rg, columns=[key], use_threads=False).column(key).combine_chunks()
        if pa.types.is_struct(column.type):
            column = column.field("bytes")
        return column

    def chunk_ranges(self, wanted: set[tuple[str, int]], cache: _RowGroupCache) -> list[tuple[int, int]]:
        """Byte ranges [(start, end)] of the column chunks (key, row group) in `wanted` not in `cache`."""
        md = self.file.metadata
        names = self.file.schema_arrow.names
        out = []
        for key, rg in sorted(wanted):
            if (self.path, key, rg) in cache._entries or key not in names:
                continue
            group = md.row_group(rg)
            for ci in range(group.num_columns):
                col = group.column(ci)
                if col.path_in_schema.split(".")[0] == key:
                    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
                    out.append((int(start), int(start) + int(col.total_compressed_size)))
        return out

    def close(self) -> None:
        self.file.close()


class _RowGroupCache:
    """LRU of decoded-from-parquet image columns, keyed (path, key, row group), bounded in bytes.

    A random batch touches rows all over a file; without it every row would re-read its row group. Entries
    hold compressed PNG bytes, not pixels.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._entries: OrderedDict[tuple[str, str, int], pa.Array] = OrderedDict()

    def get(self, f: _OpenParquet, key: str, rg: int) -> pa.Array:
        k = (f.path, key, rg)
        hit = self._entries.get(k)
        if hit is not None:
            self._entries.move_to_end(k)
            return hit
        column = f.read_column(key, rg)
        self._entries[k] = column
        self.nbytes += column.nbytes
        while self.nbytes > self.max_bytes and len(self._entries) > 1:  # the newest entry always stays
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
        return column

    def drop(self, path: str) -> None:
        for k in [k for k in self._entries if k[0] == path]:
            self.nbytes -= self._entries.pop(k).nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class FrameReader:
    """Decodes FrameRequests into caller-owned arrays (uint8 HWC rows, or whatever a store hook writes).

    Args:
        max_open_files: bound of the LRU of open containers / parquet files (evicted ones are closed).
        tolerance_s: the nearest decoded frame must lie strictly within this many seconds of the request.
        cache_bytes: bound of the LRU of image-in-parquet row groups read (compressed PNG bytes; default
            256 MiB per reader, so per worker process). 0 keeps only the row group being read.

    Picklable and lazy: nothing is opened before the first `read`, and pickling drops open files, so one
    reader can be built in the parent and sent to each worker.
    """

    def __init__(self, max_open_files: int = 16, tolerance_s: float = 1e-4, cache_bytes: int = 256 << 20) -> None:
        if max_open_files < 1:
            raise ValueError(f"max_open_files should be >= 1, but got max_open_files={max_open_files}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes should be >= 0, but got cache_bytes={cache_bytes}")
        self.max_open_files = int(max_open_files)
        self.tolerance_s = float(tolerance_s)
        self._open: OrderedDict[str, _OpenVideo | _OpenParquet] = OrderedDict()
        self._row_groups = _RowGroupCache(cache_bytes)
        self._fetched: dict[tuple, None] = {}  # (path, requests) `prefetch` fetched: `read` need not again

    @property
    def cache_bytes(self) -> int:
        """Bound of the image row-group cache, in bytes."""
        return self._row_groups.max_bytes

    def __getstate__(self) -> dict:
        return {"max_open_files": self.max_open_files, "tolerance_s": self.tolerance_s,
                "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass

    @property
    def num_open(self) -> int:
        """How many files are open now (≤ max_open_files)."""
        return len(self._open)

    def close(self) -> None:
        """Close every open file."""
        while self._open:
            _, f = self._open.popitem(last=False)
            f.close()
        self._row_groups.clear()

    def read(self, requests: Sequence[FrameRequest], out: dict[str, np.ndarray],
             store: Store | None = None) -> None:
        """Write `out[req.key][req.slot]` (uint8 (H, W, C)) for every request — or, with `store`, call
        `store(out[req.key], req.slot, frame)` with the uint8 (H, W, C) frame instead; raises MissingFileError or
        DecodeError naming dataset, episode, file, key and timestamp/row."""
        by_path = _by_path(requests)
        store = store_frame if store is None else store
        remote_paths = [p for p in by_path if is_url(p)]
        if remote_paths:
            self._prefetch([p for p in remote_paths if self._fetched.pop((p, tuple(by_path[p])), 0) is not None],
                           by_path)  # what `prefetch` fetched is not looked up again
        for path, reqs in by_path.items():
            if reqs[0].row < 0:
                self._read_video(path, reqs, out, store)
            else:
                self._read_images(path, reqs, out, store)
        if remote_paths:
            remote.dump_stats()

    def prefetch(self, requests: Sequence[FrameRequest], ahead: bool = False) -> None:
        """Fetch what `read(requests)` will read from remote files, concurrently. ahead: called from another
        thread while this reader decodes (a worker's look-ahead): no file is opened, only open images are."""
        by_path = _by_path(r for r in requests if is_url(r.path))
        if by_path:
            self._prefetch(list(by_path), by_path, ahead)
            done = {(p, tuple(r)): None for p, r in by_path.items() if r[0].row < 0 or not ahead or p in self._open}
            self._fetched = {**self._fetched, **done} if len(self._fetched) < 256 else done

    def _prefetch(self, paths: list[str], by_path: dict[str, list[FrameRequest]], ahead: bool = False) -> None:
        """What the requests of remote files read (video frames from their keyframe, image column chunks not
        cached yet), fetched concurrently, one GET per file and nearby range."""
        try:
            prefetch_videos({p: [r.timestamp for r in by_path[p]] for p in paths if by_path[p][0].row < 0})
            wanted = []
            for p in paths:
                reqs = by_path[p]
                if reqs[0].row >= 0:
                    pf = self._open.get(p) if ahead else self._get(p, reqs[0], _OpenParquet)
                    if isinstance(pf, _OpenParquet):
                        wanted.append((pf.remote, pf.chunk_ranges({(r.key, pf.locate(r.row)[0]) for r in reqs},
                                                                  self._row_groups)))
            prefetch_ranges(wanted)
        except (RemoteError, MissingFileError) as e:
            req = next((by_path[p][0] for p in paths if p in str(e)), by_path[paths[0]][0])
            raise _with_where(e, req) from e

    # -- files ------------------------------------------------------------------------------------------
    def _get(self, path: str, req: FrameRequest, kind: type) -> _OpenVideo | _OpenParquet:
        f = self._open.get(path)
        if f is not None:
            self._open.move_to_end(path)
            return f
        if not is_url(path) and not Path(path).is_file():
            raise MissingFileError(f"{'video' if kind is _OpenVideo else 'data'} file is missing: {_where(req)}")
        try:
            f = kind(path)
        except (RemoteError, MissingFileError) as e:
            raise _with_where(e, req) from e
        except (av.error.FFmpegError, OSError, pa.ArrowException) as e:
            raise DecodeError(f"cannot open {path} for {_where(req)}: {e}") from e
        except DecodeError as e:
            raise DecodeError(f"{e} ({_where(req)})") from e
        self._open[path] = f
        while len(self._open) > self.max_open_files:
            _, old = self._open.popitem(last=False)
            old.close()
        return f

    def _drop(self, path: str) -> None:
        f = self._open.pop(path, None)
        if f is not None:
            f.close()
        self._row_groups.drop(path)

    # -- video ------------------------------------------------------------------------------------------
    def _read_video(self, path: str, reqs: list[FrameRequest], out: dict[str, np.ndarray], store: Store) -> None:
        video = self._get(path, reqs[0], _OpenVideo)
        assert isinstance(video, _OpenVideo)
        order = sorted(reqs, key=lambda r: r.timestamp)
        last: tuple[float, np.ndarray] | None = None  # (pts of the frame, its rgb array): duplicates reuse it
        for req in order:
            t = req.timestamp
            if not math.isfinite(t):
                raise DecodeError(f"non-finite timestamp requested: {_where(req)}")
            try:
                pts_s, frame = video.nearest(t, early_s=self.tolerance_s / 2)
                if abs(pts_s - t) >= self.tolerance_s:
                    raise DecodeError(
                        f"nearest decoded frame is at {pts_s:.6f} s, {abs(pts_s - t):.6f} s away from the request "
                        f"(tolerance_s={self.tolerance_s}); the timestamp may lie outside the video")
                if last is None or last[0] != pts_s:
                    last = (pts_s, video.rgb.reformat(frame, format="rgb24").to_ndarray())
            except DecodeError as e:
                self._drop(path)
                raise DecodeError(f"{e}: {_where(req)}") from e
            except (RemoteError, MissingFileError) as e:  # the object store failed past its retry budget
                self._drop(path)
                raise _with_where(e, req) from e
            except (av.error.FFmpegError, ValueError) as e:
                self._drop(path)
                raise DecodeError(f"decoding failed ({e}): {_where(req)}") from e
            _store(out, req, last[1], store)

    # -- images in parquet ------------------------------------------------------------------------------
    def _read_images(self, path: str, reqs: list[FrameRequest], out: dict[str, np.ndarray], store: Store) -> None:
        pf = self._get(path, reqs[0], _OpenParquet)
        assert isinstance(pf, _OpenParquet)
        for req in sorted(reqs, key=lambda r: (r.key, r.row)):
            try:
                rg, i = pf.locate(req.row)
                data = self._row_groups.get(pf, req.key, rg)[i].as_py()
            except (KeyError, pa.ArrowException) as e:
                raise DatasetFormatError(f"image column cannot be read ({e}): {_where(req)}") from e
            except (RemoteError, MissingFileError) as e:
                self._drop(path)
                raise _with_where(e, req) from e
            except DecodeError as e:
                raise DecodeError(f"{e}: {_where(req)}") from e
            if not data:
                raise DecodeError(f"no embedded image bytes: {_where(req)}")
            _store(out, req, self._decode_png(data, req), store)

    @staticmethod
    def _decode_png(data: bytes, req: FrameRequest) -> np.ndarray:
        # A fresh single-threaded context per image: FFmpeg's png decoder keeps state between packets
        # (reusing one context returns wrong pixels from the second image on).
        ctx = av.CodecContext.create("png", "r")
        ctx.thread_type = "NONE"
        ctx.thread_count = 1
        try:
            frames = ctx.decode(av.Packet(data))
        except av.error.FFmpegError as e:
            raise DecodeError(f"image decoding failed ({e}): {_where(req)}") from e
        if len(frames) != 1:
            raise DecodeError(f"image decoded into {len(frames)} frames: {_where(req)}")
        return frames[0].to_ndarray(format="rgb24")


def _by_path(requests: Iterable[FrameRequest]) -> dict[str, list[FrameRequest]]:
    out: dict[str, list[FrameRequest]] = defaultdict(list)
    for req in requests:
        out[req.path].append(req)
    return out


def _with_where(e: Exception, req: FrameRequest) -> Exception:
    """A remote failure `e` (RemoteError, MissingFileError) of the same type, naming the request too."""
    return type(e)(f"{e} ({_where(req)})")


def _store(out: dict[str, np.ndarray], req: FrameRequest, frame: np.ndarray, store: Store) -> None:
    """`store(out[req.key], req.slot, frame)`; a frame that does not fit is a DecodeError naming the request."""
    dest = out.get(req.key)
    if dest is None:
        raise KeyError(f"out has no array for camera key {req.key!r} ({_where(req)})")
    try:
        store(dest, req.slot, frame)
    except ValueError as e:
        raise DecodeError(f"{e}: {_where(req)}") from e
