"""fastmix.loader.prefetch.Prefetcher: a producer iterated on a thread, bounded ahead, errors in place, stoppable."""

from __future__ import annotations

import threading
import time

import pytest

from fastmix.loader.prefetch import Prefetcher


def test_items_in_order_and_exhaustion():
    with Prefetcher(lambda stop: iter(range(50)), depth=3) as bg:
        assert list(bg) == list(range(50))
        with pytest.raises(StopIteration):
            next(bg)


def test_runs_on_its_own_thread_at_most_depth_ahead():
    produced = []

    def gen():
        for i in range(20):
            produced.append((i, threading.current_thread().name))
            yield i

    with Prefetcher(lambda stop: gen(), depth=2, name="bg-test") as bg:
        assert next(bg) == 0
        time.sleep(0.3)  # the thread fills the queue, then waits
        assert len(produced) <= 1 + 2 + 1  # handed out + queued + the one waiting to be put
        assert {name for _, name in produced} == {"bg-test"}


def test_exception_arrives_after_the_items_before_it():
    def gen():
        yield 1
        yield 2
        raise ValueError("bad item 3")

    with Prefetcher(lambda stop: gen()) as bg:
        assert next(bg) == 1 and next(bg) == 2
        with pytest.raises(ValueError, match="bad item 3"):
            next(bg)
        with pytest.raises(StopIteration):
            next(bg)


def test_stop_closes_the_generator_on_its_thread():
    closed = threading.Event()

    def gen():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    bg = Prefetcher(lambda stop: gen(), depth=1)
    assert next(bg) == 0
    assert bg.stop(timeout=5.0)
    assert closed.is_set()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth=0"):
        Prefetcher(lambda stop: iter(()), depth=0)


def test_the_producer_sees_the_stop_event_and_a_stop_is_bounded():
    """A producer blocked in its own wait returns once the consumer stops (it passes the event on)."""
    seen = []

    def produce(stop):
        yield 0
        seen.append(stop.wait(timeout=10.0))  # a wait of the producer's own, ended by stop()
        yield 1

    pf = Prefetcher(produce, depth=1)
    assert next(pf) == 0
    time.sleep(0.05)
    t0 = time.monotonic()
    assert pf.stop(timeout=5.0)
    assert seen == [True] and time.monotonic() - t0 < 5.0


def test_items_carry_their_position_and_a_stop_drops_only_what_was_not_handed_out():
    """(item, position after it): the consumer's position is that of the last item it took, queued ones aside."""
    def produce(stop):
        for i in range(100):
            yield i, {"position": i + 1}

    pf = Prefetcher(produce, depth=3)
    handed = None
    for _ in range(5):
        item, handed = next(pf)
    time.sleep(0.1)  # the thread has queued items 5..7
    pf.stop()
    assert handed == {"position": 5} and item == 4
    with pytest.raises(StopIteration):
        next(pf)
