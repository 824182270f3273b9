"""openpi-compatible data transforms, applied per sample (openpi's semantics) or to whole batches.

Every transform is a frozen dataclass named and shaped as its openpi counterpart (`openpi.transforms`,
`openpi.policies.libero_policy`, `droid_policy`, `aloha_policy`). Calling it on one sample (`t(sample)`) does
what openpi does. `t.batch(batch)` does the same to a whole batch at once (leading dimension B, strings as `list[str]`), vectorized where the math
allows. `apply_batch` runs a sequence of transforms on a batch: a fastmix `Transform` runs through `.batch`, any
other callable (e.g. an openpi tokenizer transform) is applied per sample and the results are stacked again, so
users' own transforms run unchanged.

    base       the protocol, `Transform`, `Group`, composition, batch <-> samples, `flatten_dict`
    effects    `PixelEffect` (what a transform declares it does to camera pixels) and `decode_size`
    common     repacking, prompts, action math, padding, `ResizeImages` / `resize_with_pad`, `RemoveStrings`
    libero     `LiberoInputs`, `LiberoOutputs`
    droid      `DroidInputs`
    aloha      `AlohaInputs`
    normalize  `Normalize`, `Unnormalize`
    batched    openpi transforms of known types -> their batched equivalents (`batched.batched`)

Every public name of those modules is importable from here (`from fastmix.openpi import transforms as T;
T.RepackTransform`). Names are looked up in their module on first use, so the submodules import each other
without an import cycle through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# submodule -> the public names it exports (each module's own `__all__`)
_MODULES: dict[str, tuple[str, ...]] = {
    "base": ("IMAGE_KEYS", "CompositeTransform", "DataDict", "DataTransformFn", "Group", "Transform",
             "apply_batch", "apply_per_sample", "batch_size_of", "compose", "flatten_dict", "split_batch",
             "stack_samples", "unflatten_dict"),
    "effects": ("PixelEffect", "decode_size", "pixel_effect_of"),
    "common": ("AbsoluteActions", "DeltaActions", "InjectDefaultPrompt", "PadStatesAndActions",
               "PromptFromLeRobotTask", "RemoveStrings", "RepackTransform", "ResizeImages", "SubsampleActions",
               "make_bool_mask", "pad_to_dim", "resize_with_pad"),
    "libero": ("LiberoInputs", "LiberoOutputs"),
    "droid": ("DroidInputs",),
    "aloha": ("AlohaInputs",),
    "normalize": ("Normalize", "Unnormalize"),
    "batched": ("BatchedTokenizePrompt",),  # `batched.batched` stays there: `batched` names the module here
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "AbsoluteActions",
    "AlohaInputs",
    "BatchedTokenizePrompt",
    "CompositeTransform",
    "DataDict",
    "DataTransformFn",
    "DeltaActions",
    "DroidInputs",
    "Group",
    "IMAGE_KEYS",
    "InjectDefaultPrompt",
    "LiberoInputs",
    "LiberoOutputs",
    "Normalize",
    "PadStatesAndActions",
    "PixelEffect",
    "PromptFromLeRobotTask",
    "RemoveStrings",
    "RepackTransform",
    "ResizeImages",
    "SubsampleActions",
    "Transform",
    "Unnormalize",
    "apply_batch",
    "apply_per_sample",
    "batch_size_of",
    "compose",
    "decode_size",
    "flatten_dict",
    "make_bool_mask",
    "pad_to_dim",
    "pixel_effect_of",
    "resize_with_pad",
    "split_batch",
    "stack_samples",
    "unflatten_dict",
]  # sorted; each name found in its module through `_EXPORTS`

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on first use
    from fastmix.openpi.transforms.aloha import AlohaInputs
    from fastmix.openpi.transforms.base import (
        IMAGE_KEYS,
        CompositeTransform,
        DataDict,
        DataTransformFn,
        Group,
        Transform,
        apply_batch,
        apply_per_sample,
        batch_size_of,
        compose,
        flatten_dict,
        split_batch,
        stack_samples,
        unflatten_dict,
    )
    from fastmix.openpi.transforms.batched import BatchedTokenizePrompt
    from fastmix.openpi.transforms.common import (
        AbsoluteActions,
        DeltaActions,
        InjectDefaultPrompt,
        PadStatesAndActions,
        PromptFromLeRobotTask,
        RemoveStrings,
        RepackTransform,
        ResizeImages,
        SubsampleActions,
        make_bool_mask,
        pad_to_dim,
        resize_with_pad,
    )
    from fastmix.openpi.transforms.droid import DroidInputs
    from fastmix.openpi.transforms.effects import PixelEffect, decode_size, pixel_effect_of
    from fastmix.openpi.transforms.libero import LiberoInputs, LiberoOutputs
    from fastmix.openpi.transforms.normalize import Normalize, Unnormalize


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmix.openpi.transforms' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_MODULES})
