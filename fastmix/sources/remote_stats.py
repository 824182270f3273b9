"""Counters of the remote reads of this process (requests, bytes, retries and failures by cause, byte-cache hits),
and their collection across processes: with `FASTMIX_REMOTE_STATS_DIR` set, each process writes its counters
to `<dir>/<pid>.json` (atomically, after each read of remote files and at exit); `collect_stats(dir)` sums the
files (the decode workers' counters). Re-exported by `fastmix.sources.remote`.

When a process opens a remote root and the variable is unset, `ensure_stats_dir` sets it to a private temporary
directory (removed when that process exits), so the decode workers it spawns write there; `tree_stats()` is
then this process's live counters plus every other process's file, and `since(snapshot)` the part counted
after a snapshot (what `MixtureLoader.stats()` reports).

Counter names: requests (HTTP requests sent, redirect hops included), bytes (response bytes), retries and
retry_<cause> (timeout, connection, refused, short_body, http_<status>), failures (errors raised), redirects,
rate_waits (requests delayed by FASTMIX_REMOTE_MAX_RPS), range_gets / range_bytes (ranges fetched from the
store: byte-cache misses), cache_hits / cache_bytes (ranges served by the node-local byte cache).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
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


def collect_stats(d: str, *, skip: str | None = None) -> dict[str, int]:
    """The sum of the counters every process wrote to directory `d` (but the file named `skip`); a file being
    replaced or unreadable is left out."""
    total: Counter = Counter()
    for name in os.listdir(d):
        if name.endswith(".json") and name != skip:
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    total.update(json.load(f))
            except (OSError, ValueError):
                continue
    return dict(total)


atexit.register(dump_stats)
os.register_at_fork(after_in_child=reset_stats)  # a forked child counts its own requests only

STATS_ENV = "FASTMIX_REMOTE_STATS_DIR"
STATS_PREFIX = "fastmix-remote-stats-"  # + "<owner pid>-<random>": the private directories ensure_stats_dir makes


def ensure_stats_dir() -> str:
    """The directory counters are collected in: `$FASTMIX_REMOTE_STATS_DIR`, else a new private temporary one,
    set in the environment (spawned workers inherit it) and removed at this process's exit (those of processes
    that died without exiting are swept first: `sweep_stats_dirs`)."""
    d = os.environ.get(STATS_ENV)
    if d:
        return d
    owner = os.getpid()
    sweep_stats_dirs()
    d = tempfile.mkdtemp(prefix=f"{STATS_PREFIX}{owner}-")
    os.environ[STATS_ENV] = d

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(d, ignore_errors=True)

    atexit.register(remove)
    return d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stats_dirs(base: str | None = None) -> list[str]:
    """Remove the private counter directories (`<tmp>/fastmix-remote-stats-<pid>-*`) whose owner process is
    gone: one killed (SIGKILL, OOM) never ran its exit hook. Returns the removed paths. Directories of live
    processes, and of other names, are left alone."""
    base = base or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(STATS_PREFIX):
            continue
        pid = name[len(STATS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path = os.path.join(base, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def tree_stats() -> dict[str, int]:
    """This process's counters plus those every other process wrote to `$FASTMIX_REMOTE_STATS_DIR` (its decode
    workers, earlier ones included); this process's alone when the variable is unset."""
    total = Counter(stats())
    d = os.environ.get(STATS_ENV)
    if d and os.path.isdir(d):
        total.update(collect_stats(d, skip=f"{os.getpid()}.json"))
    return dict(total)


def since(base: dict[str, int]) -> dict[str, int]:
    """`tree_stats()` minus the snapshot `base` (an earlier `tree_stats()`), zero counters left out."""
    now = Counter(tree_stats())
    now.subtract(base)
    return {k: v for k, v in now.items() if v}


__all__ = ["STATS_ENV", "collect_stats", "count", "dump_stats", "ensure_stats_dir", "reset_stats", "since",
           "stats", "sweep_stats_dirs", "tree_stats"]
