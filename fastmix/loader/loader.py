"""`MixtureLoader`: batches of a weighted mixture of LeRobot datasets, decoded by worker processes into
shared-memory slots, optionally pinned and copied to a CUDA device on per-slot streams.

Flow of one batch: `MixtureSampler.next_indices(B)` → `IndexMap.to_local` → `BatchPlanner` (low-dim gather for
the whole batch, written into a slot; frame requests sorted by file and timestamp) → per-worker work items →
workers decode into the same slot → in-order delivery (lent, copied out, or copied to the device on the slot's
stream) → `transform` → hand-out. `stream.BatchStream` runs the passes (on one thread for CPU output).

Position. The `Cursor` (cursor.py) holds the consumer's position; each batch travels with the position after
it, and only a hand-out records that position, so an error before a batch is handed out — a dead, failing or
stalled worker, an exception in `transform`, Ctrl-C — leaves the cursor on that batch: iterating again continues
with exactly the batch that was not delivered. `state_dict()` is this position plus a fingerprint of the mixture
(state.py), so a resume — with any `num_workers` or world size — continues exactly. The sample stream is
planned in the main process only: identical for any `num_workers`.

Lifetime: workers and the ring are started by the first stream and kept across epochs. An error that ends a
stream releases them at once; the next stream starts them afresh. `close()`, the context manager, garbage
collection and interpreter exit release everything (only in the process that created the loader: a plain
`os.fork()` child that exits normally leaves the parent's workers and ring alone; lent views kept after close
hold only their own pages); an iterator of a closed loader raises at once. Segments left by a killed process
group (dead creator pid) are removed when a loader is constructed.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from fastmix._args import check_int, check_optional_int
from fastmix.core.episodes import EpisodeRuns
from fastmix.core.filters import FrameFilter
from fastmix.core.sampler import MixtureSampler, resolve_rank_world_size
from fastmix.errors import ConfigError
from fastmix.kernels.pixels import unit_table
from fastmix.loader import slots, state
from fastmix.loader.cursor import Cursor, Position
from fastmix.loader.device import IMAGE_DTYPES, DeviceStage, PinnedRegion, resolve_device, resolve_pin_memory
from fastmix.loader.groups import grouped_readers, grouped_setup, resolve_groups
from fastmix.loader.lending import SlotLender
from fastmix.loader.options import MemoryOptions, WorkerOptions, as_source, default_max_open_files, image_size
from fastmix.loader.pipeline import BatchPipeline, InlineExecutor, drain
from fastmix.loader.plan import BatchPlanner, resolve_delta_timestamps
from fastmix.loader.readers import default_reader_factory, floating_reader_factory, resizing_reader_factory
from fastmix.loader.resources import Resources, RingSizer, slot_fields
from fastmix.loader.slots import SlotRing
from fastmix.loader.stream import BatchStream
from fastmix.loader.workers import WorkerPool
from fastmix.sources.compat import check_distinct, check_mixture


class MixtureLoader:
    """Weighted multi-dataset batch loader (drop-in for ConcatDataset + WeightedRandomSampler + DataLoader).

    Args:
        sources: LeRobotSource objects (or dataset roots), one per dataset of the mixture.
        dataset_weights: (K,) weights (default ones); semantics per `weighting` ("per_sample": like the
            reference's per-sample weights list; "per_dataset": shares ∝ weights; "per_episode": shares ∝
            weights, each episode of a dataset equally likely, frames uniform within it).
        frame_filters: None, K entries each a `FrameFilter` or None, or a dict dataset name -> FrameFilter:
            frames a filter drops are never drawn (keep-ranges per episode, e.g. openpi's DROID idle filter file,
            and trims); the printed mixture, `len(loader)` and the sequential order count kept frames only.
        batch_size: rows per batch.
        action_horizon: H; each source gets delta_timestamps {k: [t/fps for t in range(H)]} for `action_keys`
            (default: keys named "action"/"actions"). delta_timestamps: explicit dict (all sources) or list.
        num_workers: decode processes (0: decode in the main process). seed: sampler seed.
        shuffle: False gives the sequential order. num_batches: batches per epoch (default
            len(sampler) // batch_size, or ceil when drop_last=False). drop_last: drop a last partial batch.
        rank, world_size, batching: passed to MixtureSampler.
        strict_fps: refuse datasets of different fps (default: allowed with a MixedFpsWarning; chunks are built
            per dataset from its own fps, as openpi does).
        device: None (CPU arrays) or a CUDA device (copies on per-slot streams).
        image_dtype: "uint8" (B,H,W,C) or "float32" (B,C,H,W) in [0,1] (torch's `x.to(float32) / 255`): on CPU
            the decode workers convert into float32 slots; with a device, converted there.
        resize_images: (height, width): decode workers resize every camera frame to it with openpi's
            `resize_with_pad` (PIL bilinear, zero padding) before it reaches the slot; None: native size.
        transform: callable(batch) -> batch, applied in the main process at the hand-out.
        groups: None, or the group of each source (0..G-1): datasets of different schemas (keys, shapes,
            cameras, fps) in one stream, each group in its own layout (`fastmix.loader.groups`); then
            `resize_images` / `image_dtype` may be lists with one entry per group.
        workers: `WorkerOptions` (reader factory, open files, stall timeout, process start method).
        memory: `MemoryOptions` (prefetch, pinning, zero-copy hand-out, shm directory).

    Example:
        >>> with MixtureLoader([src_a, src_b], dataset_weights=[1, 3], batch_size=32, action_horizon=10) as ld:
        ...     for batch in ld: ...
    """

    START_TIMEOUT_S = 120.0

    def __init__(self, sources: Sequence[Any], *, dataset_weights: Sequence[float] | None = None,
                 weighting: str = "per_sample", frame_filters: Sequence[FrameFilter | None] |
                 Mapping[str, FrameFilter] | None = None, batch_size: int, action_horizon: int | None = None,
                 delta_timestamps: Mapping[str, Sequence[float]] | Sequence[Mapping | None] | None = None,
                 action_keys: Sequence[str] | None = None, num_workers: int = 2, seed: int = 0,
                 shuffle: bool = True, num_batches: int | None = None, drop_last: bool = True,
                 rank: int | None = None, world_size: int | None = None, batching: str = "random",
                 strict_fps: bool = False, device: Any = None, image_dtype: str = "uint8",
                 resize_images: tuple[int, int] | list | None = None, transform: Callable[[dict], dict] | None = None,
                 groups: Sequence[int] | None = None, workers: WorkerOptions | None = None,
                 memory: MemoryOptions | None = None) -> None:
        self.workers = _option(workers, WorkerOptions, "workers")
        self.memory = _option(memory, MemoryOptions, "memory")
        self.sources = _open_sources(sources, strict_fps, grouped=groups is not None)
        self.groups = resolve_groups(groups, self.sources, strict_fps)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.num_workers = check_int(num_workers, "num_workers", minimum=0)
        if image_dtype not in IMAGE_DTYPES and groups is None:
            raise ConfigError(f"image_dtype must be one of {IMAGE_DTYPES}, got image_dtype={image_dtype!r}")
        self.image_dtype = image_dtype if isinstance(image_dtype, str) else "uint8"  # a list: per group (slots)
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable or None, got transform={transform!r}")
        self.transform = transform
        self.drop_last = bool(drop_last)
        self.device = resolve_device(device)
        self.pin_memory = resolve_pin_memory(self.memory.pin_memory)
        self.delta_timestamps = resolve_delta_timestamps(self.sources, action_horizon=action_horizon,
                                                         delta_timestamps=delta_timestamps, action_keys=action_keys)
        self.resize_images = image_size(resize_images) if self.groups is None else resize_images
        num_batches = check_optional_int(num_batches, "num_batches", minimum=1)
        rank, world_size = resolve_rank_world_size(rank, world_size)
        num_samples = None if num_batches is None else num_batches * self.batch_size * world_size
        filters = resolve_frame_filters(frame_filters, self.sources)
        self.sampler = MixtureSampler([len(s) for s in self.sources], dataset_weights, weighting=weighting,
                                      num_samples=num_samples, seed=seed, rank=rank, world_size=world_size,
                                      batching=batching, shuffle=shuffle, batch_size=self.batch_size,
                                      names=[s.name for s in self.sources], frame_filters=filters,
                                      episodes=source_episodes(self.sources, filters, weighting))
        if self.groups is None:
            self.planner: Any = BatchPlanner(self.sources, self.delta_timestamps, self.resize_images,
                                             index_map=self.sampler.index_map)
        else:
            self.planner, self._group_sizes, self._group_floats = grouped_setup(
                self.sources, self.groups, self.delta_timestamps, resize_images, image_dtype, self.device,
                self.sampler.index_map)
        self._num_batches, self._last_size = self._epoch_shape(num_batches)
        self.max_open_files = self.workers.max_open_files or default_max_open_files(
            len(self.planner.camera_keys), self.batch_size)
        self._plan_memory()
        self._reader_factory = self._readers()
        self._cursor = Cursor(self._num_batches, self.sampler.epoch_state)
        self._seqs = itertools.count()  # ids of work items, unique over the loader's life
        self._iterator: weakref.ref[_HandOut] | None = None  # weak: no loader↔iterator cycle
        self._res = Resources()
        self._closed = False
        self._finalizer = weakref.finalize(self, Resources.release, self._res)

    def _epoch_shape(self, num_batches: int | None) -> tuple[int, int]:
        """(batches per epoch, rows of the last batch)."""
        per_epoch = len(self.sampler)
        if num_batches is None:
            num_batches = per_epoch // self.batch_size if self.drop_last else -(-per_epoch // self.batch_size)
        if num_batches < 1:
            sizes = {s.name: len(s) for s in self.sources}
            raise ConfigError(f"batch_size={self.batch_size} is larger than the mixture's {per_epoch} draws per "
                              f"epoch on this rank ({sizes} frames); use a smaller batch_size, drop_last=False "
                              "or num_batches=...")
        last = self.batch_size
        if not self.drop_last and num_batches * self.batch_size > per_epoch:
            last = per_epoch - (num_batches - 1) * self.batch_size
        return num_batches, last

    def _plan_memory(self) -> None:
        """Ring layout: float32 slots (CPU float output), lendable slots (zero copy), within `shm_dir`."""
        zero_copy = self.memory.zero_copy
        if zero_copy and (self.device is not None or self.pin_memory):
            raise ConfigError("zero_copy=True applies to CPU batches without pin_memory (device=None, "
                              "pin_memory=False); device and pinned batches are copies by nature")
        slots.remove_stale_segments(self.memory.shm_dir)  # a killed process group's ring must not eat the space
        self._sizer = RingSizer(self.planner.fields, self.planner.camera_keys, batch_size=self.batch_size,
                                prefetch=self.memory.prefetch, num_workers=self.num_workers,
                                shm_dir=self.memory.shm_dir)
        float_slots = self.image_dtype == "float32" and self.device is None and self.groups is None
        want_lend = self._sizer.lend_slots(float_slots) \
            if (zero_copy is not False and self.device is None and not self.pin_memory) else 0
        self._float_slots, self._lend = self._sizer.plan(float_slots=float_slots, lend=want_lend)

    def _readers(self) -> Callable[[], Any]:
        """The worker-side reader stack: the reader, then decode-time resize, then float conversion."""
        tol = max([float(getattr(s, "tolerance_s", 1e-4)) for s in self.sources])
        factory = self.workers.reader_factory or default_reader_factory(self.max_open_files, tol)
        if self.groups is not None:  # per group: its decode size and image format
            return grouped_readers(self.planner, self._group_sizes, self._group_floats, factory, unit_table())
        if self.resize_images is not None:
            native = {(s.name, k): tuple(int(d) for d in s.camera_shape(k)) for s in self.sources
                      for k in self.planner.camera_keys}
            factory = resizing_reader_factory(factory, self.resize_images, native)
        if self._float_slots:
            factory = floating_reader_factory(factory, unit_table())
        return factory

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

    @property
    def prefetch(self) -> int:
        return self.memory.prefetch

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at its first batch; a no-op when it is the current epoch (keeps a resume)."""
        epoch = check_int(epoch, "epoch", minimum=0)
        if epoch != self._cursor.epoch:
            self._invalidate_iterator()
            self._cursor.set(self._cursor.start(epoch))

    def fingerprint(self) -> dict[str, Any]:
        """What a saved position depends on (see `fastmix.loader.state.fingerprint`)."""
        return state.fingerprint(self)

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out (epoch, batch within the epoch, sampler state) and the
        mixture's fingerprint."""
        return state.state_of(self, self._cursor.position)

    def load_state_dict(self, state_dict: Mapping[str, Any], *, allow_mixture_change: bool = False) -> None:
        """Continue exactly after the batch `state_dict` was taken at (any num_workers or world size). A state
        of another mixture, or a malformed one, raises ConfigError naming what differs or the key at fault, and
        changes nothing. `allow_mixture_change=True` accepts a state saved under other dataset weights, weighting
        or frame filters (same datasets, sizes, seed, batch size, shuffle and batching): the stream continues
        from the saved position (epoch, batch) with this loader's mixture — the same for the same state and
        configuration — and a RuntimeWarning names the old and new shares."""
        position = state.position_of(self, state_dict, allow_mixture_change=allow_mixture_change)
        self._invalidate_iterator()
        self._cursor.set(position)

    @property
    def position(self) -> Position:
        """The cursor: the position after the last batch handed out."""
        return self._cursor.position

    def stream(self, count: int | None = None, *, output: str = "torch") -> BatchStream:
        """`count` batches from the cursor on (None: without end, epoch after epoch), each with the position
        after it: `(batch, position)`. The stream does not move the cursor: a wrapper that hands the batches out
        itself (e.g. the openpi `DataLoader`) records each with `hand_out(position)`. Starting a stream ends
        the previous stream or iterator. `output`: "torch" tensors or "numpy" arrays (CPU batches)."""
        self._check_open()
        self._invalidate_iterator()
        stream = self._res.stream = BatchStream(self, self._cursor.position, count, output=output)
        return stream

    def hand_out(self, position: Position) -> None:
        """Record that the batch before `position` (as a stream carried it) was handed to the consumer."""
        self._cursor.set(position)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch as torch tensors (the cursor advances as each batch is handed out)."""
        self._check_open()
        it = _HandOut(self, self.stream(self._cursor.remaining))
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
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("MixtureLoader is closed; create a new loader (and load_state_dict to resume)")

    def _invalidate_iterator(self) -> None:
        it = self._iterator() if self._iterator is not None else None
        if it is not None:
            it._stale = True
        self._iterator = None
        self._res.stop_stream()

    def _num_slots(self) -> int:
        return self.memory.prefetch + 2 + self._lend  # FFCV: batches_ahead + 2, plus the slots that may be lent

    def _ensure_started(self) -> None:
        res = self._res
        if res.ring is None:
            res.ring = SlotRing(slot_fields(self.planner.fields, self.planner.camera_keys, self._float_slots),
                                batch_size=self.batch_size, num_slots=self._num_slots(),
                                num_workers=max(1, self.num_workers), shm_dir=self.memory.shm_dir)
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
            w = self.workers
            res.pool = WorkerPool(self.num_workers, res.ring.layout, res.ring.progress, self._reader_factory,
                                  context=w.mp_context, start_timeout=self.START_TIMEOUT_S,
                                  stall_timeout_s=w.worker_timeout_s)

    def _start_pass(self, start: Position, output: str) -> BatchPipeline:
        """Workers and ring ready (after the work of an abandoned pass is drained), a pipeline from `start`."""
        if self._res.pool is not None:
            drain(self._res.pool)
        self._ensure_started()
        res = self._res
        assert res.ring is not None
        executor = res.pool if self.num_workers > 0 else InlineExecutor(res.ring, res.reader)
        return BatchPipeline(sampler=self.sampler, planner=self.planner, ring=res.ring, stage=res.stage,
                             executor=executor, num_workers=self.num_workers, batch_size=self.batch_size,
                             num_batches=self._num_batches, last_size=self._last_size, start=start,
                             max_inflight=1 if self.num_workers == 0 else self.memory.prefetch, seqs=self._seqs,
                             pin_memory=self.pin_memory, image_dtype=self.image_dtype, lender=res.lender,
                             output=output)

    def _fail(self) -> None:
        """The current stream cannot continue: stop the workers and release the ring now (not at close());
        the next stream starts afresh from the cursor."""
        self._res.release()


def _option(value: Any, kind: type, name: str) -> Any:
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {kind.__name__} or None, got {name}={value!r}")
    return value


def _open_sources(sources: Any, strict_fps: bool, grouped: bool = False) -> list[Any]:
    """The mixture's sources: each opened or checked, distinct, non-empty, with the fps rule applied."""
    if isinstance(sources, str) or not isinstance(sources, Sequence) or not sources:
        raise ConfigError(f"sources must be a non-empty list of LeRobotSource objects, got sources={sources!r}")
    opened = [as_source(s) for s in sources]
    names = [s.name for s in opened]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"duplicate datasets in the mixture: {dup}; each repo_id may appear once "
                          "(raise its weight instead)")
    if grouped:  # the fps rule applies within each group (resolve_groups)
        check_distinct(opened)
    else:
        check_mixture(opened, strict_fps=strict_fps)  # one dataset under two names; the fps rule
    empty = [s.name for s in opened if len(s) == 0]
    if empty:
        raise ConfigError(f"dataset(s) {empty} have no frames; an empty dataset cannot be part of a mixture "
                          f"(select other episodes or drop it from the mixture)")
    return opened


def resolve_frame_filters(frame_filters: Any, sources: list[Any]) -> list[FrameFilter | None] | None:
    """`frame_filters` as K entries (None when there are none); a dict is keyed by dataset name."""
    if frame_filters is None:
        return None
    if isinstance(frame_filters, FrameFilter) or not isinstance(frame_filters, (Sequence, Mapping)) \
            or isinstance(frame_filters, str):
        raise ConfigError("frame_filters must be a list with one FrameFilter or None per dataset, or a dict "
                          f"dataset name -> FrameFilter, got frame_filters={frame_filters!r}")
    if not isinstance(frame_filters, Mapping):
        return list(frame_filters)
    names = [s.name for s in sources]
    unknown = [k for k in frame_filters if k not in names]
    if unknown:
        raise ConfigError(f"frame_filters names datasets {unknown} that are not in the mixture; its datasets are "
                          f"{names}")
    return [frame_filters.get(n) for n in names]


def source_episodes(sources: list[Any], filters: list[Any] | None, weighting: str) -> list[EpisodeRuns | None] | None:
    """Each source's `EpisodeRuns` where per-episode weighting or its frame filter needs them (else None)."""
    if weighting != "per_episode" and not (filters and any(f is not None for f in filters)):
        return None
    out: list[EpisodeRuns | None] = []
    for i, s in enumerate(sources):
        if weighting != "per_episode" and (i >= len(filters or []) or filters[i] is None):  # type: ignore[index]
            out.append(None)
            continue
        positions = getattr(s, "frame_positions", None)
        if positions is None:
            raise ConfigError(f"dataset {s.name!r} ({type(s).__name__}) does not describe its episodes "
                              "(frame_positions()); per-episode weighting and frame filters need them")
        out.append(EpisodeRuns.from_rows(*positions(), name=s.name))
    return out


class _HandOut:
    """Hands out the rest of the current epoch: pops the stream, applies `transform`, records the position."""

    def __init__(self, loader: MixtureLoader, stream: BatchStream) -> None:
        self._loader, self._stream = loader, stream
        self._stale = False
        self._left = loader._cursor.remaining

    def __iter__(self) -> _HandOut:
        return self

    def __next__(self) -> dict[str, Any]:
        L = self._loader
        if L._closed:
            raise RuntimeError("this MixtureLoader was closed (its workers and shared memory are released); "
                               "create a new loader and load_state_dict(state) to continue")
        if self._stale:
            raise RuntimeError("this MixtureLoader iterator was superseded (a newer iter(), set_epoch or "
                               "load_state_dict); start a new `for batch in loader`")
        if self._left <= 0 or self._stream.done:
            raise StopIteration
        batch, position = next(self._stream)
        if L.transform is not None:
            batch = self._transform(batch)
        L.hand_out(position)
        self._left -= 1
        return batch

    def _transform(self, batch: dict[str, Any]) -> dict[str, Any]:
        L = self._loader
        c = L._cursor
        where = f"batch {c.batch} of epoch {c.epoch}"
        try:
            return L.transform(batch)  # type: ignore[misc]
        except StopIteration as stop:
            # escaping __next__ as it is, it would end the epoch silently: an error naming the transform
            self._end_for_retry()
            raise RuntimeError(
                f"MixtureLoader's transform {_callable_name(L.transform)} raised StopIteration on {where}; a "
                "transform must not let StopIteration escape (it would end the epoch silently). That batch was "
                "not handed out: iterating again continues with it") from stop
        except Exception as exc:
            self._end_for_retry()
            exc.add_note(f"(raised by MixtureLoader's transform on {where}; that batch was not handed out: "
                         "iterating again continues with it)")
            raise
        except BaseException:
            self._stream.close()
            L._fail()
            raise

    def _end_for_retry(self) -> None:
        """End this stream, keeping the workers: the next iteration drains its work and retries the batch."""
        L = self._loader
        if L._res.stream is self._stream:
            L._res.stop_stream()
        self._stream.close()

    def __len__(self) -> int:
        return max(0, self._left) if not self._stream.done else 0


def _callable_name(fn: Any) -> str:
    """`fn`'s qualified name (its class's for a callable object), for messages."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{name}" if module and module != "builtins" else name


__all__ = ["MemoryOptions", "MixtureLoader", "WorkerOptions", "resolve_frame_filters", "source_episodes"]
