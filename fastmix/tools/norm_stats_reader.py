"""What `fastmix compute-norm-stats` reads: `PassSpec` (a run's data config, frames and batch size) and
`FrameStatsReader`, the transformed values of the statistics keys for any frames of a config's mixture, read from
the low-dim columns only (cameras are 1x1 placeholders, never decoded; `ChunkGather` reads action chunks of a run
of rows without per-row index lookups). `fastmix.tools.norm_stats_pass` runs the passes over them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastmix.errors import ConfigError, DatasetFormatError
from fastmix.openpi import data_loader as _dl
from fastmix.openpi import transforms as _t
from fastmix.openpi.lowdim_batch import lowdim_planner
from fastmix.openpi.transforms.batched import batched

STATS_KEYS = ("state", "actions")
MAX_WORKERS = 8
CHUNK_FRAMES = 1 << 15


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """What every process needs: the data config (repack and data transforms, datasets), openpi's action
    horizon, `open_sources(data_config)` (picklable for spawned processes), the statistics batch size (frames),
    the frames counted (`num_frames`: the first ones of the mixture in order, or `order`, int64 (num_frames,)
    global indices ascending) and the frames read per chunk."""

    data_config: Any
    action_horizon: int
    open_sources: Callable[[Any], list]
    batch_size: int
    num_frames: int = 0
    order: np.ndarray | None = None
    chunk_frames: int = CHUNK_FRAMES
    keys: tuple[str, ...] = STATS_KEYS

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_frames / self.batch_size)

    def frames(self, a: int, b: int) -> np.ndarray:
        """Global indices of counted frames a..b (int64)."""
        return np.arange(a, b, dtype=np.int64) if self.order is None else self.order[a:b]


def for_workers(data_config: Any) -> Any:
    """`data_config` without what the passes never use (model transforms, loaded norm stats), so it pickles."""
    if dataclasses.is_dataclass(data_config):
        names = {f.name for f in dataclasses.fields(data_config)}
        changes = {k: v for k, v in (("model_transforms", type(data_config.model_transforms)()),
                                     ("norm_stats", None)) if k in names}
        try:
            return dataclasses.replace(data_config, **changes)
        except (TypeError, ValueError):
            return data_config
    return data_config


class FrameStatsReader:
    """Reads frames of the mixture and gives the transformed values of the statistics keys."""

    def __init__(self, spec: PassSpec) -> None:
        dc = spec.data_config
        self.spec = spec
        self.sources = spec.open_sources(dc)
        self.planner = lowdim_planner(self.sources, dc, spec.action_horizon)
        self.prompt = bool(getattr(dc, "prompt_from_task", False))
        stages = [("repack", [batched(t) for t in dc.repack_transforms.inputs]),
                  ("data", [batched(t) for t in dc.data_transforms.inputs])]
        self.pipeline = [*stages[0][1], *stages[1][1], _t.RemoveStrings()]
        self.float_images = _dl.raw_image_dtype(stages) == "float32"
        self._gather = [ChunkGather(src, dts) for src, dts in zip(self.sources, self.planner.delta_timestamps,
                                                                      strict=True)]

    @property
    def total(self) -> int:
        return int(self.planner.index_map.total)

    def raw(self, global_index: np.ndarray) -> dict[str, Any]:
        """The raw batch of `global_index` as the loader gathers it, cameras as 1x1 black placeholders (uint8
        (n, 1, 1, 3), or float32 (n, 3, 1, 1) where a per-sample openpi transform reads LeRobotDataset's format),
        "task" (and "prompt" with `prompt_from_task`) as a numpy str array (n,) (never counted: strings are
        dropped before the statistics)."""
        p = self.planner
        n = int(global_index.size)
        out: dict[str, Any] = {k: np.zeros((n, *p.fields[k][0]), dtype=p.fields[k][1]) for k in p.lowdim_fields}
        dataset, local = p.index_map.to_local(global_index)
        out["dataset_index"][:] = dataset
        tasks = np.zeros(n, dtype=np.str_)
        for d in np.unique(dataset).tolist():
            pos = np.flatnonzero(dataset == d)
            if len(pos) == n:
                pos = slice(None)  # one dataset: plain copies
            src, rows = self.sources[d], local[pos]
            low = self._gather[d].gather(rows)
            for key in p.lowdim_fields:
                if key != "dataset_index":
                    out[key][pos] = low[key]
            tasks = _put_tasks(tasks, pos, src, rows, low["task_index"])
        for key in p.camera_keys:
            out[key] = (np.zeros((n, 3, 1, 1), np.float32) if self.float_images else np.zeros((n, 1, 1, 3), np.uint8))
        out["task"] = tasks
        if self.prompt:
            out["prompt"] = tasks
        return out

    def values(self, global_index: np.ndarray, check: bool) -> dict[str, np.ndarray]:
        """{key: (n * m, dim)}: each statistics key after the transforms, m rows per frame (an action chunk's
        steps), as RunningStats.update reshapes them. `check`: NaN/inf is a DatasetFormatError naming where."""
        batch = self.raw(global_index)
        out = _t.apply_batch(self.pipeline, dict(batch))
        n = len(global_index)
        result = {}
        for k in self.spec.keys:
            if k not in out:
                raise ConfigError(f"key {k!r} is not in the transformed data; keys: {sorted(_t.flatten_dict(out))}")
            v = np.asarray(out[k])
            if v.ndim < 2 or v.shape[0] != n:
                raise DatasetFormatError(f"key {k!r} after the transforms has shape {v.shape}: expected ({n}, ..., dim)")
            if check and not np.isfinite(v).all():
                raise DatasetFormatError(first_non_finite(batch, out, k, self.sources))
            result[k] = v.reshape(-1, v.shape[-1])
        return result


class ChunkGather:
    """`source.gather_lowdim(rows, delta_timestamps)` for ascending `rows`, reading one contiguous run of rows.

    Where every episode of the source is one run of local rows with consecutive frame indices and the chunk
    offsets (delta_timestamps · fps) are integers >= 0, a chunk is rows r + min(offset, last row of r's episode
    - r), padded where the offset passes the episode's end: LeRobot's chunk, clamped to the episode. The values
    are read once for the run rows[0] .. the last chunk row (when that run is at most twice the rows asked for)
    and the chunks are views into it: no per-row index lookup. Anything else takes `gather_lowdim` itself."""

    def __init__(self, source: Any, delta_timestamps: dict[str, Sequence[float]] | None) -> None:
        self.source, self.dts = source, delta_timestamps
        self.offsets: dict[str, np.ndarray] | None = None
        self.run_end: np.ndarray | None = None
        try:
            offsets = {k: np.asarray(v, dtype=np.float64) * float(source.fps) for k, v in (delta_timestamps or {}).items()}
            ints = {k: np.rint(v).astype(np.int64) for k, v in offsets.items()}
            if not all(np.all(np.abs(offsets[k] - ints[k]) < 1e-6) and np.all(ints[k] >= 0) for k in ints):
                return
            episode, frame = (np.asarray(a, dtype=np.int64) for a in source.frame_positions())
        except (AttributeError, TypeError, ValueError):
            return
        n = len(episode)
        same = episode[1:] == episode[:-1]
        if n == 0 or not np.all(frame[1:][same] == frame[:-1][same] + 1):
            return
        starts = np.r_[0, np.flatnonzero(~same) + 1]
        if len(np.unique(episode[starts])) != len(starts):  # an episode in two runs
            return
        ends = np.r_[starts[1:], n] - 1
        self.run_end = np.repeat(ends, np.diff(np.r_[starts, n]))
        self.offsets = ints

    def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        if self.offsets is None or len(rows) == 0:
            return self.source.gather_lowdim(rows, self.dts)
        room = self.run_end[rows] - rows
        lo = int(rows[0])
        hi = max([int(rows[-1])] + [int((rows + np.minimum(int(off.max()), room)).max()) for off in self.offsets.values()
                                    if off.size]) + 1
        if hi - lo > 2 * (len(rows) + max((len(o) for o in self.offsets.values()), default=0)):
            return self.source.gather_lowdim(rows, self.dts)
        plain = self.source.gather_lowdim(np.arange(lo, hi, dtype=np.int64), {})
        local = rows - lo
        index, episode = plain.get("index"), plain.get("episode_index")
        if index is not None and episode is not None:
            same = episode[1:] == episode[:-1]
            if not np.all(index[1:][same] == index[:-1][same] + 1):  # index values must advance with the rows
                return self.source.gather_lowdim(rows, self.dts)
        dense = int(local[-1]) - int(local[0]) == len(local) - 1  # rows lo.. in a run: slices, no index arrays
        out = {}
        for key, v in plain.items():
            if key in self.offsets:
                off = self.offsets[key]
                if dense and np.array_equal(off, np.arange(len(off))):
                    out[key] = _chunks_of_run(v, int(local[0]), room, len(off))
                else:
                    out[key] = v[local[:, None] + np.minimum(off[None, :], room[:, None])]
                out[f"{key}_is_pad"] = off[None, :] > room[:, None]
            else:
                out[key] = v[local[0]:local[0] + len(local)] if dense else v[local]
        return out


def _chunks_of_run(v: np.ndarray, first: int, room: np.ndarray, horizon: int) -> np.ndarray:
    """(n, horizon, *v.shape[1:]): row i holds v[first + i + min(t, room[i])] for t < horizon, i.e. the chunks of n
    consecutive rows clamped to their episodes (`room[i]`: rows left in row i's episode), built from `horizon`
    contiguous slices and a gather of the clamped rows only."""
    n = len(room)
    out = np.empty((n, horizon, *v.shape[1:]), dtype=v.dtype)
    for t in range(horizon):
        count = max(0, min(n, len(v) - first - t))
        out[:count, t] = v[first + t:first + t + count]
    clamped = np.flatnonzero(room < horizon - 1)
    if clamped.size:
        rows = first + clamped[:, None] + np.minimum(np.arange(horizon)[None, :], room[clamped, None])
        out[clamped] = v[rows]
    return out


def _put_tasks(tasks: np.ndarray, pos: Any, src: Any, rows: np.ndarray, task_index: np.ndarray) -> np.ndarray:
    """Write the task strings of `rows` of `src` into `tasks` (a numpy str array, widened as needed) at `pos`,
    one `tasks_of` lookup per distinct task."""
    uniq, first, inv = np.unique(np.asarray(task_index).reshape(-1), return_index=True, return_inverse=True)
    names = np.asarray(src.tasks_of(rows[first]), dtype=np.str_)
    if names.dtype.itemsize > tasks.dtype.itemsize:
        tasks = tasks.astype(names.dtype)
    tasks[pos] = names[inv.reshape(-1)]
    return tasks


def first_non_finite(batch: dict[str, Any], out: dict[str, Any], key: str, sources: Sequence[Any]) -> str:
    """Where the first non-finite value of transformed `out[key]` comes from: dataset, episode, frame, and the raw
    numeric features that hold a NaN/inf there (an action chunk's bad step names the frame it was read from)."""
    n = len(batch["dataset_index"])
    bad_rows = ~np.isfinite(np.asarray(out[key], dtype=np.float64).reshape(n, -1)).all(axis=1)
    row = int(np.flatnonzero(bad_rows)[0])
    d = int(batch["dataset_index"][row])
    episode = batch["episode_index"][row] if "episode_index" in batch else "?"
    frame = batch["frame_index"][row] if "frame_index" in batch else None
    raw, steps = [], []
    for k, v in batch.items():
        if not (isinstance(v, np.ndarray) and v.dtype.kind == "f") or np.isfinite(v[row]).all():
            continue
        step = 0
        if v.ndim == 3:  # an action chunk (n, horizon, dim): its first bad step is the frame that holds the value
            step = int(np.flatnonzero(~np.isfinite(v[row]).all(axis=1))[0])
        raw.append(repr(k) + (f" (action chunk step {step} of frame {frame})" if step else ""))
        steps.append(step)
    at = "?" if frame is None else int(frame) + min(steps, default=0)
    cause = f"raw feature(s) {', '.join(raw)} hold NaN/inf" if raw else "the transforms produced it"
    return (f"dataset '{sources[d].name}', episode {episode}, frame {at}: key {key!r} is not finite ({cause}). "
            f"Fix or drop that episode: norm stats would be NaN; nothing was written.")


__all__ = ["CHUNK_FRAMES", "STATS_KEYS", "ChunkGather", "FrameStatsReader", "PassSpec", "first_non_finite",
           "for_workers"]
