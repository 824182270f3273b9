"""The decode worker process: its entry point `worker_main`, the default reader factory and the messages it
exchanges with the main process. Torch-free on purpose: a spawned worker imports this module, numpy,
`fastmix.errors`, `fastmix.loader.slots` and (through the default factory) `fastmix.sources.frames` (PyAV,
pyarrow) — never torch or the loader module (a worker is then ~30 MiB private instead of ~280 MiB).

Protocol, one duplex pipe per worker:
  main → worker: ``(seq, slot, requests)`` (part of batch `seq`, sorted by file), ``INFO`` (answer
  ``("info", {...})``: pid and imported module names, for diagnostics), or None (exit).
  worker → main: ``("ready", pid)`` once, then ``("done", seq)`` or ``("error", seq, ExceptionWrapper)``.

Progress header (one row of the ring's header per worker, int64 words, see `slots.PROGRESS_WORDS`):
``SEQ`` the batch being decoded, ``START`` index of the file group being decoded within the work item,
``BUSY`` 1 while decoding, ``PID``, ``TICK`` incremented at every file group and every item, so the main
process can tell a stopped or hung worker (no tick for `worker_timeout_s` while it has work) from a slow one,
and name the file it is stuck in.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from fastmix.loader.slots import SlotAttachment, SlotLayout

SEQ, START, BUSY, PID, TICK = range(5)
INFO = "info"
_PARENT_CHECK_S = 1.0


def _make_frame_reader(max_open_files: int, tolerance_s: float) -> Any:
    from fastmix.sources.frames import FrameReader

    return FrameReader(max_open_files=max_open_files, tolerance_s=tolerance_s)


def default_reader_factory(max_open_files: int, tolerance_s: float) -> Callable[[], Any]:
    """Picklable factory of the default reader: `FrameReader(max_open_files, tolerance_s)` built in the worker."""
    return functools.partial(_make_frame_reader, int(max_open_files), float(tolerance_s))


class ResizingReader:
    """A frame reader whose frames come out resized with padding to (height, width), exactly as openpi's
    `ResizeImages` would resize them later (`fastmix.kernels.resize.resize_with_pad`: PIL bilinear, centred, zero
    padding, natively where checked bit-identical to PIL). `native` maps (dataset, key) to the decoded (H, W, C).
    Frames are decoded into a scratch buffer reused per (key, shape); a group whose slots are consecutive is
    resized straight into the slot."""

    def __init__(self, inner: Any, height: int, width: int, native: dict[tuple[str, str], tuple[int, ...]]) -> None:
        self.inner, self.height, self.width, self.native = inner, int(height), int(width), native
        self._scratch: dict[tuple, Any] = {}

    def _buffer(self, key: str, shape: tuple[int, ...], n: int) -> Any:
        import numpy as np

        buf = self._scratch.get((key, shape))
        if buf is None or len(buf) < n:
            buf = self._scratch[(key, shape)] = np.empty((n, *shape), dtype=np.uint8)
        return buf[:n]

    def read(self, requests: Sequence[Any], out: dict[str, Any]) -> None:
        import dataclasses

        from fastmix.kernels.resize import resize_with_pad

        by_shape: dict[tuple, list[Any]] = {}
        for r in requests:
            by_shape.setdefault((r.key, tuple(self.native[(r.dataset, r.key)])), []).append(r)
        for (key, shape), group in by_shape.items():
            if tuple(shape[:2]) == (self.height, self.width):
                self.inner.read(group, out)
                continue
            frames = self._buffer(key, shape, len(group))
            self.inner.read([dataclasses.replace(r, slot=j) for j, r in enumerate(group)], {key: frames})
            first, dest = group[0].slot, out[key]
            block = dest[first:first + len(group)]
            if all(r.slot == first + j for j, r in enumerate(group)) and block.flags.c_contiguous:
                resize_with_pad(frames, self.height, self.width, out=block)  # straight into the slot
                continue
            resized = resize_with_pad(frames, self.height, self.width)
            for j, r in enumerate(group):
                dest[r.slot] = resized[j]

    def close(self) -> None:
        self.inner.close()


def _make_resizing_reader(inner_factory: Callable[[], Any], height: int, width: int,
                          native: dict[tuple[str, str], tuple[int, ...]]) -> ResizingReader:
    return ResizingReader(inner_factory(), height, width, native)


def resizing_reader_factory(inner_factory: Callable[[], Any], size: tuple[int, int],
                            native: dict[tuple[str, str], tuple[int, ...]]) -> Callable[[], Any]:
    """Picklable factory of a `ResizingReader` around the reader `inner_factory` builds (in the worker)."""
    return functools.partial(_make_resizing_reader, inner_factory, int(size[0]), int(size[1]), dict(native))


class FloatingReader:
    """A frame reader whose camera frames land in float32 (C, H, W) slots: the inner reader decodes uint8
    (H, W, C) frames into a scratch row, and `fastmix.kernels.pixels.to_float` writes `table[frame]` transposed into the
    slot (`table`: float32 (256,), the reference conversion of every byte value, computed by the caller)."""

    def __init__(self, inner: Any, table: Any) -> None:
        self.inner, self.table = inner, table
        self._scratch: dict[tuple[str, tuple[int, ...]], Any] = {}
        # a reader that converts as it stores (FrameReader.float_table) writes the slot directly
        self._direct = hasattr(inner, "float_table")
        if self._direct:
            inner.float_table = table

    def read(self, requests: Sequence[Any], out: dict[str, Any]) -> None:
        if self._direct:
            self.inner.read(requests, out)
            return
        import numpy as np

        from fastmix.kernels.pixels import to_float

        scratch: dict[str, Any] = {}
        for r in requests:
            if r.key not in scratch:
                b, c, h, w = out[r.key].shape
                buf = self._scratch.get((r.key, (b, h, w, c)))
                if buf is None:
                    buf = self._scratch[(r.key, (b, h, w, c))] = np.empty((b, h, w, c), dtype=np.uint8)
                scratch[r.key] = buf
        self.inner.read(requests, scratch)
        for r in requests:
            to_float(scratch[r.key][r.slot:r.slot + 1], self.table, chw=True, out=out[r.key][r.slot:r.slot + 1])

    def close(self) -> None:
        self.inner.close()


def _make_floating_reader(inner_factory: Callable[[], Any], table: Any) -> FloatingReader:
    return FloatingReader(inner_factory(), table)


def floating_reader_factory(inner_factory: Callable[[], Any], table: Any) -> Callable[[], Any]:
    """Picklable factory of a `FloatingReader` around the reader `inner_factory` builds (in the worker)."""
    return functools.partial(_make_floating_reader, inner_factory, table)


def describe_requests(requests: Sequence[Any]) -> str:
    """'dataset X, episode(s) .., file .., key(s) .., timestamp(s) ..' of a (per-file) group of requests."""
    if not requests:
        return "no frames"
    parts = []
    for path in dict.fromkeys(r.path for r in requests):
        group = [r for r in requests if r.path == path]
        ds = sorted({r.dataset for r in group})
        eps = sorted({int(r.episode) for r in group})
        keys = sorted({r.key for r in group})
        ts = sorted({round(float(r.timestamp), 4) for r in group})
        ts_txt = ", ".join(f"{t:.4f}" for t in ts[:6]) + (f", ... ({len(ts)} in all)" if len(ts) > 6 else "")
        rows = sorted({int(r.row) for r in group if r.row >= 0})
        row_txt = f", rows {rows[:6]}" if rows else ""
        parts.append(f"dataset {', '.join(map(repr, ds))}, episode(s) {eps[:8]}, file {path}, "
                     f"key(s) {keys}, timestamp(s) [{ts_txt}]s{row_txt}")
    return "; ".join(parts)


def file_groups(requests: Sequence[Any]) -> list[tuple[int, list[Any]]]:
    """(start index, consecutive requests of one file) in order."""
    out: list[tuple[int, list[Any]]] = []
    for i, r in enumerate(requests):
        if out and out[-1][1][0].path == r.path:
            out[-1][1].append(r)
        else:
            out.append((i, [r]))
    return out


class ExceptionWrapper:
    """An exception raised in a worker, with `where` (what it was decoding) and the worker's traceback;
    `reraise()` raises a WorkerError chained to the original exception when it could be pickled."""

    def __init__(self, exc: BaseException, where: str) -> None:
        self.where = where
        self.type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self.message = str(exc)
        self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            self.payload: bytes | None = pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - unpicklable exceptions travel as text only
            self.payload = None

    def original(self) -> BaseException | None:
        if self.payload is None:
            return None
        try:
            return pickle.loads(self.payload)
        except Exception:  # noqa: BLE001
            return None

    def reraise(self, worker: int, pid: int | None, seq: int) -> None:
        from fastmix.errors import WorkerError

        raise WorkerError(f"decode worker {worker} (pid {pid}) failed on batch {seq} while decoding {self.where}: "
                          f"{self.type_name}: {self.message}\n\nWorker traceback:\n{self.traceback}") \
            from self.original()


def worker_main(worker_id: int, conn: Any, layout: SlotLayout, reader_factory: Callable[[], Any],
                parent_pid: int) -> None:
    """Body of a decode worker process: attach the ring, build the reader, decode work items until told to
    exit, the pipe closes or the parent disappears. SIGINT is ignored (the main process owns shutdown)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    att = None
    reader = None
    try:
        att = SlotAttachment(layout)
        progress = att.progress[worker_id]
        progress[PID] = os.getpid()
        reader = reader_factory()
        conn.send(("ready", os.getpid()))
        while True:
            if not conn.poll(_PARENT_CHECK_S):
                if os.getppid() != parent_pid:
                    break
                continue
            msg = conn.recv()
            if msg is None:
                break
            if msg == INFO:
                conn.send(("info", {"pid": os.getpid(), "modules": sorted(sys.modules)}))
                continue
            seq, slot, requests = msg
            progress[SEQ], progress[START], progress[BUSY] = seq, 0, 1
            progress[TICK] += 1
            group: list[Any] = []
            try:
                out = att.views(slot)
                for start, group in file_groups(requests):
                    progress[START] = start
                    progress[TICK] += 1
                    reader.read(group, out)
                progress[BUSY] = 0
                progress[TICK] += 1
                conn.send(("done", seq))
            except Exception as exc:  # noqa: BLE001 - every error goes back to the main process
                progress[BUSY] = 0
                conn.send(("error", seq, ExceptionWrapper(exc, describe_requests(group or requests))))
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        pass
    except Exception as exc:  # noqa: BLE001 - a start-up failure (attach, reader construction)
        try:
            conn.send(("error", -1, ExceptionWrapper(exc, f"worker start-up (segment {layout.name})")))
        except Exception:  # noqa: BLE001
            pass
    finally:
        if reader is not None:
            try:
                reader.close()
            except Exception:  # noqa: BLE001
                pass
        if att is not None:
            att.close()
        conn.close()


__all__ = ["INFO", "ExceptionWrapper", "FloatingReader", "ResizingReader", "default_reader_factory",
           "describe_requests", "file_groups", "floating_reader_factory", "resizing_reader_factory", "worker_main"]
