"""Reliability catalogue, runtime faults of the MixtureLoader (fake sources and a fault-injecting reader, so
every case is fast): a worker that raises or is SIGKILLed, an exception or KeyboardInterrupt in the consumer,
the loader collected while workers are busy, /dev/shm too small, and resume with another num_workers. Each
case is bounded in time and ends with no live worker, no /dev/shm segment and no fd growth (`no_leaks`); where
batches are delivered, the stream is compared with the uninterrupted one (nothing dropped or duplicated)."""

from __future__ import annotations

import fcntl
import functools
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fastmix.errors import ConfigError, DecodeError, WorkerError
from fastmix.loader import slots
from fastmix.loader.loader import MixtureLoader
from fastmix.testing.fakes import FakeReader, FakeSource, wait_gone
from tests.loader_args import grouped

pytestmark = pytest.mark.timeout(60)
NAMES = ["ds_a", "ds_b"]


def sources():
    return [FakeSource("ds_a", num_episodes=4, episode_length=10), FakeSource("ds_b", num_episodes=2, episode_length=8)]


def make(reader=FakeReader, **kw):
    args = dict(dataset_weights=[1.0, 2.0], batch_size=6, action_horizon=3, num_workers=1, seed=11,
                num_batches=8, reader_factory=reader)
    args.update(kw)
    return MixtureLoader(sources(), **grouped(**args))


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


# ------------------------------------------------------------------------------ runtime faults (issue 13)
def first_drawn_in(reference, batch_index: int) -> tuple[str, int]:
    """A frame (dataset name, row) of batch `batch_index` of the reference stream drawn in no earlier batch."""
    seen = {tuple(r) for b in reference[:batch_index] for r in b.tolist()}
    for d, i in reference[batch_index].tolist():
        if (d, i) not in seen:
            return NAMES[d], int(i)
    raise AssertionError(f"every frame of batch {batch_index} was drawn before")


def assert_stream_equal(got, reference):
    assert len(got) == len(reference)
    for i, (a, r) in enumerate(zip(got, reference, strict=True)):
        np.testing.assert_array_equal(a, r, err_msg=f"batch {i}")


def segment_gone(name: str | None) -> bool:
    return name is None or not os.path.exists(os.path.join(slots.SHM_DIR, name))


def test_transform_error_does_not_lose_the_batch(reference, no_leaks):
    calls = []

    def transform(batch):
        calls.append(1)
        if len(calls) == 4:  # fails once, on the 4th batch (index 3)
            raise ValueError("user transform failed")
        return batch

    with make(functools.partial(FakeReader, delay_s=0.002), num_workers=2, transform=transform) as ld:
        got = []
        with pytest.raises(ValueError, match="user transform failed") as e:
            for b in ld:
                got.append(key(b))
        assert any("batch 3 of epoch 0" in n and "not handed out" in n for n in e.value.__notes__)
        assert len(got) == 3 and ld.state_dict()["batch"] == 3
        got += [key(b) for b in ld]  # iterating again continues with exactly the batch that was not delivered
    assert_stream_equal(got, reference)


def test_worker_killed_mid_epoch_iterating_again_continues_exactly(reference, tmp_path, no_leaks):
    frame = first_drawn_in(reference, 4)
    reader = functools.partial(FakeReader, fault="kill", fault_frame=frame, once_marker=str(tmp_path / "once"))
    with make(reader, num_workers=2) as ld:
        got = []
        with pytest.raises(WorkerError, match="SIGKILL"):
            for b in ld:
                got.append(key(b))
        assert 1 <= len(got) <= 4 and ld.state_dict()["batch"] == len(got)
        assert ld.worker_pids == [] and ld.shm_name is None  # released at once (E)
        got += [key(b) for b in ld]  # fresh workers, from the batch that was not delivered
    assert_stream_equal(got, reference)


def test_worker_death_found_when_refilling_does_not_lose_the_batch(reference, monkeypatch, no_leaks):
    """The worker dies and the dispatch that follows a decoded batch fails (where the old loader had already
    counted that batch): the batch is not handed out and the next iteration starts with it."""
    from fastmix.loader import workers

    original = workers.WorkerPool.submit
    calls = []

    def submit(self, worker, seq, slot, requests):
        calls.append(seq)
        if len(calls) == 5:  # 1 worker, prefetch 2: the refill while batch 2 is handed out
            pid = self.pids[worker]
            os.kill(pid, signal.SIGKILL)
            assert wait_gone([pid])
            raise WorkerError(f"decode worker {worker} (pid {pid}) died (killed by SIGKILL) [injected at submit]")
        return original(self, worker, seq, slot, requests)

    monkeypatch.setattr(workers.WorkerPool, "submit", submit)
    with make(num_workers=1, prefetch=2) as ld:
        got = []
        with pytest.raises(WorkerError, match="SIGKILL"):
            for b in ld:
                got.append(key(b))
        assert len(got) == 2 and ld.state_dict()["batch"] == 2
        got += [key(b) for b in ld]
    assert_stream_equal(got, reference)


def test_next_on_an_iterator_of_a_closed_loader_raises_at_once(no_leaks):
    ld = make(functools.partial(FakeReader, delay_s=0.01), num_workers=2)
    it = iter(ld)
    next(it)
    ld.close()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="closed"):
        next(it)
    with pytest.raises(RuntimeError, match="closed"):
        iter(ld)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("fault, state", [("stop", "stopped"), ("hang", "sleeping")])
def test_stopped_or_hung_worker_is_detected_named_and_killed(reference, tmp_path, fault, state, no_leaks):
    frame = first_drawn_in(reference, 2)
    ep = frame[1] // (10 if frame[0] == "ds_a" else 8)
    reader = functools.partial(FakeReader, fault=fault, fault_frame=frame, once_marker=str(tmp_path / "once"),
                               hang_s=120)
    with make(reader, num_workers=1, worker_timeout_s=3) as ld:
        got = []
        t0 = time.monotonic()
        with pytest.raises(WorkerError) as e:
            for b in ld:
                got.append(key(b))
                pid = ld.worker_pids[0]
        elapsed = time.monotonic() - t0
        assert ld.worker_pids == [] and ld.shm_name is None
        assert wait_gone([pid])  # the stuck worker was killed
        msg = str(e.value)
        assert f"(pid {pid}) made no progress" in msg and "worker_timeout_s=3" in msg
        assert f"fake://{frame[0]}/image/episode_{ep:06d}.mp4" in msg and state in msg
        assert elapsed < 3 + 15  # detected within the timeout (plus start-up and a loaded machine's slack)
        got += [key(b) for b in ld]  # then continues exactly
    assert_stream_equal(got, reference)


def test_externally_stopped_worker_is_detected(no_leaks):
    with make(functools.partial(FakeReader, delay_s=0.01), num_workers=2, worker_timeout_s=2,
              num_batches=10**6) as ld:
        it = iter(ld)
        next(it)
        victim = ld.worker_pids[0]
        os.kill(victim, signal.SIGSTOP)
        try:
            with pytest.raises(WorkerError, match=rf"\(pid {victim}\) made no progress") as e:
                for _ in range(10**4):
                    next(it)
        finally:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert "stopped (SIGSTOP" in str(e.value) and "fake://" in str(e.value)
        assert wait_gone([victim])


def test_slow_worker_that_progresses_is_not_killed(no_leaks):
    """Per-file progress, not per-batch: a work item longer than worker_timeout_s (24 requests x 0.15 s) whose
    files each take less is never mistaken for a stall."""
    with make(functools.partial(FakeReader, delay_s=0.15), num_workers=1, batch_size=12, num_batches=1,
              worker_timeout_s=2.0, prefetch=1) as ld:
        (b,) = list(ld)
        assert len(b["index"]) == 12


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "3", True, None])
def test_worker_timeout_is_validated(bad):
    with pytest.raises(ConfigError, match="worker_timeout_s"):
        make(worker_timeout_s=bad)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_segments_of_dead_pids_removed_at_start(tmp_path, caplog, no_leaks):
    dead = _dead_pid()
    names = {
        "dead": f"fastmix_{dead}_0123456789ab",  # fastmix's, creator gone: removed
        "live": f"fastmix_{os.getpid()}_0123456789ab",  # creator alive: kept
        "init": "fastmix_1_abcdefabcdef",  # pid 1 alive (maybe another user's): kept
        "odd": f"fastmix_{dead}_notours",  # not fastmix's pattern: kept
        "other": "sem.other_program",  # not fastmix's: kept
        "locked": f"fastmix_{dead}_fedcba987654",  # pid unknown here (another pid namespace) but its lock held
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"x" * 100)
    holder = os.open(tmp_path / names["locked"], os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)  # what a live ring's creator holds
        with caplog.at_level("WARNING", logger="fastmix.loader.slots"):
            with make(num_workers=0, shm_dir=str(tmp_path)) as ld:
                assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k != "dead")
                next(iter(ld))
    finally:
        os.close(holder)
    assert names["dead"] in caplog.text and names["locked"] not in caplog.text
    assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k != "dead")


KILL9_SCRIPT = textwrap.dedent("""
    import functools, sys
    from fastmix.loader import MemoryOptions, MixtureLoader, WorkerOptions
    from fastmix.testing.fakes import FakeReader, FakeSource
    if __name__ == "__main__":
        loader = MixtureLoader([FakeSource("a"), FakeSource("b")], batch_size=4, num_workers=2, num_batches=10**6,
                               memory=MemoryOptions(shm_dir=sys.argv[1]),
                               workers=WorkerOptions(reader_factory=functools.partial(FakeReader, delay_s=0.05)))
        for i, b in enumerate(loader):
            if i == 1:
                print(loader.shm_name, *loader.worker_pids, flush=True)
""")


def test_kill_9_of_the_process_group_then_next_start_removes_the_ring(tmp_path, no_leaks):
    script = tmp_path / "kill9.py"
    script.write_text(KILL9_SCRIPT)
    shm = tmp_path / "shm"
    shm.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(shm)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        line = proc.stdout.readline().split()
        assert line, proc.stderr.read()
        name, pids = line[0], [int(p) for p in line[1:]]
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main, workers, resource tracker
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert wait_gone(pids)
    assert (shm / name).exists()  # nobody was left to unlink it
    with make(num_workers=0, shm_dir=str(shm)):
        assert not (shm / name).exists()


def test_fatal_error_releases_the_ring_at_once(reference, no_leaks):
    ep = drawn_episode(reference, 0)
    reader = functools.partial(FakeReader, fault="raise", fault_at=("ds_a", ep))
    with make(reader, num_workers=2) as ld:
        it = iter(ld)
        name = ld.shm_name
        assert name and not segment_gone(name)
        with pytest.raises(WorkerError):
            next(it)
        # the loader is still open, but holds no segment and no worker
        assert ld.shm_name is None and segment_gone(name) and ld.worker_pids == []
        with pytest.raises(WorkerError):  # iterating again restarts (and fails again on the same frame)
            next(iter(ld))
        assert ld.shm_name is None and ld.worker_pids == []


def test_transform_error_keeps_the_workers(no_leaks):
    def transform(batch):
        raise KeyError("bad key in transform")

    with make(num_workers=1, transform=transform) as ld:
        with pytest.raises(KeyError):
            next(iter(ld))
        pids = ld.worker_pids
        assert pids and ld.shm_name is not None  # not fatal: the loader can continue as it is
        ld.transform = None
        assert len(list(ld)) == len(ld)
        assert ld.worker_pids == pids


OTHER_MIXTURES = {
    "datasets": dict(sources=lambda: [FakeSource("ds_a", num_episodes=4, episode_length=10),
                                      FakeSource("ds_c", num_episodes=2, episode_length=8)]),
    "sizes": dict(sources=lambda: [FakeSource("ds_a", num_episodes=5, episode_length=10),
                                   FakeSource("ds_b", num_episodes=2, episode_length=8)]),
    "weights": dict(dataset_weights=[1.0, 3.0]),
    "weighting": dict(weighting="per_dataset"),
    "shuffle": dict(shuffle=False),
    "batching": dict(batching="stratified"),
    "batch_size": dict(batch_size=4),
    "seed": dict(seed=12),
}


@pytest.mark.parametrize("what", sorted(OTHER_MIXTURES))
def test_state_dict_of_another_mixture_is_refused(what, no_leaks):
    with make(num_workers=0) as ld:
        it = iter(ld)
        next(it)
        state = ld.state_dict()
    kw = dict(OTHER_MIXTURES[what])
    srcs = kw.pop("sources", sources)()
    args = dict(dataset_weights=[1.0, 2.0], batch_size=6, action_horizon=3, num_workers=0, seed=11,
                num_batches=8, reader_factory=FakeReader)
    args.update(kw)
    with MixtureLoader(srcs, **grouped(**args)) as other:
        before = other.state_dict()
        with pytest.raises(ConfigError, match="another mixture") as e:
            other.load_state_dict(state)
        assert other.state_dict() == before  # nothing changed
    msg = str(e.value)
    assert f"  {what}: the state has {what}=" in msg and f"this loader has {what}=" in msg
    assert sum(line.startswith("  ") for line in msg.splitlines()) == 1  # only what differs


def _state():
    with make(num_workers=0) as ld:
        it = iter(ld)
        next(it)
        return ld.state_dict()


MALFORMED = {
    "missing batch": (lambda s: {k: v for k, v in s.items() if k != "batch"}, "missing key 'batch'"),
    "epoch as text": (lambda s: {**s, "epoch": "0"}, r"state\['epoch'\] must be an integer"),
    "negative batch": (lambda s: {**s, "batch": -1}, r"state\['batch'\] must be an integer >= 0, got MixtureLoader state\['batch'\]=-1"),
    "batch past the epoch": (lambda s: {**s, "batch": 99}, r"state\['batch'\]=99 is outside \[0, 8\]"),
    "sampler not a dict": (lambda s: {**s, "sampler": [1, 2]}, r"state\['sampler'\] must be a dict"),
    "sampler missing position": (lambda s: {**s, "sampler": {k: v for k, v in s["sampler"].items()
                                                             if k != "position"}},
                                 r"state\['sampler'\] is missing key 'position'"),
    "sampler position float": (lambda s: {**s, "sampler": {**s["sampler"], "position": 1.5}},
                               r"state\['sampler'\]\['position'\] must be an integer"),
    "carry_counts text": (lambda s: {**s, "sampler": {**s["sampler"], "carry_counts": "ab"}},
                          r"\['carry_counts'\]"),
    "sampler epoch disagrees": (lambda s: {**s, "sampler": {**s["sampler"], "epoch": 3}},
                                r"state\['sampler'\]\['epoch'\]=3 disagrees with state\['epoch'\]=0"),
    "mixture not a dict": (lambda s: {**s, "mixture": 5}, r"state\['mixture'\] must be a dict"),
    "not a dict": (lambda s: [1, 2], "must be a dict"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_state_dict_names_the_key(case, no_leaks):
    change, pattern = MALFORMED[case]
    with make(num_workers=0) as ld:
        before = ld.state_dict()
        with pytest.raises(ConfigError, match=pattern):
            ld.load_state_dict(change(_state()))
        assert ld.state_dict() == before


def test_state_without_fingerprint_loads_with_a_warning(reference, no_leaks):
    state = {k: v for k, v in _state().items() if k != "mixture"}
    with make(num_workers=0) as ld:
        with pytest.warns(RuntimeWarning, match="no 'mixture' fingerprint"):
            ld.load_state_dict(state)
        assert_stream_equal([key(b) for b in ld], reference[1:])


def test_resume_with_another_world_size_still_works(no_leaks):
    """A world-size-1 state after 2 batches, loaded by both ranks of world size 2: each rank continues the
    single-process stream at its own positions (rank r takes global positions 12 + r, 14 + r, ...)."""
    with make(num_workers=0, num_batches=16, world_size=1, rank=0) as single:
        stream = np.concatenate([key(b) for b in single])  # (96, 2), global positions 0..95
    with make(num_workers=0, world_size=1, rank=0) as ld:
        it = iter(ld)
        next(it), next(it)
        state = ld.state_dict()
    for r in range(2):
        with make(num_workers=0, world_size=2, rank=r) as ld:
            ld.load_state_dict(state)
            rows = np.concatenate([key(b) for b in ld])
        np.testing.assert_array_equal(rows, stream[12 + r::2][: len(rows)])
        assert len(rows) == 7 * 6  # rank-local position 6 = batch 1 of 8


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_missing_shm_dir_is_a_clear_error(tmp_path, kind, no_leaks):
    path = tmp_path / "no_such_dir"
    if kind == "file":
        path.write_text("x")
    with pytest.raises(ConfigError, match="shm_dir") as e:
        make(shm_dir=str(path))
    assert str(path) in str(e.value)
    assert ("does not exist" if kind == "missing" else "is not a directory") in str(e.value)


UNGUARDED_SCRIPT = textwrap.dedent("""
    from fastmix.loader import MixtureLoader, WorkerOptions
    from fastmix.testing.fakes import FakeReader, FakeSource


    class MyReader(FakeReader):  # defined in the script: workers must re-import it
        pass


    loader = MixtureLoader([FakeSource("a"), FakeSource("b")], batch_size=4, num_workers=1,
                           workers=WorkerOptions(reader_factory=MyReader if "mine" in __import__("sys").argv
                                                 else FakeReader))
    for batch in loader:
        print("got a batch", flush=True)
        break
    loader.close()
""")


@pytest.mark.parametrize("factory", ["mine", "library"])
def test_script_without_main_guard(tmp_path, factory):
    """Spawned workers re-import the main script only when the reader factory is defined there; then an
    unguarded script is told exactly that (not that "iterating again restarts" the workers)."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    res = subprocess.run([sys.executable, str(script), factory], capture_output=True, text=True, timeout=90,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    if factory == "library":
        assert res.returncode == 0 and "got a batch" in res.stdout, res.stderr[-3000:]
        return
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fastmix.errors.ConfigError") and str(script) in last
    assert 'without `if __name__ == "__main__":`' in last and "(line 13)" in last and "'MyReader'" in last
    assert "iterating again" not in last


def test_decode_modules_do_not_import_torch():
    code = ("import sys, fastmix.loader.worker_main, fastmix.loader.readers, fastmix.loader.slots, "
            "fastmix.kernels.pixels, fastmix.kernels.resize, fastmix.sources.frames, fastmix.errors, "
            "fastmix.testing.fakes; bad = [m for m in ('torch', 'fastmix.loader.loader', "
            "'fastmix.loader.workers', 'fastmix.core.sampler') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0, res.stdout + res.stderr


WORKER_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch  # a training script imports torch at top level: the workers must not
    import psutil
    from fastmix.loader import MixtureLoader, WorkerOptions
    from fastmix.sources.lerobot_source import LeRobotSource

    if __name__ == "__main__":
        src = LeRobotSource("rel/tiny_video", root=sys.argv[1])
        with MixtureLoader([src], batch_size=4, num_workers=1, action_horizon=2, num_batches=20) as ld:
            for b in ld:
                pass
            pool = ld._res.pool
            info = pool.info()[0]
            uss = psutil.Process(info["pid"]).memory_full_info().uss
            print(json.dumps({"modules": info["modules"], "uss": uss, "max_open_files": ld.max_open_files}))
""")


def test_decode_worker_imports_no_torch_and_is_small(tiny_video, tmp_path, record_property, no_leaks):
    script = tmp_path / "worker_memory.py"
    script.write_text(WORKER_MEMORY_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(tiny_video)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    modules = set(out["modules"])
    assert "torch" not in modules and "fastmix.loader.loader" not in modules
    assert "fastmix.core.sampler" not in modules and "fastmix.sources.lerobot_source" not in modules  # nor the script
    assert {"fastmix.loader.worker_main", "fastmix.sources.frames", "av"} <= modules
    uss_mib = out["uss"] / 2**20
    record_property("worker_uss_mib", round(uss_mib, 1))
    print(f"decode worker private memory (USS): {uss_mib:.1f} MiB")
    assert uss_mib <= 64


def test_container_cache_sized_from_the_mixture(no_leaks):
    from fastmix.loader.loader import default_max_open_files
    from fastmix.sources.frames import FrameReader

    assert default_max_open_files(2, 6) == 16 and default_max_open_files(3, 32) == 96
    assert default_max_open_files(3, 256) == 128
    with make(num_workers=0, reader_factory=None) as ld:  # 2 cameras x 6 rows -> the lower bound
        assert ld.max_open_files == 16
    with make(num_workers=0, reader_factory=None, batch_size=20) as ld:
        assert ld.max_open_files == 40
        reader = ld._reader_factory()  # what each worker builds
        assert isinstance(reader, FrameReader) and reader.max_open_files == 40
    with make(num_workers=0, reader_factory=None, max_open_files=7) as ld:
        assert ld._reader_factory().max_open_files == 7
    for bad in (0, "8", 2.5):
        with pytest.raises(ConfigError, match="max_open_files"):
            make(max_open_files=bad)


# ---------------------------------------------------------------------- lost batches, broken loaders (issue 20)
def dl_fake():
    """create_data_loader over two in-memory datasets (14 frames, batch 4: 3 batches an epoch), frames decoded
    by FakeReader in the main process (tests/test_data_loader.py's injection, nothing monkeypatched)."""
    from tests.test_data_loader import Injected

    return Injected([FakeSource("fake/a", num_episodes=2, episode_length=5),
                     FakeSource("fake/b", num_episodes=1, episode_length=4)])


def dl_create(fake, tmp_path, framework="jax", **kw):
    from tests.test_data_loader import _cfg

    return fake.create(_cfg(tmp_path), skip_norm_stats=True, shuffle=True, framework=framework, **kw)


def dl_key(item) -> list:
    """The (dataset_index, index) rows of a `batches(with_meta=True)` item."""
    _, meta = item
    return np.stack([meta["dataset_index"], meta["index"]], axis=1).tolist()


def dl_reference(tmp_path, n: int) -> list:
    """The first `n` batches of the uninterrupted stream, as (dataset_index, index) rows."""
    with dl_create(dl_fake(), tmp_path, num_batches=n) as ref:
        return [dl_key(item) for item in ref.batches(with_meta=True)]


def test_transform_letting_stop_iteration_escape_is_an_error_and_the_batch_kept(reference, no_leaks):
    """A transform that lets StopIteration escape (e.g. `next()` on an exhausted iterator) used to end the epoch
    silently after 3 of 8 batches: it is a RuntimeError naming the transform, batch and epoch; the batch is
    kept and iterating again continues with it."""
    calls = []

    def stops_on_the_4th_batch(batch):
        calls.append(1)
        if len(calls) == 4:
            raise StopIteration
        return batch

    with make(functools.partial(FakeReader, delay_s=0.002), num_workers=2, transform=stops_on_the_4th_batch) as ld:
        got = []
        with pytest.raises(RuntimeError, match=r"transform \S*stops_on_the_4th_batch raised StopIteration on "
                                               r"batch 3 of epoch 0") as e:
            for b in ld:
                got.append(key(b))
        assert isinstance(e.value.__cause__, StopIteration)
        assert len(got) == 3 and ld.state_dict()["batch"] == 3
        got += [key(b) for b in ld]  # the batch that was not delivered, then the rest
    assert_stream_equal(got, reference)


@pytest.mark.parametrize("prefetch", [2, 0])
def test_data_loader_stage_transform_stop_iteration_is_an_error_and_the_batch_kept(tmp_path, prefetch, no_leaks):
    """The same in the openpi DataLoader, for a transform of its "data" stage, on the prefetch thread and on
    the caller's thread (prefetch=0)."""
    from fastmix.openpi.transforms import Transform

    reference = dl_reference(tmp_path, 5)

    class StopsOnItsThirdBatch(Transform):
        calls = 0

        def __call__(self, data):
            StopsOnItsThirdBatch.calls += 1
            if StopsOnItsThirdBatch.calls == 3:
                raise StopIteration
            return data

    with dl_create(dl_fake(), tmp_path) as loader:  # num_batches=None: epoch after epoch
        loader.prefetch = prefetch
        loader.stages = [(n, [*ts, StopsOnItsThirdBatch()] if n == "data" else ts) for n, ts in loader.stages]
        got = []
        with pytest.raises(RuntimeError, match=r"transform \S*StopsOnItsThirdBatch \(stage 'data', #\d+\) raised "
                                               r"StopIteration on batch 2 of epoch 0") as e:
            for item in loader.batches(with_meta=True):
                got.append(dl_key(item))
        assert isinstance(e.value.__cause__, StopIteration)
        assert got == reference[:2] and loader.state_dict()["batch"] == 2
        for item in loader.batches(with_meta=True):
            got.append(dl_key(item))
            if len(got) == 5:
                break
    assert got == reference


def test_dropping_an_older_data_loader_iterator_does_not_end_the_current_loop(tmp_path, no_leaks):
    """`it1` is superseded by `it2`, then dropped while `it2` is in use: its cleanup stops only its own stream
    and thread, so a forever loop (num_batches=None) over `it2` goes on, and the stream is the uninterrupted
    one (the batch `it1` handed out, then `it2`'s from there)."""
    import torch

    with dl_create(dl_fake(), tmp_path, "pytorch", num_batches=10) as ref:
        want = [(obs.state.clone(), actions.clone()) for obs, actions in ref]
    with dl_create(dl_fake(), tmp_path, "pytorch") as loader:  # num_batches=None: forever
        it1 = iter(loader)
        got = [next(it1)]
        it2 = iter(loader)
        got.append(next(it2))
        del it1
        gc.collect()
        for pair in it2:
            got.append(pair)
            if len(got) == 10:
                break
        got = [(obs.state, actions) for obs, actions in got]
    assert len(got) == 10  # the loop was not ended after the few batches prefetched before it1 was dropped
    for i, ((s, a), (ws, wa)) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(s, ws) and torch.equal(a, wa), f"batch {i}"


def test_transform_error_without_prefetch_does_not_skip_the_batch(tmp_path, no_leaks):
    """prefetch=0 (transforms on the caller's thread): a transform error leaves the position on the failed
    batch (state_dict does not count it); iterating again continues with it."""
    from fastmix.openpi.transforms import Transform

    reference = dl_reference(tmp_path, 5)

    class FailsOnItsThirdBatch(Transform):
        calls = 0

        def __call__(self, data):
            FailsOnItsThirdBatch.calls += 1
            if FailsOnItsThirdBatch.calls == 3:
                raise ValueError("user transform failed on its 3rd batch")
            return data

    with dl_create(dl_fake(), tmp_path) as loader:
        loader.prefetch = 0
        loader.stages = [*loader.stages, ("user", [FailsOnItsThirdBatch()])]
        got = []
        with pytest.raises(ValueError, match="3rd batch"):
            for item in loader.batches(with_meta=True):
                got.append(dl_key(item))
        assert got == reference[:2] and loader.state_dict()["batch"] == 2
        for item in loader.batches(with_meta=True):
            got.append(dl_key(item))
            if len(got) == 5:
                break
    assert got == reference


FORK_SCRIPT = textwrap.dedent("""
    import json, os, sys, time

    import numpy as np

    from fastmix.loader import slots
    from fastmix.loader.loader import MixtureLoader
    from fastmix.loader.options import WorkerOptions
    from fastmix.testing.fakes import FakeReader, FakeSource, live_pids


    def make(num_workers):
        sources = [FakeSource("ds_a", num_episodes=4, episode_length=10),
                   FakeSource("ds_b", num_episodes=2, episode_length=8)]
        return MixtureLoader(sources, dataset_weights=[1.0, 2.0], batch_size=6, action_horizon=3,
                             num_workers=num_workers, seed=11, num_batches=8,
                             workers=WorkerOptions(reader_factory=FakeReader))


    def key(b):
        return np.stack([b["dataset_index"].numpy(), b["index"].numpy()], axis=1).tolist()


    if __name__ == "__main__":
        with make(0) as ref:
            reference = [key(b) for b in ref]
        loader = make(2)
        it = iter(loader)
        got = [key(next(it))]
        pids, name = loader.worker_pids, loader.shm_name
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            sys.exit(0)  # a normal exit: the child runs atexit handlers and finalizers
        _, status = os.waitpid(child, 0)
        time.sleep(0.5)  # time for a worker told to stop (or SIGTERMed) to go
        after = dict(child_exit=os.waitstatus_to_exitcode(status), alive=live_pids(pids),
                     segment=os.path.exists(os.path.join(slots.SHM_DIR, name)))
        got += [key(b) for b in it]
        print(json.dumps(dict(after, pids=pids, pids_after=loader.worker_pids, got=got, reference=reference)))
        loader.close()
""")


def test_forked_child_that_exits_normally_leaves_the_parents_workers_and_ring(tmp_path, no_leaks):
    """A plain `os.fork()` child (a library forking to run a command, a user's script) exits normally after the
    loader has started: its atexit handlers and finalizers must not stop the parent's workers or unlink its
    ring; the parent continues the same stream with the same workers."""
    script = tmp_path / "fork_child.py"
    script.write_text(FORK_SCRIPT)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["child_exit"] == 0
    assert len(out["pids"]) == 2 and sorted(out["alive"]) == sorted(out["pids"]), out
    assert out["segment"], "the child unlinked the parent's ring"
    assert out["pids_after"] == out["pids"]  # the same workers decoded the rest
    assert out["got"] == out["reference"]  # nothing lost or repeated
    assert "Exception ignored" not in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]


def mapping_of(name: str) -> tuple[int, int, int]:
    """(start address, end address, resident bytes) of this process's mapping of the segment `name`
    (/proc/self/smaps; (0, 0, 0) when not mapped)."""
    lo = hi = rss = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if not first.endswith(":"):  # a mapping's header: "start-end perms offset dev inode path"
                inside = name in line
                if inside:
                    lo, hi = (int(x, 16) for x in first.split("-"))
            elif inside and first == "Rss:":
                rss += int(line.split()[1]) * 1024
    return lo, hi, rss


def test_views_kept_after_close_keep_only_their_own_pages(no_leaks):
    """Three small views (`b["image"][0, :4]`) of lent batches kept past `close()`: only the camera arrays they
    belong to stay resident (3 x 16 frames of 57,600 bytes), not the whole ring; they still read the pixels
    the copying loader hands out; dropping them unmaps the rest."""
    import torch

    shape = (120, 160, 3)

    def loader(zero_copy):
        srcs = [FakeSource("ds_a", num_episodes=4, episode_length=10, camera_shape=shape),
                FakeSource("ds_b", num_episodes=2, episode_length=8, camera_shape=shape)]
        return MixtureLoader(srcs, **grouped(dataset_weights=[1.0, 2.0], batch_size=16, action_horizon=3,
                                             num_workers=1, seed=11, num_batches=6, reader_factory=FakeReader,
                                             pin_memory=False, zero_copy=zero_copy))

    with loader(False) as ref:
        want = [b["image"][0, :4].clone() for i, b in enumerate(ref) if i % 2 == 0]
    with loader(True) as ld:
        kept = []
        for i, b in enumerate(ld):
            if i % 2 == 0:
                kept.append(b["image"][0, :4])
        del b
        name, ring_bytes = ld.shm_name, ld._res.ring.layout.nbytes
        lo, hi, before = mapping_of(name)
        assert all(lo <= v.data_ptr() < hi for v in kept)  # lent: views of the ring itself
    gc.collect()
    held = 3 * 16 * 120 * 160 * 3
    assert before >= ring_bytes - (1 << 20) and ring_bytes > 6 * held  # the ring was resident while open
    _, _, after = mapping_of(name)
    assert held <= after <= held + 3 * 2 * 4096, f"{after} bytes resident for {held} bytes of views"
    for v, w in zip(kept, want, strict=True):
        assert torch.equal(v, w)
    del kept, v
    gc.collect()
    assert mapping_of(name) == (0, 0, 0)


def test_create_data_loader_logs_the_effective_mixture_once_on_rank_0(tmp_path, caplog, no_leaks):
    """The README's promise: every loader prints its effective mixture (datasets, frames, weights, weighting,
    shares) — at INFO on the "fastmix" logger, once per loader, on rank 0 only."""
    from tests.test_data_loader import _cfg

    cfg = _cfg(tmp_path, weights=[1.0, 3.0])  # fake/a 10 frames x 1, fake/b 4 frames x 3: shares 10/22, 12/22

    def mixture_logs() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "fastmix" and "45.455%" in r.getMessage()]

    for rank in (0, 1):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fastmix"):
            with dl_fake().create(cfg, skip_norm_stats=True, num_batches=2, framework="jax",
                                  rank_world=(rank, 2)) as loader:
                for _ in range(2):  # a second iteration does not log it again
                    assert len(list(loader.batches())) == 2
            logs = mixture_logs()
        if rank == 1:
            assert logs == []
            continue
        assert len(logs) == 1, logs
        table = logs[0]
        assert "fake/a" in table and "fake/b" in table and "per_sample" in table
        assert "45.455%" in table and "54.545%" in table  # 10·1/22 and 4·3/22
