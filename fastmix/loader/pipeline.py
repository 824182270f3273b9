"""`BatchPipeline`: the batches of one pass over (the rest of) an epoch, planned and decoded ahead of the
consumer — sampler draws → `BatchPlanner` (low-dim gather into a free slot, frame requests) → work items for
the decode workers (or the in-process reader) → in-order collection → the slot lent as zero-copy tensors
(`SlotLender`, CPU), copied out of the slot (CPU, pinned or past the lending limit) or copied to the device on
the slot's stream (CUDA).

It plans from its own frontier (the sampler, loaded with the start position's state when the pass starts) and
never touches the consumer's position: `next_batch()` returns the batch with the sampler state after it;
`stream.BatchStream` turns that into the position after the batch, which travels with it to the hand-out.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Any

from fastmix.loader.cursor import Position
from fastmix.loader.device import DeviceStage, host_batch
from fastmix.loader.lending import SlotLender, unheld
from fastmix.loader.plan import BatchPlan, BatchPlanner, split_work
from fastmix.loader.slots import SlotRing

POLL_S = 0.5  # longest single wait; a worker's death is seen at once through its sentinel anyway


class InlineExecutor:
    """num_workers=0: the WorkerPool submit/poll protocol, decoding in the main process (errors raise as
    they are)."""

    def __init__(self, ring: SlotRing, reader: Any) -> None:
        self._ring, self._reader = ring, reader
        self._queue: deque[tuple[int, int, list[Any]]] = deque()

    @property
    def outstanding(self) -> int:
        return len(self._queue)

    def submit(self, worker: int, seq: int, slot: int, requests: list[Any]) -> None:
        self._queue.append((seq, slot, requests))

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        if not self._queue:
            return []
        seq, slot, requests = self._queue.popleft()
        self._reader.read(requests, self._ring.views(slot))
        return [(seq, 0)]


class _InFlight:
    __slots__ = ("plan", "slot", "pending", "sampler_state", "staged")

    def __init__(self, plan: BatchPlan, slot: int, sampler_state: dict) -> None:
        self.plan, self.slot, self.sampler_state = plan, slot, sampler_state
        self.pending: set[int] = set()
        self.staged: dict | None = None


class BatchPipeline:
    """Batches `start_batch .. num_batches-1` of the current epoch, at most `max_inflight` ahead.

    Args:
        sampler: the planning frontier (loaded with `sampler_state`, advanced as batches are planned).
        planner: BatchPlanner. ring: the slot ring. stage: DeviceStage or None (CPU tensors).
        executor: WorkerPool or InlineExecutor. num_workers: work items per batch (>= 1).
        batch_size, num_batches, last_size: rows per batch, batches per epoch, rows of the last one.
        start: where the pass starts (a batch of the current epoch). max_inflight: batches planned ahead.
        seqs: the loader's work-item id counter (unique across passes). pin_memory, image_dtype: CPU copy-out.
        output: "torch" (tensors) or "numpy" (arrays) for CPU batches; device batches are tensors.
    """

    def __init__(self, *, sampler: Any, planner: BatchPlanner, ring: SlotRing, stage: DeviceStage | None,
                 executor: Any, num_workers: int, batch_size: int, num_batches: int, last_size: int,
                 start: Position, max_inflight: int, seqs: itertools.count, pin_memory: bool, image_dtype: str,
                 lender: SlotLender | None = None, output: str = "torch") -> None:
        self._sampler, self._planner, self._ring, self._stage, self._exec = sampler, planner, ring, stage, executor
        self._nw = max(1, num_workers)
        self._batch_size, self._num_batches, self._last_size = batch_size, num_batches, last_size
        self._max_inflight = max_inflight
        self._seqs = seqs
        self._pin, self._image_dtype, self._output = pin_memory, image_dtype, output
        self._lender = lender if stage is None else None
        self._free: deque[int] = deque(unheld(ring.num_slots, self._lender))  # never a slot a consumer holds
        self._reclaim: deque[int] = deque()  # slots whose device copies may still be running
        self._inflight: dict[int, _InFlight] = {}
        self._order: deque[int] = deque()  # seqs in delivery order
        self._planned = start.batch  # batches of this epoch planned so far
        sampler.load_state_dict(start.sampler_state)
        if stage is not None:
            stage.close()  # copies launched by an abandoned pass must finish before slots are reused

    # ------------------------------------------------------------------ planning / dispatch
    def _take_slot(self) -> int | None:
        if self._lender is not None:
            self._free.extend(self._lender.reclaim())
        while self._reclaim and (self._stage is None or self._stage.slot_free(self._reclaim[0])):
            self._free.append(self._reclaim.popleft())
        if not self._free and self._reclaim:
            slot = self._reclaim.popleft()
            self._stage.wait_slot(slot)  # type: ignore[union-attr]
            self._free.append(slot)
        return self._free.popleft() if self._free else None

    def _dispatch(self) -> None:
        while self._planned < self._num_batches and len(self._inflight) < self._max_inflight:
            slot = self._take_slot()
            if slot is None:
                return
            n = self._last_size if self._planned == self._num_batches - 1 else self._batch_size
            seq = next(self._seqs)
            plan = self._planner.plan(seq, self._sampler.next_indices(n), self._ring.views(slot))
            item = _InFlight(plan, slot, self._sampler.state_dict())
            self._inflight[seq] = item
            self._order.append(seq)
            self._planned += 1
            for j, piece in enumerate(split_work(plan.requests, self._nw)):
                w = (j + seq) % self._nw
                item.pending.add(w)
                self._exec.submit(w, seq, slot, piece)

    def _can_lend(self) -> bool:
        """Whether the lender has room, after taking back the slots whose batches are gone."""
        assert self._lender is not None
        self._free.extend(self._lender.reclaim())
        return self._lender.can_lend()

    def _complete(self, timeout: float) -> None:
        for seq, w in self._exec.poll(timeout):
            item = self._inflight.get(seq)
            if item is not None:
                item.pending.discard(w)

    def _stage_ready(self) -> None:
        """CUDA: start the device copy of the next batch as soon as it is decoded (overlaps the training step)."""
        if self._stage is None or not self._order:
            return
        item = self._inflight[self._order[0]]
        if not item.pending and item.staged is None:
            rows = item.plan.size if item.plan.rows is None else item.plan.rows
            item.staged = self._stage.copy(item.slot, self._ring.views(item.slot), rows)

    # ------------------------------------------------------------------ delivery
    def next_batch(self, stop: threading.Event | None = None,
                   poll_s: float = POLL_S) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The next batch in order (tensors owned by the caller, "task"/"prompt" lists) and the sampler state
        after its draws; None when `stop` was set while waiting. Raises WorkerError (dead, failing or stalled
        worker) or what the planner raised."""
        self._dispatch()
        seq = self._order[0]
        item = self._inflight[seq]
        while item.pending:
            if stop is not None and stop.is_set():
                return None
            if not self._exec.outstanding:  # pragma: no cover - invariant; never spin on nothing
                raise RuntimeError(f"batch {seq} waits on workers {sorted(item.pending)} that have no work")
            self._complete(poll_s)
            self._dispatch()
        batch = self._copy_out(item)
        self._order.popleft()
        del self._inflight[seq]
        self._dispatch()  # keep the workers busy while the consumer trains
        if self._stage is not None and self._order:
            self._complete(0.0)
            self._stage_ready()
        return batch, item.sampler_state

    def _copy_out(self, item: _InFlight) -> dict[str, Any]:
        views = self._ring.views(item.slot)
        n = item.plan.size if item.plan.rows is None else item.plan.rows
        if self._stage is not None:
            out = item.staged if item.staged is not None else self._stage.copy(item.slot, views, n)
            out = self._stage.hand_out(item.slot, out)
            self._reclaim.append(item.slot)
        elif self._lender is not None and self._can_lend():
            # zero copy: the slot returns when the batch's images are gone
            out = self._lender.lend(item.slot, views, n, self._planner.camera_keys, numpy=self._output == "numpy")
        else:
            out = host_batch(views, n, self._planner.camera_keys, pin=self._pin, image_dtype=self._image_dtype)
            if self._output == "numpy":
                out = {k: t.numpy() for k, t in out.items()}  # views of the (pinned) host tensors, no copy
            self._free.append(item.slot)
        batch: dict[str, Any] = dict(out)
        batch["task"] = list(item.plan.tasks)
        batch["prompt"] = list(item.plan.tasks)
        return batch


def drain(executor: Any) -> None:
    """Wait for the work items of an abandoned pass (they write into slots about to be reused). Bounded: a
    dead or stalled worker raises WorkerError from `poll`."""
    while executor.outstanding:
        executor.poll(POLL_S)


__all__ = ["POLL_S", "BatchPipeline", "InlineExecutor", "drain"]
