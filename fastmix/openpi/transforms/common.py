"""openpi's general-purpose transforms: repacking, prompts, action math, padding, image resizing.

Every transform here is a frozen dataclass named and shaped as its openpi counterpart (`openpi.transforms`).
Calling it on one sample (`t(sample)`) does what openpi does; `t.batch(batch)` does the same to a whole batch
at once (leading dimension B, strings as `list[str]`), vectorized where the math allows. Each declares what it
does to camera pixels (`pixel_effect`): `ResizeImages` a resize, the others "keep".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fastmix.openpi.transforms.base import DataDict, Transform, batch_size_of, flatten_dict
from fastmix.openpi.transforms.effects import PixelEffect

# ------------------------------------------------------------------------------------------- repacking


def _map_structure(structure: Any, fn: Callable[[str], Any]) -> Any:
    if isinstance(structure, Mapping):
        return {k: _map_structure(v, fn) for k, v in structure.items()}
    if isinstance(structure, list | tuple):
        return type(structure)(_map_structure(v, fn) for v in structure)
    return fn(structure)


@dataclasses.dataclass(frozen=True)
class RepackTransform(Transform):
    """Repacks a dict into a new one: `structure` maps new keys to '/'-flattened paths of old keys.

    Example: `{"images": {"cam_high": "observation.images.top"}, "state": "observation.state"}`.
    Keys not named in `structure` are dropped (as in openpi).
    """

    structure: Mapping[str, Any]

    def __call__(self, data: DataDict) -> DataDict:
        flat = flatten_dict(data)

        def pick(path: str) -> Any:
            if path not in flat:
                raise KeyError(
                    f"RepackTransform: key {path!r} is not in the data; available keys: {sorted(flat)}"
                )
            return flat[path]

        return _map_structure(self.structure, pick)

    def pixel_effect(self) -> PixelEffect:
        """"keep": only renames and drops keys; the arrays themselves are passed on."""
        return PixelEffect.KEEP


# ------------------------------------------------------------------------------------------- prompts


@dataclasses.dataclass(frozen=True)
class InjectDefaultPrompt(Transform):
    """Sets `prompt` to `prompt` when the data has none (no-op when `prompt` is None)."""

    prompt: str | None

    def __call__(self, data: DataDict) -> DataDict:
        if self.prompt is not None and "prompt" not in data:
            data = {**data, "prompt": np.asarray(self.prompt)}
        return data

    def batch(self, data: DataDict) -> DataDict:
        if self.prompt is not None and "prompt" not in data:
            data = {**data, "prompt": [self.prompt] * batch_size_of(data)}
        return data

    def pixel_effect(self) -> PixelEffect:
        """"keep": only adds `prompt`."""
        return PixelEffect.KEEP


@dataclasses.dataclass(frozen=True)
class PromptFromLeRobotTask(Transform):
    """Sets `prompt` to the LeRobot task of the sample's `task_index` (`tasks`: task_index -> task)."""

    tasks: Mapping[int, str]

    def _lookup(self, task_index: int) -> str:
        prompt = self.tasks.get(task_index)
        if prompt is None:
            raise ValueError(f"task_index={task_index} not found in task mapping: {dict(self.tasks)}")
        return prompt

    def __call__(self, data: DataDict) -> DataDict:
        if "task_index" not in data:
            raise ValueError('Cannot extract prompt without "task_index"')
        return {**data, "prompt": self._lookup(int(np.asarray(data["task_index"])))}

    def batch(self, data: DataDict) -> DataDict:
        if "task_index" not in data:
            raise ValueError('Cannot extract prompt without "task_index"')
        idx = np.asarray(data["task_index"]).reshape(-1)
        cache = {int(t): self._lookup(int(t)) for t in np.unique(idx)}
        return {**data, "prompt": [cache[int(t)] for t in idx]}

    def pixel_effect(self) -> PixelEffect:
        """"keep": only adds `prompt`."""
        return PixelEffect.KEEP


# ------------------------------------------------------------------------------------------ actions


def make_bool_mask(*dims: int) -> tuple[bool, ...]:
    """`make_bool_mask(2, -2, 2) == (True, True, False, False, True, True)`: n>0 gives n Trues, n<0 |n| Falses."""
    out: list[bool] = []
    for d in dims:
        out.extend([d > 0] * abs(d))
    return tuple(out)


def _shift_actions(data: DataDict, mask: Sequence[bool] | None, sign: float) -> DataDict:
    if "actions" not in data or mask is None:
        return data
    m = np.asarray(mask, dtype=bool)
    dims = m.shape[-1]
    state = np.asarray(data["state"])
    actions = np.array(data["actions"], copy=True)
    if actions.shape[-1] < dims or state.shape[-1] < dims:
        raise ValueError(
            f"delta action mask has {dims} dims but actions have {actions.shape[-1]} and state {state.shape[-1]}"
        )
    offset = np.where(m, state[..., :dims], 0).astype(actions.dtype, copy=False)
    actions[..., :dims] += sign * np.expand_dims(offset, axis=-2)
    return {**data, "actions": actions}


@dataclasses.dataclass(frozen=True)
class DeltaActions(Transform):
    """Absolute -> delta actions: subtracts the current state from the masked action dims of every step."""

    mask: Sequence[bool] | None

    def __call__(self, data: DataDict) -> DataDict:
        return _shift_actions(data, self.mask, -1.0)

    def pixel_effect(self) -> PixelEffect:
        """"keep": only `actions` change."""
        return PixelEffect.KEEP


@dataclasses.dataclass(frozen=True)
class AbsoluteActions(Transform):
    """Delta -> absolute actions: adds the current state to the masked action dims of every step."""

    mask: Sequence[bool] | None

    def __call__(self, data: DataDict) -> DataDict:
        return _shift_actions(data, self.mask, 1.0)

    def pixel_effect(self) -> PixelEffect:
        """"keep": only `actions` change."""
        return PixelEffect.KEEP


@dataclasses.dataclass(frozen=True)
class SubsampleActions(Transform):
    """Keeps every `stride`-th step of the action chunk."""

    stride: int

    def __call__(self, data: DataDict) -> DataDict:
        return {**data, "actions": np.asarray(data["actions"])[:: self.stride]}

    def batch(self, data: DataDict) -> DataDict:
        return {**data, "actions": np.asarray(data["actions"])[:, :: self.stride]}

    def pixel_effect(self) -> PixelEffect:
        """"keep": only `actions` change."""
        return PixelEffect.KEEP


def pad_to_dim(x: np.ndarray, target_dim: int, axis: int = -1, value: float = 0.0) -> np.ndarray:
    """Pad `x` with `value` along `axis` up to `target_dim` (unchanged when already that long or longer)."""
    x = np.asarray(x)
    current = x.shape[axis]
    if current >= target_dim:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, target_dim - current)
    return np.pad(x, widths, constant_values=value)


@dataclasses.dataclass(frozen=True)
class PadStatesAndActions(Transform):
    """Zero-pads `state` and `actions` to the model's action dimension."""

    model_action_dim: int

    def __call__(self, data: DataDict) -> DataDict:
        out = {**data, "state": pad_to_dim(data["state"], self.model_action_dim, axis=-1)}
        if "actions" in data:
            out["actions"] = pad_to_dim(data["actions"], self.model_action_dim, axis=-1)
        return out

    def pixel_effect(self) -> PixelEffect:
        """"keep": only `state` and `actions` change."""
        return PixelEffect.KEEP


# ------------------------------------------------------------------------------------------- images


def resize_with_pad(images: np.ndarray, height: int, width: int, method: int | None = None) -> np.ndarray:
    """Resize uint8 images [..., H, W, C] to (height, width) keeping the aspect ratio, zero-padding the rest.

    Same as openpi's `image_tools.resize_with_pad` (PIL, bilinear by default; the resized image is centred,
    padding split with the extra row/column at the bottom/right). Images already that size are returned as is.
    Delegates to `fastmix.kernels.resize.resize_with_pad`: uint8 BILINEAR images go through a native replica of PIL's
    resample once it has been checked bit-identical to the installed PIL for that geometry, others through PIL.
    """
    from fastmix.kernels.resize import resize_with_pad as _resize_with_pad

    return _resize_with_pad(images, height, width, method)


@dataclasses.dataclass(frozen=True)
class ResizeImages(Transform):
    """Resizes every image under `image` to (height, width) with `resize_with_pad`."""

    height: int
    width: int

    def __call__(self, data: DataDict) -> DataDict:
        images = {k: resize_with_pad(v, self.height, self.width) for k, v in data["image"].items()}
        return {**data, "image": images}

    def pixel_effect(self) -> PixelEffect:
        """A resize of the images under `image` to (`height`, `width`) pixels."""
        return PixelEffect.resize(self.height, self.width)


# ------------------------------------------------------------------------------------------ misc


@dataclasses.dataclass(frozen=True)
class RemoveStrings(Transform):
    """Drops string leaves (prompts), as openpi's compute_norm_stats does."""

    def __call__(self, data: DataDict) -> DataDict:
        return {k: v for k, v in data.items() if not _is_string_leaf(v)}

    def pixel_effect(self) -> PixelEffect:
        """"keep": only drops string leaves."""
        return PixelEffect.KEEP


def _is_string_leaf(v: Any) -> bool:
    if isinstance(v, str):
        return True
    if isinstance(v, list | tuple):
        return bool(v) and all(isinstance(s, str) for s in v)
    return np.asarray(v).dtype.kind in "US" if not isinstance(v, Mapping) else False


__all__ = [
    "AbsoluteActions",
    "DeltaActions",
    "InjectDefaultPrompt",
    "PadStatesAndActions",
    "PromptFromLeRobotTask",
    "RemoveStrings",
    "RepackTransform",
    "ResizeImages",
    "SubsampleActions",
    "make_bool_mask",
    "pad_to_dim",
    "resize_with_pad",
]
