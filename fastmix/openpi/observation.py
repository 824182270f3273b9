"""openpi's `Observation` on fastmix batches: the stand-in class (when openpi is not importable), the uint8 →
float32 image conversion `Observation.from_dict` performs, and `ObservationBuilder`, which builds the
Observations of a stream of batches.

openpi's `Observation` is a jaxtyping-typechecked dataclass: every construction runs beartype/jaxtyping checks
of its fields (costly, most of it building a checked function per call).
Those checks look only at the fields' types, dtypes and shapes, so their outcome is a function of that
signature. `ObservationBuilder` calls `from_dict` (checks included) for the first batch of each signature and
builds later batches of an already-checked signature with the dataclass' own `__init__` — after verifying on
the first batch that `from_dict` maps the batch's entries to the fields one to one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix.kernels.pixels import openpi_table, to_float


@dataclasses.dataclass
class Observation:
    """openpi's `Observation` (used when openpi is not importable): images, masks, state, tokenized prompt.

    `from_dict` converts uint8 images to float32 in [-1, 1] exactly as openpi does (torch uint8 images are
    also permuted to (B, C, H, W), as openpi's PyTorch path does).
    """

    images: dict[str, Any]
    image_masks: dict[str, Any]
    state: Any
    tokenized_prompt: Any = None
    tokenized_prompt_mask: Any = None
    token_ar_mask: Any = None
    token_loss_mask: Any = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observation:
        if ("tokenized_prompt" in data) != ("tokenized_prompt_mask" in data):
            raise ValueError("tokenized_prompt and tokenized_prompt_mask must be provided together.")
        images = dict(data["image"])
        for key, img in images.items():
            if isinstance(img, np.ndarray) and img.dtype == np.uint8:
                images[key] = img.astype(np.float32) / 255.0 * 2.0 - 1.0
            elif _is_torch_uint8(img):
                import torch

                images[key] = img.to(torch.float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0
        data["image"] = images
        return cls(
            images=images,
            image_masks=data["image_mask"],
            state=data["state"],
            tokenized_prompt=data.get("tokenized_prompt"),
            tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
            token_ar_mask=data.get("token_ar_mask"),
            token_loss_mask=data.get("token_loss_mask"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image"] = d.pop("images")
        d["image_mask"] = d.pop("image_masks")
        return d


def _is_torch_uint8(x: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, torch.Tensor) and x.dtype == torch.uint8


def observation_float(image: Any, framework: str) -> Any:
    """uint8 images (B, H, W, C) → float32 in [-1, 1] exactly as openpi's `Observation.from_dict` computes them
    (`x.astype(float32) / 255.0 * 2.0 - 1.0`, each step in float32: `fastmix.kernels.pixels.openpi_table()`,
    written by one native table pass), transposed to (B, C, H, W) for the pytorch framework as its torch path
    permutes; uint8 arrays of other ranks are converted in their layout; other dtypes are returned unchanged."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        return image
    table = openpi_table()
    if image.ndim != 4:
        return np.asarray(table[image])
    if image.size and not any(image.strides):  # one byte broadcast over the batch (an absent camera)
        b, h, w, c = image.shape
        return np.full((b, c, h, w) if framework == "pytorch" else image.shape, table[image.flat[0]])
    return to_float(image, table, chw=framework == "pytorch")


def observation_class() -> type:
    """openpi's `Observation` when openpi is importable, else fastmix's stand-in."""
    try:
        from openpi.models.model import Observation as OpenpiObservation
    except ImportError:
        return Observation
    return OpenpiObservation


_FIELDS = ("images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask", "token_ar_mask",
           "token_loss_mask")


def _from_dict_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The field values openpi's `from_dict` gives a batch whose images are already float (no conversion)."""
    return {"images": data["image"], "image_masks": data["image_mask"], "state": data["state"],
            "tokenized_prompt": data.get("tokenized_prompt"), "tokenized_prompt_mask": data.get("tokenized_prompt_mask"),
            "token_ar_mask": data.get("token_ar_mask"), "token_loss_mask": data.get("token_loss_mask")}


def _leaf_signature(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, dict):
        return tuple((k, _leaf_signature(v)) for k, v in x.items())  # in order: beartype checks the first item
    return (type(x), str(getattr(x, "dtype", None)), tuple(getattr(x, "shape", ())), str(getattr(x, "device", "")))


def _unchecked_init(cls: type) -> Callable[..., None] | None:
    """The dataclass `__init__` under jaxtyping's checking wrapper (`functools.wraps` keeps it as
    `__wrapped__`), or None when `cls.__init__` is not that wrapper."""
    init = cls.__dict__.get("__init__")
    wrapped = getattr(init, "__wrapped__", None)
    code = getattr(init, "__code__", None)
    if not dataclasses.is_dataclass(cls) or wrapped is None or code is None or "jaxtyping" not in code.co_filename:
        return None
    return wrapped


class ObservationBuilder:
    """`builder(batch)` == `cls.from_dict(batch)`, with `cls`'s type checks run once per batch signature.

    A batch takes the unchecked path only when (1) `cls.__init__` is jaxtyping's checking wrapper around the
    dataclass `__init__`, (2) `from_dict` on the first batch produced exactly (by identity) the fields
    `_from_dict_fields` maps, (3) no image is uint8 (nothing for `from_dict` to convert), and (4) a batch of the
    same signature (each field's type, dtype, shape, device) already passed the checks. Otherwise `from_dict`
    runs, checks and errors included.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self._init = _unchecked_init(cls)
        self._mapping_ok: bool | None = None  # does from_dict map entries to fields one to one? (first batch)
        self._checked: set[Any] = set()

    @property
    def checked_signatures(self) -> int:
        """How many distinct batch signatures have gone through `from_dict`'s checks."""
        return len(self._checked)

    def __call__(self, batch: dict[str, Any]) -> Any:
        if self._init is None or self._mapping_ok is False:
            return self.cls.from_dict(batch)
        fields = _from_dict_fields(batch)
        images = fields["images"]
        if not isinstance(images, dict) or any(str(getattr(v, "dtype", "")) in ("uint8", "torch.uint8")
                                                for v in images.values()):
            return self.cls.from_dict(batch)
        signature = tuple((name, _leaf_signature(fields[name])) for name in _FIELDS)
        if self._mapping_ok and signature in self._checked:
            obj = self.cls.__new__(self.cls)
            self._init(obj, **fields)
            return obj
        obj = self.cls.from_dict(batch)  # openpi's own construction and checks (raises as openpi does)
        if self._mapping_ok is None:
            self._mapping_ok = all(getattr(obj, name, None) is fields[name] for name in _FIELDS)
        if self._mapping_ok:
            self._checked.add(signature)
        return obj


__all__ = ["Observation", "ObservationBuilder", "observation_class", "observation_float"]
