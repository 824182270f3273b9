"""The two passes of `fastmix compute-norm-stats` over a config's frames, in one or several processes.

Frames are taken in `order` (global indices of the mixture: every frame in dataset order, or a sorted uniform
draw) and cut into statistics batches of `batch_size` frames (the batches openpi's script feeds RunningStats; the
last one may be shorter). Each process reads a contiguous share of the batches, many batches per read
(`chunk_frames`), with `fastmix.tools.norm_stats_reader.FrameStatsReader`: low-dim columns only (cameras are 1x1
placeholders, never decoded), the config's repack and data transforms on the whole chunk (openpi's transforms of
known types batched, the rest per sample).

Pass 1 gives each batch's moments (`fastmix.kernels.stats_tables.moments_table`); the main process replays the
running min/max (`schedule_table`); pass 2 histograms each batch on its epoch's edges, folded per share
(`HistFold`); `reduce_table` gives RunningStats' state. The result does not depend on the number of processes
(same batches, same order, integer counts): bit for bit.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastmix.errors import DatasetFormatError
from fastmix.kernels.stats import ReducedStats
from fastmix.kernels.stats_tables import (
    HistFold,
    MomentsTable,
    TableSchedule,
    moments_table,
    reduce_table,
    schedule_table,
)
from fastmix.tools.norm_stats_reader import (
    CHUNK_FRAMES,
    STATS_KEYS,
    ChunkGather,
    FrameStatsReader,
    PassSpec,
    first_non_finite,
    for_workers,
)

MAX_WORKERS = 8


def default_context() -> str:
    """"fork" where the platform has it (workers inherit the opened datasets: no second open; they only read
    low-dim columns and run numpy transforms, no decoder or device state), except once JAX has started its
    backends in this process (JAX's own condition for warning that fork may deadlock): then "spawn"."""
    if "fork" not in mp.get_all_start_methods():
        return "spawn"
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:
        return "fork"
    started = getattr(bridge, "backends_are_initialized", None)
    return "spawn" if (started() if callable(started) else bool(getattr(bridge, "_backends", None))) else "fork"


def default_workers() -> int:
    """The CPUs this process may run on, at most MAX_WORKERS."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_WORKERS))


_STATE: dict[str, Any] = {"token": None, "specs": None, "readers": None}  # this process's run


def _use(token: int, specs: Sequence[PassSpec] | None) -> tuple[Sequence[PassSpec], list[FrameStatsReader]]:
    """The run's specs and this process's readers (one per spec): from `_STATE` (set before forking), else
    opened from `specs`."""
    if _STATE["token"] != token:
        if specs is None:
            raise RuntimeError("a norm-stats worker got no spec and inherited none (start method without fork)")
        _STATE.update(token=token, specs=specs, readers=[FrameStatsReader(s) for s in specs])
    return _STATE["specs"], _STATE["readers"]


def _chunks(spec: PassSpec, lo: int, hi: int):
    """(first batch, frame starts of its batches relative to the chunk (int64), global indices) per chunk of
    batches lo..hi."""
    per = max(1, spec.chunk_frames // spec.batch_size)
    for k in range(lo, hi, per):
        k_end = min(hi, k + per)
        starts = np.minimum(np.arange(k, k_end + 1, dtype=np.int64) * spec.batch_size, spec.num_frames)
        yield k, starts - starts[0], spec.frames(int(starts[0]), int(starts[-1]))


class Share:
    """One process's share of one spec's batches, lo..hi (numbered from `offset` in the run's schedules), read
    once for pass 1 and, where the transformed values of a chunk fit in `cache` (a one-item list of bytes left,
    shared by the process's shares; kept from pass 1), not read again for pass 2."""

    def __init__(self, spec: PassSpec, reader: FrameStatsReader, lo: int, hi: int, cache: list[int],
                 offset: int = 0) -> None:
        self.spec, self.reader, self.lo, self.hi, self.offset = spec, reader, lo, hi, offset
        self.room = cache
        self._cache: list[dict[str, np.ndarray] | None] = []

    def moments(self) -> dict[str, MomentsTable]:
        """Pass 1: {key: MomentsTable} of the share's batches (NaN/inf checked)."""
        tables: dict[str, list[MomentsTable]] = {k: [] for k in self.spec.keys}
        for _, starts, gi in _chunks(self.spec, self.lo, self.hi):
            values = self.reader.values(gi, check=True)
            size = sum(x.nbytes for x in values.values())
            keep = size <= self.room[0]
            self.room[0] -= size if keep else 0
            self._cache.append(values if keep else None)
            for k, x in values.items():
                tables[k].append(moments_table(x, starts * (len(x) // len(gi))))
        return {k: _concat(k, t) for k, t in tables.items()}

    def histograms(self, schedules: dict[str, TableSchedule]) -> dict[str, HistFold]:
        """Pass 2: {key: the share's histogram folded over its epochs}."""
        folds = {k: HistFold(s) for k, s in schedules.items()}
        for i, (k0, starts, gi) in enumerate(_chunks(self.spec, self.lo, self.hi)):
            cached = self._cache[i] if i < len(self._cache) else None
            values = cached if cached is not None else self.reader.values(gi, check=False)
            for k, x in values.items():
                rows = starts * (len(x) // len(gi))
                first = self.offset + k0
                epochs = schedules[k].epoch_of_batch[first:first + len(starts) - 1]
                cut = np.flatnonzero(np.diff(epochs)) + 1  # runs of batches on the same edges
                for a, b in zip(np.r_[0, cut], np.r_[cut, len(epochs)], strict=True):
                    folds[k].add(x[rows[a]:rows[b]], int(epochs[a]))
        self._cache = []
        return folds


def _share_main(conn: Any, token: int, specs: Sequence[PassSpec] | None, work: Sequence[tuple[int, int, int, int]],
                cache_bytes: int) -> None:
    """A worker process: pass 1 of its shares `work` ((spec number, lo, hi, offset) each), then, given the
    schedules, pass 2; errors sent back."""
    try:
        specs, readers = _use(token, specs)
        cache = [int(cache_bytes)]
        mine = [Share(specs[e], readers[e], lo, hi, cache, off) for e, lo, hi, off in work]
        conn.send(("ok", [share.moments() for share in mine]))
        try:
            schedules = conn.recv()
        except EOFError:  # the main process stopped (an error elsewhere)
            return
        conn.send(("ok", [share.histograms(schedules) for share in mine]))
    except BaseException as e:  # noqa: BLE001 - sent to the main process, which raises it
        for answer in (e, RuntimeError(f"{type(e).__name__}: {e}")):  # the second when `e` does not pickle
            try:
                conn.send(("error", answer))
                break
            except OSError:  # the main process is gone
                break
            except Exception:  # noqa: BLE001, S112 - pickling failed: send the text
                continue
    finally:
        conn.close()


def default_cache_bytes(workers: int) -> int:
    """Per process: a quarter of the memory available now (Linux MemAvailable) shared by `workers`; 0 elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0
    return avail // 4 // max(1, workers)


def _concat(key: str, tables: Sequence[MomentsTable]) -> MomentsTable:
    dims = sorted({t.mean.shape[1] for t in tables})
    if len(dims) > 1:
        raise DatasetFormatError(f"key {key!r} has vectors of different lengths {dims} in different frames; "
                                 f"norm stats need one length")
    return MomentsTable.concat(tables)


def shares(num_batches: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous, balanced ranges of batches, one per process (no empty one)."""
    w = max(1, min(workers, num_batches))
    cuts = [num_batches * i // w for i in range(w + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def reduce_all(specs: PassSpec | Sequence[PassSpec], workers: int = 1, mp_context: str | None = None,
               progress: Callable[[str], None] | None = None, readers: Sequence[FrameStatsReader] | None = None,
               cache_bytes: int | None = None, label: str = "") -> dict[str, ReducedStats]:
    """RunningStats' final state of each key over the batches of `specs` in order (several specs: pooled, e.g.
    the entries of a mixture sharing one asset; each its own transforms), in `workers` processes (1: this one,
    reading with `readers` when given; each process takes a contiguous share of every spec). `cache_bytes`: per
    process, transformed values kept from pass 1 for pass 2 (default `default_cache_bytes`); the result does not
    depend on it nor on `workers`."""
    specs = [specs] if isinstance(specs, PassSpec) else list(specs)
    w = max(1, min(int(workers), max(s.num_batches for s in specs)))
    offsets = np.cumsum([0] + [s.num_batches for s in specs]).tolist()
    per_worker: list[list[tuple[int, int, int, int]]] = [[] for _ in range(w)]
    for e, s in enumerate(specs):
        for i, (lo, hi) in enumerate(shares(s.num_batches, w)):
            per_worker[i].append((e, lo, hi, offsets[e]))
    work = [items for items in per_worker if items]
    mp_context = mp_context or default_context()
    cache_bytes = default_cache_bytes(len(work)) if cache_bytes is None else int(cache_bytes)
    token = int.from_bytes(os.urandom(8), "little")
    say = progress or (lambda _msg: None)
    inherit = len(work) == 1 or mp_context == "fork"
    t0 = time.perf_counter()
    pool = None
    try:
        if inherit:  # this process's specs and readers, inherited by forked workers: datasets opened once
            _STATE.update(token=token, specs=specs, readers=list(readers) if readers else [FrameStatsReader(s)
                                                                                             for s in specs])
        if len(work) == 1:
            local = [Share(specs[e], _STATE["readers"][e], lo, hi, [cache_bytes], off) for e, lo, hi, off in work[0]]
            per_proc = [[share.moments() for share in local]]
        else:
            pool = _Workers(work, token, None if inherit else specs, cache_bytes, mp_context)
            per_proc = pool.results()
        say(f"{label}pass 1 of 2 done ({offsets[-1]} batches, {len(work)} process(es), "
            f"{time.perf_counter() - t0:.1f} s)")
        runs = _in_batch_order(work, per_proc)
        tables = {k: _concat(k, [r[k] for _, r in runs]) for k in specs[0].keys}
        schedules = {k: schedule_table(t) for k, t in tables.items()}
        folds_per_proc = [[share.histograms(schedules) for share in local]] if pool is None else pool.results(schedules)
        say(f"{label}pass 2 of 2 done ({time.perf_counter() - t0:.1f} s)")
    finally:
        _STATE.update(token=None, specs=None, readers=None)
        if pool is not None:
            pool.close()
    folds = [f for _, f in _in_batch_order(work, folds_per_proc)]
    out = {}
    for k in specs[0].keys:
        fold = folds[0][k].attach(schedules[k])
        for f in folds[1:]:
            fold = fold.merge(f[k].attach(schedules[k]))
        out[k] = reduce_table(tables[k], schedules[k], fold)
    return out


def _in_batch_order(work: Sequence[Sequence[tuple[int, int, int, int]]], per_proc: Sequence[Sequence[Any]]
                    ) -> list[tuple[int, Any]]:
    """The processes' answers per share, ordered by the shares' first batch in the run's numbering."""
    runs = [(off + lo, answer) for items, answers in zip(work, per_proc, strict=True)
            for (_, lo, _, off), answer in zip(items, answers, strict=True)]
    return sorted(runs, key=lambda r: r[0])


class _Workers:
    """One process per share (`_share_main`), talking over a pipe each."""

    def __init__(self, work: Sequence[Sequence[tuple[int, int, int, int]]], token: int,
                 specs: Sequence[PassSpec] | None, cache_bytes: int, mp_context: str) -> None:
        ctx = mp.get_context(mp_context)
        self.procs, self.conns = [], []
        try:
            for i, items in enumerate(work):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_share_main, args=(child, token, specs, items, cache_bytes),
                                name=f"fastmix-norm-stats-{i}", daemon=True)
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
        except BaseException:
            self.close()
            raise

    def results(self, schedules: dict[str, TableSchedule] | None = None) -> list[Any]:
        """Each share's answer (in share order); with `schedules`, sent first (pass 2). A worker's error is raised
        here; a worker that died without answering is a RuntimeError naming its exit code."""
        if schedules is not None:
            for c in self.conns:
                c.send(schedules)
        out = []
        for p, c in zip(self.procs, self.conns, strict=True):
            try:
                status, value = c.recv()
            except EOFError:
                p.join(5)
                raise RuntimeError(f"norm-stats worker {p.name} (pid {p.pid}) exited with code {p.exitcode} "
                                   f"without an answer") from None
            if status == "error":
                raise value
            out.append(value)
        return out

    def close(self) -> None:
        for c in self.conns:
            c.close()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()


__all__ = ["CHUNK_FRAMES", "MAX_WORKERS", "STATS_KEYS", "ChunkGather", "FrameStatsReader", "PassSpec", "Share",
           "default_cache_bytes", "default_context", "default_workers", "first_non_finite", "for_workers",
           "reduce_all", "shares"]
