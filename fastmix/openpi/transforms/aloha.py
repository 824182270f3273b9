"""openpi's ALOHA policy input transform (`openpi.policies.aloha_policy.AlohaInputs`), per sample and batched.

`AlohaInputs` reads `images` (a dict of cameras, names among `EXPECTED_CAMERAS`; `cam_high` required),
`state` (14: left arm 6 joints + gripper, right arm 6 joints + gripper), optional `actions` (horizon, 14) and
`prompt`, and gives openpi's model inputs:

    image/base_0_rgb        = cam_high                                   mask True
    image/left_wrist_0_rgb  = cam_left_wrist, or zeros shaped as cam_high  mask True, or False when zero-filled
    image/right_wrist_0_rgb = cam_right_wrist, likewise
    (cam_low is accepted and dropped)

With `adapt_to_pi` (openpi's default) state and actions move from the standard ALOHA space to the pi runtime's:
joints 1, 2, 8, 9 (0-based) negated (openpi multiplies by an int64 sign vector, so float32 data becomes
float64), the grippers (dims 6 and 13) of the state mapped from ALOHA's linear positions to pi0's normalized
angle, those of the actions through the inverse of pi0's angle -> ALOHA joint map. Without it state and actions
pass through unchanged. The arithmetic is openpi's, operation for operation, so the values are the same bits.

Both openpi trees (the fork and upstream) define the same `AlohaInputs`; `fastmix.openpi.transforms.batched`
maps it here by (module, class name, fields).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from fastmix.errors import ConfigError
from fastmix.openpi.transforms.base import DataDict, Transform
from fastmix.openpi.transforms.effects import PixelEffect

EXPECTED_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
# model camera <- ALOHA camera (cam_high is always there; the wrists are zero-filled when absent)
_WRISTS = (("left_wrist_0_rgb", "cam_left_wrist"), ("right_wrist_0_rgb", "cam_right_wrist"))
_SIGNS = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])  # int64, as openpi's joint flip mask
_GRIPPERS = [6, 13]


def _unit(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[lo, hi] -> [0, 1]."""
    return (x - lo) / (hi - lo)


def _from_unit(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[0, 1] -> [lo, hi]."""
    return x * (hi - lo) + lo


def _state_gripper(x: np.ndarray) -> np.ndarray:
    """ALOHA's linear gripper position (normalized between the puppet's open 0.01844 and closed 0.05800 m) ->
    the gripper's horn angle (Interbotix geometry: arm 0.036 m, horn radius 0.022 m), normalized to pi0's
    range of 0.5476 .. 1.6296 rad."""
    linear = _from_unit(x, 0.01844, 0.05800)
    arm, horn = 0.036, 0.022
    cos_law = (horn**2 + linear**2 - arm**2) / (2 * horn * linear)
    return _unit(np.arcsin(np.clip(cos_law, -1.0, 1.0)), 0.5476, 1.6296)


def _action_gripper(x: np.ndarray) -> np.ndarray:
    """ALOHA's normalized gripper joint (puppet joint range -0.6213 .. 1.4910) -> pi0's angle offset by 0.5476."""
    return _from_unit(x, -0.6213, 1.4910) - 0.5476


def _adapt(x: Any, gripper: Any) -> np.ndarray:
    """Joints flipped by `_SIGNS` (float64 from float32, as openpi's int64 product) and the gripper dims of the
    last axis mapped with `gripper`; `x` is (..., 14)."""
    out = _SIGNS * np.asarray(x)
    out[..., _GRIPPERS] = gripper(out[..., _GRIPPERS])
    return out


def _image(img: Any, batched: bool) -> np.ndarray:
    """One camera as uint8 (H, W, C) (batched: (B, H, W, C)), as openpi's AlohaInputs makes it.

    Float images are LeRobotDataset's (C, H, W) in [0, 1]: scaled by 255, truncated to uint8 and moved
    channels-last unconditionally, as openpi does. uint8 images shaped (3, H, W) with W != 3 are (C, H, W), moved
    channels-last as openpi does; other uint8 images are taken as (H, W, C) frames, the loader's format, and
    pass as they are (openpi would transpose those too, scrambling them: it is written for (C, H, W) input).
    """
    img = np.asarray(img)
    lead = 1 if batched else 0
    if np.issubdtype(img.dtype, np.floating):
        return np.moveaxis((255 * img).astype(np.uint8), lead, -1)
    if img.ndim == lead + 3 and img.shape[lead] == 3 and img.shape[-1] != 3:
        return np.moveaxis(img, lead, -1)
    return img


@dataclasses.dataclass(frozen=True)
class AlohaInputs(Transform):
    """ALOHA observation -> openpi model inputs (module docstring).

    adapt_to_pi: map joints and grippers from the standard ALOHA space to the pi runtime's (openpi's default).
    Per sample (`t(sample)`): openpi's semantics; images float (C, H, W) in [0, 1] or uint8 (C, H, W), as openpi
    takes them, or uint8 (H, W, C) frames, passed on as they are (`_image`). Batched (`t.batch(batch)`): the
    same with a leading batch axis (the loader's uint8 (B, H, W, C) frames), state (B, 14), actions
    (B, horizon, 14), masks (B,) bool, `prompt` a list of B strings.
    """

    adapt_to_pi: bool = True

    EXPECTED_CAMERAS: ClassVar[tuple[str, ...]] = EXPECTED_CAMERAS

    def _cameras(self, data: DataDict) -> dict[str, Any]:
        images = data["images"]
        unknown = [name for name in images if name not in self.EXPECTED_CAMERAS]
        if unknown:
            raise ConfigError(f"AlohaInputs: cameras {unknown} are not among the expected {self.EXPECTED_CAMERAS} "
                              f"(got {tuple(images)}); rename them in the repack transform")
        if "cam_high" not in images:
            raise ConfigError(f"AlohaInputs: the base camera 'cam_high' is missing (got {tuple(images)}); map a "
                              "camera to images/cam_high in the repack transform")
        return images

    def _inputs(self, data: DataDict, images: dict[str, Any], batched: bool) -> DataDict:
        base = _image(images["cam_high"], batched)
        if batched:  # the zero fill as a read-only zero-stride view (as `LiberoInputs.batch`): no memory
            zeros = np.broadcast_to(np.zeros((), base.dtype), base.shape)
            n = base.shape[0]
            flag = lambda m: np.full(n, m, dtype=bool)  # noqa: E731
        else:
            zeros, flag = np.zeros_like(base), np.bool_
        out_images, masks = {"base_0_rgb": base}, {"base_0_rgb": flag(True)}
        for dest, source in _WRISTS:
            present = source in images
            out_images[dest] = _image(images[source], batched) if present else zeros
            masks[dest] = flag(present)
        state = np.asarray(data["state"])
        inputs: DataDict = {"image": out_images, "image_mask": masks,
                            "state": _adapt(state, _state_gripper) if self.adapt_to_pi else state}
        if "actions" in data:
            actions = np.asarray(data["actions"])
            inputs["actions"] = _adapt(actions, _action_gripper) if self.adapt_to_pi else actions
        if "prompt" in data:
            inputs["prompt"] = data["prompt"]
        return inputs

    def __call__(self, data: DataDict) -> DataDict:
        return self._inputs(data, self._cameras(data), batched=False)

    def batch(self, data: DataDict) -> DataDict:
        return self._inputs(data, self._cameras(data), batched=True)

    def pixel_effect(self) -> PixelEffect:
        """"keep" for uint8 (H, W, C) frames, the loader's format: `cam_high` and the wrist cameras pass on
        unchanged, `cam_low` is dropped, and an absent wrist camera is zeros shaped as `cam_high` (zeros before
        a resize give the same bytes as zeros at the resized size). Float (C, H, W) images, which it scales to
        uint8 (H, W, C), are not the loader's format where this transform runs batched."""
        return PixelEffect.KEEP


__all__ = ["AlohaInputs"]
