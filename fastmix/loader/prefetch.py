"""`Prefetcher`: the one prefetch primitive — a producer run on a daemon thread, a bounded number of items ahead.

The producer is a function of a stop `threading.Event` returning an iterator; the thread puts each item in a
queue of at most `depth` items and the consumer's `next()` pops it. Work that releases the GIL (decoding in
worker processes, native kernels, numpy on large arrays) overlaps with the consumer's own work.

Positions travel with the items: a producer yields `(item, position after it)` (torchdata's Prefetcher keeps
state the same way), so whoever hands an item out knows the exact position of what was handed out, whatever is
still queued, and a stop never needs a rewind.

An exception in the producer reaches the consumer in its place, after the items produced before it. Nothing
waits without a bound: the thread re-checks the stop event at every queue wait (and the producer receives it to
pass to its own waits); the consumer re-checks that the thread is alive.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fastmix._args import check_int

T = TypeVar("T")

POLL_S = 0.1  # longest single queue wait (s) before the stop event / thread liveness is checked again

_DONE = object()


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T]):
    """Runs `produce(stop)` on a daemon thread named `name`, at most `depth` items ahead (depth >= 1).

    Args:
        produce: `produce(stop: threading.Event) -> Iterator[T]`; the iterator is closed on the thread when it
            ends or is stopped. It should pass `stop` to any wait of its own.
        depth: items produced ahead of the consumer.
        name: the thread's name.
        poll_s: longest single queue wait, in seconds.

    Iterating yields the items in order and re-raises the producer's exception in its place. Use as a context
    manager or call `stop()`: that ends the thread and drops what it had produced.
    """

    def __init__(self, produce: Callable[[threading.Event], Iterator[T]], *, depth: int = 2,
                 name: str = "fastmix-prefetch", poll_s: float = POLL_S) -> None:
        depth = check_int(depth, "depth", minimum=1)  # ConfigError, a ValueError
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._poll_s = float(poll_s)
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side
    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self._poll_s)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce: Callable[[threading.Event], Iterator[T]]) -> None:
        items: Iterator[T] | None = None
        try:
            items = produce(self._stop)
            for item in items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, in order, never swallowed
            self._put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    # ------------------------------------------------------------------ consumer side
    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=self._poll_s)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise RuntimeError(f"the {self._thread.name} thread ended without a result") from None
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.exc
        return item

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stop.is_set()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop the thread after the item it is producing and drop what it produced. Waits up to `timeout` s
        (None: until it ended; never from the thread itself). True when the thread has ended."""
        self._stop.set()
        self._finished = True
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        return not self._thread.is_alive()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["POLL_S", "Prefetcher"]
