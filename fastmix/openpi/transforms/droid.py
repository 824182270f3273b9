"""openpi's DROID policy input transform (`openpi.policies.droid_policy.DroidInputs`), per sample and batched.

`DroidInputs` reads `observation/exterior_image_1_left`, `observation/wrist_image_left`,
`observation/joint_position` (7), `observation/gripper_position` (1 or a scalar), optional `actions` and
`prompt`, and gives openpi's model inputs: `state` (joints then gripper, 8), three cameras under `image` with
their `image_mask`. Which camera is zero-filled, and its mask, depend on the model type:

    pi0 / pi05:  base_0_rgb = exterior, left_wrist_0_rgb = wrist, right_wrist_0_rgb = zeros (mask False)
    pi0_fast:    base_0_rgb = exterior, base_1_rgb = zeros, wrist_0_rgb = wrist (every mask True)

Both openpi trees (the fork and upstream) define the same `DroidInputs`; `fastmix.openpi.transforms.batched`
maps it here by (module, class name, fields).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fastmix.errors import ConfigError
from fastmix.openpi.transforms.base import DataDict, Transform
from fastmix.openpi.transforms.effects import PixelEffect
from fastmix.openpi.transforms.libero import _parse_image, _parse_images

# model type value -> (camera names in openpi's order, which of (exterior, zeros, wrist) each holds, masks)
_LAYOUTS: dict[str, tuple[tuple[str, str, str], tuple[int, int, int], tuple[bool, bool, bool]]] = {
    "pi0": (("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"), (0, 2, 1), (True, True, False)),
    "pi05": (("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"), (0, 2, 1), (True, True, False)),
    "pi0_fast": (("base_0_rgb", "base_1_rgb", "wrist_0_rgb"), (0, 1, 2), (True, True, True)),
}


def _text(prompt: Any) -> Any:
    return prompt.decode("utf-8") if isinstance(prompt, bytes) else prompt


@dataclasses.dataclass(frozen=True)
class DroidInputs(Transform):
    """DROID observation -> openpi model inputs (module docstring).

    `model_type`: a `fastmix.openpi.config.ModelType`, openpi's `ModelType`, or its string value ("pi0",
    "pi05", "pi0_fast"); any other is an error when the transform runs, as in openpi.
    Per sample (`t(sample)`): images are uint8 (H, W, C), or float (C, H, W) in [0, 1] (LeRobotDataset's
    format), converted as openpi does (`255 * x` truncated to uint8, a leading axis of 3 moved last).
    Batched (`t.batch(batch)`): the same on (B, ...) arrays; the channel test looks at axis 1; `prompt` is
    a list of B strings (bytes decoded as UTF-8).
    """

    model_type: Any

    def _layout(self) -> tuple[tuple[str, str, str], tuple[int, int, int], tuple[bool, bool, bool]]:
        layout = _LAYOUTS.get(str(getattr(self.model_type, "value", self.model_type)))
        if layout is None:
            raise ConfigError(f"DroidInputs: unsupported model type {self.model_type!r} (supported: "
                              f"{sorted(_LAYOUTS)})")
        return layout

    def _assemble(self, data: DataDict, state: np.ndarray, exterior: np.ndarray, wrist: np.ndarray,
                  zeros: np.ndarray, mask: Any) -> DataDict:
        names, picks, masks = self._layout()
        sources = (exterior, zeros, wrist)
        inputs: DataDict = {
            "state": state,
            "image": {name: sources[p] for name, p in zip(names, picks, strict=True)},
            "image_mask": {name: mask(m) for name, m in zip(names, masks, strict=True)},
        }
        if "actions" in data:
            inputs["actions"] = np.asarray(data["actions"])
        if "prompt" in data:
            prompt = data["prompt"]
            inputs["prompt"] = [_text(p) for p in prompt] if isinstance(prompt, list | tuple) else _text(prompt)
        return inputs

    def __call__(self, data: DataDict) -> DataDict:
        gripper = np.asarray(data["observation/gripper_position"])
        if gripper.ndim == 0:
            gripper = gripper[np.newaxis]
        state = np.concatenate([data["observation/joint_position"], gripper])
        exterior = _parse_image(data["observation/exterior_image_1_left"])
        wrist = _parse_image(data["observation/wrist_image_left"])
        self._layout()
        return self._assemble(data, state, exterior, wrist, np.zeros_like(exterior), np.bool_)

    def batch(self, data: DataDict) -> DataDict:
        joints = np.asarray(data["observation/joint_position"])
        gripper = np.asarray(data["observation/gripper_position"])
        if gripper.ndim == joints.ndim - 1:  # one scalar per row
            gripper = gripper[..., np.newaxis]
        state = np.concatenate([joints, gripper], axis=-1)
        exterior = _parse_images(data["observation/exterior_image_1_left"])
        wrist = _parse_images(data["observation/wrist_image_left"])
        n = exterior.shape[0]
        # the zero-filled camera as a read-only zero-stride view (as `LiberoInputs.batch`): no memory
        zeros = np.broadcast_to(np.zeros((), exterior.dtype), exterior.shape)
        return self._assemble(data, state, exterior, wrist, zeros, lambda m: np.full(n, m, dtype=bool))

    def pixel_effect(self) -> PixelEffect:
        """"keep" for uint8 (H, W, C) images with H != 3, the loader's frames: the exterior and wrist cameras
        pass on unchanged, and the zero-filled camera is zeros shaped as the exterior one (zeros before a
        resize give the same bytes as zeros at the resized size). Float (C, H, W) images, which it scales to
        uint8 (H, W, C), are not the loader's format where this transform runs batched."""
        return PixelEffect.KEEP


__all__ = ["DroidInputs"]
