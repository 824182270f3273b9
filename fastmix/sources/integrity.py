"""Integrity checks of one LeRobot dataset at open: metadata against data, exactly and vectorized.

Never trusts a cumulative sum: every selected episode's rows must hold exactly `length` frames whose `index`
values form one contiguous range (v3.0: the [dataset_from_index, dataset_to_index) of meta/episodes; v2.x: the
range found in the data, which replaces the cumulative sum, so a deleted episode leaves a gap that is handled
exactly as lerobot 0.4.4 handles absolute indices), `frame_index == index - from`, strictly increasing
timestamps spaced 1/fps where they locate video frames (`check_timestamp_spacing`), v3.0 video segments whose
frames lie in their own segment and inside their file, no two episodes' frames at one video time
(`check_video_segments`), known task ids, existing files and, optionally, finite numbers (`find_nonfinite`).
Each disagreement raises a `DatasetFormatError` / `MissingFileError` naming the dataset, file, episode and both
values, and how to repair. Cost: O(frames) numpy passes, one parquet footer per data file, one stat per
distinct video file and (v3.0) one container header per distinct video file, cached per process.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastmix.errors import DatasetFormatError, MissingFileError
from fastmix.sources.meta import INDEX_KEYS, DatasetMeta, EpisodeTable
from fastmix.sources.remote import is_url

# dtypes of the index columns when info.json does not declare them (what lerobot writes)
_INDEX_DTYPES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                 "task_index": "int64"}
_MAX_LISTED = 10


def _listed(values: Sequence[Any]) -> str:
    values = list(values)
    more = f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else ""
    return f"{values[:_MAX_LISTED]}{more}"


def episodes_expr(episodes: Sequence[int], max_parts: int = 40) -> str:
    """A Python list expression for sorted episode indices, runs of 3+ as `*range(a, b)`:
    [4, 5, 7, 8, 10, ..., 21] -> "[4, 5, 7, 8, *range(10, 22)]"."""
    e = np.asarray(list(episodes), dtype=np.int64)
    if len(e) == 0:
        return "[]"
    cut = np.flatnonzero(np.diff(e) != 1) + 1
    parts = []
    for run in np.split(e, cut):
        a, b = int(run[0]), int(run[-1])
        parts += [f"*range({a}, {b + 1})"] if len(run) >= 3 else [str(int(x)) for x in run]
    if len(parts) > max_parts:
        return f"[{', '.join(parts[:max_parts])}, ...] ({len(e)} episodes)"
    return f"[{', '.join(parts)}]"


def _keep_hint(all_eps: np.ndarray, bad_eps: Sequence[int]) -> str:
    keep = np.setdiff1d(all_eps, np.asarray(list(bad_eps), dtype=np.int64))
    if len(keep) == 0:
        return "no episode is unaffected"
    return f"to use the rest now, pass episodes={episodes_expr(keep.tolist())} (the {len(keep)} unaffected ones)"


# ------------------------------------------------------------------------------------------- dtypes
def expected_dtype(meta: DatasetMeta, key: str) -> np.dtype:
    """The numpy dtype info.json declares for numeric column `key` (index columns default to lerobot's)."""
    ft = meta.features.get(key)
    declared = ft["dtype"] if ft is not None else _INDEX_DTYPES[key]
    try:
        return np.dtype(declared)
    except TypeError as e:
        raise DatasetFormatError(f"dataset '{meta.name}': feature {key!r} declares dtype {declared!r} in "
                                 f"{meta.root / 'meta' / 'info.json'}, which is not a numeric dtype") from e


def _stored_dtype(arrow_type: pa.DataType) -> np.dtype | str:
    """numpy dtype of the values of a (nested list / extension, e.g. HF `Array2D`) column, or its arrow type."""
    while isinstance(arrow_type, pa.ExtensionType) or pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type) or pa.types.is_large_list(
            arrow_type):
        arrow_type = arrow_type.storage_type if isinstance(arrow_type, pa.ExtensionType) else arrow_type.value_type
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return np.dtype(arrow_type.to_pandas_dtype())
    return str(arrow_type)


def check_data_files(meta: DatasetMeta, files: Sequence[str]) -> None:
    """Footer checks of the data parquets `files` (relative to the root), before any column is read.

    Every numeric column (low-dim features and index columns) must be stored with exactly the dtype info.json
    declares — what lerobot's writer does — so nothing is parsed or cast silently; in v2.x (one file per
    episode) the row count must equal the episode's length. Absent files/columns are left to the loader's own
    errors."""
    keys = list(dict.fromkeys([*meta.lowdim_keys, *INDEX_KEYS]))
    want = {k: expected_dtype(meta, k) for k in keys}
    episode_of_file = ({} if meta.codebase_version == "v3.0"
                       else {f: p for p, f in enumerate(meta.episodes.data_file.tolist())})
    for rel in files:
        path = meta.root / rel
        if not path.is_file():
            continue
        try:
            footer = pq.ParquetFile(path).metadata
            schema = footer.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as e:
            raise DatasetFormatError(f"dataset '{meta.name}': cannot read data file {path}: {e}") from e
        p = episode_of_file.get(rel)
        if p is not None and footer.num_rows != int(meta.episodes.length[p]):
            raise _fail(meta, p, f"the data file holds {footer.num_rows} rows but the metadata says length "
                                 f"{int(meta.episodes.length[p])}", _REPAIR_META)
        for k in keys:
            if k not in schema.names:
                continue
            found = _stored_dtype(schema.field(k).type)
            if found != want[k]:
                raise DatasetFormatError(
                    f"dataset '{meta.name}': column {k!r} of data file {path} is stored as {found}, but info.json "
                    f"declares {want[k]}; fastmix does not convert silently. Rewrite the column as {want[k]} "
                    f"(lerobot's writer stores each feature with its declared dtype) or fix info.json")


def explain_row_counts(meta: DatasetMeta, ep_positions: np.ndarray, cause: Exception) -> None:
    """After the loader found the data's total frame count differing from meta/: read only the
    episode_index column of the selected data files and raise, from `cause`, an error naming the first
    episode whose row count differs from its length (returns when none does)."""
    eps = meta.episodes
    counts = np.zeros(len(eps), dtype=np.int64)
    for rel in sorted(set(eps.data_file[ep_positions].tolist())):
        try:
            col = pq.read_table(meta.root / rel, columns=["episode_index"]).column("episode_index")
        except (OSError, KeyError, pa.ArrowException):
            return
        values = col.to_numpy().astype(np.int64)
        pos = np.searchsorted(eps.episode_index, values)
        known = (pos < len(eps)) & (eps.episode_index[np.minimum(pos, len(eps) - 1)] == values)
        counts += np.bincount(pos[known], minlength=len(eps))
    bad = np.flatnonzero(counts[ep_positions] != eps.length[ep_positions])
    if len(bad):
        p = int(ep_positions[bad[0]])
        raise _fail(meta, p, f"its data holds {int(counts[p])} rows (episode_index column) but the metadata says "
                             f"length {int(eps.length[p])}", _REPAIR_META) from cause


# ------------------------------------------------------------------------------------------- episodes
def _fail(meta: DatasetMeta, p: int, what: str, repair: str) -> DatasetFormatError:
    eps = meta.episodes
    ep = int(eps.episode_index[p])
    where = "meta/episodes.jsonl" if meta.codebase_version != "v3.0" else "meta/episodes/"
    return DatasetFormatError(
        f"dataset '{meta.name}': episode {ep} (data file {meta.root / eps.data_file[p]}, metadata {where}): "
        f"{what}. {repair}")


_REPAIR_META = ("Repair: restore meta/ from the original download, or regenerate it from the data with lerobot's "
                "tools; to skip the episode now, leave it out of episodes=")


def check_episode_rows(meta: DatasetMeta, values: dict[str, np.ndarray], ep_pos: np.ndarray,
                       sorted_pos: np.ndarray, ep_positions: np.ndarray, tolerance_s: float = 1e-4) -> EpisodeTable:
    """Check the rows of the selected episodes against meta/ and return the episode table to use.

    Args:
        values: the data's columns, (N,) "index", "frame_index", "timestamp".
        ep_pos: int64 (N,) row of each data row's episode in meta.episodes.
        sorted_pos: int64 (N,) data rows in ascending "index" order (indices are unique).
        ep_positions: int64 (S,) the selected rows of meta.episodes.
        tolerance_s: seconds; the timestamp spacing and video segment checks allow this much (lerobot's).
    Returns:
        meta.episodes, with (v2.x) the selected episodes' [from, to) taken from the data's index column.
    """
    eps = meta.episodes
    counts = np.bincount(ep_pos, minlength=len(eps))
    bad = np.flatnonzero(counts[ep_positions] != eps.length[ep_positions])
    if len(bad):
        p = int(ep_positions[bad[0]])
        raise _fail(meta, p, f"its data holds {int(counts[p])} rows (episode_index column) but the metadata says "
                             f"length {int(eps.length[p])}", _REPAIR_META)
    index = values["index"][sorted_pos]
    run_ep = ep_pos[sorted_pos]
    starts = np.flatnonzero(np.r_[True, run_ep[1:] != run_ep[:-1]])
    ends = np.r_[starts[1:], len(run_ep)]
    if len(starts) != len(ep_positions):  # some episode's rows are interleaved with another's in index order
        seen = np.bincount(run_ep[starts], minlength=len(eps))
        p = int(np.flatnonzero(seen > 1)[0])
        rows = np.flatnonzero(ep_pos == p)
        raise _fail(meta, p, f"its index values {_listed(np.sort(values['index'][rows]).tolist())} are not one "
                             f"contiguous range (other episodes' frames lie between them)", _REPAIR_META)
    first, last = index[starts], index[ends - 1]
    p_run = run_ep[starts]
    gap = np.flatnonzero(last - first + 1 != ends - starts)
    if len(gap):
        p = int(p_run[gap[0]])
        seg = index[starts[gap[0]]:ends[gap[0]]]
        jump = int(np.flatnonzero(np.diff(seg) != 1)[0])
        raise _fail(meta, p, f"its index column jumps from {int(seg[jump])} to {int(seg[jump + 1])} inside the "
                             f"episode (frames missing)", _REPAIR_META)
    if meta.codebase_version == "v3.0":
        for name, got, want in (("dataset_from_index", first, eps.dataset_from_index[p_run]),
                                ("dataset_to_index", last + 1, eps.dataset_to_index[p_run])):
            off = np.flatnonzero(got != want)
            if len(off):
                i = off[0]
                raise _fail(meta, int(p_run[i]), f"meta/episodes says {name}={int(want[i])} but its rows in the "
                                                 f"data give {int(got[i])}", _REPAIR_META)
        table = eps
    else:
        from_idx, to_idx = eps.dataset_from_index.copy(), eps.dataset_to_index.copy()
        from_idx[p_run], to_idx[p_run] = first, last + 1
        table = replace(eps, dataset_from_index=from_idx, dataset_to_index=to_idx)
    run_from = np.repeat(first, ends - starts)
    frame_index = values["frame_index"][sorted_pos]
    off = np.flatnonzero(frame_index != index - run_from)
    if len(off):
        i = int(off[0])
        raise _fail(meta, int(run_ep[i]), f"the row with index {int(index[i])} has frame_index "
                                          f"{int(frame_index[i])}, but its position in the episode is "
                                          f"{int(index[i] - run_from[i])}", _REPAIR_META)
    ts = values["timestamp"][sorted_pos]
    _check_timestamps(meta, ts, starts, ends, frame_index, run_ep, tolerance_s)
    check_video_segments(meta, table, p_run, ts[starts], ts[ends - 1], tolerance_s)
    return table


def _check_timestamps(meta: DatasetMeta, ts: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                      frame_index: np.ndarray, run_ep: np.ndarray, tolerance_s: float) -> None:
    """Timestamps (N,) in index order: strictly increasing within an episode (rows starts[k]..ends[k]-1), each
    episode's first finite and >= 0 and, where they pick video frames, spaced 1/fps (`check_timestamp_spacing`)."""
    same_ep = np.ones(len(ts) - 1 if len(ts) else 0, dtype=bool)
    same_ep[ends[:-1] - 1] = False
    off = np.flatnonzero(same_ep & ~(ts[1:] > ts[:-1]))
    if len(off):
        i = int(off[0])
        raise _fail(meta, int(run_ep[i]), f"timestamps do not increase: frame_index {int(frame_index[i])} is at "
                                          f"{float(ts[i]):.6f} s and frame_index {int(frame_index[i + 1])} at "
                                          f"{float(ts[i + 1]):.6f} s",
                    "Repair: rewrite the timestamp column as frame_index / fps (lerobot's writer does so)")
    bad_ts = np.flatnonzero(~np.isfinite(ts[starts]) | (ts[starts] < 0))
    if len(bad_ts):
        i = int(starts[bad_ts[0]])
        raise _fail(meta, int(run_ep[i]), f"its first timestamp is {float(ts[i])}",
                    "Repair: rewrite the timestamp column as frame_index / fps")
    if meta.codebase_version != "v3.0" or meta.video_keys:  # v3.0 images and low-dim: rows, not times, are read
        check_timestamp_spacing(meta, ts, same_ep, frame_index, run_ep, tolerance_s)


def check_timestamp_spacing(meta: DatasetMeta, ts: np.ndarray, same_ep: np.ndarray, frame_index: np.ndarray,
                            run_ep: np.ndarray, tolerance_s: float) -> None:
    """Consecutive timestamps of one episode lie 1/fps apart within `tolerance_s` (plus the rounding of the
    stored float32 values), as the pinned lerobot's `check_timestamps_sync` requires at open: a row whose
    timestamp is a frame late (and every row after it) would read the next video frame.

    ts, frame_index, run_ep: (N,) rows in index order; same_ep: bool (N-1,) rows i and i+1 share an episode."""
    t = ts.astype(np.float64)
    step = np.diff(t)
    tol = tolerance_s + float(np.spacing(np.float32(np.abs(t).max()))) if len(t) else tolerance_s
    off = np.flatnonzero(same_ep & ~(np.abs(step - 1.0 / meta.fps) <= tol))
    if len(off):
        i = int(off[0])
        raise _fail(meta, int(run_ep[i]), f"timestamps are not spaced 1/fps = {1 / meta.fps:.6f} s (within "
                                          f"tolerance_s={tolerance_s}): frame_index {int(frame_index[i])} is at "
                                          f"{t[i]:.6f} s and frame_index {int(frame_index[i + 1])} at "
                                          f"{t[i + 1]:.6f} s, {step[i]:.6f} s later; from there on each row would "
                                          f"read another video frame",
                    "Repair: rewrite the timestamp column as frame_index / fps (lerobot's writer does so)")


def check_video_segments(meta: DatasetMeta, eps: EpisodeTable, p_run: np.ndarray, first_ts: np.ndarray,
                         last_ts: np.ndarray, tolerance_s: float) -> None:
    """v3.0, per video key: every selected episode's frames, at video times `from_timestamp + timestamp`, lie in
    its own segment [from_timestamp, to_timestamp] (to may be the last frame's time or the segment's end; within
    tolerance_s) and inside its mp4 (the container's own duration); and no two episodes' frames of one file lie
    at the same video time (any overlap reads another episode's pixels).

    p_run: int64 (S,) the selected episodes' rows of `eps`; first_ts, last_ts: (S,) their first and last timestamps.
    Episodes outside the selection count with their nominal frame times [from, from + (length - 1) / fps]."""
    if meta.codebase_version != "v3.0":
        return
    half = 0.5 / meta.fps
    first_ts, last_ts = first_ts.astype(np.float64), last_ts.astype(np.float64)
    for key, from_ts in eps.video_from_ts.items():
        to_ts, files = eps.video_to_ts.get(key, np.full(len(eps), np.nan)), eps.video_file[key]
        lo, hi = from_ts[p_run] + first_ts, from_ts[p_run] + last_ts
        tol = tolerance_s + 2 * np.spacing(np.maximum(np.abs(hi), np.abs(np.nan_to_num(to_ts[p_run]))).astype(np.float32))
        bad = np.flatnonzero(~(from_ts[p_run] >= 0) | ~np.isfinite(from_ts[p_run]) | (hi > to_ts[p_run] + tol))
        if len(bad):
            p = int(p_run[bad[0]])
            raise _segment_error(meta, key, files[p], f"episode {int(eps.episode_index[p])}: its frames lie at "
                                 f"video times {lo[bad[0]]:.6f}..{hi[bad[0]]:.6f} s (from_timestamp + timestamp), "
                                 f"outside its segment from_timestamp={from_ts[p]:.6f} s .. "
                                 f"to_timestamp={to_ts[p]:.6f} s")
        _check_overlap(meta, eps, key, p_run, lo, hi, half)
        _check_inside_files(meta, key, files[p_run], eps.episode_index[p_run], lo, hi, half)


def _segment_error(meta: DatasetMeta, key: str, file: str, what: str) -> DatasetFormatError:
    return DatasetFormatError(f"dataset '{meta.name}': key {key!r}, video file {meta.root / file}: {what} "
                              f"(meta/episodes videos/{key}/from_timestamp, to_timestamp). {_REPAIR_META}")


def _check_overlap(meta: DatasetMeta, eps: EpisodeTable, key: str, p_run: np.ndarray, lo_sel: np.ndarray,
                   hi_sel: np.ndarray, half: float) -> None:
    """No two episodes' frame-time ranges of one file come closer than half a frame (one frame apart)."""
    from_ts, to_ts, files = eps.video_from_ts[key], eps.video_to_ts.get(key), eps.video_file[key]
    lo, hi = from_ts.copy(), from_ts + (eps.length - 1) / meta.fps
    lo[p_run], hi[p_run] = lo_sel, hi_sel
    known = np.flatnonzero(np.isfinite(lo))
    order = known[np.lexsort((lo[known], files[known].astype(str)))]
    f_sorted = files[order]
    clash = np.flatnonzero((f_sorted[1:] == f_sorted[:-1]) & (lo[order[1:]] <= hi[order[:-1]] + half))
    if len(clash):
        a, b = int(order[clash[0]]), int(order[clash[0] + 1])
        seg = {p: f"[{from_ts[p]:.6f}, {to_ts[p] if to_ts is not None else float('nan'):.6f})" for p in (a, b)}
        raise _segment_error(meta, key, files[a], f"the segments of episode {int(eps.episode_index[a])} {seg[a]} "
                             f"s and episode {int(eps.episode_index[b])} {seg[b]} s overlap: their frames lie at "
                             f"{lo[a]:.6f}..{hi[a]:.6f} s and {lo[b]:.6f}..{hi[b]:.6f} s, so one video frame would "
                             f"be read for both")


def _check_inside_files(meta: DatasetMeta, key: str, files: np.ndarray, episodes: np.ndarray, lo: np.ndarray,
                        hi: np.ndarray, half: float) -> None:
    """Every frame time lies within its mp4's frames (first frame's time .. last frame's, ± half a frame), read
    from the container's header (`video_extent`); files that are absent or unreadable are left to read time."""
    for rel in np.unique(files.astype(str)).tolist():
        extent = video_extent(meta.remote.url_of(rel) if meta.remote is not None else str(meta.root / rel))
        if extent is None:
            continue
        start, last = extent
        mine = np.flatnonzero(files == rel)
        out = mine[(lo[mine] < start - half) | (hi[mine] > last + half)]
        if len(out):
            i = int(out[np.argmax(hi[out])])
            raise _segment_error(meta, key, rel, f"episode {int(episodes[i])}: its frames lie at video times "
                                 f"{lo[i]:.6f}..{hi[i]:.6f} s, but the file's frames lie at {start:.6f}..{last:.6f} s "
                                 f"(its own header): the segment is shifted or the file is short, and its frames "
                                 f"would be other frames or none")


_EXTENTS: OrderedDict[tuple, tuple[float, float] | None] = OrderedDict()  # (path, size, mtime, ctime, inode) ->
_EXTENTS_LOCK = threading.Lock()


def video_extent(path: str) -> tuple[float, float] | None:
    """(first frame's time, last frame's time) in seconds of the first video stream of `path` (a file or an
    URL, read by byte ranges), from the container header only (start_time, duration, frame count: nothing
    is decoded); None when the file is absent, unreadable or does not say. Cached per process by (path, size,
    mtime_ns, ctime_ns, inode), for a URL by (url, size, ETag)."""
    source: Any = path
    try:
        if is_url(path):
            from fastmix.sources.remote_file import RemoteFile, object_for

            obj = object_for(path)
            key: tuple = (path, obj.size, obj.version)
            obj.sample_index()  # the header, fetched once (by byte ranges) for this check and the decoder
            source = RemoteFile(obj)
        else:
            st = os.stat(path)
            key = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    except OSError:
        return None
    with _EXTENTS_LOCK:
        if key in _EXTENTS:
            _EXTENTS.move_to_end(key)
            return _EXTENTS[key]
    import av  # the decoder library: only where v3.0 videos are checked
    import av.logging

    extent = None
    try:
        with av.logging.Capture(), av.open(source, format="mp4" if path.lower().endswith(".mp4") else None,
                                           metadata_errors="ignore") as c:
            stream = c.streams.video[0] if c.streams.video else None
            if stream is not None and stream.time_base is not None and stream.duration and stream.frames:
                tb = float(stream.time_base)
                start = (stream.start_time or 0) * tb
                end = start + stream.duration * tb
                extent = (start, end - stream.duration * tb / stream.frames)
    except (OSError, av.error.FFmpegError, ValueError, IndexError):
        extent = None
    with _EXTENTS_LOCK:
        _EXTENTS[key] = extent
        while len(_EXTENTS) > 4096:
            _EXTENTS.popitem(last=False)
    return extent


# ------------------------------------------------------------------------------------------- files, tasks
def check_files_exist(meta: DatasetMeta, ep_positions: np.ndarray, *, videos: bool = True) -> None:
    """Every data file (and, with `videos`, every video file) of the selected episodes exists: one stat per
    distinct file. Else a MissingFileError listing the missing files, the affected episodes and an
    `episodes=` expression that selects the others."""
    eps = meta.episodes
    selected = eps.episode_index[ep_positions]
    columns = [("data", eps.data_file[ep_positions])]
    if videos:
        columns += [("video", eps.video_file[key][ep_positions]) for key in meta.video_keys]
    missing: list[str] = []
    affected: set[int] = set()
    kinds: set[str] = set()
    for kind, files in columns:
        uniq, inverse = np.unique(files.astype(str), return_inverse=True)
        remote = meta.remote if kind == "video" else None  # remote videos are not mirrored: the listing says
        gone = np.array([not (remote.exists(f) if remote is not None else os.path.isfile(meta.root / f))
                         for f in uniq.tolist()], dtype=bool)
        if gone.any():
            missing += [str(meta.root / f) for f in uniq[gone].tolist()]
            affected.update(selected[gone[inverse]].tolist())
            kinds.add(kind)
    if missing:
        bad = sorted(affected)
        raise MissingFileError(
            f"dataset '{meta.name}' at {meta.root}: {len(missing)} {' and '.join(sorted(kinds))} file(s) are missing "
            f"(a partial download?): {_listed(sorted(missing))}; they hold episode(s) {episodes_expr(bad)} "
            f"({len(bad)} in all). Download them again, or {_keep_hint(selected, bad)}")


def check_task_ids(meta: DatasetMeta, task_index: np.ndarray, episode_index: np.ndarray) -> None:
    """Every task_index (int64 (N,)) of the data is in the task table; else list the ids and episodes."""
    present = np.unique(task_index)
    known = np.fromiter(meta.tasks.keys(), dtype=np.int64, count=len(meta.tasks))
    unknown = np.setdiff1d(present, known)
    if len(unknown):
        bad = np.unique(episode_index[np.isin(task_index, unknown)]).tolist()
        table = "meta/tasks.parquet" if meta.codebase_version == "v3.0" else "meta/tasks.jsonl"
        raise DatasetFormatError(
            f"dataset '{meta.name}': task_index value(s) {_listed(unknown.tolist())} of the data are not in "
            f"{meta.root / table} (it lists {_listed(sorted(meta.tasks))}); affected episode(s) {_listed(bad)}. "
            f"Restore {table}, or {_keep_hint(np.unique(episode_index), bad)}")


# ------------------------------------------------------------------------------------------- numbers
def find_nonfinite(source: Any, keys: Sequence[str] | None = None, *,
                   limit: int | None = 100) -> list[tuple[str, int, int]]:
    """Where numeric features hold NaN or ±inf: [(key, episode_index, frame_index), ...] in row order per
    key, keys in the order given (default: every float low-dim key of the source), at most `limit` entries
    per key (None: all). A row counts once however many of its values are non-finite.

    Works on any LeRobotSource-like object with `lowdim_keys`, `num_frames` and `gather_lowdim(rows)`
    (without delta_timestamps); vectorized over rows and values.
    """
    keys = list(source.lowdim_keys) if keys is None else list(keys)
    unknown = [k for k in keys if k not in source.lowdim_keys]
    if unknown:
        raise KeyError(f"dataset '{source.name}' has no numeric feature(s) {unknown}; its features: "
                       f"{source.lowdim_keys}")
    table = getattr(source, "_low", None)
    if table is not None:
        columns = table.values
    else:
        columns = source.gather_lowdim(np.arange(source.num_frames, dtype=np.int64), {})
    out: list[tuple[str, int, int]] = []
    for key in keys:
        values = columns[key]
        if values.dtype.kind != "f":
            continue
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        if limit is not None:
            bad = bad[:limit]
        out += [(key, int(e), int(f)) for e, f in zip(columns["episode_index"][bad].tolist(),
                                                      columns["frame_index"][bad].tolist(), strict=True)]
    return out


def check_finite(source: Any, keys: Sequence[str] | None = None) -> None:
    """Raise DatasetFormatError naming dataset, key, episode and frame of the first non-finite values."""
    bad = find_nonfinite(source, keys, limit=5)
    if bad:
        where = "; ".join(f"{k!r} episode {e} frame_index {f}" for k, e, f in bad[:_MAX_LISTED])
        raise DatasetFormatError(
            f"dataset '{source.name}' at {source.root}: NaN/inf values in numeric features: {where}. "
            f"Normalization stats and every normalized batch would be NaN. Fix or drop these frames' episodes "
            f"(episodes=), or open with check_finite=False to load anyway")
