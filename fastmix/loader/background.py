"""`Background(items)`: iterate a generator on a daemon thread, a bounded number of items ahead.

The consumer's `next()` is a queue pop. Work that releases the GIL (decoding, PIL resizes, numpy on large
arrays, the native gather) then overlaps with the consumer's own work (the training step). An exception in the
generator reaches the consumer at the position where it happened, after the items produced before it; the
thread never blocks without a bound (every queue wait re-checks the stop flag).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_S = 0.1


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Background(Generic[T]):
    """Iterates `items` on a thread named `name`, at most `depth` items ahead (depth >= 1).

    Use as a context manager (or call `stop()`): leaving it stops the thread and closes `items` there.
    """

    def __init__(self, items: Iterator[T], *, depth: int = 2, name: str = "fastmix-background") -> None:
        if depth < 1:
            raise ValueError(f"depth should be a positive integer, but got depth={depth}")
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, never swallowed
            self._put(_Raised(e))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Background[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise RuntimeError("the background thread ended without a result") from None
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.exc
        return item

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread (after the item it is producing) and drop what it produced. Waits up to `timeout` s
        (None: until it has stopped; the producer must itself never block without a bound). True when stopped."""
        self._stop.set()
        self._thread.join(timeout)
        self._finished = True
        return not self._thread.is_alive()

    def __enter__(self) -> Background[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Background"]
