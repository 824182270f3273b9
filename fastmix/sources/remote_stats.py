"""Counters of the remote reads of this process (requests, bytes, retries and failures by cause, byte-cache hits),
and their collection across processes: with `FASTMIX_REMOTE_STATS_DIR` set, each process writes its counters
to `<dir>/<pid>.json` (atomically, after each read of remote files and at exit); `collect_stats(dir)` sums the files (the
decode workers' counters). Re-exported by `fastmix.sources.remote`.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter

_STATS: Counter = Counter()
_STATS_LOCK = threading.Lock()


def count(**values: int) -> None:
    with _STATS_LOCK:
        _STATS.update(values)


def stats() -> dict[str, int]:
    """This process's counters: requests, bytes, retries, retry_<cause>, failures, cache_hits, cache_bytes..."""
    with _STATS_LOCK:
        return dict(_STATS)


def reset_stats() -> None:
    with _STATS_LOCK:
        _STATS.clear()


def dump_stats() -> None:
    """Write this process's counters to `$FASTMIX_REMOTE_STATS_DIR/<pid>.json` (when that is set; FrameReader
    calls it after each read of remote files)."""
    d = os.environ.get("FASTMIX_REMOTE_STATS_DIR")
    if not d:
        return
    try:
        tmp = os.path.join(d, f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(stats(), f)
        os.replace(tmp, os.path.join(d, f"{os.getpid()}.json"))
    except OSError:
        pass


def collect_stats(d: str) -> dict[str, int]:
    """The sum of the counters every process wrote to directory `d`."""
    total: Counter = Counter()
    for name in os.listdir(d):
        if name.endswith(".json"):
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    total.update(json.load(f))
            except (OSError, ValueError):
                continue
    return dict(total)


atexit.register(dump_stats)



__all__ = ["collect_stats", "count", "dump_stats", "reset_stats", "stats"]
