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


def test_unheld_spans_are_the_page_aligned_complement_of_the_kept_ranges():
    page = 4096
    assert slots.unheld_spans(10 * page, [], page) == [(0, 10 * page)]
    # kept ranges widen to whole pages; overlapping and unordered ranges merge; outside ones are ignored
    keep = [(5 * page + 10, 100), (page, 2 * page), (2 * page + 1, page), (-5 * page, page), (20 * page, 1)]
    assert slots.unheld_spans(10 * page, keep, page) == [(0, page), (4 * page, 5 * page), (6 * page, 10 * page)]
    assert slots.unheld_spans(4 * page, [(0, 4 * page)], page) == []


def _resident(name: str) -> int:
    """Resident bytes of this process's mappings of segment `name` (/proc/self/smaps)."""
    rss, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if not first.endswith(":"):
                inside = name in line
            elif inside and first == "Rss:":
                rss += int(line.split()[1]) * 1024
    return rss


def test_close_with_kept_views_releases_every_other_page():
    fields = {"image": ((64, 64, 3), np.uint8), "state": ((5,), np.float32)}
    ring = SlotRing(fields, batch_size=8, num_slots=6)
    name, total = ring.name, ring.layout.nbytes
    for s in range(6):
        ring.views(s)["image"][...] = s + 1
    kept = ring.views(2)["image"][1:3]  # a consumer's view, outliving the ring
    assert _resident(name) >= total - 4096
    ring.close(keep=[(kept.ctypes.data, kept.nbytes)])
    assert name not in leftover_segments()
    assert 0 < _resident(name) <= kept.nbytes + 2 * 4096  # only the kept pages, not the ring
    assert (kept == 3).all()
    del kept
    gc.collect()
    assert _resident(name) == 0


FORKED_RING = textwrap.dedent("""
    import os, sys
    import numpy as np
    from fastmix.loader.slots import SlotRing

    ring = SlotRing({"x": ((4,), np.float32)}, batch_size=2, num_slots=2)
    ring.views(0)["x"][...] = 7
    pid = os.fork()
    if pid == 0:
        ring.close(keep=[])  # a child closing (or collecting) the parent's ring touches only its own mapping
        sys.exit(0)
    os.waitpid(pid, 0)
    print(os.path.exists(ring.layout.path), float(ring.views(0)["x"].sum()), flush=True)
    ring.close()
    print(os.path.exists(ring.layout.path), flush=True)
""")


def test_a_forked_child_neither_unlinks_nor_punches_the_parents_ring(tmp_path):
    script = tmp_path / "forked_ring.py"
    script.write_text(FORKED_RING)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["True", "56.0", "False"]
