"""`WorkerPool`: decode worker processes (spawn by default) that write frames straight into shared-memory slots.

Protocol, one duplex pipe per worker:
  main → worker: ``(seq, slot, requests)`` (a work item: part of batch `seq`, grouped by file), or None (exit).
  worker → main: ``("ready", pid)`` once, then ``("done", seq)`` or ``("error", seq, ExceptionWrapper)``.
Nothing is opened before the process starts: the reader is built by `reader_factory()` inside the worker.
Each worker records what it is decoding in the ring's progress header (seq, request index, busy), so the
main process can name the dataset, episode, file and timestamp when a worker dies, even by SIGKILL; death is
seen at once through the process sentinel. Workers ignore SIGINT (the main process owns shutdown) and exit
when their pipe closes or their parent disappears.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing import connection, get_context
from typing import Any

from fastmix.errors import WorkerError
from fastmix.loader.plan import describe_requests
from fastmix.loader.slots import SlotAttachment, SlotLayout

_PARENT_CHECK_S = 1.0


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
        raise WorkerError(f"decode worker {worker} (pid {pid}) failed on batch {seq} while decoding {self.where}: "
                          f"{self.type_name}: {self.message}\n\nWorker traceback:\n{self.traceback}") \
            from self.original()


def _groups(requests: Sequence[Any]) -> list[tuple[int, list[Any]]]:
    """(start index, requests of one file) in order."""
    out: list[tuple[int, list[Any]]] = []
    for i, r in enumerate(requests):
        if out and out[-1][1][0].path == r.path:
            out[-1][1].append(r)
        else:
            out.append((i, [r]))
    return out


def _worker_main(worker_id: int, conn: Any, layout: SlotLayout, reader_factory: Callable[[], Any],
                 parent_pid: int) -> None:
    """Body of a decode worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    att = None
    reader = None
    try:
        att = SlotAttachment(layout)
        progress = att.progress[worker_id]
        progress[3] = os.getpid()
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
            seq, slot, requests = msg
            progress[0], progress[1], progress[2] = seq, 0, 1
            group: list[Any] = []
            try:
                out = att.views(slot)
                for start, group in _groups(requests):
                    progress[1] = start
                    reader.read(group, out)
                progress[2] = 0
                conn.send(("done", seq))
            except Exception as exc:  # noqa: BLE001 - every error goes back to the main process
                progress[2] = 0
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


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class WorkerPool:
    """`num_workers` decode processes attached to one `SlotLayout`.

    Args:
        num_workers: processes (>= 1). layout: the ring they write into. progress: the main process's view of
        the ring's progress header. reader_factory: picklable callable building a reader in each worker.
        context: multiprocessing start method ("spawn" or "forkserver"). start_timeout: seconds to wait for
        every worker to report ready.
    """

    def __init__(self, num_workers: int, layout: SlotLayout, progress: Any, reader_factory: Callable[[], Any], *,
                 context: str = "spawn", start_timeout: float = 120.0) -> None:
        self.num_workers = num_workers
        self._progress = progress
        ctx = get_context(context)
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self.pids: list[int | None] = []
        self._outstanding: list[deque[tuple[int, list[Any]]]] = [deque() for _ in range(num_workers)]
        self._closed = False
        try:
            for i in range(num_workers):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_main, args=(i, child, layout, reader_factory, os.getpid()),
                                name=f"fastmix-decode-{i}", daemon=True)
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
                self.pids.append(p.pid)
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        waiting = set(range(self.num_workers))
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"decode workers {sorted(waiting)} did not start within {timeout:.0f}s")
            objs = [self._conns[i] for i in waiting] + [self._procs[i].sentinel for i in waiting]
            for obj in connection.wait(objs, timeout=min(left, 1.0)):
                i = self._index_of(obj)
                if obj is self._procs[i].sentinel and not self._conns[i].poll():
                    self._procs[i].join(1.0)
                    raise WorkerError(f"decode worker {i} (pid {self.pids[i]}) died at start-up "
                                      f"({_signal_name(self._procs[i].exitcode)})")
                msg = self._recv(i)
                if msg[0] == "ready":
                    waiting.discard(i)
                else:
                    msg[2].reraise(i, self.pids[i], msg[1])

    def _index_of(self, obj: Any) -> int:
        for i in range(self.num_workers):
            if obj is self._conns[i] or obj == self._procs[i].sentinel:
                return i
        raise RuntimeError(f"unknown wait object {obj!r}")  # pragma: no cover

    def _recv(self, i: int) -> tuple:
        try:
            return self._conns[i].recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            self._procs[i].join(2.0)
            raise WorkerError(self._death_message(i)) from None

    def _death_message(self, i: int) -> str:
        code = self._procs[i].exitcode
        where = self.where(i)
        return (f"decode worker {i} (pid {self.pids[i]}) died ({_signal_name(code)}) while decoding {where}. "
                "The loader stopped its workers; iterating again restarts them from the last delivered batch "
                "(or load_state_dict).")

    def where(self, i: int) -> str:
        """What worker i is decoding (from the shared progress header), or 'nothing'."""
        if not self._outstanding[i]:
            return "nothing (idle)"
        seq, requests = self._outstanding[i][0]
        start = 0
        try:
            if int(self._progress[i][0]) == seq and int(self._progress[i][2]) == 1:
                start = int(self._progress[i][1])
        except Exception:  # noqa: BLE001 - header already unmapped
            start = 0
        group = [r for r in requests[start:] if r.path == requests[start].path] if requests else []
        return f"batch {seq}: {describe_requests(group)}"

    @property
    def outstanding(self) -> int:
        return sum(len(q) for q in self._outstanding)

    def outstanding_of(self, i: int) -> int:
        return len(self._outstanding[i])

    def submit(self, worker: int, seq: int, slot: int, requests: list[Any]) -> None:
        """Send a work item to `worker`; a dead worker raises WorkerError."""
        try:
            self._conns[worker].send((seq, slot, requests))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._procs[worker].join(2.0)
            raise WorkerError(self._death_message(worker)) from None
        self._outstanding[worker].append((seq, requests))

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """Wait up to `timeout` s; return completed (seq, worker) pairs. A worker error or death raises
        WorkerError naming what it was decoding."""
        busy = [i for i in range(self.num_workers) if self._outstanding[i]]
        if not busy:
            return []
        objs = [self._conns[i] for i in busy] + [self._procs[i].sentinel for i in busy]
        done: list[tuple[int, int]] = []
        for obj in connection.wait(objs, timeout=timeout):
            i = self._index_of(obj)
            while self._outstanding[i] and self._conns[i].poll():
                msg = self._recv(i)
                if msg[0] == "done":
                    seq = self._outstanding[i].popleft()[0]
                    if seq != msg[1]:  # pragma: no cover - protocol invariant
                        raise WorkerError(f"decode worker {i} answered batch {msg[1]}, expected {seq}")
                    done.append((seq, i))
                elif msg[0] == "error":
                    msg[2].reraise(i, self.pids[i], msg[1])
            if self._outstanding[i] and not self._procs[i].is_alive() and not self._conns[i].poll():
                self._procs[i].join(1.0)
                raise WorkerError(self._death_message(i))
        return done

    def describe_outstanding(self) -> str:
        return "; ".join(f"worker {i} (pid {self.pids[i]}): {self.where(i)}"
                         for i in range(self.num_workers) if self._outstanding[i]) or "nothing"

    def alive(self) -> bool:
        return not self._closed and all(p.is_alive() for p in self._procs)

    def close(self, timeout: float = 2.0) -> None:
        """Stop every worker (exit message, then SIGTERM, then SIGKILL), bounded by ~timeout + 2 s; idempotent."""
        if self._closed:
            return
        self._closed = True
        for i, conn in enumerate(self._conns):
            if self._outstanding[i]:
                continue  # busy with work nobody waits for: terminate below
            try:
                conn.send(None)
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + timeout
        for i, p in enumerate(self._procs):
            if self._outstanding[i]:
                p.terminate()
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        for conn in self._conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        for p in self._procs:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - still alive after SIGKILL (zombie reaping lag)
                pass
        for q in self._outstanding:
            q.clear()


__all__ = ["ExceptionWrapper", "WorkerPool"]
