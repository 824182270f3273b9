"""Concurrent prefetch of remote byte ranges: what `FrameReader` fetches before it decodes a work item.

`prefetch_videos({url: [timestamps]})`: the sample tables of the files (fetched concurrently when missing), the
byte ranges those frames decode from (`SampleIndex.ranges`: each frame's keyframe to the frame, decoded
straight through only where no keyframe lies between two frames, as `FrameReader` decodes them), minus what
memory and the byte cache hold, joined into one GET across gaps of at most `FASTMIX_REMOTE_MERGE_GAP` (default
64K), the smallest gaps first, while the bytes fetched across gaps stay within `FASTMIX_REMOTE_OVERFETCH`
(default 0.25) times the bytes the process's prefetches needed (`RemoteObject.missing`: a ranged GET costs far
more CPU, at the client and the server, than the few KiB of a gap) — fetched concurrently by a pool of
`FASTMIX_REMOTE_THREADS` (default 32) threads. Gaps FFmpeg reads through (a short forward seek) are not
fetched: `RemoteFile` serves them as zeros once the file's sample table is known (see `remote_file`).
`prefetch_ranges` does the same for explicit ranges (parquet column chunks). What one call fetches from an
object is written to the node-local byte cache as one file (`ByteCache.write_many`: one file create, not one
per range).

The pool is one per process, its threads daemons named `fastmix-remote-*`; `shutdown_pool()` ends them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastmix.sources.remote_file import RemoteObject, _env_size, object_for

_POOL: list[Any] = [None, -1]
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if _POOL[0] is None or _POOL[1] != os.getpid():
            threads = int(_env_size("FASTMIX_REMOTE_THREADS", 32))
            _POOL[0] = ThreadPoolExecutor(max(1, threads), thread_name_prefix="fastmix-remote")
            _POOL[1] = os.getpid()
        return _POOL[0]


def shutdown_pool() -> None:
    """End this process's fetch threads (a later prefetch starts a new pool)."""
    with _POOL_LOCK:
        pool, pid = _POOL
        _POOL[0], _POOL[1] = None, -1
    if pool is not None and pid == os.getpid():
        pool.shutdown(wait=True)


def _run_all(calls: list[tuple[Any, ...]]) -> list[Any]:
    """Run fn(*args) for each call concurrently; their results in order. The first exception is raised after
    all have ended."""
    if not calls:
        return []
    if len(calls) == 1:
        fn, *args = calls[0]
        return [fn(*args)]
    futures = [_pool().submit(fn, *args) for fn, *args in calls]
    error, out = None, []
    for f in futures:
        try:
            out.append(f.result())
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others ended
            error = error or e
    if error is not None:
        raise error
    return out


def merge_gap() -> int:
    return _env_size("FASTMIX_REMOTE_MERGE_GAP", 64 << 10)


def overfetch() -> float:
    from fastmix.sources.remote_http import env_float

    value = env_float("FASTMIX_REMOTE_OVERFETCH", 0.25)
    if value < 0:
        from fastmix.errors import ConfigError

        raise ConfigError(f"FASTMIX_REMOTE_OVERFETCH must be >= 0 (a fraction of the bytes needed), got {value:g}")
    return value


def prefetch_ranges(wanted: Sequence[tuple[RemoteObject, Sequence[tuple[int, int]]]]) -> None:
    """Hold the byte ranges `wanted` [(object, [(start, end)])]: cached parts loaded, the rest fetched
    concurrently, one GET per merged missing range (`RemoteObject.missing`)."""
    gap, extra = merge_gap(), overfetch()
    calls = [(obj, a, b) for obj, ranges in wanted for a, b in obj.missing(ranges, gap, extra)]
    fetched = _run_all([(obj.fetch_missing, a, b, False) for obj, a, b in calls])
    by_obj: dict[int, tuple[RemoteObject, list]] = {}
    for (obj, _, _), got in zip(calls, fetched, strict=True):
        if got is not None:
            by_obj.setdefault(id(obj), (obj, []))[1].append(got)
    for obj, parts in by_obj.values():  # one byte-cache file per object for what this call fetched
        obj.store_many(parts)


def prefetch_videos(times: dict[str, Sequence[float]]) -> None:
    """Hold what decoding the frames at `times` ({mp4 url: [seconds in the file's timeline]}) reads."""
    objs = {url: object_for(url) for url in times}
    _run_all([(o.sample_index,) for o in objs.values() if o._index is None])
    wanted = []
    for url, obj in objs.items():
        index = obj.sample_index()
        if index is not None:
            wanted.append((obj, index.ranges(times[url])))
    prefetch_ranges(wanted)


__all__ = ["merge_gap", "overfetch", "prefetch_ranges", "prefetch_videos", "shutdown_pool"]
