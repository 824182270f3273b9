"""Groups: datasets of different schemas in one mixture stream (`MixtureLoader(groups=[...])`).

Without groups every dataset of a mixture must have one schema (`BatchPlanner` refuses others with
`IncompatibleDatasetsError`): a slot stacks all rows in one layout. With groups, each dataset belongs to a group
(e.g. one robot: its low-dim keys and shapes, camera keys, decode geometry and image format); datasets within a
group still share one schema, groups need not. A slot then holds, per group g, that group's fields under
`group_prefix(g) + key` ("group0/observation.state", ...) and filled compactly: the rows of group g in a batch
are rows [:n_g] of its fields, in sampled order. Three batch-level fields give the order back:

    dataset_index (B,) int64   the dataset of each batch row (as without groups)
    group_index   (B,) int64   the group of each batch row
    group_row     (B,) int64   where that row is among its group's rows (0 .. n_g-1)

`task` / `prompt` stay lists of B strings in batch order. `split_groups(batch)` gives one dict per group (its
fields without the prefix, n_g rows each, plus `rows`: the batch rows they came from); `in_batch_order` merges a
per-group field back into (B, ...) order. Sampling (the weighted stream, its resume and determinism) does not
see groups: it is one mixture over all datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastmix.core.index_map import IndexMap
from fastmix.errors import ConfigError
from fastmix.loader.plan import BatchPlan, BatchPlanner, _request_order
from fastmix.sources.compat import check_mixture

GROUP_KEYS: tuple[str, ...] = ("dataset_index", "group_index", "group_row")
_PREFIX = "group"


def group_prefix(g: int) -> str:
    """The key prefix of group `g`'s fields in a grouped batch: "group<g>/"."""
    return f"{_PREFIX}{int(g)}/"


def num_groups_of(batch: Mapping[str, Any]) -> int:
    """How many groups a grouped batch has (0 for a batch without groups)."""
    gs = {int(k[len(_PREFIX):k.index("/")]) for k in batch if k.startswith(_PREFIX) and "/" in k
          and k[len(_PREFIX):k.index("/")].isdigit()}
    return max(gs) + 1 if gs else 0


def resolve_groups(groups: Any, sources: Sequence[Any], strict_fps: bool) -> list[int] | None:
    """`groups` checked: None, or one int per source, the groups numbered 0..G-1 with none empty. The fps rule
    applies within each group (groups are expected to differ)."""
    if groups is None:
        return None
    names = [s.name for s in sources]
    if isinstance(groups, str) or not isinstance(groups, Sequence) or len(groups) != len(sources):
        raise ConfigError(f"groups must be a list with one group number per dataset ({len(sources)}: {names}), "
                          f"got groups={groups!r}")
    out = []
    for name, g in zip(names, groups, strict=True):
        if isinstance(g, bool) or not isinstance(g, int | np.integer) or g < 0:
            raise ConfigError(f"groups: dataset {name!r} has group {g!r}; group numbers are ints >= 0")
        out.append(int(g))
    missing = sorted(set(range(max(out) + 1)) - set(out))
    if missing:
        raise ConfigError(f"groups={out} leaves group(s) {missing} without a dataset; number the groups 0..G-1")
    for g in range(max(out) + 1):
        check_mixture([s for s, x in zip(sources, out, strict=True) if x == g], strict_fps=strict_fps)
    return out


def per_group(value: Any, num_groups: int, name: str) -> list[Any]:
    """`value` for each group: a list of `num_groups` values is taken as is, anything else repeated."""
    if isinstance(value, list):
        if len(value) != num_groups:
            raise ConfigError(f"{name} has {len(value)} entries, the mixture has {num_groups} groups; give one "
                              f"per group or a single value, got {name}={value!r}")
        return list(value)
    return [value] * num_groups


class GroupedPlanner:
    """Plans batches of a mixture whose datasets form groups of different schemas (module docstring).

    Args:
        sources: all datasets of the mixture, in mixture order. delta_timestamps: one per source.
        groups: the group of each source. image_sizes: per group, decode-time (height, width) or None.
        float_groups: per group, whether its camera slots are float32 (C, H, W) (the workers convert).
        index_map: the mixture's map (global index → dataset, local row).

    Attributes: fields {key: (shape per row, dtype)} of a slot (group fields prefixed), camera_keys (prefixed),
    planners (a `BatchPlanner` per group; each checks that its datasets share one schema).
    """

    def __init__(self, sources: Sequence[Any], delta_timestamps: Sequence[dict | None], groups: Sequence[int],
                 image_sizes: Sequence[tuple[int, int] | None], float_groups: Sequence[bool],
                 index_map: IndexMap) -> None:
        self.sources, self.groups, self.index_map = list(sources), np.asarray(groups, dtype=np.int64), index_map
        self.num_groups = int(self.groups.max()) + 1
        self.members = [np.flatnonzero(self.groups == g) for g in range(self.num_groups)]
        self.planners = [BatchPlanner([self.sources[d] for d in m], [delta_timestamps[d] for d in m],
                                      image_sizes[g]) for g, m in enumerate(self.members)]
        # position of each dataset inside its group's planner (its sub-mixture offsets)
        self._sub = np.zeros(len(self.sources), dtype=np.int64)
        for m in self.members:
            self._sub[m] = np.arange(len(m))
        self.fields: dict[str, tuple[tuple[int, ...], np.dtype]] = {k: ((), np.dtype(np.int64)) for k in GROUP_KEYS}
        self.camera_keys: list[str] = []
        self.group_camera_keys: list[list[str]] = []
        for g, p in enumerate(self.planners):
            pre = group_prefix(g)
            for key, (shape, dtype) in p.fields.items():
                if key in p.camera_keys and float_groups[g]:
                    h, w, c = shape
                    shape, dtype = (c, h, w), np.dtype(np.float32)
                self.fields[pre + key] = (tuple(shape), np.dtype(dtype))
            self.camera_keys += [pre + k for k in p.camera_keys]
            self.group_camera_keys.append(list(p.camera_keys))
        self.lowdim_fields = [k for k in self.fields if k not in self.camera_keys]

    def plan(self, seq: int, global_index: np.ndarray, views: Mapping[str, np.ndarray]) -> BatchPlan:
        """Like `BatchPlanner.plan`: rows of group g go to rows [:n_g] of its fields, in sampled order; frame
        requests carry the camera key and, as slot, the row within the group (the grouped reader routes them
        by dataset); `rows` gives each field's row count."""
        n = int(global_index.size)
        dataset, local = self.index_map.to_local(global_index)
        group = self.groups[dataset]
        views["dataset_index"][:n] = dataset
        views["group_index"][:n] = group
        tasks: list[Any] = [None] * n
        requests: list[Any] = []
        rows: dict[str, int] = dict.fromkeys(GROUP_KEYS, n)
        group_row = np.zeros(n, dtype=np.int64)
        for g, planner in enumerate(self.planners):
            pos = np.flatnonzero(group == g)
            group_row[pos] = np.arange(pos.size)
            pre = group_prefix(g)
            for key in planner.fields:
                rows[pre + key] = int(pos.size)
            if pos.size == 0:
                continue
            sub = planner.index_map.to_global(self._sub[dataset[pos]], local[pos])
            sub_views = {k: views[pre + k] for k in planner.lowdim_fields}
            plan = planner.plan(seq, sub, sub_views)
            views[pre + "dataset_index"][:pos.size] = dataset[pos]  # the mixture's dataset, not the group's
            for p, t in zip(pos.tolist(), plan.tasks, strict=True):
                tasks[p] = t
            requests += plan.requests
        views["group_row"][:n] = group_row
        requests.sort(key=_request_order)
        return BatchPlan(seq=seq, size=n, dataset_index=dataset, local_index=local, tasks=tasks,
                         requests=requests, rows=rows)


def grouped_setup(sources: Sequence[Any], groups: list[int], delta_timestamps: Sequence[dict | None],
                  resize_images: Any, image_dtype: Any, device: Any, index_map: IndexMap
                  ) -> tuple[GroupedPlanner, list[tuple[int, int] | None], list[bool]]:
    """(planner, decode size per group, float slots per group) of a grouped loader: `resize_images` and
    `image_dtype` are one value for all groups or a list with one per group; per-group float32 images need
    CPU batches (device None)."""
    from fastmix.loader.device import IMAGE_DTYPES
    from fastmix.loader.options import image_size

    num = max(groups) + 1
    sizes = [image_size(s) for s in per_group(resize_images, num, "resize_images")]
    dtypes = per_group(image_dtype, num, "image_dtype")
    bad = [d for d in dtypes if d not in IMAGE_DTYPES]
    if bad:
        raise ConfigError(f"image_dtype entries must be one of {IMAGE_DTYPES}, got image_dtype={image_dtype!r}")
    if isinstance(image_dtype, list) and device is not None and "float32" in dtypes:
        raise ConfigError("image_dtype per group with float32 groups needs CPU batches (device=None); give one "
                          f"image_dtype for all groups with a device, got image_dtype={image_dtype!r}")
    floats = [d == "float32" and device is None for d in dtypes]
    planner = GroupedPlanner(sources, delta_timestamps, groups, sizes, floats, index_map)
    return planner, sizes, floats


def grouped_readers(planner: GroupedPlanner, sizes: Sequence[tuple[int, int] | None], floats: Sequence[bool],
                    base: Any, table: np.ndarray) -> Any:
    """The worker-side reader factory of a grouped loader: per group, `base` (the reader factory), resized to
    its decode size and converted to float32 where that group's slots are float (`readers.GroupedReader`)."""
    from fastmix.loader.readers import (
        floating_reader_factory,
        grouped_reader_factory,
        resizing_reader_factory,
    )

    factories = []
    for g, (p, size) in enumerate(zip(planner.planners, sizes, strict=True)):
        f = base
        if size is not None:
            native = {(s.name, k): tuple(int(d) for d in s.camera_shape(k)) for s in p.sources for k in p.camera_keys}
            f = resizing_reader_factory(f, size, native)
        if floats[g]:
            f = floating_reader_factory(f, table)
        factories.append(f)
    group_of = {s.name: int(g) for s, g in zip(planner.sources, planner.groups, strict=True)}
    return grouped_reader_factory(factories, group_of, planner.group_camera_keys,
                                  [group_prefix(g) for g in range(planner.num_groups)])


def split_groups(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per group of a grouped batch: the group's fields without the prefix (n_g rows each), "task" /
    "prompt" (when the batch has them) restricted to its rows, and "rows": int64 (n_g,) batch rows it holds."""
    group_index = np.asarray(batch["group_index"])
    out = []
    for g in range(num_groups_of(batch)):
        pre = group_prefix(g)
        rows = np.flatnonzero(group_index == g)
        part: dict[str, Any] = {k[len(pre):]: v for k, v in batch.items() if k.startswith(pre)}
        for key in ("task", "prompt"):
            if key in batch:
                part[key] = [batch[key][r] for r in rows.tolist()]
        part["rows"] = rows
        out.append(part)
    return out


def in_batch_order(batch: Mapping[str, Any], key: str) -> np.ndarray:
    """Field `key` of every group merged into batch order (B, ...); its shape and dtype must agree across the
    groups that have rows in the batch."""
    group_index, group_row = np.asarray(batch["group_index"]), np.asarray(batch["group_row"])
    parts = {g: np.asarray(batch[group_prefix(g) + key]) for g in np.unique(group_index).tolist()}
    first = next(iter(parts.values()))
    out = np.empty((group_index.size, *first.shape[1:]), dtype=first.dtype)
    for g, arr in parts.items():
        sel = group_index == g
        out[sel] = arr[group_row[sel]]
    return out


__all__ = ["GROUP_KEYS", "GroupedPlanner", "group_prefix", "grouped_readers", "grouped_setup", "in_batch_order", "num_groups_of", "per_group",
           "resolve_groups", "split_groups"]
