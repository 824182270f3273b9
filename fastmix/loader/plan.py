"""`BatchPlanner`: turns one batch of global indices into the batch's low-dim arrays (gathered for the whole
batch at once, per dataset, with action chunks and pads) and its frame requests (one per row and camera,
sorted by file then timestamp so each container is decoded in one forward pass), split into per-worker
work items at file boundaries where that keeps the pieces balanced.

Everything here runs in the main process; nothing opens a video file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastmix._args import check_int
from fastmix.core.index_map import IndexMap
from fastmix.errors import ConfigError, IncompatibleDatasetsError
from fastmix.sources.meta import INDEX_KEYS

# integer fields of a batch: the source's index columns (timestamp aside) and the dataset of each row
BATCH_INT_KEYS: tuple[str, ...] = ("dataset_index", *(k for k in INDEX_KEYS if k != "timestamp"))
_INT_KEYS = frozenset(BATCH_INT_KEYS)


@dataclass
class BatchPlan:
    """What one batch is: its rows (dataset, local index), task strings and frame requests (slot = row).
    `rows`: rows filled per slot field when they differ from `size` (grouped batches, `groups.py`), else None."""

    seq: int
    size: int
    dataset_index: np.ndarray
    local_index: np.ndarray
    tasks: list[str]
    requests: list[Any]
    rows: dict[str, int] | None = None


def _request_order(r: Any) -> tuple:
    return (r.path, r.timestamp, r.row, r.key, r.slot)


def default_action_keys(source: Any) -> list[str]:
    return [k for k in source.lowdim_keys if k in ("action", "actions")]


def resolve_delta_timestamps(sources: Sequence[Any], *, action_horizon: int | None,
                             delta_timestamps: Mapping[str, Sequence[float]] | Sequence[Mapping | None] | None,
                             action_keys: Sequence[str] | None) -> list[dict[str, list[float]] | None]:
    """Per-source delta_timestamps: explicit ones (one dict for all, or one per source), else
    {k: [t / fps for t in range(H)]} for each action key when `action_horizon` is given, else None
    (each source's own)."""
    n = len(sources)
    if delta_timestamps is not None:
        if isinstance(delta_timestamps, Mapping):
            per = [dict(delta_timestamps) for _ in range(n)]
        else:
            per = [None if d is None else dict(d) for d in delta_timestamps]
            if len(per) != n:
                raise ConfigError(f"delta_timestamps length ({len(per)}) must match sources length ({n}): "
                                  f"sources={[s.name for s in sources]}")
    elif action_horizon is not None:
        check_int(action_horizon, "action_horizon", minimum=1)
        per = []
        for src in sources:
            keys = list(action_keys) if action_keys is not None else default_action_keys(src)
            if not keys:
                raise ConfigError(f"dataset {src.name!r} has no action key (looked for 'action'/'actions' among "
                                  f"{src.lowdim_keys}); pass action_keys=[...]")
            per.append({k: [t / src.fps for t in range(int(action_horizon))] for k in keys})
    else:
        return [None] * n
    for src, dts in zip(sources, per, strict=False):
        for key in dts or {}:
            if key in src.camera_keys:
                raise ConfigError(f"delta_timestamps for camera key {key!r} of dataset {src.name!r} are not "
                                  "supported by MixtureLoader (one frame per camera); use low-dim keys only")
            if key not in src.lowdim_keys:
                raise ConfigError(f"unknown key {key!r} in delta_timestamps/action_keys for dataset {src.name!r}; "
                                  f"its low-dim keys are {src.lowdim_keys}")
    return per


def _out_dtype(key: str, dtype: np.dtype) -> np.dtype:
    if key in _INT_KEYS:
        return np.dtype(np.int64)
    if dtype == np.bool_:
        return np.dtype(np.bool_)
    return np.dtype(np.float32)


class BatchPlanner:
    """Plans batches over `sources` (LeRobotSource-like) with per-source `delta_timestamps`.

    `image_size` (height, width): camera frames are resized to it when decoded (`resize_with_pad`), so a slot
    holds them at that size whatever each source's native size.

    Attributes:
        camera_keys: camera keys (same in every source). fields: {key: (shape per sample, dtype)} of a slot.
    """

    def __init__(self, sources: Sequence[Any], delta_timestamps: Sequence[dict | None],
                 image_size: tuple[int, int] | None = None, index_map: IndexMap | None = None) -> None:
        self.sources = list(sources)
        self.image_size = image_size
        self.delta_timestamps = list(delta_timestamps)
        # the mixture's own map when a sampler exists (one IndexMap per mixture); a planner without one builds it
        self.index_map = index_map if index_map is not None else IndexMap([len(s) for s in self.sources])
        self.camera_keys = list(self.sources[0].camera_keys)
        per_source: list[dict[str, tuple[tuple[int, ...], np.dtype]]] = []
        for src, dts in zip(self.sources, self.delta_timestamps, strict=False):
            f: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for key in src.camera_keys:
                shape = tuple(int(d) for d in src.camera_shape(key))
                if image_size is not None:
                    shape = (int(image_size[0]), int(image_size[1]), *shape[2:])
                f[key] = (shape, np.dtype(np.uint8))
            probe = src.gather_lowdim(np.zeros(1, dtype=np.int64), dts)
            for key, arr in probe.items():
                arr = np.asarray(arr)
                f[key] = (tuple(arr.shape[1:]), _out_dtype(key, arr.dtype))
            f["dataset_index"] = ((), np.dtype(np.int64))
            per_source.append(f)
        self._check_same(per_source)
        self.fields: dict[str, tuple[tuple[int, ...], np.dtype]] = per_source[0]
        self.lowdim_fields = [k for k in self.fields if k not in self.camera_keys]

    def _check_same(self, per_source: list[dict]) -> None:
        ref_name = self.sources[0].name
        ref = per_source[0]
        rows = []
        for src, f in zip(self.sources[1:], per_source[1:], strict=False):
            for key in sorted(set(ref) | set(f)):
                a, b = ref.get(key), f.get(key)
                if a is None or b is None or a[0] != b[0]:
                    rows.append(f"  {key:<20} {ref_name}: {_desc(a):<22} {src.name}: {_desc(b)}")
        if rows:
            raise IncompatibleDatasetsError(
                "datasets of the mixture differ in keys or shapes (MixtureLoader stacks them into one batch):\n"
                + "\n".join(rows))

    def plan(self, seq: int, global_index: np.ndarray, views: Mapping[str, np.ndarray]) -> BatchPlan:
        """Map `global_index` (n,) to (dataset, local), write the low-dim arrays into rows [:n] of `views`,
        and return the plan with the frame requests (slot = batch row) sorted by (file, timestamp)."""
        n = int(global_index.size)
        dataset, local = self.index_map.to_local(global_index)
        views["dataset_index"][:n] = dataset
        tasks: list[str | None] = [None] * n
        requests: list[Any] = []
        for d in np.unique(dataset).tolist():
            pos = np.flatnonzero(dataset == d)
            src = self.sources[d]
            rows = local[pos]
            low = src.gather_lowdim(rows, self.delta_timestamps[d])
            for key in self.lowdim_fields:
                if key == "dataset_index":
                    continue
                dst = views[key]
                dst[pos] = low[key]
            for p, t in zip(pos.tolist(), src.tasks_of(rows), strict=False):
                tasks[p] = t
            pos_list = pos.tolist()
            for r in src.frame_requests(rows, self.camera_keys):
                requests.append(dataclasses.replace(r, slot=pos_list[r.slot]))
        requests.sort(key=_request_order)
        return BatchPlan(seq=seq, size=n, dataset_index=dataset, local_index=local, tasks=tasks,  # type: ignore[arg-type]
                         requests=requests)


def _desc(field: tuple | None) -> str:
    return "absent" if field is None else f"{field[0]} {np.dtype(field[1]).name}"


def split_work(requests: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split `requests` (sorted by file, timestamp) into at most `parts` contiguous pieces of about equal size,
    moving each cut to a file boundary when one lies within a quarter of the target size (fewer seeks)."""
    n = len(requests)
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    if parts == 1:
        return [list(requests)]
    target = n / parts
    boundaries = [i for i in range(1, n) if requests[i].path != requests[i - 1].path]
    cuts = []
    prev = 0
    for j in range(1, parts):
        ideal = int(round(j * target))
        best = ideal
        near = [b for b in boundaries if abs(b - ideal) <= target / 4 and b > prev]
        if near:
            best = min(near, key=lambda b: abs(b - ideal))
        best = max(best, prev + 1)
        if best >= n:
            break
        cuts.append(best)
        prev = best
    edges = [0, *cuts, n]
    return [list(requests[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=False) if b > a]


__all__ = ["BATCH_INT_KEYS", "BatchPlan", "BatchPlanner", "default_action_keys", "resolve_delta_timestamps",
           "split_work"]
