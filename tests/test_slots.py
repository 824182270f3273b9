"""SlotRing: layout, sharing with an attached mapping, unlink on close / GC / crash, clear error when too small."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fastmix.errors import ConfigError
from fastmix.loader import slots
from fastmix.loader.slots import SlotAttachment, SlotRing, leftover_segments

FIELDS = {"image": ((4, 6, 3), np.uint8), "state": ((5,), np.float32), "actions_is_pad": ((3,), np.bool_),
          "index": ((), np.int64)}


def test_layout_alignment_and_views():
    with SlotRing(FIELDS, batch_size=7, num_slots=3, num_workers=2) as ring:
        offsets, stride = ring.layout.field_offsets()
        assert all(o % 64 == 0 for o in offsets)
        assert stride % 4096 == 0 and ring.layout.header_nbytes % 4096 == 0
        assert ring.layout.nbytes == ring.layout.header_nbytes + 3 * stride
        assert os.path.getsize(ring.layout.path) == ring.layout.nbytes
        v = ring.views(1)
        assert v["image"].shape == (7, 4, 6, 3) and v["image"].dtype == np.uint8
        assert v["state"].shape == (7, 5) and v["state"].dtype == np.float32
        assert v["actions_is_pad"].dtype == np.bool_ and v["index"].shape == (7,)
        assert ring.progress.shape == (2, slots.PROGRESS_WORDS)
        # slots do not overlap: writing one leaves the others untouched
        for s in range(3):
            for arr in ring.views(s).values():
                arr[...] = 0
        ring.views(1)["image"][...] = 255
        ring.views(1)["index"][...] = -1
        assert ring.views(0)["image"].max() == 0 and ring.views(2)["image"].max() == 0
        assert ring.views(0)["index"].max() == 0 and ring.views(2)["index"].max() == 0


def test_attachment_sees_writes_both_ways():
    with SlotRing(FIELDS, batch_size=2, num_slots=2) as ring:
        att = SlotAttachment(ring.layout)
        try:
            att.views(1)["image"][1] = 77
            assert (ring.views(1)["image"][1] == 77).all()
            ring.views(0)["state"][0] = np.arange(5, dtype=np.float32)
            np.testing.assert_array_equal(att.views(0)["state"][0], np.arange(5, dtype=np.float32))
            att.progress[0, 0] = 42
            assert ring.progress[0, 0] == 42
        finally:
            att.close()


def test_close_unlinks_and_is_idempotent():
    ring = SlotRing(FIELDS, batch_size=2, num_slots=2)
    name = ring.name
    assert name in leftover_segments(pid=os.getpid())
    ring.close()
    ring.close()
    assert ring.closed and name not in leftover_segments()
    with pytest.raises(RuntimeError, match="closed"):
        ring.views(0)


def test_garbage_collection_unlinks():
    ring = SlotRing(FIELDS, batch_size=2, num_slots=2)
    name = ring.name
    view = ring.views(0)["image"]  # an outstanding view must not prevent the unlink
    del ring
    gc.collect()
    assert name not in leftover_segments()
    view[...] = 1  # the mapping stays valid for the holder of the view


def test_killed_creator_leaves_nothing(tmp_path):
    code = textwrap.dedent("""
        import os, signal, sys, numpy as np
        from fastmix.loader.slots import SlotRing
        ring = SlotRing({"x": ((16,), np.uint8)}, batch_size=4, num_slots=2)
        print(ring.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    name = proc.stdout.strip()
    assert name.startswith("fastmix_"), proc.stderr
    deadline = time.monotonic() + 10
    while name in leftover_segments() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert name not in leftover_segments(), "resource tracker did not unlink the segment of a killed process"


def test_too_small_shm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(slots, "shm_free_bytes", lambda shm_dir=slots.SHM_DIR: 1000)
    before = leftover_segments(pid=os.getpid())
    with pytest.raises(ConfigError) as info:
        SlotRing(FIELDS, batch_size=64, num_slots=4)
    msg = str(info.value)
    needed = slots.SlotLayout("x", tuple((k, s, np.dtype(d).str) for k, (s, d) in FIELDS.items()), 64, 4, 0).nbytes
    assert str(needed) in msg and "/dev/shm" in msg and "batch_size" in msg and "shm-size" in msg
    assert leftover_segments(pid=os.getpid()) == before


def test_custom_shm_dir(tmp_path):
    with SlotRing(FIELDS, batch_size=2, num_slots=1, shm_dir=str(tmp_path)) as ring:
        assert (tmp_path / ring.name).exists()
    assert not list(tmp_path.iterdir())


def test_invalid_sizes():
    with pytest.raises(ConfigError, match="batch_size"):
        SlotRing(FIELDS, batch_size=0, num_slots=1)
