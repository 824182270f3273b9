"""`BatchStream`: the batches of a `MixtureLoader` from a start position on, planned and decoded ahead, each
with the position after it.

One pass per epoch (`pipeline.BatchPipeline`: sampler draws → low-dim gather into a slot → decode workers →
copy-out or lending); the stream chains the passes of consecutive epochs when asked for more than the rest of
one. CPU output: the passes run on one `Prefetcher` thread ("fastmix-pipeline") and `next()` pops a ready batch;
CUDA output: the pass runs in `next()` (device copies are issued and handed out on the consumer's stream).

A stream never moves the loader's cursor: the hand-out does, with the position the batch carries. An error that
ends a pass (dead, failing or stalled worker, planning error, Ctrl-C) releases the workers and the ring at once
and ends the stream; the next stream starts them afresh from the cursor.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastmix.loader.cursor import Position
from fastmix.loader.pipeline import POLL_S
from fastmix.loader.prefetch import Prefetcher

if TYPE_CHECKING:
    from fastmix.loader.loader import MixtureLoader

OUTPUTS = ("torch", "numpy")


class BatchStream:
    """`count` batches of `loader` from `start` (None: without end, epoch after epoch): yields
    `(batch, position after it)`. `output`: "torch" tensors or "numpy" arrays for CPU batches."""

    def __init__(self, loader: MixtureLoader, start: Position, count: int | None, *, output: str = "torch") -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got output={output!r}")
        # weak: the stream's thread must not keep the loader alive (its finalizer releases workers and ring)
        self._loader = weakref.ref(loader)
        self._cursor = loader._cursor
        self._start, self._count, self._output = start, count, output
        self._done = False
        self._closed = False
        self._prefetcher: Prefetcher | None = None
        self._inline: Iterator[tuple[dict[str, Any], Position]] | None = None
        try:
            # the first pass starts on the caller's thread: workers and ring exist once the stream does, and a
            # start-up error (a worker that cannot start, too little shared memory) raises here
            self._first = loader._start_pass(start, output)
            if loader.device is None:
                self._prefetcher = Prefetcher(self._produce, depth=1, name="fastmix-pipeline")
            else:
                self._inline = self._produce(threading.Event())
        except BaseException:
            loader._fail()
            raise

    def _produce(self, stop: threading.Event) -> Iterator[tuple[dict[str, Any], Position]]:
        """The passes, one per epoch, from the start position; runs on the stream's thread (CPU output)."""
        cursor = self._cursor
        position, left = self._start, self._count
        while left is None or left > 0:
            pipeline, self._first = self._first, None
            if pipeline is None:  # a later epoch
                loader = self._loader()
                if loader is None:
                    return
                pipeline = loader._start_pass(position, self._output)
                del loader  # not held across the yields below
            n = cursor.num_batches - position.batch
            n = n if left is None else min(n, left)
            for _ in range(n):
                out = pipeline.next_batch(stop, POLL_S)
                if out is None:  # stopped while waiting
                    return
                batch, sampler_state = out
                position = cursor.after(position, sampler_state)
                yield batch, position
            if left is not None:
                left -= n

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[dict[str, Any], Position]:
        if self._done:
            raise StopIteration
        try:
            if self._prefetcher is not None:
                return next(self._prefetcher)
            return next(self._inline)  # type: ignore[arg-type]
        except StopIteration:
            self._done = True
            raise
        except BaseException:
            if self._closed:  # closed while a consumer waited: the stream just ends
                raise StopIteration from None
            # worker death/stall/error, planning error, KeyboardInterrupt: nothing was handed out; release the
            # workers and the ring now, the next stream restarts from the cursor
            self._done = True
            loader = self._loader()
            if loader is not None:
                loader._fail()
            raise

    @property
    def done(self) -> bool:
        """No batch will come any more (exhausted, failed or closed)."""
        return self._done

    @property
    def closed(self) -> bool:
        """`close()` was called (the stream was stopped, e.g. superseded by a newer one)."""
        return self._closed

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the stream (drop what it prefetched). Waits up to `timeout` s for its thread; True when it ended."""
        self._done = self._closed = True
        if self._inline is not None:
            self._inline.close()
        return self._prefetcher.stop(timeout) if self._prefetcher is not None else True


__all__ = ["OUTPUTS", "BatchStream"]
