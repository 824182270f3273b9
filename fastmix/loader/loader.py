"""`MixtureLoader`: batches of a weighted mixture of LeRobot datasets, decoded by worker processes into
shared-memory slots, optionally pinned and copied to a CUDA device on per-slot streams.

Flow of one batch (main process): `MixtureSampler.next_indices(B)` → `IndexMap.to_local` → `BatchPlanner`
(low-dim gather for the whole batch, written into a slot; frame requests sorted by file and timestamp) →
split into per-worker work items → workers decode into the same slot → in-order delivery (copied out of the
slot on CPU, or copied to the device on the slot's stream) → `transform` → hand-out (pipeline.py). With CPU
output everything before `transform` runs on a background thread: `next()` pops a ready batch.

Position. One `Cursor` (cursor.py) holds the consumer's position: epoch, batches handed out, sampler state.
Only a hand-out advances it, so an error before a batch is handed out — a dead, failing or stalled worker, an
exception in `transform`, Ctrl-C — leaves it on that batch: iterating again continues with exactly the batch
that was not delivered. `state_dict()` is this position (never the prefetch frontier) plus a fingerprint of
the mixture, so a resume — with any `num_workers` or world size — continues exactly, and a state of another
mixture is refused. The sample stream is planned in the main process only: identical for any `num_workers`.

Lifetime: workers and the ring are started at the first iteration and kept across epochs. An error that
ends an iteration (worker death, stall or error, a planning error, KeyboardInterrupt) stops the workers and
releases the ring at once; iterating again starts them afresh. `close()`, the context manager, garbage
collection and interpreter exit release everything; an iterator of a closed loader raises at once. Segments
left by a killed process group (dead creator pid) are removed when a loader is constructed.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastmix.errors import ConfigError
from fastmix.loader import slots
from fastmix.loader.cursor import Cursor
from fastmix.loader.device import (
    IMAGE_DTYPES,
    DeviceStage,
    PinnedRegion,
    float_table,
    resolve_device,
    resolve_pin_memory,
)
from fastmix.loader.lending import SlotLender
from fastmix.loader.pipeline import BatchPipeline, InlineExecutor, Producer, drain
from fastmix.loader.plan import BatchPlanner, resolve_delta_timestamps
from fastmix.loader.slots import SHM_DIR, SlotRing
from fastmix.loader.worker_main import (
    default_reader_factory,
    floating_reader_factory,
    resizing_reader_factory,
)
from fastmix.loader.workers import WorkerPool
from fastmix.core.sampler import MixtureSampler, resolve_rank_world_size
from fastmix.sources.compat import check_mixture

# zero-copy: how many batches the consumer side may hold (its current batch, the one being handed to it, ones
# queued by a prefetching wrapper) before further batches are copied: LEND_BYTES worth of slots, within bounds
LEND_SLOTS_BOUNDS = (4, 8)
LEND_BYTES = 256 << 20
MAX_OPEN_FILES_BOUNDS = (16, 128)  # default container cache per worker: cameras x batch rows, clamped


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} should be an integer >= {minimum}, but got {name}={value!r}")
    return int(value)


def _positive_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} should be a finite number of seconds > 0, but got {name}={value!r}")
    return float(value)


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


def _check_shm_dir(shm_dir: Any) -> str:
    if not isinstance(shm_dir, (str, os.PathLike)):
        raise ConfigError(f"shm_dir should be a directory path, got shm_dir={shm_dir!r}")
    path = os.fspath(shm_dir)
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"shm_dir={path!r} {what}: the loader keeps its batch slots there. Create it, or pass "
                          f"an existing tmpfs directory (default {SHM_DIR!r}).")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"shm_dir={path!r} is not writable by this user: the loader creates its batch slots "
                          f"there. Fix its permissions or pass another directory (default {SHM_DIR!r}).")
    return path


def _image_size(size: Any) -> tuple[int, int] | None:
    """None, or (height, width) as two positive ints."""
    if size is None:
        return None
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ConfigError(f"resize_images should be (height, width) or None, got resize_images={size!r}") from None
    return _positive_int(h, "resize_images[0]"), _positive_int(w, "resize_images[1]")


def default_max_open_files(num_cameras: int, batch_size: int) -> int:
    """Open containers a worker keeps: every file one batch can touch (cameras x rows), so a batch's files
    stay open for the next when the mixture has few files, clamped to `MAX_OPEN_FILES_BOUNDS`."""
    lo, hi = MAX_OPEN_FILES_BOUNDS
    return int(min(hi, max(lo, num_cameras * batch_size)))


class _Resources:
    """What must be released: the ring, its pinned registration, the worker pool, the in-process reader.
    Holds no reference to the loader, so a weakref.finalize on the loader can release it."""

    def __init__(self) -> None:
        self.ring: SlotRing | None = None
        self.pinned: PinnedRegion | None = None
        self.stage: DeviceStage | None = None
        self.pool: WorkerPool | None = None
        self.reader: Any = None
        self.producer: Producer | None = None
        self.lender: SlotLender | None = None

    def stop_producer(self) -> None:
        """Stop the pipeline thread; if it does not stop in time (a step stuck for 30 s), release everything
        (workers, ring) so that no new pass shares slots or the lender with it."""
        producer, self.producer = self.producer, None
        if producer is not None and not producer.stop():
            self.release()

    def release(self) -> None:
        """Stop the pipeline thread and the workers, close the reader, wait for device copies, unregister and
        unlink the ring."""
        producer, self.producer = self.producer, None
        ended = producer.stop(timeout=2.0) if producer is not None else True
        pool, self.pool = self.pool, None
        try:
            if pool is not None:
                pool.close()  # also unblocks a thread stuck sending to a stopped worker
            if not ended:
                producer.stop(timeout=10.0)  # type: ignore[union-attr]
        finally:
            reader, self.reader = self.reader, None
            stage, self.stage = self.stage, None
            self.lender = None  # lent tensors keep the old mapping alive; a new ring starts with none lent
            pinned, self.pinned = self.pinned, None
            ring, self.ring = self.ring, None
            try:
                if reader is not None:
                    reader.close()
            finally:
                try:
                    if stage is not None:
                        stage.close()
                finally:
                    try:
                        if pinned is not None:
                            pinned.close()
                    finally:
                        if ring is not None:
                            ring.close()


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
        image_dtype: "uint8" (B,H,W,C) or "float32" (B,C,H,W) in [0,1] (torch's `x.to(float32) / 255`): on CPU
            the decode workers convert into float32 slots; with a device, converted there.
        rank, world_size, batching: passed to MixtureSampler.
        reader_factory: picklable callable building a frame reader in each worker (default FrameReader).
        strict_fps: refuse datasets of different fps (default: allowed with a MixedFpsWarning; chunks are built
            per dataset from its own fps, as openpi does).
        resize_images: (height, width): decode workers resize every camera frame to it with openpi's
            `resize_with_pad` (PIL bilinear, zero padding) before it reaches the slot; None: native size.
        max_open_files: open containers each worker's default reader keeps (default: cameras x batch_size,
            clamped to [16, 128]); ignored with a custom `reader_factory`.
        worker_timeout_s: a worker with work that makes no progress for this long (stopped, hung in a decoder)
            is killed and reported with its pid and the file it was decoding (default 30 s).
        mp_context: "spawn" (default) or "forkserver". shm_dir: an existing directory where the slot ring
            lives (default /dev/shm).
        zero_copy: CPU batches are tensors over the shared-memory slot itself (no copy); a slot is reused only
            once every tensor of its batch is gone; while the consumer side holds 4..8 batches (256 MiB of
            slots) the next ones are copied. Only camera arrays are lent (low-dim fields are copied, a few
            KB): keeping any slice of a lent image keeps its slot lent and the ring's shared memory mapped,
            even after close(), until it is dropped. Default: on for CPU output without pinning; False copies
            every batch out.

    Example:
        >>> with MixtureLoader([src_a, src_b], dataset_weights=[1, 3], batch_size=32, action_horizon=10) as ld:
        ...     for batch in ld: ...
    """

    START_TIMEOUT_S = 120.0
    EPOCH_KEY = "epoch"
    BATCH_KEY = "batch"
    SAMPLER_KEY = "sampler"
    MIXTURE_KEY = "mixture"

    def __init__(self, sources: Sequence[Any], *, dataset_weights: Sequence[float] | None = None,
                 weighting: str = "per_sample", batch_size: int, action_horizon: int | None = None,
                 delta_timestamps: Mapping[str, Sequence[float]] | Sequence[Mapping | None] | None = None,
                 action_keys: Sequence[str] | None = None, num_workers: int = 2, seed: int = 0,
                 shuffle: bool = True, num_batches: int | None = None, drop_last: bool = True,
                 pin_memory: bool | None = None, device: Any = None, prefetch: int = 2,
                 transform: Callable[[dict], dict] | None = None, image_dtype: str = "uint8",
                 rank: int | None = None, world_size: int | None = None, batching: str = "random",
                 reader_factory: Callable[[], Any] | None = None, max_open_files: int | None = None,
                 worker_timeout_s: float = 30.0, mp_context: str = "spawn", shm_dir: str = SHM_DIR,
                 resize_images: tuple[int, int] | None = None, strict_fps: bool = False,
                 zero_copy: bool | None = None) -> None:
        if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, Sequence) or not sources:
            raise ConfigError(f"sources should be a non-empty list of LeRobotSource objects, got {sources!r}")
        self.sources = [_as_source(s) for s in sources]
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"duplicate datasets in the mixture: {dup}; each repo_id may appear once "
                              "(raise its weight instead)")
        check_mixture(self.sources, strict_fps=strict_fps)  # one dataset under two names; the fps rule
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.num_workers = _positive_int(num_workers, "num_workers", 0)
        self.prefetch = _positive_int(prefetch, "prefetch")
        self.worker_timeout_s = _positive_seconds(worker_timeout_s, "worker_timeout_s")
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
        self.shm_dir = _check_shm_dir(shm_dir)
        self.drop_last = bool(drop_last)
        self.device = resolve_device(device)
        self.pin_memory = resolve_pin_memory(pin_memory)
        empty = [getattr(s, "name", str(i)) for i, s in enumerate(self.sources) if len(s) == 0]
        if empty:
            raise ConfigError(f"dataset(s) {empty} have no frames; an empty dataset cannot be part of a mixture "
                              f"(select other episodes or drop it from the mixture)")
        self.delta_timestamps = resolve_delta_timestamps(self.sources, action_horizon=action_horizon,
                                                         delta_timestamps=delta_timestamps, action_keys=action_keys)
        self.resize_images = _image_size(resize_images)
        self.planner = BatchPlanner(self.sources, self.delta_timestamps, self.resize_images)
        if dataset_weights is not None and len(dataset_weights) != len(self.sources):
            raise ConfigError(f"dataset_weights has {len(dataset_weights)} entries but there are "
                              f"{len(self.sources)} datasets {names}")
        if num_batches is not None:
            num_batches = _positive_int(num_batches, "num_batches")
        rank, world_size = resolve_rank_world_size(rank, world_size)
        num_samples = None if num_batches is None else num_batches * self.batch_size * world_size
        self.sampler = MixtureSampler([len(s) for s in self.sources], dataset_weights, weighting=weighting,
                                      num_samples=num_samples, seed=seed, rank=rank, world_size=world_size,
                                      batching=batching, shuffle=shuffle, batch_size=self.batch_size)
        per_epoch = len(self.sampler)
        if num_batches is not None:
            self._num_batches = num_batches
        elif self.drop_last:
            self._num_batches = per_epoch // self.batch_size
        else:
            self._num_batches = -(-per_epoch // self.batch_size)
        if self._num_batches < 1:
            raise ConfigError(f"batch_size={self.batch_size} is larger than the mixture's {per_epoch} draws per "
                              f"epoch on this rank ({dict(zip(names, (len(s) for s in self.sources), strict=True))} "
                              "frames); use a smaller batch_size, drop_last=False or num_batches=...")
        self._last_size = self.batch_size
        if not self.drop_last and self._num_batches * self.batch_size > per_epoch:
            self._last_size = per_epoch - (self._num_batches - 1) * self.batch_size
        if max_open_files is None:
            self.max_open_files = default_max_open_files(len(self.planner.camera_keys), self.batch_size)
        else:
            self.max_open_files = _positive_int(max_open_files, "max_open_files")
        if zero_copy and (self.device is not None or self.pin_memory):
            raise ConfigError("zero_copy=True applies to CPU batches without pin_memory (device=None, "
                              "pin_memory=False); device and pinned batches are copies by nature")
        slots.remove_stale_segments(self.shm_dir)  # a killed process group's ring must not eat the space
        float_slots = self.image_dtype == "float32" and self.device is None
        want_lend = self._lend_slots(float_slots) \
            if (zero_copy is not False and self.device is None and not self.pin_memory) else 0
        self._float_slots, self._lend = self._plan_ring(float_slots=float_slots, lend=want_lend)
        tol = max([float(getattr(s, "tolerance_s", 1e-4)) for s in self.sources])
        self._reader_factory = reader_factory or default_reader_factory(self.max_open_files, tol)
        if self.resize_images is not None:
            native = {(s.name, k): tuple(int(d) for d in s.camera_shape(k)) for s in self.sources
                      for k in self.planner.camera_keys}
            self._reader_factory = resizing_reader_factory(self._reader_factory, self.resize_images, native)
        if self._float_slots:
            self._reader_factory = floating_reader_factory(self._reader_factory, float_table())
        self._cursor = Cursor(self._num_batches, self.sampler.epoch_state)
        self._seqs = itertools.count()  # ids of work items, unique over the loader's life
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
        return self._cursor.epoch

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at its first batch; a no-op when it is the current epoch (keeps a resume)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch should be an integer >= 0, but got epoch={epoch!r}")
        if int(epoch) != self._cursor.epoch:
            self._invalidate_iterator()
            self._cursor.start_epoch(int(epoch))

    def fingerprint(self) -> dict[str, Any]:
        """What a saved position depends on: datasets and their sizes, normalized weights, weighting,
        shuffle, batching, batch size and seed (not num_workers, world size or rank: a resume may change those)."""
        m = self.sampler.mixture
        return {"datasets": [s.name for s in self.sources], "sizes": [int(v) for v in m.sizes],
                "weights": (m.weights / m.weights.sum()).tolist(), "weighting": m.weighting,
                "shuffle": self.sampler.shuffle, "batching": self.sampler.batching, "batch_size": self.batch_size,
                "seed": self.sampler.seed}

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out (epoch, batch within the epoch, sampler state) and the
        mixture's fingerprint."""
        c = self._cursor
        return {self.EPOCH_KEY: c.epoch, self.BATCH_KEY: c.batch, self.SAMPLER_KEY: dict(c.sampler_state),
                "batch_size": self.batch_size, "num_batches": self._num_batches, self.MIXTURE_KEY: self.fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly after the batch `state` was taken at (any num_workers or world size). A state of
        another mixture, or a malformed one, raises ConfigError naming what differs or the key at fault, and
        changes nothing."""
        if not isinstance(state, Mapping):
            raise ConfigError(f"MixtureLoader state should be a dict from MixtureLoader.state_dict(), got "
                              f"{type(state).__name__}")
        for k in (self.EPOCH_KEY, self.BATCH_KEY, self.SAMPLER_KEY):
            if k not in state:
                raise ConfigError(f"MixtureLoader state is missing key {k!r}; got keys {sorted(state)}")
        epoch, batch, sampler_state = state[self.EPOCH_KEY], state[self.BATCH_KEY], state[self.SAMPLER_KEY]
        for k, v in ((self.EPOCH_KEY, epoch), (self.BATCH_KEY, batch)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"MixtureLoader state[{k!r}] should be an integer >= 0, got {v!r}")
        epoch, batch = int(epoch), int(batch)
        if not isinstance(sampler_state, Mapping):
            raise ConfigError(f"MixtureLoader state['sampler'] should be a dict (the sampler's state), got "
                              f"{type(sampler_state).__name__}")
        self._check_fingerprint(state)
        where = "MixtureLoader state['sampler']"
        if sampler_state.get("epoch") != epoch:
            raise ConfigError(f"{where}['epoch']={sampler_state.get('epoch')!r} disagrees with "
                              f"state['epoch']={epoch}: the state is inconsistent")
        if sampler_state.get("seed") != self.sampler.seed:
            raise ConfigError(f"{where}['seed']={sampler_state.get('seed')!r} differs from this loader's "
                              f"seed={self.sampler.seed}; construct the loader with the seed the state was saved with")
        probe = copy.copy(self.sampler)  # validate (and convert world size) without touching the planning sampler
        probe.load_state_dict(dict(sampler_state), where=where)
        same_world = sampler_state.get("world_size") == self.sampler.world_size
        if not same_world:  # the rank-local position changed: count batches from it
            batch = min(self._num_batches, probe.position // self.batch_size)
        if not 0 <= batch <= self._num_batches:
            raise ConfigError(f"MixtureLoader state['batch']={batch} is outside [0, {self._num_batches}] batches "
                              "per epoch of this loader")
        self._invalidate_iterator()
        self._cursor.seek(epoch, batch, probe.state_dict())

    def _check_fingerprint(self, state: Mapping[str, Any]) -> None:
        saved = state.get(self.MIXTURE_KEY)
        mine = self.fingerprint()
        if saved is None:
            if "batch_size" in state and state["batch_size"] != self.batch_size:
                raise ConfigError(f"state was saved with batch_size={state['batch_size']}, this loader has "
                                  f"batch_size={self.batch_size}; the sample stream would not continue exactly")
            warnings.warn("MixtureLoader state has no 'mixture' fingerprint (saved by an older fastmix): cannot "
                          "check that it belongs to this mixture", RuntimeWarning, stacklevel=3)
            return
        if not isinstance(saved, Mapping):
            raise ConfigError(f"MixtureLoader state['mixture'] should be a dict (the mixture fingerprint), got "
                              f"{type(saved).__name__}")
        rows = []
        for k, mine_v in mine.items():
            if k not in saved:
                rows.append(f"  {k}: missing from the state; this loader has {k}={mine_v!r}")
                continue
            v = saved[k]
            if k == "weights":
                try:
                    same = np.shape(v) == np.shape(mine_v) and np.allclose(v, mine_v, rtol=1e-9, atol=1e-12)
                except (TypeError, ValueError):
                    same = False
            else:
                same = v == mine_v
            if not same:
                rows.append(f"  {k}: the state has {k}={v!r}; this loader has {k}={mine_v!r}")
        if rows:
            raise ConfigError("MixtureLoader state was saved by another mixture (resuming would continue another "
                              "sample stream):\n" + "\n".join(rows) + "\nConstruct the loader with the "
                              "configuration the state was saved with, or start without the state.")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._closed:
            raise RuntimeError("MixtureLoader is closed; create a new loader (and load_state_dict to resume)")
        self._invalidate_iterator()
        it = _EpochIterator(self)
        self._iterator = weakref.ref(it)
        return it

    def close(self) -> None:
        """Stop the workers, unregister pinned memory, unlink the shared-memory ring (idempotent). A live
        iterator raises at its next `next()`."""
        self._closed = True
        self._invalidate_iterator()
        self._finalizer()

    def __enter__(self) -> MixtureLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MixtureLoader(datasets={[s.name for s in self.sources]}, batch_size={self.batch_size}, "
                f"num_workers={self.num_workers}, batches/epoch={self._num_batches}, epoch={self._cursor.epoch}, "
                f"batch={self._cursor.batch})")

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the live decode workers (empty before the first iteration, after an error and after close)."""
        pool = self._res.pool
        return [p for p in pool.pids if p is not None] if pool is not None else []

    @property
    def shm_name(self) -> str | None:
        """Name of the slot ring's segment in `shm_dir` (None while no ring is allocated)."""
        return self._res.ring.name if self._res.ring is not None else None

    # ------------------------------------------------------------------ internals
    def _invalidate_iterator(self) -> None:
        it = self._iterator() if self._iterator is not None else None
        if it is not None:
            it._stale = True
        self._iterator = None
        self._res.stop_producer()

    def _num_slots(self) -> int:
        return self.prefetch + 2 + self._lend  # FFCV: batches_ahead + 2, plus the slots that may be lent

    def _slot_fields(self, float_slots: bool | None = None) -> dict[str, tuple[tuple[int, ...], Any]]:
        """{key: (shape per sample, dtype)} of a slot: the planner's fields, cameras float32 (C, H, W) when the
        workers convert."""
        fields = dict(self.planner.fields)
        if self._float_slots if float_slots is None else float_slots:
            for key in self.planner.camera_keys:
                h, w, c = fields[key][0]
                fields[key] = ((c, h, w), np.dtype(np.float32))
        return fields

    def _lend_slots(self, float_slots: bool) -> int:
        """Slots that may be lent: `LEND_BYTES` worth of slots, clamped to `LEND_SLOTS_BOUNDS`."""
        lo, hi = LEND_SLOTS_BOUNDS
        return int(min(hi, max(lo, LEND_BYTES // self._layout(float_slots, 0).slot_nbytes)))

    def _layout(self, float_slots: bool, lend: int) -> slots.SlotLayout:
        """The ring's layout with float32 or uint8 camera slots and `lend` lendable slots (a probe: no segment)."""
        return slots.SlotLayout(name="probe", fields=tuple((k, tuple(s), np.dtype(d).str) for k, (s, d) in
                                                           self._slot_fields(float_slots).items()),
                                batch_size=self.batch_size, num_slots=self.prefetch + 2 + lend,
                                num_workers=max(1, self.num_workers), shm_dir=self.shm_dir)

    def _ring_bytes(self, float_slots: bool, lend: int) -> int:
        return self._layout(float_slots, lend).nbytes

    def _plan_ring(self, *, float_slots: bool, lend: int) -> tuple[bool, int]:
        """(float slots, slots that may be lent) that `shm_dir` can hold, degrading in this order when it is
        small: no lending, then uint8 slots (float conversion in the main process). The faster rings may take
        at most half of the free space (other loaders, e.g. other ranks, share it); the plain ring all of it.
        Warns when it degrades; fails at construction, naming the bytes needed, when even the plain ring does
        not fit."""
        free = slots.shm_free_bytes(self.shm_dir)
        # float32 asked for: uint8 slots are only ever copied out (converting), never lent as uint8
        options = [(True, lend), (True, 0), (False, 0)] if float_slots else [(False, lend), (False, 0)]
        for f, n in dict.fromkeys(options):
            if self._ring_bytes(f, n) <= (free if (f, n) == (False, 0) else free // 2):
                if (f, n) != (float_slots, lend):
                    lost = [what for what, on in (("zero-copy hand-out", n < lend),
                                                  ("float conversion in the workers", f < float_slots)) if on]
                    warnings.warn(f"{self.shm_dir} has {free} bytes free, too little for the faster ring "
                                  f"({self._ring_bytes(float_slots, lend)} bytes); running without "
                                  f"{' and '.join(lost)}", RuntimeWarning, stacklevel=3)
                return f, n
        needed = self._ring_bytes(False, 0)
        raise ConfigError(slots.shm_too_small_message(
            needed, free, self.shm_dir, f"{self.prefetch + 2} slots (prefetch={self.prefetch} + 2) x "
                                        f"batch_size={self.batch_size}"))

    def _ensure_started(self) -> None:
        res = self._res
        if res.ring is None:
            res.ring = SlotRing(self._slot_fields(), batch_size=self.batch_size, num_slots=self._num_slots(),
                                num_workers=max(1, self.num_workers), shm_dir=self.shm_dir)
            res.lender = SlotLender(self._lend) if self._lend else None
            if self.pin_memory and self.device is not None:  # CPU path copies into pinned tensors instead
                try:
                    res.pinned = PinnedRegion(res.ring.buffer())
                except Exception as exc:  # noqa: BLE001 - fall back to pageable host memory
                    warnings.warn(f"could not pin the shared-memory slots ({exc}); copies will be synchronous",
                                  RuntimeWarning, stacklevel=4)
            if self.device is not None:
                res.stage = DeviceStage(self.device, self._num_slots(), self.planner.camera_keys, self.image_dtype)
        if self.num_workers == 0:
            if res.reader is None:
                res.reader = self._reader_factory()
        elif res.pool is None:
            res.pool = WorkerPool(self.num_workers, res.ring.layout, res.ring.progress, self._reader_factory,
                                  context=self.mp_context, start_timeout=self.START_TIMEOUT_S,
                                  stall_timeout_s=self.worker_timeout_s)

    def _start_pass(self) -> BatchPipeline:
        """Workers and ring ready (after the work of an abandoned pass is drained), a pipeline from the cursor."""
        self._res.stop_producer()
        if self._res.pool is not None:
            drain(self._res.pool)
        self._ensure_started()
        res = self._res
        assert res.ring is not None
        executor = res.pool if self.num_workers > 0 else InlineExecutor(res.ring, res.reader)
        c = self._cursor
        return BatchPipeline(sampler=self.sampler, planner=self.planner, ring=res.ring, stage=res.stage,
                             executor=executor, num_workers=self.num_workers, batch_size=self.batch_size,
                             num_batches=self._num_batches, last_size=self._last_size, start_batch=c.batch,
                             sampler_state=c.sampler_state, max_inflight=1 if self.num_workers == 0 else self.prefetch,
                             seqs=self._seqs, pin_memory=self.pin_memory, image_dtype=self.image_dtype,
                             lender=res.lender)

    def _fail(self) -> None:
        """The current pass cannot continue: stop the workers and release the ring now (not at close());
        the next iteration starts afresh from the cursor."""
        self._res.release()


class _EpochIterator:
    """Hands out the rest of the current epoch; the only code that advances the loader's cursor.

    CPU output: the pass runs on a `Producer` thread and `next()` pops a ready batch (then `transform`).
    CUDA output: the pass runs in `next()` (device copies are issued and handed out on the consumer's stream).
    """

    def __init__(self, loader: MixtureLoader) -> None:
        self._loader = loader
        self._stale = False
        self._done = False
        self._left = loader._cursor.remaining  # batches this pass hands out
        self._producer: Producer | None = None
        try:
            self._pipeline = loader._start_pass()
            if loader.device is None:
                self._producer = loader._res.producer = Producer(self._pipeline, self._left)
                weakref.finalize(self, self._producer.stop)  # an abandoned iterator stops its thread
        except BaseException:
            loader._fail()
            raise

    def __iter__(self) -> _EpochIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        L = self._loader
        if L._closed:
            raise RuntimeError("this MixtureLoader was closed (its workers and shared memory are released); "
                               "create a new loader and load_state_dict(state) to continue")
        if self._stale:
            raise RuntimeError("this MixtureLoader iterator was superseded (a newer iter(), set_epoch or "
                               "load_state_dict); start a new `for batch in loader`")
        if self._done or self._left <= 0:
            self._done = True
            raise StopIteration
        try:
            if self._producer is not None:
                batch, sampler_state = self._producer.get()
            else:
                batch, sampler_state = self._pipeline.next_batch()  # type: ignore[misc]
        except BaseException:
            # worker death/stall/error, planning error, KeyboardInterrupt: nothing was handed out and the
            # cursor did not move; release workers and ring now, the next iteration restarts from the cursor
            self._done = True
            L._fail()
            raise
        if L.transform is not None:
            try:
                batch = L.transform(batch)
            except Exception as exc:
                self._done = True  # workers stay; the next iteration drains this pass's work and retries
                if self._producer is not None and L._res.producer is self._producer:
                    L._res.stop_producer()
                c = L._cursor
                exc.add_note(f"(raised by MixtureLoader's transform on batch {c.batch} of epoch {c.epoch}; that "
                             "batch was not handed out: iterating again continues with it)")
                raise
            except BaseException:
                self._done = True
                L._fail()
                raise
        L._cursor.advance(sampler_state)
        self._left -= 1
        return batch

    def __len__(self) -> int:
        return max(0, self._left) if not self._done else 0


__all__ = ["MixtureLoader", "default_max_open_files"]
