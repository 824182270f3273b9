"""`MixtureLoader`: batches of a weighted mixture of LeRobot datasets, decoded by worker processes into
shared-memory slots, optionally pinned and copied to a CUDA device on per-slot streams.

Flow of one batch (main process): `MixtureSampler.next_indices(B)` → `IndexMap.to_local` → `BatchPlanner`
(low-dim gather for the whole batch, written into a slot; frame requests sorted by file and timestamp) →
split into per-worker work items → workers decode into the same slot → in-order delivery (copied out of the
slot on CPU, or copied to the device on the slot's stream) → `transform`.

Determinism: the sample stream is planned in the main process only, so it is identical for any
`num_workers` (0 decodes in-process). `state_dict()` is taken at the consumer's position (the last batch
handed out), never at the prefetch frontier, so a resume — with any `num_workers` — continues exactly.

Lifetime: workers and the ring are started at the first iteration and kept across epochs; `close()`,
the context manager, garbage collection and interpreter exit stop the workers and unlink the segment. A
worker error or death raises `WorkerError` (naming dataset, episode, file, key and timestamp) and stops the
workers; iterating again restarts them from the last delivered batch.
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastmix.errors import ConfigError, WorkerError
from fastmix.loader.device import (
    IMAGE_DTYPES,
    DeviceStage,
    PinnedRegion,
    host_batch,
    resolve_device,
    resolve_pin_memory,
)
from fastmix.loader.plan import BatchPlan, BatchPlanner, resolve_delta_timestamps, split_work
from fastmix.loader.slots import SHM_DIR, SlotRing
from fastmix.loader.workers import WorkerPool
from fastmix.sampler import MixtureSampler

_POLL_S = 0.5  # longest single wait; worker death is seen at once through its sentinel anyway


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} should be an integer >= {minimum}, but got {name}={value!r}")
    return int(value)


def _default_reader_factory(tolerance_s: float) -> Any:
    from fastmix.sources.frames import FrameReader

    return FrameReader(max_open_files=16, tolerance_s=tolerance_s)


def _as_source(obj: Any) -> Any:
    if isinstance(obj, (str, os.PathLike)) and Path(obj).exists():
        from fastmix.sources.lerobot_source import LeRobotSource

        return LeRobotSource(root=obj)
    if isinstance(obj, str):
        raise ConfigError(f"source {obj!r} is not a LeRobotSource and no dataset root exists at that path; "
                          "pass LeRobotSource(repo_id, root=...) objects or dataset roots")
    for attr in ("gather_lowdim", "frame_requests", "tasks_of", "camera_keys"):
        if not hasattr(obj, attr):
            raise ConfigError(f"source {obj!r} lacks {attr!r}; MixtureLoader needs LeRobotSource objects")
    return obj


class _Resources:
    """What must be released: the ring, its pinned registration, the worker pool, the in-process reader.
    Holds no reference to the loader, so a weakref.finalize on the loader can release it."""

    def __init__(self) -> None:
        self.ring: SlotRing | None = None
        self.pinned: PinnedRegion | None = None
        self.stage: DeviceStage | None = None
        self.pool: WorkerPool | None = None
        self.reader: Any = None

    def stop_workers(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    def release(self) -> None:
        self.stop_workers()
        if self.reader is not None:
            try:
                self.reader.close()
            finally:
                self.reader = None
        if self.stage is not None:
            self.stage.close()
            self.stage = None
        if self.pinned is not None:
            self.pinned.close()
            self.pinned = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None


class _Inline:
    """num_workers=0: the same submit/poll protocol, decoding in the main process (errors raise as they are)."""

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

    def describe_outstanding(self) -> str:
        return "in-process decode"


class _InFlight:
    __slots__ = ("plan", "slot", "pending", "sampler_state", "staged")

    def __init__(self, plan: BatchPlan, slot: int, pending: set[int], sampler_state: dict) -> None:
        self.plan, self.slot, self.pending, self.sampler_state = plan, slot, pending, sampler_state
        self.staged: dict | None = None


class MixtureLoader:
    """Weighted multi-dataset batch loader (drop-in for ConcatDataset + WeightedRandomSampler + DataLoader).

    Args:
        sources: LeRobotSource objects (or dataset roots), one per dataset of the mixture.
        dataset_weights: (K,) weights (default ones); semantics per `weighting` ("per_sample": like the
            reference's per-sample weights list; "per_dataset": shares ∝ weights).
        batch_size: rows per batch.
        action_horizon: H; each source gets delta_timestamps {k: [t/fps for t in range(H)]} for `action_keys`
            (default: keys named "action"/"actions"). delta_timestamps: explicit dict (all sources) or list.
        num_workers: decode processes (0: decode in the main process). seed: sampler seed.
        shuffle: False gives the sequential order. num_batches: batches per epoch (default
            len(sampler) // batch_size, or ceil when drop_last=False). drop_last: drop a last partial batch.
        pin_memory: pin host tensors (default: when CUDA is available). device: None (CPU tensors) or a CUDA
            device (copies on per-slot streams). prefetch: batches decoded ahead of the consumer.
        transform: callable(batch) -> batch, applied in the main process after assembly.
        image_dtype: "uint8" (B,H,W,C) or "float32" (B,C,H,W) in [0,1], converted on the device.
        rank, world_size, batching: passed to MixtureSampler.
        reader_factory: picklable callable building a frame reader in each worker (default FrameReader).
        mp_context: "spawn" (default) or "forkserver". shm_dir: where the slot ring lives.

    Example:
        >>> with MixtureLoader([src_a, src_b], dataset_weights=[1, 3], batch_size=32, action_horizon=10) as ld:
        ...     for batch in ld: ...
    """

    WORKER_TIMEOUT_S = 300.0  # no completion at all for this long while work is outstanding → WorkerError
    START_TIMEOUT_S = 120.0
    EPOCH_KEY = "epoch"
    BATCH_KEY = "batch"
    SAMPLER_KEY = "sampler"

    def __init__(self, sources: Sequence[Any], *, dataset_weights: Sequence[float] | None = None,
                 weighting: str = "per_sample", batch_size: int, action_horizon: int | None = None,
                 delta_timestamps: Mapping[str, Sequence[float]] | Sequence[Mapping | None] | None = None,
                 action_keys: Sequence[str] | None = None, num_workers: int = 2, seed: int = 0,
                 shuffle: bool = True, num_batches: int | None = None, drop_last: bool = True,
                 pin_memory: bool | None = None, device: Any = None, prefetch: int = 2,
                 transform: Callable[[dict], dict] | None = None, image_dtype: str = "uint8",
                 rank: int | None = None, world_size: int | None = None, batching: str = "random",
                 reader_factory: Callable[[], Any] | None = None, mp_context: str = "spawn",
                 shm_dir: str = SHM_DIR) -> None:
        if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, Sequence) or not sources:
            raise ConfigError(f"sources should be a non-empty list of LeRobotSource objects, got {sources!r}")
        self.sources = [_as_source(s) for s in sources]
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"duplicate datasets in the mixture: {dup}; each repo_id may appear once "
                              "(raise its weight instead)")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.num_workers = _positive_int(num_workers, "num_workers", 0)
        self.prefetch = _positive_int(prefetch, "prefetch")
        if image_dtype not in IMAGE_DTYPES:
            raise ConfigError(f"image_dtype={image_dtype!r} is not one of {IMAGE_DTYPES}")
        self.image_dtype = image_dtype
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform should be callable or None, got {transform!r}")
        self.transform = transform
        if mp_context not in ("spawn", "forkserver"):
            raise ConfigError(f"mp_context={mp_context!r}: use 'spawn' or 'forkserver' (fork is unsafe with "
                              "decoder and CUDA state)")
        self.mp_context = mp_context
        self.shm_dir = shm_dir
        self.drop_last = bool(drop_last)
        self.device = resolve_device(device)
        self.pin_memory = resolve_pin_memory(pin_memory)
        empty = [getattr(s, "name", str(i)) for i, s in enumerate(self.sources) if len(s) == 0]
        if empty:
            raise ConfigError(f"dataset(s) {empty} have no frames; an empty dataset cannot be part of a mixture "
                              f"(select other episodes or drop it from the mixture)")
        self.delta_timestamps = resolve_delta_timestamps(self.sources, action_horizon=action_horizon,
                                                         delta_timestamps=delta_timestamps, action_keys=action_keys)
        self.planner = BatchPlanner(self.sources, self.delta_timestamps)
        if dataset_weights is not None and len(dataset_weights) != len(self.sources):
            raise ConfigError(f"dataset_weights has {len(dataset_weights)} entries but there are "
                              f"{len(self.sources)} datasets {names}")
        if num_batches is not None:
            num_batches = _positive_int(num_batches, "num_batches")
        probe = MixtureSampler([len(s) for s in self.sources], dataset_weights, weighting=weighting, seed=seed,
                               rank=rank, world_size=world_size, batching=batching, shuffle=shuffle)
        num_samples = None if num_batches is None else num_batches * self.batch_size * probe.world_size
        self.sampler = MixtureSampler([len(s) for s in self.sources], dataset_weights, weighting=weighting,
                                      num_samples=num_samples, seed=seed, rank=probe.rank,
                                      world_size=probe.world_size, batching=batching, shuffle=shuffle,
                                      batch_size=self.batch_size)
        per_epoch = len(self.sampler)
        if num_batches is not None:
            self._num_batches = num_batches
        elif self.drop_last:
            self._num_batches = per_epoch // self.batch_size
        else:
            self._num_batches = -(-per_epoch // self.batch_size)
        if self._num_batches < 1:
            raise ConfigError(f"batch_size={self.batch_size} is larger than the mixture's {per_epoch} draws per "
                              f"epoch on this rank ({dict(zip(names, (len(s) for s in self.sources), strict=False))} frames); "
                              "use a smaller batch_size, drop_last=False or num_batches=...")
        tol = max([float(getattr(s, "tolerance_s", 1e-4)) for s in self.sources])
        self._check_shm()
        self._reader_factory = reader_factory or functools.partial(_default_reader_factory, tol)
        self._epoch = 0
        self._batch = 0
        self._sampler_state = self.sampler.state_dict()
        self._seq = 0  # batches planned so far by this loader (ids of work items)
        self._iterator: weakref.ref[_EpochIterator] | None = None  # weak: no loader↔iterator cycle
        self._res = _Resources()
        self._closed = False
        self._finalizer = weakref.finalize(self, _Resources.release, self._res)

    # ------------------------------------------------------------------ public surface
    @property
    def mixture(self) -> Any:
        return self.sampler.mixture

    @property
    def camera_keys(self) -> list[str]:
        return list(self.planner.camera_keys)

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at its first batch; a no-op when it is the current epoch (keeps a resume)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch should be an integer >= 0, but got epoch={epoch!r}")
        if int(epoch) != self._epoch:
            self._invalidate_iterator()
            self._epoch, self._batch = int(epoch), 0
            self.sampler.load_state_dict(self._sampler_state)
            self.sampler.set_epoch(self._epoch)
            self._sampler_state = self.sampler.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out: epoch, batch within the epoch, sampler state."""
        return {self.EPOCH_KEY: self._epoch, self.BATCH_KEY: self._batch, self.SAMPLER_KEY: dict(self._sampler_state),
                "batch_size": self.batch_size, "num_batches": self._num_batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly after the batch `state` was taken at (any num_workers)."""
        try:
            epoch, batch, sampler = int(state[self.EPOCH_KEY]), int(state[self.BATCH_KEY]), state[self.SAMPLER_KEY]
        except KeyError as exc:
            raise ConfigError(f"MixtureLoader state is missing key {exc}; got keys {sorted(state)}") from exc
        if int(state.get("batch_size", self.batch_size)) != self.batch_size:
            raise ConfigError(f"state was saved with batch_size={state['batch_size']}, this loader has "
                              f"batch_size={self.batch_size}; the sample stream would not continue exactly")
        if not 0 <= batch <= self._num_batches:
            raise ConfigError(f"state batch={batch} is outside [0, {self._num_batches}] batches per epoch")
        self._invalidate_iterator()
        self.sampler.load_state_dict(sampler)
        self._epoch, self._batch = epoch, batch
        self._sampler_state = self.sampler.state_dict()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._closed:
            raise RuntimeError("MixtureLoader is closed")
        self._invalidate_iterator()
        it = _EpochIterator(self)
        self._iterator = weakref.ref(it)
        return it

    def close(self) -> None:
        """Stop the workers, unregister pinned memory, unlink the shared-memory ring (idempotent)."""
        self._closed = True
        self._iterator = None
        self._finalizer()

    def __enter__(self) -> MixtureLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MixtureLoader(datasets={[s.name for s in self.sources]}, batch_size={self.batch_size}, "
                f"num_workers={self.num_workers}, batches/epoch={self._num_batches}, epoch={self._epoch}, "
                f"batch={self._batch})")

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the live decode workers (empty before the first iteration and after close)."""
        pool = self._res.pool
        return [p for p in pool.pids if p is not None] if pool is not None else []

    @property
    def shm_name(self) -> str | None:
        return self._res.ring.name if self._res.ring is not None else None

    # ------------------------------------------------------------------ internals
    def _invalidate_iterator(self) -> None:
        it = self._iterator() if self._iterator is not None else None
        if it is not None:
            it._stale = True
        self._iterator = None

    def _num_slots(self) -> int:
        return self.prefetch + 2  # FFCV: batches_ahead + 2

    def _check_shm(self) -> None:
        """Fail at construction, naming the bytes needed, when `shm_dir` cannot hold the slot ring."""
        from fastmix.loader import slots

        layout = slots.SlotLayout(name="probe", fields=tuple((k, tuple(s), np.dtype(d).str) for k, (s, d) in
                                                             self.planner.fields.items()),
                                  batch_size=self.batch_size, num_slots=self._num_slots(),
                                  num_workers=max(1, self.num_workers), shm_dir=self.shm_dir)
        free = slots.shm_free_bytes(self.shm_dir)
        if free < layout.nbytes:
            raise ConfigError(slots.shm_too_small_message(
                layout.nbytes, free, self.shm_dir,
                f"{layout.num_slots} slots (prefetch={self.prefetch} + 2) x batch_size={self.batch_size}"))

    def _ensure_started(self) -> None:
        res = self._res
        if res.ring is None:
            fields = self.planner.fields
            res.ring = SlotRing(fields, batch_size=self.batch_size, num_slots=self._num_slots(),
                                num_workers=max(1, self.num_workers), shm_dir=self.shm_dir)
            if self.pin_memory and self.device is not None:  # CPU path copies into pinned tensors instead
                try:
                    res.pinned = PinnedRegion(res.ring.buffer())
                except Exception as exc:  # noqa: BLE001 - fall back to pageable host memory
                    import warnings

                    warnings.warn(f"could not pin the shared-memory slots ({exc}); copies will be synchronous",
                                  RuntimeWarning, stacklevel=3)
            if self.device is not None:
                res.stage = DeviceStage(self.device, self._num_slots(), self.planner.camera_keys, self.image_dtype)
        if self.num_workers == 0:
            if res.reader is None:
                res.reader = self._reader_factory()
        elif res.pool is None:
            res.pool = WorkerPool(self.num_workers, res.ring.layout, res.ring.progress, self._reader_factory,
                                  context=self.mp_context, start_timeout=self.START_TIMEOUT_S)

    def _drain(self) -> None:
        """Wait (bounded) for work items of an abandoned iterator; they write into slots about to be reused."""
        pool = self._res.pool
        if pool is None or pool.outstanding == 0:
            return
        deadline = time.monotonic() + self.WORKER_TIMEOUT_S
        try:
            while pool.outstanding:
                if time.monotonic() > deadline:
                    raise WorkerError(f"decode workers made no progress for {self.WORKER_TIMEOUT_S:.0f}s while "
                                      f"draining: {pool.describe_outstanding()}")
                pool.poll(_POLL_S)
        except BaseException:
            self._res.stop_workers()
            raise


class _EpochIterator:
    """One pass over the rest of the current epoch (FFCV EpochIterator, single-threaded)."""

    def __init__(self, loader: MixtureLoader) -> None:
        self._loader = loader
        self._stale = False
        self._done = False
        loader._drain()
        loader._ensure_started()
        res = loader._res
        self._ring: SlotRing = res.ring  # type: ignore[assignment]
        self._stage: DeviceStage | None = res.stage
        if self._stage is not None:
            self._stage.close()  # copies launched by an abandoned iterator must finish before slots are reused
        self._exec: Any = res.pool if loader.num_workers > 0 else _Inline(self._ring, res.reader)
        self._free: deque[int] = deque(range(self._ring.num_slots))
        self._reclaim: deque[int] = deque()  # slots whose device copies may still be running
        self._inflight: dict[int, _InFlight] = {}
        self._order: deque[int] = deque()  # seqs in delivery order
        loader.sampler.load_state_dict(loader._sampler_state)
        self._planned = loader._batch  # batches of this epoch planned so far
        self._max_inflight = 1 if loader.num_workers == 0 else loader.prefetch
        self._last_progress = time.monotonic()

    def __iter__(self) -> _EpochIterator:
        return self

    # ------------------------------------------------------------------ planning / dispatch
    def _take_slot(self) -> int | None:
        while self._reclaim and (self._stage is None or self._stage.slot_free(self._reclaim[0])):
            self._free.append(self._reclaim.popleft())
        if not self._free and self._reclaim:
            slot = self._reclaim.popleft()
            self._stage.wait_slot(slot)  # type: ignore[union-attr]
            self._free.append(slot)
        return self._free.popleft() if self._free else None

    def _dispatch(self) -> None:
        L = self._loader
        while self._planned < L._num_batches and len(self._inflight) < self._max_inflight:
            slot = self._take_slot()
            if slot is None:
                return
            n = L.batch_size
            if self._planned == L._num_batches - 1 and not L.drop_last and L._num_batches * n > len(L.sampler):
                n = len(L.sampler) - (L._num_batches - 1) * L.batch_size  # last partial batch
            g = L.sampler.next_indices(n)
            seq = L._seq
            L._seq += 1
            plan = L.planner.plan(seq, g, self._ring.views(slot))
            pieces = split_work(plan.requests, max(1, L.num_workers))
            pending: set[int] = set()
            nw = max(1, L.num_workers)
            item = _InFlight(plan, slot, pending, L.sampler.state_dict())
            self._inflight[seq] = item
            self._order.append(seq)
            self._planned += 1
            for j, piece in enumerate(pieces):
                w = (j + seq) % nw
                pending.add(w)
                self._exec.submit(w, seq, slot, piece)

    def _complete(self, timeout: float) -> None:
        for seq, w in self._exec.poll(timeout):
            item = self._inflight.get(seq)
            if item is not None:
                item.pending.discard(w)
            self._last_progress = time.monotonic()
        if self._exec.outstanding and time.monotonic() - self._last_progress > self._loader.WORKER_TIMEOUT_S:
            raise WorkerError(f"decode workers made no progress for {self._loader.WORKER_TIMEOUT_S:.0f}s: "
                              f"{self._exec.describe_outstanding()}")

    def _stage_ready(self) -> None:
        """CUDA: start the device copy of the next batch as soon as it is decoded (overlaps the training step)."""
        if self._stage is None or not self._order:
            return
        item = self._inflight[self._order[0]]
        if not item.pending and item.staged is None:
            item.staged = self._stage.copy(item.slot, self._ring.views(item.slot), item.plan.size)

    # ------------------------------------------------------------------ delivery
    def __next__(self) -> dict[str, Any]:
        L = self._loader
        if self._stale:
            raise RuntimeError("this MixtureLoader iterator was superseded (a newer iter(), set_epoch, "
                               "load_state_dict or close); start a new `for batch in loader`")
        if self._done:
            raise StopIteration
        if L._batch >= L._num_batches:
            self._finish_epoch()
            raise StopIteration
        try:
            self._dispatch()
            seq = self._order[0]
            item = self._inflight[seq]
            while item.pending:
                self._complete(_POLL_S)
                self._dispatch()
            batch = self._deliver(item)
            self._order.popleft()
            del self._inflight[seq]
            L._batch += 1
            L._sampler_state = item.sampler_state
            if L._batch >= L._num_batches:
                self._finish_epoch()
            else:
                self._dispatch()  # keep the workers busy while the consumer trains
                if self._stage is not None and self._order:
                    self._complete(0.0)
                    self._stage_ready()
        except BaseException:
            # worker error/death, KeyboardInterrupt, bug: stop workers now (nothing left behind); the loader
            # restarts them on the next iteration from the last delivered batch
            self._done = True
            L._res.stop_workers()
            raise
        return L.transform(batch) if L.transform is not None else batch

    def _deliver(self, item: _InFlight) -> dict[str, Any]:
        L = self._loader
        views = self._ring.views(item.slot)
        n = item.plan.size
        if self._stage is not None:
            out = item.staged if item.staged is not None else self._stage.copy(item.slot, views, n)
            out = self._stage.hand_out(item.slot, out)
            self._reclaim.append(item.slot)
        else:
            out = host_batch(views, n, L.planner.camera_keys, pin=L.pin_memory, image_dtype=L.image_dtype)
            self._free.append(item.slot)
        batch: dict[str, Any] = dict(out)
        batch["task"] = list(item.plan.tasks)
        batch["prompt"] = list(item.plan.tasks)
        return batch

    def _finish_epoch(self) -> None:
        L = self._loader
        self._done = True
        if L._batch >= L._num_batches:
            L.sampler.load_state_dict(L._sampler_state)
            L._epoch += 1
            L._batch = 0
            L.sampler.set_epoch(L._epoch)
            L._sampler_state = L.sampler.state_dict()

    def __len__(self) -> int:
        return self._loader._num_batches - self._loader._batch


__all__ = ["MixtureLoader"]
