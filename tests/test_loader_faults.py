"""MixtureLoader under faults: a worker that raises, dies (SIGKILL, from inside or outside) or hangs; an
exception or KeyboardInterrupt in the consumer (also Ctrl-C to the whole process group); the loader collected
while its workers are busy; /dev/shm too small; restart after a kill continues the uninterrupted stream.
Every case is bounded in time and checks that no worker process and no shared-memory segment is left."""

from __future__ import annotations

import functools
import gc
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
from fastmix.loader.slots import leftover_segments
from fastmix.testing.fakes import FakeReader, FakeSource, wait_gone
from tests.loader_args import grouped

pytestmark = pytest.mark.timeout(120)


def sources():
    return [FakeSource("ds_a", num_episodes=4, episode_length=20), FakeSource("ds_b", num_episodes=2, episode_length=15)]


def make(reader=FakeReader, **kw):
    args = dict(dataset_weights=[1.0, 3.0], batch_size=8, action_horizon=4, num_workers=1, seed=5,
                reader_factory=reader)
    args.update(kw)
    return MixtureLoader(sources(), **grouped(**args))


def first_episode_drawn(ds_name: str) -> int:
    """An episode of `ds_name` that the first batch (seed 5) contains, to aim an injected fault at."""
    with make(num_workers=0) as loader:
        b = next(iter(loader))
    names = ["ds_a", "ds_b"]
    for d, e in zip(b["dataset_index"].tolist(), b["episode_index"].tolist(), strict=False):
        if names[d] == ds_name:
            return int(e)
    raise AssertionError("dataset not in the first batch")


@pytest.fixture
def no_leaks():
    before = set(leftover_segments(pid=os.getpid()))
    yield
    gc.collect()
    assert set(leftover_segments(pid=os.getpid())) == before


def test_worker_exception_names_where(no_leaks):
    ep = first_episode_drawn("ds_b")
    reader = functools.partial(FakeReader, fault="raise", fault_at=("ds_b", ep))
    with make(reader) as loader:
        it = iter(loader)
        with pytest.raises(WorkerError) as info:
            next(it)
        pids = loader.worker_pids
    msg = str(info.value)
    assert "'ds_b'" in msg and f"episode {ep}" in msg and f"episode_{ep:06d}.mp4" in msg
    assert "timestamp" in msg and "key" in msg and "injected decode failure" in msg
    assert isinstance(info.value.__cause__, DecodeError)
    assert pids == [] or wait_gone(pids)


def test_inline_decode_raises_the_original_error(no_leaks):
    ep = first_episode_drawn("ds_a")
    with make(functools.partial(FakeReader, fault="raise", fault_at=("ds_a", ep)), num_workers=0) as loader:
        with pytest.raises(DecodeError, match=f"episode {ep}"):
            next(iter(loader))


def test_worker_sigkill_inside_decode_is_reported_within_seconds(no_leaks):
    ep = first_episode_drawn("ds_a")
    reader = functools.partial(FakeReader, fault="kill", fault_at=("ds_a", ep))
    with make(reader, num_workers=2) as loader:
        it = iter(loader)
        t0 = time.monotonic()
        with pytest.raises(WorkerError) as info:
            next(it)
        assert time.monotonic() - t0 < 10
        assert loader.worker_pids == []  # stopped by the loader
    msg = str(info.value)
    assert "SIGKILL" in msg and "'ds_a'" in msg and "file fake://ds_a/" in msg and "timestamp" in msg


def test_external_sigkill_then_resume_equals_uninterrupted_stream(no_leaks):
    with make(num_workers=0) as ref_loader:
        reference = [b["index"].numpy().copy() for b in ref_loader]
    slow = functools.partial(FakeReader, delay_s=0.02)
    with make(slow, num_workers=2) as loader:
        it = iter(loader)
        got = [next(it)["index"].numpy().copy() for _ in range(2)]
        state = loader.state_dict()
        victim = loader.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="SIGKILL"):
            for b in it:
                got.append(b["index"].numpy().copy())
                state = loader.state_dict()
        assert time.monotonic() - t0 < 10
        assert wait_gone([victim])
        # restart from the last state_dict with another num_workers: the stream continues exactly
    with make(num_workers=1) as fresh:
        fresh.load_state_dict(state)
        got += [b["index"].numpy().copy() for b in fresh]
    assert len(got) == len(reference)
    for a, b in zip(got, reference, strict=False):
        np.testing.assert_array_equal(a, b)


def test_iterating_again_after_a_worker_death_restarts_workers(no_leaks):
    with make(num_workers=1) as loader:
        it = iter(loader)
        next(it)
        os.kill(loader.worker_pids[0], signal.SIGKILL)
        with pytest.raises(WorkerError):
            for _ in it:
                pass
        position = loader.state_dict()["batch"]
        rest = list(loader)  # fresh workers, continues after the last delivered batch
        assert position >= 1 and len(rest) == len(loader) - position


def test_hung_worker_times_out(no_leaks):
    ep = first_episode_drawn("ds_a")
    reader = functools.partial(FakeReader, fault="hang", fault_at=("ds_a", ep), hang_s=60)
    with make(reader, worker_timeout_s=1.5) as loader:
        it = iter(loader)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="no progress") as info:
            next(it)
        assert time.monotonic() - t0 < 10
        assert "'ds_a'" in str(info.value) and f"episode(s) [{ep}" in str(info.value)
        pids = loader.worker_pids
    assert pids == []


def test_consumer_exception_then_gc_leaves_nothing(no_leaks):
    slow = functools.partial(FakeReader, delay_s=0.01)
    loader = make(slow, num_workers=2, prefetch=3)
    pids = []
    with pytest.raises(ZeroDivisionError):
        for i, _ in enumerate(loader):
            pids = loader.worker_pids
            if i == 2:
                1 / 0  # noqa: B018 - the consumer fails mid-epoch while workers are busy
    del loader  # collected while its workers hold prefetched work
    assert wait_gone(pids)


def test_keyboard_interrupt_in_consumer(no_leaks):
    with make(num_workers=1) as loader:
        with pytest.raises(KeyboardInterrupt):
            for _ in loader:
                raise KeyboardInterrupt
        pids = loader.worker_pids
        assert len(list(loader)) > 0  # still usable after the interrupt
    assert wait_gone(pids)


CTRL_C_SCRIPT = textwrap.dedent("""
    import functools, sys
    from fastmix.loader import MixtureLoader, WorkerOptions
    from fastmix.testing.fakes import FakeReader, FakeSource
    if __name__ == "__main__":
        loader = MixtureLoader([FakeSource("a"), FakeSource("b")], batch_size=4, num_workers=2, num_batches=10**6,
                               workers=WorkerOptions(reader_factory=functools.partial(FakeReader, delay_s=0.05)))
        for i, b in enumerate(loader):
            if i == 1:
                print(loader.shm_name, *loader.worker_pids, flush=True)
""")


def test_ctrl_c_to_the_process_group_leaves_nothing(tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=os.getcwd(),
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        line = proc.stdout.readline().split()
        assert line, proc.stderr.read()
        name, pids = line[0], [int(p) for p in line[1:]]
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err
    assert wait_gone(pids)
    assert name not in leftover_segments()


def test_shm_too_small_is_a_clear_error_at_construction(monkeypatch, no_leaks):
    monkeypatch.setattr(slots, "shm_free_bytes", lambda shm_dir=slots.SHM_DIR: 4096)
    with pytest.raises(ConfigError, match=r"/dev/shm has 4\.0 KiB free but the loader's batch slots need") as info:
        make(batch_size=64)
    assert "prefetch=2" in str(info.value) and "batch_size=64" in str(info.value)


def test_worker_startup_failure_is_reported(no_leaks):
    reader = functools.partial(FakeReader, unknown_option=1)  # the factory itself raises in the worker
    with make(reader) as loader:
        with pytest.raises(WorkerError, match="start-up"):
            next(iter(loader))
        assert loader.worker_pids == []
