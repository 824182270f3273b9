"""`WorkerPool`: the main-process side of the decode workers (spawn by default), which write frames straight
into shared-memory slots. The worker body, its messages and its progress header are in `worker_main.py`
(torch-free, so a worker never imports torch or this module's callers). Workers do not re-import the main
script either (Python's spawn default) unless the reader factory is defined there: a training script's
top-level `import torch` then stays out of the workers too.

Failure detection: a worker's death is seen at once through its process sentinel; a worker that has work
but advances no progress tick for `stall_timeout_s` (stopped by SIGSTOP, hung in a decoder) is killed and
reported, naming its pid and the file it was decoding (from the ring's progress header, so even a SIGKILLed
worker's file is known). A worker that dies before it is ready because the main script (re-imported for a factory defined there)
starts the loader at top level without ``if __name__ == "__main__":`` is reported as exactly that.
"""

from __future__ import annotations

import ast
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from multiprocessing import connection, get_context
from typing import Any

from fastmix.errors import ConfigError, WorkerError
from fastmix.loader.slots import SlotLayout
from fastmix.loader.worker_main import BUSY, INFO, SEQ, START, TICK, describe_requests, worker_main

_SPAWN_WITHOUT_MAIN = threading.local()  # set around Process.start() by WorkerPool (this thread only)
_hook_lock = threading.Lock()
_hook_installed = False
_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()  # live pools of this process


def _disown_workers_after_fork() -> None:
    """In the child of a plain `os.fork()`: the parent's decode workers are not this process's children, but
    multiprocessing still lists them, and at the child's normal exit it would SIGTERM them (daemon processes)
    and try to join them. Drop them from that list (multiprocessing resets it the same way in its own
    children); the pools themselves refuse to stop workers they did not start (`WorkerPool.close`)."""
    from multiprocessing import process

    children = getattr(process, "_children", None)
    if children is None:  # pragma: no cover - another multiprocessing implementation
        return
    for pool in list(_POOLS):
        for p in pool._procs:
            children.discard(p)


os.register_at_fork(after_in_child=_disown_workers_after_fork)


def _install_preparation_hook() -> None:
    """Let WorkerPool start spawn/forkserver children that do not re-import the main script.

    multiprocessing makes every child re-run the main module's top level (to find objects pickled from
    `__main__`); a training script's `import torch` there would load torch in every decode worker. The hook
    drops the main-module entries of the preparation data, only for processes started by this thread while
    `_SPAWN_WITHOUT_MAIN.on` is set, i.e. by a WorkerPool whose payload needs nothing from `__main__`."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        from multiprocessing import spawn

        original = spawn.get_preparation_data

        def get_preparation_data(name: str) -> dict[str, Any]:
            data = original(name)
            if getattr(_SPAWN_WITHOUT_MAIN, "on", False):
                data.pop("init_main_from_name", None)
                data.pop("init_main_from_path", None)
            return data

        spawn.get_preparation_data = get_preparation_data
        _hook_installed = True


def needs_main_module(obj: Any) -> bool:
    """Whether pickling `obj` refers to the `__main__` module (then a child must re-import the main script)."""
    try:
        return b"__main__" in pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - unpicklable: let Process.start() report it
        return True


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _process_state(pid: int | None) -> str:
    """'stopped (SIGSTOP/SIGTSTP)', 'running', 'sleeping', ... from /proc/<pid>/stat ('' when unknown)."""
    if pid is None:
        return ""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
    return {"T": "stopped (SIGSTOP/SIGTSTP)", "t": "stopped by a debugger", "R": "running",
            "S": "sleeping", "D": "in uninterruptible I/O", "Z": "zombie"}.get(state, f"state {state}")


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1:
        return False
    if not isinstance(node.test.ops[0], ast.Eq):
        return False
    sides = [node.test.left, node.test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


def unguarded_main_line() -> tuple[str, int] | None:
    """(script, line) when the caller runs inside the main script's top-level code outside an
    ``if __name__ == "__main__":`` block (spawned workers re-import the main module and would run that code
    again); None when guarded, called from elsewhere, or the main module has no source file."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__" \
                and os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path):
            break
        frame = frame.f_back
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    for node in tree.body:
        if _is_main_guard(node) and node.lineno <= line <= (node.end_lineno or node.lineno):
            return None
    return str(path), line


class WorkerPool:
    """`num_workers` decode processes attached to one `SlotLayout`.

    Args:
        num_workers: processes (>= 1). layout: the ring they write into. progress: the main process's view of
        the ring's progress header. reader_factory: picklable callable building a reader in each worker.
        context: multiprocessing start method ("spawn" or "forkserver"). start_timeout: seconds to wait for
        every worker to report ready. stall_timeout_s: seconds without progress (while a worker has work)
        after which it is killed and reported.
    """

    def __init__(self, num_workers: int, layout: SlotLayout, progress: Any, reader_factory: Callable[[], Any], *,
                 context: str = "spawn", start_timeout: float = 120.0, stall_timeout_s: float = 30.0) -> None:
        self.num_workers = num_workers
        self.stall_timeout_s = float(stall_timeout_s)
        self._progress = progress
        self._context = context
        ctx = get_context(context)
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self.pids: list[int | None] = []
        self._outstanding: list[deque[tuple[int, list[Any]]]] = [deque() for _ in range(num_workers)]
        self._tick_seen = [0] * num_workers  # last progress tick observed per worker
        self._since = [0.0] * num_workers  # monotonic time of the last progress observed per worker
        self._closed = False
        self._pid = os.getpid()  # the parent of the workers: only it stops them
        _POOLS.add(self)
        self.main_reimported = needs_main_module(reader_factory)  # else workers skip the main script
        self._factory_name = getattr(reader_factory, "__qualname__", type(reader_factory).__qualname__)
        if not self.main_reimported:
            _install_preparation_hook()
        try:
            for i in range(num_workers):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=worker_main, args=(i, child, layout, reader_factory, os.getpid()),
                                name=f"fastmix-decode-{i}", daemon=True)
                _SPAWN_WITHOUT_MAIN.on = not self.main_reimported
                try:
                    p.start()
                finally:
                    _SPAWN_WITHOUT_MAIN.on = False
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
                self.pids.append(p.pid)
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ start-up
    def _wait_ready(self, timeout: float) -> None:
        waiting = set(range(self.num_workers))
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"decode workers {sorted(waiting)} (pids {[self.pids[i] for i in sorted(waiting)]}) "
                                  f"did not start within {timeout:.0f}s")
            objs = [self._conns[i] for i in waiting] + [self._procs[i].sentinel for i in waiting]
            for obj in connection.wait(objs, timeout=min(left, 1.0)):
                i = self._index_of(obj)
                if i not in waiting:
                    continue
                try:
                    msg = self._conns[i].recv() if self._conns[i].poll() else None
                except (EOFError, OSError, pickle.UnpicklingError):
                    msg = None
                if msg is None:
                    self._procs[i].join(2.0)
                    self._raise_start_death(i)
                if msg[0] == "ready":
                    waiting.discard(i)
                else:
                    msg[2].reraise(i, self.pids[i], msg[1])

    def _raise_start_death(self, i: int) -> None:
        code = self._procs[i].exitcode
        head = f"decode worker {i} (pid {self.pids[i]}) died at start-up ({_signal_name(code)})"
        unguarded = unguarded_main_line() if self.main_reimported else None
        if unguarded is not None:
            path, line = unguarded
            raise ConfigError(
                f"{head}: the script {path} starts the MixtureLoader at top level (line {line}) without "
                f'`if __name__ == "__main__":`. The reader factory {self._factory_name!r} is defined in that '
                f"script, so with the {self._context!r} start method every decode worker re-imports it and runs "
                "its top-level code again, which tries to start workers of its own and fails. Move the training "
                'code under `if __name__ == "__main__":` (or into a function called from there).')
        raise WorkerError(f"{head} before it was ready (see its traceback above on stderr): the reader factory "
                          "or the main script's top-level code failed in the worker")

    def _index_of(self, obj: Any) -> int:
        for i in range(self.num_workers):
            if obj is self._conns[i] or obj == self._procs[i].sentinel:
                return i
        raise RuntimeError(f"unknown wait object {obj!r}")  # pragma: no cover

    # ------------------------------------------------------------------ errors
    def _recv(self, i: int) -> tuple:
        try:
            return self._conns[i].recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            self._procs[i].join(2.0)
            raise WorkerError(self._death_message(i)) from None

    def _death_message(self, i: int) -> str:
        code = self._procs[i].exitcode
        return (f"decode worker {i} (pid {self.pids[i]}) died ({_signal_name(code)}) while decoding {self.where(i)}. "
                "The loader stopped its workers; iterating again restarts them and continues with the batch that "
                "was not delivered (or load_state_dict).")

    def where(self, i: int) -> str:
        """What worker i is decoding (from the shared progress header), or 'nothing (idle)'."""
        if not self._outstanding[i]:
            return "nothing (idle)"
        seq, requests = self._outstanding[i][0]
        start = 0
        try:
            if int(self._progress[i][SEQ]) == seq and int(self._progress[i][BUSY]) == 1:
                start = int(self._progress[i][START])
        except Exception:  # noqa: BLE001 - header already unmapped
            start = 0
        group = [r for r in requests[start:] if r.path == requests[start].path] if requests else []
        return f"batch {seq}: {describe_requests(group)}"

    def _check_stalled(self) -> None:
        """Kill and report a worker that has work but advanced no progress tick for `stall_timeout_s`."""
        now = time.monotonic()
        for i in range(self.num_workers):
            if not self._outstanding[i]:
                continue
            tick = int(self._progress[i][TICK])
            if tick != self._tick_seen[i]:
                self._tick_seen[i], self._since[i] = tick, now
            elif now - self._since[i] > self.stall_timeout_s:
                pid = self.pids[i]
                state = _process_state(pid)
                where = self.where(i)
                self._procs[i].kill()  # SIGKILL: works on a stopped process too, SIGTERM would wait for SIGCONT
                self._procs[i].join(2.0)
                raise WorkerError(
                    f"decode worker {i} (pid {pid}) made no progress for {now - self._since[i]:.1f}s "
                    f"(worker_timeout_s={self.stall_timeout_s:g}) while decoding {where}"
                    + (f"; the process was {state}" if state else "")
                    + ". It was killed and the loader stopped its workers; iterating again restarts them and "
                    "continues with the batch that was not delivered. Raise worker_timeout_s if decoding one file "
                    "legitimately takes this long.")

    # ------------------------------------------------------------------ work
    @property
    def outstanding(self) -> int:
        return sum(len(q) for q in self._outstanding)

    def submit(self, worker: int, seq: int, slot: int, requests: list[Any]) -> None:
        """Send a work item to `worker`; a dead worker raises WorkerError."""
        try:
            self._conns[worker].send((seq, slot, requests))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._procs[worker].join(2.0)
            raise WorkerError(self._death_message(worker)) from None
        if not self._outstanding[worker]:  # the stall clock starts when the worker gets work
            self._tick_seen[worker], self._since[worker] = int(self._progress[worker][TICK]), time.monotonic()
        self._outstanding[worker].append((seq, requests))

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """Wait up to `timeout` s; return completed (seq, worker) pairs. A worker error, death or stall raises
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
                    self._tick_seen[i], self._since[i] = int(self._progress[i][TICK]), time.monotonic()
                elif msg[0] == "error":
                    msg[2].reraise(i, self.pids[i], msg[1])
            if self._outstanding[i] and not self._procs[i].is_alive() and not self._conns[i].poll():
                self._procs[i].join(1.0)
                raise WorkerError(self._death_message(i))
        self._check_stalled()
        return done

    def describe_outstanding(self) -> str:
        return "; ".join(f"worker {i} (pid {self.pids[i]}): {self.where(i)}"
                         for i in range(self.num_workers) if self._outstanding[i]) or "nothing"

    def info(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Diagnostics from each (idle) worker: {"pid", "modules": names in its sys.modules}."""
        if self.outstanding:
            raise RuntimeError("WorkerPool.info() needs idle workers")
        out = []
        for i, conn in enumerate(self._conns):
            conn.send(INFO)
            if not conn.poll(timeout):
                raise WorkerError(f"decode worker {i} (pid {self.pids[i]}) did not answer within {timeout:.0f}s")
            msg = self._recv(i)
            out.append(msg[1])
        return out

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 2.0) -> None:
        """Stop every worker (exit message, then SIGTERM, then SIGKILL), bounded by ~timeout + 2 s; idempotent.
        Busy workers are SIGKILLed at once (their work is abandoned; a stopped process ignores SIGTERM)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:  # a forked child's copy: the workers are the parent's, never stop them
            self._procs, self._conns = [], []
            return
        for i, conn in enumerate(self._conns):
            if self._outstanding[i]:
                self._procs[i].kill()
                continue
            try:
                conn.send(None)
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + timeout
        for p in self._procs:
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


__all__ = ["WorkerPool", "unguarded_main_line"]
