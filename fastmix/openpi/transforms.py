"""openpi-compatible data transforms, applied per sample (openpi's semantics) or to whole batches.

Every transform here is a frozen dataclass named and shaped as its openpi counterpart
(`openpi.transforms`, `openpi.policies.libero_policy`). Calling it on one sample (`t(sample)`) does what
openpi does. `t.batch(batch)` does the same to a whole batch at once (leading dimension B, strings as
`list[str]`), vectorized where the math allows. `apply_batch` runs a sequence of transforms on a batch: a
fastmix `Transform` runs through `.batch`, any other callable (e.g. an openpi tokenizer transform) is applied
per sample and the results are stacked again, so users' own transforms run unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from fastmix.errors import ConfigError

if TYPE_CHECKING:  # only named in annotations: transforms stay a leaf
    from fastmix.openpi.norm_stats import NormStats

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
    dimension. Transforms never modify their input's arrays in place.
    """

    def __call__(self, data: DataDict) -> DataDict:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, data: DataDict) -> DataDict:
        return self(data)


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


# --------------------------------------------------------------------------------------------- LIBERO


def _parse_image(image: Any) -> np.ndarray:
    """openpi's LIBERO image parsing for one image: float (C,H,W) in [0,1] -> uint8 (H,W,C) (truncating)."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        image = (255 * image).astype(np.uint8)
    if image.shape[0] == 3:
        image = np.moveaxis(image, 0, -1)
    return image


def _parse_images(images: Any) -> np.ndarray:
    """`_parse_image` on a batch (B, ...): the CHW test looks at axis 1, never at the batch axis."""
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.floating):
        images = (255 * images).astype(np.uint8)
    if images.ndim == 4 and images.shape[1] == 3:
        images = np.moveaxis(images, 1, -1)
    return images


@dataclasses.dataclass(frozen=True)
class LiberoInputs(Transform):
    """LIBERO observation -> openpi model inputs (`image`/`image_mask` with openpi's camera keys, `state`).

    Reads `observation/image`, `observation/wrist_image`, `observation/state`, optional `actions` and
    `prompt`. The right wrist camera is zero-filled; it is masked out except for pi0-FAST.
    `model_type` is a `fastmix.openpi.config.ModelType` (or its string value, or openpi's enum).
    """

    model_type: Any

    def _right_mask(self) -> bool:
        return str(getattr(self.model_type, "value", self.model_type)) == "pi0_fast"

    def _assemble(self, data: DataDict, base: np.ndarray, wrist: np.ndarray, masks: dict,
                  zeros: np.ndarray | None = None) -> DataDict:
        inputs: DataDict = {
            "state": data["observation/state"],
            "image": {"base_0_rgb": base, "left_wrist_0_rgb": wrist,
                      "right_wrist_0_rgb": np.zeros_like(base) if zeros is None else zeros},
            "image_mask": masks,
        }
        if "actions" in data:
            inputs["actions"] = data["actions"]
        if "prompt" in data:
            inputs["prompt"] = data["prompt"]
        return inputs

    def __call__(self, data: DataDict) -> DataDict:
        base = _parse_image(data["observation/image"])
        wrist = _parse_image(data["observation/wrist_image"])
        masks = {"base_0_rgb": np.True_, "left_wrist_0_rgb": np.True_, "right_wrist_0_rgb": np.bool_(self._right_mask())}
        return self._assemble(data, base, wrist, masks)

    def batch(self, data: DataDict) -> DataDict:
        base = _parse_images(data["observation/image"])
        wrist = _parse_images(data["observation/wrist_image"])
        n = base.shape[0]
        masks = {
            "base_0_rgb": np.ones(n, dtype=bool),
            "left_wrist_0_rgb": np.ones(n, dtype=bool),
            "right_wrist_0_rgb": np.full(n, self._right_mask(), dtype=bool),
        }
        # the absent camera as a read-only zero-stride view: no memory, and converting it to float is a fill
        # (`fastmix.openpi.data_loader.observation_float`); anything that writes to it fails loudly
        return self._assemble(data, base, wrist, masks, zeros=np.broadcast_to(np.zeros((), base.dtype), base.shape))


@dataclasses.dataclass(frozen=True)
class LiberoOutputs(Transform):
    """Model outputs -> LIBERO actions: the first `action_dim` (7) action dimensions."""

    action_dim: int = 7

    def __call__(self, data: DataDict) -> DataDict:
        return {"actions": np.asarray(data["actions"][..., : self.action_dim])}


# -------------------------------------------------------------------------------------- normalization


def _check_quantile_stats(norm_stats: Mapping[str, Any]) -> None:
    for k, v in flatten_dict(dict(norm_stats)).items():
        if getattr(v, "q01", None) is None or getattr(v, "q99", None) is None:
            raise ConfigError(
                f"quantile stats must be provided if use_quantile_norm is True. Key {k} is missing q01 or q99."
            )


def _flat_stats(norm_stats: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a (possibly nested) dict of NormStats-like leaves (anything with .mean/.std)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for k, v in node.items():
            key = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                walk(key, v)
            else:
                out[key] = v

    walk("", norm_stats)
    return out


def _as_float(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _apply_stats(data: DataDict, stats: dict[str, Any], fn: Callable, strict: bool) -> DataDict:
    if strict:
        present = set(flatten_dict(data))
        missing = [k for k in stats if k not in present]
        if missing:
            raise KeyError(f"norm stats keys {missing} are not in the data; data keys: {sorted(present)}")

    def leaf(path: str, v: Any) -> Any:
        if path not in stats:
            return v
        x = _as_float(v)
        return fn(x, stats[path]).astype(x.dtype, copy=False)

    return _map_with_path(data, leaf)


@dataclasses.dataclass(frozen=True)
class _StatsTransform(Transform):
    """Shared body of Normalize / Unnormalize: applies `_zscore` or `_quantile` to every key in `norm_stats`
    (None: identity); `_require_all_keys` says whether a stats key missing from the data is an error."""

    norm_stats: Mapping[str, NormStats] | None
    use_quantiles: bool = False

    def __post_init__(self) -> None:
        if self.norm_stats is not None and self.use_quantiles:
            _check_quantile_stats(self.norm_stats)

    @property
    def _require_all_keys(self) -> bool:
        return True

    def __call__(self, data: DataDict) -> DataDict:
        if self.norm_stats is None:
            return data
        fn = self._quantile if self.use_quantiles else self._zscore
        return _apply_stats(data, _flat_stats(self.norm_stats), fn, self._require_all_keys)

    @staticmethod
    def _zscore(x: np.ndarray, s: NormStats) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _quantile(x: np.ndarray, s: NormStats) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Normalize(_StatsTransform):
    """Normalizes the keys named in `norm_stats` (openpi's math; output keeps the input's float dtype).

    z-score: `(x - mean) / (std + 1e-6)`; quantile: `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1` (q01 -> -1,
    q99 -> 1). Stats longer than the data's last dimension are truncated to it. strict: a stats key missing
    from the data raises KeyError.
    """

    strict: bool = False

    @property
    def _require_all_keys(self) -> bool:
        return self.strict

    @staticmethod
    def _zscore(x: np.ndarray, s: NormStats) -> np.ndarray:
        d = x.shape[-1]
        mean, std = np.asarray(s.mean)[..., :d], np.asarray(s.std)[..., :d]
        return (x - mean) / (std + 1e-6)

    @staticmethod
    def _quantile(x: np.ndarray, s: NormStats) -> np.ndarray:
        d = x.shape[-1]
        q01, q99 = np.asarray(s.q01)[..., :d], np.asarray(s.q99)[..., :d]
        return (x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0


@dataclasses.dataclass(frozen=True)
class Unnormalize(_StatsTransform):
    """Inverse of `Normalize`; data dimensions beyond the stats' length pass through (mean 0, std 1). Every
    stats key must be in the data (openpi's behaviour)."""

    @staticmethod
    def _zscore(x: np.ndarray, s: NormStats) -> np.ndarray:
        mean = pad_to_dim(np.asarray(s.mean), x.shape[-1], axis=-1, value=0.0)
        std = pad_to_dim(np.asarray(s.std), x.shape[-1], axis=-1, value=1.0)
        return x * (std + 1e-6) + mean

    @staticmethod
    def _quantile(x: np.ndarray, s: NormStats) -> np.ndarray:
        q01, q99 = np.asarray(s.q01), np.asarray(s.q99)
        d = q01.shape[-1]
        head = (x[..., :d] + 1.0) / 2.0 * (q99 - q01 + 1e-6) + q01
        if d < x.shape[-1]:
            return np.concatenate([head, x[..., d:]], axis=-1)
        return head


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


@dataclasses.dataclass(frozen=True)
class AbsoluteActions(Transform):
    """Delta -> absolute actions: adds the current state to the masked action dims of every step."""

    mask: Sequence[bool] | None

    def __call__(self, data: DataDict) -> DataDict:
        return _shift_actions(data, self.mask, 1.0)


@dataclasses.dataclass(frozen=True)
class SubsampleActions(Transform):
    """Keeps every `stride`-th step of the action chunk."""

    stride: int

    def __call__(self, data: DataDict) -> DataDict:
        return {**data, "actions": np.asarray(data["actions"])[:: self.stride]}

    def batch(self, data: DataDict) -> DataDict:
        return {**data, "actions": np.asarray(data["actions"])[:, :: self.stride]}


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


# ------------------------------------------------------------------------------------------ misc


@dataclasses.dataclass(frozen=True)
class RemoveStrings(Transform):
    """Drops string leaves (prompts), as openpi's compute_norm_stats does."""

    def __call__(self, data: DataDict) -> DataDict:
        return {k: v for k, v in data.items() if not _is_string_leaf(v)}


def _is_string_leaf(v: Any) -> bool:
    if isinstance(v, str):
        return True
    if isinstance(v, list | tuple):
        return bool(v) and all(isinstance(s, str) for s in v)
    return np.asarray(v).dtype.kind in "US" if not isinstance(v, Mapping) else False


__all__ = [
    "IMAGE_KEYS",
    "AbsoluteActions",
    "CompositeTransform",
    "DataTransformFn",
    "DeltaActions",
    "Group",
    "InjectDefaultPrompt",
    "LiberoInputs",
    "LiberoOutputs",
    "Normalize",
    "PadStatesAndActions",
    "PromptFromLeRobotTask",
    "RemoveStrings",
    "RepackTransform",
    "ResizeImages",
    "SubsampleActions",
    "Transform",
    "Unnormalize",
    "apply_batch",
    "apply_per_sample",
    "compose",
    "flatten_dict",
    "make_bool_mask",
    "pad_to_dim",
    "resize_with_pad",
    "split_batch",
    "stack_samples",
    "unflatten_dict",
]
