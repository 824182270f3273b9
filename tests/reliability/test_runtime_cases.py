"""Reliability catalogue, runtime faults of the MixtureLoader (fake sources and a fault-injecting reader, so
every case is fast): a worker that raises or is SIGKILLed, an exception or KeyboardInterrupt in the consumer,
the loader collected while workers are busy, /dev/shm too small, and resume with another num_workers. Each
case is bounded in time and ends with no live worker, no /dev/shm segment and no fd growth (`no_leaks`); where
batches are delivered, the stream is compared with the uninterrupted one (nothing dropped or duplicated)."""

from __future__ import annotations

import functools
import gc
import os
import signal
import time

import numpy as np
import pytest

from fastmix.errors import ConfigError, DecodeError, WorkerError
from fastmix.loader import slots
from fastmix.loader.mixture_loader import MixtureLoader
from fastmix.testing.fakes import FakeReader, FakeSource, wait_gone

pytestmark = pytest.mark.timeout(60)
NAMES = ["ds_a", "ds_b"]


def sources():
    return [FakeSource("ds_a", num_episodes=4, episode_length=10), FakeSource("ds_b", num_episodes=2, episode_length=8)]


def make(reader=FakeReader, **kw):
    args = dict(dataset_weights=[1.0, 2.0], batch_size=6, action_horizon=3, num_workers=1, seed=11,
                num_batches=8, reader_factory=reader)
    args.update(kw)
    return MixtureLoader(sources(), **args)


def key(b) -> np.ndarray:
    """(B, 2) (dataset_index, index) of a batch: identifies every sample."""
    return np.stack([b["dataset_index"].numpy(), b["index"].numpy()], axis=1).copy()


@pytest.fixture(scope="module")
def reference():
    with make(num_workers=0) as ld:
        return [key(b) for b in ld]


def drawn_episode(reference, ds: int) -> int:
    """An episode of dataset `ds` in the first batch (where to aim an injected fault)."""
    with make(num_workers=0, num_batches=1) as ld:
        b = next(iter(ld))
    for d, e in zip(b["dataset_index"].tolist(), b["episode_index"].tolist(), strict=True):
        if d == ds:
            return int(e)
    raise AssertionError("dataset not in the first batch")


def test_worker_raises(reference, no_leaks):
    ep = drawn_episode(reference, 1)
    reader = functools.partial(FakeReader, fault="raise", fault_at=("ds_b", ep))
    t0 = time.monotonic()
    with make(reader) as ld:
        with pytest.raises(WorkerError) as e:
            next(iter(ld))
        assert ld.worker_pids == []
        assert ld.state_dict()["batch"] == 0  # the failed batch was not counted as delivered
    assert time.monotonic() - t0 < 20
    msg = str(e.value)
    assert "'ds_b'" in msg and f"episode {ep}" in msg and f"episode_{ep:06d}.mp4" in msg and "key" in msg
    assert isinstance(e.value.__cause__, DecodeError)


def test_worker_sigkilled_mid_decode(reference, no_leaks):
    ep = drawn_episode(reference, 0)
    reader = functools.partial(FakeReader, fault="kill", fault_at=("ds_a", ep))
    with make(reader, num_workers=2) as ld:
        t0 = time.monotonic()
        with pytest.raises(WorkerError) as e:
            next(iter(ld))
        assert time.monotonic() - t0 < 15
        assert ld.worker_pids == []
    msg = str(e.value)
    assert "SIGKILL" in msg and "'ds_a'" in msg and "fake://ds_a/" in msg and "timestamp" in msg


def test_killed_worker_restart_from_state_dict_equals_uninterrupted(reference, no_leaks):
    """Determinism under faults: kill a worker from outside mid-epoch, restart from the last state_dict
    (with a different num_workers): the concatenated stream equals the uninterrupted one, sample by sample."""
    got = []
    with make(functools.partial(FakeReader, delay_s=0.01), num_workers=2) as ld:
        it = iter(ld)
        for _ in range(3):
            got.append(key(next(it)))
        state = ld.state_dict()
        victim = ld.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerError, match="SIGKILL"):
            for b in it:
                got.append(key(b))
                state = ld.state_dict()
        assert wait_gone([victim])
    with make(num_workers=1) as fresh:
        fresh.load_state_dict(state)
        got += [key(b) for b in fresh]
    assert len(got) == len(reference)
    for a, r in zip(got, reference, strict=True):
        np.testing.assert_array_equal(a, r)


def test_consumer_exception_mid_epoch_then_continue(reference, no_leaks):
    with make(functools.partial(FakeReader, delay_s=0.005), num_workers=2, prefetch=3) as ld:
        got = []
        with pytest.raises(ZeroDivisionError):
            for i, b in enumerate(ld):
                got.append(key(b))
                if i == 2:
                    1 / 0  # noqa: B018
        pids = ld.worker_pids
        assert ld.state_dict()["batch"] == 3
        got += [key(b) for b in ld]  # iterating again continues after the last delivered batch
    assert wait_gone(pids)
    assert len(got) == len(reference)
    for a, r in zip(got, reference, strict=True):
        np.testing.assert_array_equal(a, r)


def test_keyboard_interrupt_in_consumer(reference, no_leaks):
    with make(num_workers=1) as ld:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            for i, _ in enumerate(ld):
                if i == 1:
                    raise KeyboardInterrupt
        assert time.monotonic() - t0 < 15
        assert ld.state_dict()["batch"] == 2
        pids = ld.worker_pids
    assert wait_gone(pids)  # close() (the with block) stops them


def test_keyboard_interrupt_while_waiting_for_workers(reference, no_leaks):
    """Ctrl-C (SIGINT) arrives while next() waits on slow workers: workers are stopped at once, the batch is
    not counted, and iterating again continues the uninterrupted stream."""
    with make(functools.partial(FakeReader, delay_s=0.2), num_workers=1, num_batches=3) as ld:
        it = iter(ld)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                next(it)
            assert time.monotonic() - t0 < 10
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert ld.worker_pids == []
        assert ld.state_dict()["batch"] == 0


def test_loader_collected_while_workers_busy(no_leaks):
    ld = make(functools.partial(FakeReader, delay_s=0.05), num_workers=2, prefetch=3)
    it = iter(ld)
    next(it)
    pids, name = ld.worker_pids, ld.shm_name
    assert pids and name
    del it, ld
    gc.collect()
    assert wait_gone(pids, within_s=10)
    assert name not in slots.leftover_segments()


def test_shm_too_small_clear_error_at_start(monkeypatch, no_leaks):
    monkeypatch.setattr(slots, "shm_free_bytes", lambda shm_dir=slots.SHM_DIR: 8192)
    with pytest.raises(ConfigError) as e:
        make(batch_size=32, num_workers=2)
    msg = str(e.value)
    assert "/dev/shm has 8.0 KiB free" in msg and "need" in msg and " bytes" in msg
    assert "batch_size=32" in msg and "--shm-size" in msg


@pytest.mark.parametrize("saved_with, resumed_with", [(2, 0), (0, 2)])
def test_resume_state_dict_from_other_num_workers(reference, saved_with, resumed_with, no_leaks):
    with make(num_workers=saved_with) as ld:
        it = iter(ld)
        got = [key(next(it)) for _ in range(3)]
        state = ld.state_dict()
    with make(num_workers=resumed_with) as ld2:
        ld2.load_state_dict(state)
        got += [key(b) for b in ld2]
    assert len(got) == len(reference)
    for a, r in zip(got, reference, strict=True):
        np.testing.assert_array_equal(a, r)


def test_resume_state_dict_with_other_batch_size_is_refused(no_leaks):
    with make(num_workers=0) as ld:
        state = ld.state_dict()
    with make(num_workers=0, batch_size=4) as ld2:
        with pytest.raises(ConfigError, match="batch_size=6"):
            ld2.load_state_dict(state)
