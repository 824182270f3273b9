"""openpi's LIBERO policy transforms (`openpi.policies.libero_policy`): `LiberoInputs`, `LiberoOutputs`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fastmix.openpi.transforms.base import DataDict, Transform
from fastmix.openpi.transforms.effects import PixelEffect


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

    def pixel_effect(self) -> PixelEffect:
        """"keep" for uint8 (H, W, C) images with H != 3, the loader's frames: `observation/image` and
        `observation/wrist_image` pass on unchanged as `base_0_rgb` and `left_wrist_0_rgb`, and the absent
        `right_wrist_0_rgb` is zeros shaped as `base_0_rgb` (zeros before a resize give the same bytes as zeros
        at the resized size). Float (C, H, W) images, which it scales to uint8 (H, W, C), are not the loader's."""
        return PixelEffect.KEEP


@dataclasses.dataclass(frozen=True)
class LiberoOutputs(Transform):
    """Model outputs -> LIBERO actions: the first `action_dim` (7) action dimensions."""

    action_dim: int = 7

    def __call__(self, data: DataDict) -> DataDict:
        return {"actions": np.asarray(data["actions"][..., : self.action_dim])}

    def pixel_effect(self) -> PixelEffect:
        """"keep": it outputs `actions` only, no images."""
        return PixelEffect.KEEP


__all__ = ["LiberoInputs", "LiberoOutputs"]
