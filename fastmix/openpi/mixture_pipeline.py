"""The loader of a `MixtureDataConfig`: one `MixtureLoader` over every dataset of every entry, each entry a
group (`fastmix.loader.groups`: its own schema, decode size and image format), and `MixtureTransform`, which
runs each entry's own transforms on that entry's rows of a batch and merges the rows in sampled order.

Per entry, on its rows only (batched: fastmix's transforms on the whole rows, openpi's and users' own per
sample): repack, data transforms, Normalize with the entry's norm stats, and the entry's model transforms
except a trailing `PadStatesAndActions`. Then the rows are merged into one batch in sampled order, `state` and
`actions` zero-padded to the model's `action_dim` on the way (openpi's `pad_to_dim`: the same bytes as each
entry's own `PadStatesAndActions`), so every row equals what its entry's own pipeline gives for that frame.
Floating leaves are cast to the config's `float_dtype` (float32 by default) so that every batch has one dtype
per key whichever entries it holds (an entry whose pipeline gives float64 then matches to float32 rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fastmix.errors import ConfigError
from fastmix.loader.groups import split_groups
from fastmix.openpi import transforms as _t
from fastmix.openpi.mixture_config import MixtureData, entry_repo_ids, flat_frame_filters, flat_weights
from fastmix.openpi.norm_stats import NORM_STATS_FILE, missing_norm_stats_message, norm_stats_dir

PADDED = ("state", "actions")


def entry_stages(stages: list[tuple[str, list]]) -> tuple[list[tuple[str, list]], int | None]:
    """(stages, pad dim): an entry's `transform_stages` without a trailing `PadStatesAndActions` of the model
    stage, whose `model_action_dim` is returned (None when the model stage does not end with one)."""
    stages = list(stages)
    name, model = stages[-1]
    pad = None
    if model and isinstance(model[-1], _t.PadStatesAndActions):
        pad = int(model[-1].model_action_dim)
        stages[-1] = (name, list(model[:-1]))
    return stages, pad


class MixtureTransform(_t.Transform):
    """A grouped raw batch (group g = entry g) → one transformed batch in sampled order (module docstring).

    stages: per entry, its (stage, transforms) list. pad_dim: the model's action_dim (None: no padding).
    prompt_from_task: per entry, whether its rows keep the task as `prompt`. names: entry labels for errors.
    float_dtype: the dtype of every floating leaf of the merged batch (None: the widest of the batch's rows)."""

    def __init__(self, stages: Sequence[list[tuple[str, list]]], pad_dim: int | None,
                 prompt_from_task: Sequence[bool], names: Sequence[str], float_dtype: str | None = "float32") -> None:
        self.stages, self.pad_dim = list(stages), pad_dim
        self.prompt_from_task, self.names = list(prompt_from_task), list(names)
        self.float_dtype = None if float_dtype is None else np.dtype(float_dtype)

    def __call__(self, data: dict) -> dict:
        return self.batch(data)

    def pixel_effect(self) -> _t.PixelEffect:
        return _t.PixelEffect.CHANGE

    def batch(self, data: dict) -> dict:
        size = len(np.asarray(data["group_index"]))
        parts = []
        for g, part in enumerate(split_groups(data)):
            rows = part.pop("rows")
            if rows.size == 0:
                continue
            if not self.prompt_from_task[g]:
                part.pop("prompt", None)  # as LeRobotDataset items: a prompt only via PromptFromLeRobotTask
            for _stage, transforms in self.stages[g]:
                part = _t.apply_batch(transforms, part)
            parts.append((g, rows, part))
        return self._merge(parts, size)

    def _merge(self, parts: list[tuple[int, np.ndarray, dict]], size: int) -> dict:
        flats = [(g, rows, _t.flatten_dict(p)) for g, rows, p in parts]
        first_g, _, first = flats[0]
        for g, _, flat in flats[1:]:
            a, b = sorted(first), sorted(flat)
            if a != b:
                raise ValueError(f"the entries' transforms give different keys: {self.names[first_g]} gives {a}, "
                                 f"{self.names[g]} gives {b}; a mixture batch needs one structure (make the "
                                 "entries' data transforms output the same keys)")
        leaves = {k: [(g, rows, flat[k]) for g, rows, flat in flats] for k in first}
        return _t.unflatten_dict({k: self._merge_leaf(k, v, size) for k, v in leaves.items()})

    def _merge_leaf(self, key: str, values: list[tuple[int, np.ndarray, Any]], size: int) -> Any:
        if all(isinstance(v, list | tuple) for _, _, v in values):
            out: list[Any] = [None] * size
            for _, rows, v in values:
                for r, x in zip(rows.tolist(), v, strict=True):
                    out[r] = x
            return out
        arrays = [(g, rows, np.asarray(v)) for g, rows, v in values]
        if key in PADDED and self.pad_dim is not None:
            arrays = [(g, rows, self._pad(key, g, a)) for g, rows, a in arrays]
        shapes = {a.shape[1:] for _, _, a in arrays}
        if len(shapes) > 1:
            got = ", ".join(f"{self.names[g]}: {a.shape[1:]}" for g, _, a in arrays)
            raise ValueError(f"key {key!r} has different shapes per row in the entries' outputs ({got}); a mixture "
                             "batch stacks them (resize images to one size, pad vectors to the model's action_dim)")
        dtype = np.result_type(*[a.dtype for _, _, a in arrays])
        if self.float_dtype is not None and np.issubdtype(dtype, np.floating):
            dtype = self.float_dtype  # one dtype in every batch, whichever entries its rows come from
        out_arr = np.empty((size, *shapes.pop()), dtype=dtype)
        for _, rows, a in arrays:
            out_arr[rows] = a
        return out_arr

    def _pad(self, key: str, g: int, a: np.ndarray) -> np.ndarray:
        dim = a.shape[-1]
        if dim > self.pad_dim:  # type: ignore[operator]
            raise ValueError(f"{self.names[g]}: {key} has {dim} dims, more than the model's action_dim="
                             f"{self.pad_dim}; raise the model's action_dim")
        return _t.pad_to_dim(a, self.pad_dim, axis=-1)  # type: ignore[arg-type]


def require_entry_norm_stats(config: Any, data: MixtureData) -> None:
    """The "Normalization stats not found" error for the first entry without norm stats, naming it."""
    for name, entry in zip(data.names, data.entries, strict=True):
        if entry.norm_stats is not None:
            continue
        try:
            path = norm_stats_dir(config, entry) / NORM_STATS_FILE
        except ValueError:
            path = None
        raise ConfigError(f"{name}: " + missing_norm_stats_message(config.name, path))


def mixture_loader_parts(config: Any, data: MixtureData, *, skip_norm_stats: bool, open_sources: Callable[[Any], list],
                         stages_of: Callable[..., list], image_dtype_of: Callable[[list], str],
                         chunks_of: Callable[..., list]) -> tuple[list, dict[str, Any], MixtureTransform]:
    """(sources, MixtureLoader keyword arguments, the transform) of a mixture config: every entry's datasets
    (group = entry), per-source action chunks at each entry's fps, per-entry decode size and image format,
    flattened weights and filters. The single-config helpers of `fastmix.openpi.data_loader` come as arguments
    (`transform_stages`, `raw_image_dtype`, `action_delta_timestamps`: that module imports this one)."""
    if not skip_norm_stats:
        require_entry_norm_stats(config, data)
    horizon = int(config.model.action_horizon)
    sources, groups, deltas, sizes, dtypes, stages, pads = [], [], [], [], [], [], set()
    for g, entry in enumerate(data.entries):
        opened = open_sources(entry)
        if [s.name for s in opened] != entry_repo_ids(entry):
            raise ConfigError(f"{data.names[g]}: open_sources gave {[s.name for s in opened]}")
        keys = tuple(getattr(entry, "action_sequence_keys", ("actions",)))
        deltas += chunks_of(opened, keys, horizon)
        sources += opened
        groups += [g] * len(opened)
        st, pad = entry_stages(stages_of(entry, skip_norm_stats=skip_norm_stats))
        stages.append(st)
        pads.add(pad)
        sizes.append(_t.decode_size(st))
        dtypes.append(image_dtype_of(st))
    if len(pads) > 1:
        raise ConfigError(f"the entries pad state/actions to different sizes ({sorted(pads, key=str)}); a mixture "
                          "batch needs one model action_dim")
    weights, weighting = flat_weights(data, sources)
    kwargs = dict(dataset_weights=weights, weighting=weighting, frame_filters=flat_frame_filters(data),
                  delta_timestamps=deltas, groups=groups, resize_images=sizes, image_dtype=dtypes)
    transform = MixtureTransform(stages, pads.pop(), [bool(getattr(e, "prompt_from_task", False))
                                                      for e in data.entries], data.names,
                                 float_dtype=getattr(data, "float_dtype", "float32"))
    return sources, kwargs, transform


def is_mixture(data_config: Any) -> bool:
    return isinstance(data_config, MixtureData)


def meta_in_order(raw: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Meta fields of a grouped raw batch in batch order (`fastmix.loader.groups.in_batch_order`)."""
    from fastmix.loader.groups import in_batch_order

    return {k: in_batch_order(raw, k) for k in keys}


__all__ = ["MixtureTransform", "entry_stages", "is_mixture", "meta_in_order", "mixture_loader_parts",
           "require_entry_norm_stats"]
