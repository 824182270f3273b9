"""openpi's per-sample transforms replaced by batched equivalents that give the same bytes.

openpi applies its data transforms one sample at a time; fastmix's loader hands out whole batches, so applying
openpi's own transforms means splitting every batch into per-sample dicts and stacking them back, which costs
more than the transforms' own work. `batched(t)` maps a transform of a known openpi type, with exactly the known
fields, to a fastmix transform that works on the whole batch:

    RepackTransform, InjectDefaultPrompt, ResizeImages, PadStatesAndActions, DeltaActions (openpi.transforms),
    LiberoInputs (openpi.policies.libero_policy), DroidInputs (openpi.policies.droid_policy),
    AlohaInputs (openpi.policies.aloha_policy, with openpi's EXPECTED_CAMERAS)
                                                   → fastmix.openpi.transforms' batched versions;
    TokenizePrompt (openpi.transforms)             → `BatchedTokenizePrompt`, the same tokenizer called once
                                                     per distinct prompt (per row when the state is tokenized).

Anything else is returned unchanged and keeps the per-sample path (and declares no pixel effect: "change").
The policy transforms' batched versions take the loader's uint8 (B, H, W, C) frames and declare "keep", so an
entry with only these in its repack and data stages gets uint8 frames decoded straight to the size of a
`ResizeImages` in its model stage. Equality with each openpi tree's own pipeline, batch for batch, is what
`tests/seed/test_adapter.py`, `test_data_configs.py` and `test_mixture_configs.py` assert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix.openpi.transforms.aloha import EXPECTED_CAMERAS, AlohaInputs
from fastmix.openpi.transforms.base import DataDict, Transform
from fastmix.openpi.transforms.common import (
    DeltaActions,
    InjectDefaultPrompt,
    PadStatesAndActions,
    RepackTransform,
    ResizeImages,
)
from fastmix.openpi.transforms.droid import DroidInputs
from fastmix.openpi.transforms.effects import PixelEffect
from fastmix.openpi.transforms.libero import LiberoInputs

_TRANSFORMS = "openpi.transforms"
_LIBERO = "openpi.policies.libero_policy"
_DROID = "openpi.policies.droid_policy"
_ALOHA = "openpi.policies.aloha_policy"


@dataclasses.dataclass(frozen=True)
class BatchedTokenizePrompt(Transform):
    """openpi's `TokenizePrompt` on a batch: pops `prompt` (B strings), adds `tokenized_prompt` /
    `tokenized_prompt_mask` (B, max_len) from `transform.tokenizer.tokenize`, called once per distinct prompt
    (or once per row with `discrete_state_input`, whose tokens depend on the row's state)."""

    transform: Any

    def __call__(self, data: DataDict) -> DataDict:
        return self.transform(data)

    def batch(self, data: DataDict) -> DataDict:
        data = dict(data)
        prompts = data.pop("prompt", None)
        if prompts is None:
            raise ValueError("Prompt is required")
        prompts = [p if isinstance(p, str) else np.asarray(p).item() for p in prompts]
        tokenize = self.transform.tokenizer.tokenize
        if getattr(self.transform, "discrete_state_input", False):
            state = data.get("state")
            if state is None:
                raise ValueError("State is required.")
            rows = [tokenize(p, np.asarray(state[i])) for i, p in enumerate(prompts)]
        else:
            cache = {p: tokenize(p, None) for p in dict.fromkeys(prompts)}
            rows = [cache[p] for p in prompts]
        data["tokenized_prompt"] = np.stack([np.asarray(r[0]) for r in rows])
        data["tokenized_prompt_mask"] = np.stack([np.asarray(r[1]) for r in rows])
        return data

    def pixel_effect(self) -> PixelEffect:
        """"keep": it only replaces `prompt` with token arrays."""
        return PixelEffect.KEEP


def _fields(t: Any) -> tuple[str, ...] | None:
    return tuple(f.name for f in dataclasses.fields(t)) if dataclasses.is_dataclass(t) else None


# (module, class name, its dataclass fields) -> batched equivalent
_EQUIVALENTS: dict[tuple[str, str, tuple[str, ...]], Callable[[Any], Transform]] = {
    (_TRANSFORMS, "RepackTransform", ("structure",)): lambda t: RepackTransform(t.structure),
    (_TRANSFORMS, "InjectDefaultPrompt", ("prompt",)): lambda t: InjectDefaultPrompt(t.prompt),
    (_TRANSFORMS, "ResizeImages", ("height", "width")): lambda t: ResizeImages(t.height, t.width),
    (_TRANSFORMS, "PadStatesAndActions", ("model_action_dim",)): lambda t: PadStatesAndActions(t.model_action_dim),
    (_TRANSFORMS, "DeltaActions", ("mask",)): lambda t: DeltaActions(t.mask),
    (_TRANSFORMS, "TokenizePrompt", ("tokenizer", "discrete_state_input")): BatchedTokenizePrompt,
    (_LIBERO, "LiberoInputs", ("model_type",)): lambda t: LiberoInputs(t.model_type),
    (_DROID, "DroidInputs", ("model_type",)): lambda t: DroidInputs(t.model_type),
    (_ALOHA, "AlohaInputs", ("adapt_to_pi",)): lambda t: (
        AlohaInputs(bool(t.adapt_to_pi)) if tuple(t.EXPECTED_CAMERAS) == EXPECTED_CAMERAS else t),
}


def batched(t: Any) -> Any:
    """The batched equivalent of openpi transform `t`, or `t` itself when its type is not a known one."""
    if isinstance(t, Transform):
        return t
    make = _EQUIVALENTS.get((type(t).__module__, type(t).__name__, _fields(t) or ()))
    return t if make is None else make(t)


__all__ = ["BatchedTokenizePrompt", "batched"]
