"""Zero-copy hand-out (`SlotLender`) and float32 slots written by the decode workers.

A lent batch is a view of its shared-memory slot; it must never change while any tensor of it (or a view,
slice or `.numpy()` array of one) is alive, whatever the consumer keeps and for how long; the stream must be
the copying loader's, batch for batch; float32 images written by the workers must be torch's own
`x.permute(0, 3, 1, 2).to(float32) / 255` of the uint8 frames, bit for bit."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch

from fastmix.loader import slots
from fastmix.loader.lending import SlotLender
from fastmix.loader.loader import MixtureLoader
from fastmix.loader.slots import leftover_segments
from fastmix.testing.fakes import FakeReader, FakeSource
from tests.loader_args import grouped


def fake_loader(camera_shape: tuple[int, int, int] = (8, 8, 3), **kw) -> MixtureLoader:
    args = dict(dataset_weights=[1.0, 3.0], batch_size=8, action_horizon=4, num_workers=0, seed=5,
                reader_factory=FakeReader, num_batches=30)
    args.update(kw)
    srcs = [FakeSource("ds_a", num_episodes=4, episode_length=20, camera_shape=camera_shape),
            FakeSource("ds_b", num_episodes=2, episode_length=15, camera_shape=camera_shape)]
    return MixtureLoader(srcs, **grouped(**args))


def snapshot(batch: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for k, v in batch.items()}


def assert_same(a: dict, b: dict, where: str) -> None:
    assert sorted(a) == sorted(b), where
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{where}: {k} differs"
        else:
            assert a[k] == b[k], f"{where}: {k} differs"


def in_ring(loader: MixtureLoader, t: torch.Tensor) -> bool:
    buf = loader._res.ring.buffer()
    start = buf.ctypes.data
    return start <= t.data_ptr() < start + buf.nbytes


# ------------------------------------------------------------------------------------------ the lender
def test_lender_gives_a_slot_back_only_when_every_reference_is_gone():
    slot_arrays = {"img": np.zeros((4, 2, 2, 3), np.uint8), "wrist": np.zeros((4, 2, 2, 3), np.uint8),
                   "state": np.zeros((4, 3), np.float32)}
    cams = ("img", "wrist")
    lender = SlotLender(limit=2)
    batch = lender.lend(0, slot_arrays, 3, cams)
    assert batch["img"].shape == (3, 2, 2, 3) and lender.held == {0}
    keep_state = batch["state"]  # low-dim fields are copies: keeping one never holds the slot
    assert not np.shares_memory(keep_state.numpy(), slot_arrays["state"])
    assert np.shares_memory(batch["img"].numpy(), slot_arrays["img"])
    keep_view = batch["img"][1:].permute(0, 3, 1, 2)  # a torch view of one tensor
    keep_numpy = batch["wrist"].numpy()  # a numpy array over another
    del batch
    gc.collect()
    assert lender.reclaim() == [] and lender.held == {0}
    del keep_view
    assert lender.held == {0}
    del keep_numpy
    assert lender.reclaim() == [0] and lender.held == set()
    one, two = lender.lend(1, slot_arrays, 4, cams), lender.lend(2, slot_arrays, 4, cams)
    assert not lender.can_lend() and lender.held == {1, 2}
    del one
    assert lender.reclaim() == [1] and lender.can_lend()
    del two, keep_state


def mapped_rings() -> list[str]:
    """fastmix ring segments this process still maps (unlinked ones show as "(deleted)")."""
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1]
                       for line in f if "/fastmix_" in line})


def test_keeping_low_dim_fields_holds_no_ring():
    """An index or a state kept from each of three closed loaders maps no ring: only images are lent."""
    kept = []
    for _ in range(3):
        with fake_loader(num_batches=4) as loader:
            for b in loader:
                kept.append((b["index"], b["state"], b["task"]))
            del b  # the last batch itself (its images are lent)
    gc.collect()
    assert mapped_rings() == []
    assert len(kept) == 12


# --------------------------------------------------------------------------------------- whole loader
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("keep", ["every", "every_third", "none"])
def test_lent_batches_never_change_and_the_stream_is_the_copying_loaders(num_workers, keep):
    with fake_loader(num_workers=num_workers, zero_copy=False) as ref_loader:
        ref = [snapshot(b) for b in ref_loader]
    kept, seen_in_ring = [], 0
    with fake_loader(num_workers=num_workers) as loader:
        for i, batch in enumerate(loader):
            assert_same(snapshot(batch), ref[i], f"batch {i} at hand-out")
            seen_in_ring += in_ring(loader, batch["image"])
            if keep == "every" or (keep == "every_third" and i % 3 == 0):
                kept.append((i, batch))  # the tensors themselves, not copies
            del batch
        assert seen_in_ring > 0  # batches were handed out without a copy
        for i, batch in kept:  # whatever the workers decoded since, a held batch is unchanged
            assert_same(snapshot(batch), ref[i], f"batch {i} kept")
    assert len(ref) == 30


def test_a_held_view_keeps_its_slot(video_ds):
    """A slice of one tensor outlives its batch: its slot is never decoded into again."""
    from fastmix.sources.lerobot_source import LeRobotSource

    with MixtureLoader([LeRobotSource(root=video_ds)], batch_size=4, action_horizon=2, num_workers=2, seed=1,
                       num_batches=25) as loader:
        it = iter(loader)
        first = next(it)
        piece = first["image"][1:3]
        want = piece.clone()
        del first
        for _ in it:
            pass
        assert torch.equal(piece, want)
    assert torch.equal(piece, want)  # still readable after close(): the mapping lives as long as the tensor
    import os

    assert leftover_segments(pid=os.getpid()) == []  # the segment itself is unlinked


@pytest.mark.parametrize("num_workers", [0, 2])
def test_float32_slots_are_torchs_conversion(video_ds, image_ds, num_workers):
    from fastmix.sources.lerobot_source import LeRobotSource

    srcs = [LeRobotSource(root=video_ds), LeRobotSource(root=image_ds)]
    kw = dict(dataset_weights=[1.0, 1.0], batch_size=6, action_horizon=3, seed=2, num_batches=4,
              num_workers=num_workers)
    with MixtureLoader(srcs, **grouped(**kw)) as u8, MixtureLoader(srcs, image_dtype="float32", **grouped(**kw)) as f32:
        assert f32._float_slots and f32._res.ring is None
        pairs = [(snapshot(a), snapshot(b)) for a, b in zip(u8, f32, strict=True)]
        assert f32._res.ring.layout.fields[[k for k, *_ in f32._res.ring.layout.fields].index("image")][2] == "<f4"
    for a, b in pairs:
        for key in ("image", "wrist_image"):
            want = a[key].permute(0, 3, 1, 2).to(torch.float32) / 255.0
            got = b[key]
            assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
            assert torch.equal(got.view(torch.int32), want.contiguous().view(torch.int32)), key
        for key in a:
            if key not in ("image", "wrist_image") and isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key


def test_small_shm_degrades_with_a_warning_and_the_same_batches(monkeypatch):
    from fastmix.errors import ConfigError

    shape = (64, 64, 3)  # slots large enough that uint8 slots with lending are smaller than float slots
    with fake_loader(shape, image_dtype="float32", zero_copy=False) as plain:
        sizer = plain._sizer
        base = sizer.layout(False, 0).nbytes
        lend = sizer.lend_slots(True)
        full = sizer.layout(True, lend).nbytes
        uint8_lending = sizer.layout(False, sizer.lend_slots(False)).nbytes
        ref = [snapshot(b) for b in plain]
    assert all(b["image"].dtype == torch.float32 and b["image"].shape[1] == 3 for b in ref)

    def check(free: int, want: tuple[bool, int], lost: str) -> None:
        monkeypatch.setattr(slots, "shm_free_bytes", lambda d=None: free)
        with pytest.warns(RuntimeWarning, match=lost) as w:
            loader = fake_loader(shape, image_dtype="float32")
        assert str(free) in str(w[0].message)
        with loader:
            assert (loader._float_slots, loader._lend) == want
            for i, b in enumerate(loader):  # float32 (B, C, H, W) whatever the ring, and the same values
                assert_same(snapshot(b), ref[i], f"batch {i}")

    # the faster rings may take half of the free space: just too little for lending, enough for float slots
    check(2 * full - 2, (True, 0), r"running without zero-copy hand-out$")
    # too little for float slots but enough for uint8 slots with lending: float32 is still what comes out
    # (uint8 slots are converted as they are copied, never lent as uint8)
    assert uint8_lending < sizer.layout(True, 0).nbytes
    check(2 * uint8_lending, (False, 0), "zero-copy hand-out and float conversion in the workers")
    check(base, (False, 0), "zero-copy hand-out and float conversion in the workers")
    monkeypatch.setattr(slots, "shm_free_bytes", lambda d=None: base - 1)
    with pytest.raises(ConfigError, match=rf"\({base} bytes"):
        fake_loader(shape, image_dtype="float32")


def test_zero_copy_off_copies_every_batch():
    with fake_loader(zero_copy=False) as loader:
        assert loader._lend == 0
        for b in loader:
            assert not in_ring(loader, b["image"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fake_loader() as loader:
            assert loader._lend == 8  # tiny slots: the upper bound
            assert loader._num_slots() == loader.prefetch + 2 + 8
    import os

    assert leftover_segments(pid=os.getpid()) == []
