"""The decode worker process: its entry point `worker_main` and the messages it exchanges with the main
process. Torch-free on purpose: a spawned worker imports this module, numpy, `fastmix.errors`,
`fastmix.loader.slots` and what its reader factory needs (the reader stack, `fastmix.loader.readers`:
`fastmix.kernels`, `fastmix.sources.frames` with PyAV and pyarrow) — never torch or the loader module (a worker
is then ~30 MiB private instead of ~280 MiB).

Protocol, one duplex pipe per worker:
  main → worker: ``(seq, slot, requests)`` (part of batch `seq`, sorted by file), ``INFO`` (answer
  ``("info", {...})``: pid and imported module names, for diagnostics), or None (exit).
  worker → main: ``("ready", pid)`` once, then ``("done", seq)`` or ``("error", seq, ExceptionWrapper)``.

Look-ahead: while it decodes one work item, a worker receives the items the main process has already sent it
(the plan is dispatched ahead, in order) and has its reader fetch their remote bytes in one background thread
(`reader.prefetch(requests, ahead=True)`, readers that have it: `FrameReader` fetches what the item's frames
decode from, concurrently), one item after the other; an item whose look-ahead is still running is waited for
before it is decoded (nothing is fetched twice). A look-ahead that fails is forgotten: the item's own read
fetches again and reports the failure. Items of local files start no look-ahead.

Progress header (one row of the ring's header per worker, int64 words, see `slots.PROGRESS_WORDS`):
``SEQ`` the batch being decoded, ``START`` index of the file group being decoded within the work item,
``BUSY`` 1 while decoding, ``PID``, ``TICK`` incremented at every file group and every item, so the main
process can tell a stopped or hung worker (no tick for `worker_timeout_s` while it has work) from a slow one,
and name the file it is stuck in.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fastmix.loader.slots import SlotAttachment, SlotLayout

SEQ, START, BUSY, PID, TICK = range(5)
INFO = "info"
_PARENT_CHECK_S = 1.0


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


class LookAhead:
    """Fetches the remote bytes of work items received ahead, one at a time, in one background thread (named
    `fastmix-lookahead`); `close()` cancels what has not started and joins the thread."""

    def __init__(self, reader: Any) -> None:
        self.prefetch = getattr(reader, "prefetch", None)
        self.ahead = os.environ.get("FASTMIX_REMOTE_LOOKAHEAD", "1").strip() not in ("0", "off", "no", "false")
        self._thread: ThreadPoolExecutor | None = None

    def start(self, msg: Any) -> Future | None:
        """Start fetching for a received message (a work item of remote files), else None (also with
        FASTMIX_REMOTE_LOOKAHEAD=0: each item is then fetched when it is reached)."""
        if (self.prefetch is None or not self.ahead or not isinstance(msg, tuple)
                or not any("://" in r.path for r in msg[2])):
            return None
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="fastmix-lookahead")
        return self._thread.submit(self.prefetch, msg[2], True)

    def before_decode(self, requests: Sequence[Any], future: Future | None) -> None:
        """Wait for the item's look-ahead; without one (or a failed one) fetch the whole item now, every file
        concurrently (errors raise)."""
        if future is not None:
            try:
                future.result()
                return
            except Exception:  # noqa: BLE001 - fetched again below, where a failure is reported
                pass
        if self.prefetch is not None and any("://" in r.path for r in requests):
            self.prefetch(requests)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
            self._thread = None


def worker_main(worker_id: int, conn: Any, layout: SlotLayout, reader_factory: Callable[[], Any],
                parent_pid: int) -> None:
    """Body of a decode worker process: attach the ring, build the reader, decode work items until told to
    exit, the pipe closes or the parent disappears. SIGINT is ignored (the main process owns shutdown)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    att = None
    reader = None
    look: LookAhead | None = None
    pending: deque[tuple[Any, Future | None]] = deque()  # messages received ahead, with their look-ahead
    try:
        att = SlotAttachment(layout)
        progress = att.progress[worker_id]
        progress[PID] = os.getpid()
        reader = reader_factory()
        look = LookAhead(reader)
        conn.send(("ready", os.getpid()))
        while True:
            if pending:
                msg, future = pending.popleft()
            elif not conn.poll(_PARENT_CHECK_S):
                if os.getppid() != parent_pid:
                    break
                continue
            else:
                msg, future = conn.recv(), None
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
                look.before_decode(requests, future)
                while (not pending or pending[-1][0] is not None) and conn.poll(0):  # what was sent ahead
                    ahead = conn.recv()
                    pending.append((ahead, look.start(ahead)))
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
        if look is not None:
            look.close()
        if reader is not None:
            try:
                reader.close()
            except Exception:  # noqa: BLE001
                pass
        if att is not None:
            att.close()
        conn.close()


__all__ = ["INFO", "ExceptionWrapper", "LookAhead", "describe_requests", "file_groups", "worker_main"]
