"""fastmix.loader.background.Background: a generator iterated on a thread, bounded ahead, errors in place."""

from __future__ import annotations

import threading
import time

import pytest

from fastmix.loader.background import Background


def test_items_in_order_and_exhaustion():
    with Background(iter(range(50)), depth=3) as bg:
        assert list(bg) == list(range(50))
        with pytest.raises(StopIteration):
            next(bg)


def test_runs_on_its_own_thread_at_most_depth_ahead():
    produced = []

    def gen():
        for i in range(20):
            produced.append((i, threading.current_thread().name))
            yield i

    with Background(gen(), depth=2, name="bg-test") as bg:
        assert next(bg) == 0
        time.sleep(0.3)  # the thread fills the queue, then waits
        assert len(produced) <= 1 + 2 + 1  # handed out + queued + the one waiting to be put
        assert {name for _, name in produced} == {"bg-test"}


def test_exception_arrives_after_the_items_before_it():
    def gen():
        yield 1
        yield 2
        raise ValueError("bad item 3")

    with Background(gen()) as bg:
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

    bg = Background(gen(), depth=1)
    assert next(bg) == 0
    assert bg.stop(timeout=5.0)
    assert closed.is_set()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth=0"):
        Background(iter(()), depth=0)
