"""The transform protocol and the plumbing every transform shares: composition and batch <-> samples.

A fastmix `Transform` is called on one sample (`t(sample)`, openpi's semantics) or, with `t.batch(batch)`, on
a whole batch (leading dimension B, strings as `list[str]`). `apply_batch` runs a sequence of transforms on a
batch: a fastmix `Transform` runs through `.batch`, any other callable (e.g. an openpi tokenizer transform) is
applied per sample and the results are stacked again, so users' own transforms run unchanged. Each `Transform`
also declares what it does to camera pixels (`pixel_effect`, see `effects`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fastmix.openpi.transforms.effects import PixelEffect, pixel_effect_of

DataDict = dict[str, Any]

# openpi's model image keys (openpi.models.model.IMAGE_KEYS).
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@runtime_checkable
class DataTransformFn(Protocol):
    """openpi's transform protocol: a callable from one (possibly nested) sample dict to another."""

    def __call__(self, data: DataDict) -> DataDict: ...


class Transform:
    """Base of fastmix transforms: `__call__` is the per-sample openpi semantics, `batch` the batched one.

    The default `batch` is `__call__`, right for transforms whose numpy math broadcasts over a leading batch
    dimension. Transforms never modify their input's arrays in place. `pixel_effect` declares what the
    transform does to camera pixels; subclasses that leave them alone or resize them override it.
    """

    def __call__(self, data: DataDict) -> DataDict:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, data: DataDict) -> DataDict:
        return self(data)

    def pixel_effect(self) -> PixelEffect:
        """What this transform does to camera pixels; `PixelEffect.CHANGE` unless a subclass declares more."""
        return PixelEffect.CHANGE


# ---------------------------------------------------------------------------------------------- composition


@dataclasses.dataclass(frozen=True)
class Group:
    """A group of transforms: `inputs` run on data going into the model, `outputs` on data coming out."""

    inputs: Sequence[DataTransformFn] = ()
    outputs: Sequence[DataTransformFn] = ()

    def push(self, *, inputs: Sequence[DataTransformFn] = (), outputs: Sequence[DataTransformFn] = ()) -> Group:
        """A new group with `inputs` appended at the end and `outputs` prepended at the beginning."""
        return Group(inputs=(*self.inputs, *inputs), outputs=(*outputs, *self.outputs))


@dataclasses.dataclass(frozen=True)
class CompositeTransform(Transform):
    """Applies `transforms` in order (per sample or, with `.batch`, to a batch)."""

    transforms: Sequence[DataTransformFn]

    def __call__(self, data: DataDict) -> DataDict:
        for t in self.transforms:
            data = t(data)
        return data

    def batch(self, data: DataDict) -> DataDict:
        return apply_batch(self.transforms, data)

    def pixel_effect(self) -> PixelEffect:
        """The effects of `transforms` in order (`PixelEffect.then`): "keep" when all keep, a resize when one
        resizes and the rest keep, else "change"."""
        effect = PixelEffect.KEEP
        for t in self.transforms:
            effect = effect.then(pixel_effect_of(t))
        return effect


def compose(transforms: Sequence[DataTransformFn]) -> CompositeTransform:
    """Compose a sequence of transforms into one."""
    return CompositeTransform(tuple(transforms))


def apply_batch(
    transforms: Sequence[DataTransformFn],
    batch: DataDict,
    *,
    trace: Callable[[int, DataTransformFn, DataDict, DataDict], None] | None = None,
) -> DataDict:
    """Apply `transforms` in order to `batch`; `trace(i, t, before, after)` is called after each one."""
    for i, t in enumerate(transforms):
        before = batch
        batch = t.batch(batch) if isinstance(t, Transform) else apply_per_sample(t, batch)
        if trace is not None:
            trace(i, t, before, batch)
    return batch


# ----------------------------------------------------------------------------------- batch <-> samples


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """The leading dimension of the first array (or list) leaf of `batch`."""
    for v in flatten_dict(batch).values():
        if isinstance(v, np.ndarray | list | tuple) or hasattr(v, "shape"):
            shape = getattr(v, "shape", None)
            if shape is not None and len(shape) == 0:
                continue
            return int(shape[0]) if shape is not None else len(v)
    raise ValueError(f"cannot infer the batch size: no array leaf among keys {sorted(flatten_dict(batch))}")


def _map_with_path(tree: Any, fn: Callable[[str, Any], Any], prefix: str = "") -> Any:
    """Apply `fn(path, leaf)` to every leaf of a nested dict, keeping its structure (keys may contain '/')."""
    if isinstance(tree, Mapping):
        return {k: _map_with_path(v, fn, f"{prefix}/{k}" if prefix else str(k)) for k, v in tree.items()}
    return fn(prefix, tree)


def _take(v: Any, i: int) -> Any:
    if isinstance(v, list | tuple):
        return v[i]
    return np.array(np.asarray(v)[i])


def split_batch(batch: Mapping[str, Any]) -> list[DataDict]:
    """Split a batch into per-sample dicts (copies, so per-sample transforms may modify them in place)."""
    n = batch_size_of(batch)
    return [_map_with_path(batch, lambda _p, v, i=i: _take(v, i)) for i in range(n)]


def _stack_leaves(path: str, values: list[Any]) -> Any:
    if all(isinstance(v, str) or (isinstance(v, np.ndarray) and v.dtype.kind == "U") for v in values):
        return [str(v) for v in values]
    try:
        return np.stack([np.asarray(v) for v in values], axis=0)
    except ValueError as e:
        raise ValueError(f"cannot stack key {path!r} across samples: {e}") from None


def _stack_trees(path: str, trees: list[Any]) -> Any:
    first = trees[0]
    if isinstance(first, Mapping):
        out = {}
        for k in first:
            sub = f"{path}/{k}" if path else str(k)
            try:
                out[k] = _stack_trees(sub, [t[k] for t in trees])
            except (KeyError, TypeError):
                raise ValueError(f"sample is missing key {sub!r} that the first sample has") from None
        return out
    return _stack_leaves(path, trees)


def stack_samples(samples: Sequence[Mapping[str, Any]]) -> DataDict:
    """Stack per-sample dicts into a batch (openpi's collate); string leaves become `list[str]`."""
    if not samples:
        raise ValueError("cannot stack an empty list of samples")
    return _stack_trees("", list(samples))


def apply_per_sample(transform: DataTransformFn, batch: DataDict) -> DataDict:
    """Run a per-sample (openpi-style) transform on each sample of `batch` and stack the results."""
    return stack_samples([transform(s) for s in split_batch(batch)])


def flatten_dict(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Flatten a nested dict; keys joined with '/' (openpi's `flatten_dict`)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for k, v in node.items():
            key = f"{prefix}{sep}{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                walk(key, v)
            else:
                out[key] = v

    walk("", tree)
    return out


def unflatten_dict(flat: Mapping[str, Any], sep: str = "/") -> DataDict:
    """Inverse of `flatten_dict`."""
    out: DataDict = {}
    for key, v in flat.items():
        parts = key.split(sep)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


__all__ = [
    "IMAGE_KEYS",
    "CompositeTransform",
    "DataDict",
    "DataTransformFn",
    "Group",
    "Transform",
    "apply_batch",
    "apply_per_sample",
    "batch_size_of",
    "compose",
    "flatten_dict",
    "split_batch",
    "stack_samples",
    "unflatten_dict",
]
