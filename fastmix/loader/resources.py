"""What a `MixtureLoader` holds and must release — the slot ring, its pinned registration, the device stage, the
worker pool or in-process reader, the lender and the active stream — and how the ring is sized.

`Resources` holds no reference to the loader, so a `weakref.finalize` on the loader can release it.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastmix.errors import ConfigError
from fastmix.loader import slots
from fastmix.loader.device import DeviceStage, PinnedRegion
from fastmix.loader.lending import SlotLender
from fastmix.loader.options import LEND_BYTES, LEND_SLOTS_BOUNDS
from fastmix.loader.slots import SlotRing
from fastmix.loader.workers import WorkerPool

Fields = Mapping[str, tuple[tuple[int, ...], Any]]


class Resources:
    """The loader's releasable state. `release()` is idempotent and safe from a finalizer; it releases only in
    the process that created the `Resources` (a plain `os.fork()` child inherits the object and its finalizer,
    not the workers or the ring)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self.ring: SlotRing | None = None
        self.pinned: PinnedRegion | None = None
        self.stage: DeviceStage | None = None
        self.pool: WorkerPool | None = None
        self.reader: Any = None
        self.stream: Any = None  # the active BatchStream
        self.lender: SlotLender | None = None

    def stop_stream(self) -> None:
        """Stop the active stream; if its thread does not stop in time (a step stuck for 30 s), release
        everything (workers, ring) so that no new stream shares slots or the lender with it."""
        stream, self.stream = self.stream, None
        if stream is not None and not stream.close():
            self.release()

    def release(self) -> None:
        """Stop the stream and the workers, close the reader, wait for device copies, unregister and unlink the
        ring."""
        if os.getpid() != self._pid:  # a forked child: forget the parent's resources, never stop or unlink them
            self.stream = self.pool = self.reader = self.stage = self.pinned = self.ring = self.lender = None
            return
        stream, self.stream = self.stream, None
        ended = stream.close(timeout=2.0) if stream is not None else True
        pool, self.pool = self.pool, None
        try:
            if pool is not None:
                pool.close()  # also unblocks a thread stuck sending to a stopped worker
            if not ended:
                stream.close(timeout=10.0)  # type: ignore[union-attr]
        finally:
            self._release_memory()

    def _release_memory(self) -> None:
        reader, self.reader = self.reader, None
        stage, self.stage = self.stage, None
        # lent arrays keep the old mapping alive (only their own pages: the ring releases the rest at close); a
        # new ring starts with none lent
        lender, self.lender = self.lender, None
        keep = lender.held_ranges() if lender is not None else []
        pinned, self.pinned = self.pinned, None
        ring, self.ring = self.ring, None
        closers = [c.close for c in (reader, stage, pinned) if c is not None]
        if ring is not None:
            closers.append(functools.partial(ring.close, keep=keep))
        errors = []
        for close in closers:  # every one is closed, whatever an earlier one raised
            try:
                close()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the rest are closed
                errors.append(exc)
        if errors:
            raise errors[0]


def slot_fields(fields: Fields, camera_keys: Sequence[str], float_slots: bool) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{key: (shape per sample, dtype)} of a slot: the planner's `fields`, cameras float32 (C, H, W) when the
    workers convert."""
    out = dict(fields)
    if float_slots:
        for key in camera_keys:
            h, w, c = out[key][0]
            out[key] = ((c, h, w), np.dtype(np.float32))
    return out


class RingSizer:
    """Sizes the slot ring of a loader: slot layout, lendable slots, and what a small `shm_dir` allows."""

    def __init__(self, fields: Fields, camera_keys: Sequence[str], *, batch_size: int, prefetch: int,
                 num_workers: int, shm_dir: str) -> None:
        self.fields, self.camera_keys = fields, list(camera_keys)
        self.batch_size, self.prefetch, self.num_workers, self.shm_dir = batch_size, prefetch, num_workers, shm_dir

    def layout(self, float_slots: bool, lend: int) -> slots.SlotLayout:
        """The ring's layout with float32 or uint8 camera slots and `lend` lendable slots (a probe: no segment)."""
        fields = slot_fields(self.fields, self.camera_keys, float_slots)
        return slots.SlotLayout(name="probe", fields=tuple((k, tuple(s), np.dtype(d).str) for k, (s, d) in
                                                           fields.items()),
                                batch_size=self.batch_size, num_slots=self.prefetch + 2 + lend,
                                num_workers=max(1, self.num_workers), shm_dir=self.shm_dir)

    def lend_slots(self, float_slots: bool) -> int:
        """Slots that may be lent: `LEND_BYTES` worth of slots, clamped to `LEND_SLOTS_BOUNDS`."""
        lo, hi = LEND_SLOTS_BOUNDS
        return int(min(hi, max(lo, LEND_BYTES // self.layout(float_slots, 0).slot_nbytes)))

    def plan(self, *, float_slots: bool, lend: int) -> tuple[bool, int]:
        """(float slots, slots that may be lent) that `shm_dir` can hold, degrading in this order when it is
        small: no lending, then uint8 slots (float conversion in the main process). The faster rings may take
        at most half of the free space (other loaders, e.g. other ranks, share it); the plain ring all of it.
        Warns when it degrades; a ConfigError naming the bytes needed when even the plain ring does not fit."""
        free = slots.shm_free_bytes(self.shm_dir)
        # float32 asked for: uint8 slots are only ever copied out (converting), never lent as uint8
        options = [(True, lend), (True, 0), (False, 0)] if float_slots else [(False, lend), (False, 0)]
        for f, n in dict.fromkeys(options):
            if self.layout(f, n).nbytes <= (free if (f, n) == (False, 0) else free // 2):
                if (f, n) != (float_slots, lend):
                    lost = [what for what, on in (("zero-copy hand-out", n < lend),
                                                  ("float conversion in the workers", f < float_slots)) if on]
                    warnings.warn(f"{self.shm_dir} has {free} bytes free, too little for the faster ring "
                                  f"({self.layout(float_slots, lend).nbytes} bytes); running without "
                                  f"{' and '.join(lost)}", RuntimeWarning, stacklevel=4)
                return f, n
        raise ConfigError(slots.shm_too_small_message(
            self.layout(False, 0).nbytes, free, self.shm_dir,
            f"{self.prefetch + 2} slots (prefetch={self.prefetch} + 2) x batch_size={self.batch_size}"))


__all__ = ["Resources", "RingSizer", "slot_fields"]
