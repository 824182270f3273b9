"""What a transform does to camera pixels, as it declares it, and the decode-time resize that follows.

Every fastmix `Transform` answers `pixel_effect()` with a `PixelEffect`:

- `PixelEffect.KEEP`: every camera image it outputs is bit-identical to one it was given (keys may be renamed,
  images dropped; LiberoInputs' zero-filled absent camera counts as kept, see `LiberoInputs`);
- `PixelEffect.resize(height, width)`: it resizes the images under `image` to (height, width) pixels with
  `resize_with_pad` and leaves every other image alone (`ResizeImages`);
- `PixelEffect.CHANGE`: it may change pixels. The default for any transform that declares nothing: the base
  `Transform`, and any other callable (openpi's transforms, users' own) without a `pixel_effect` method
  returning a `PixelEffect`.

`decode_size` reads these declarations to decide whether the decode workers may resize frames as they decode
them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

PixelKind = Literal["keep", "resize", "change"]


@dataclasses.dataclass(frozen=True)
class PixelEffect:
    """A transform's declared effect on camera pixels.

    kind: "keep" (pixels pass through bit-identical), "resize" (images under `image` are resized with
    `resize_with_pad` to `size`) or "change" (anything else; the safe default).
    size: (height, width) in pixels when kind is "resize", else None.
    """

    kind: PixelKind
    size: tuple[int, int] | None = None

    KEEP: ClassVar[PixelEffect]
    CHANGE: ClassVar[PixelEffect]

    def __post_init__(self) -> None:
        if self.kind not in ("keep", "resize", "change"):
            raise ValueError(f"PixelEffect kind must be 'keep', 'resize' or 'change', got {self.kind!r}")
        if (self.kind == "resize") != (self.size is not None):
            raise ValueError(f"PixelEffect size is required for kind 'resize' only, got kind={self.kind!r} "
                             f"size={self.size!r}")

    @classmethod
    def resize(cls, height: int, width: int) -> PixelEffect:
        """Images under `image` resized to `height` x `width` pixels (both converted with `int`)."""
        return cls("resize", (int(height), int(width)))

    def then(self, later: PixelEffect) -> PixelEffect:
        """The effect of applying this transform, then one whose effect is `later`: "keep" is neutral on
        either side; anything else after a "resize" or a "change" is a "change"."""
        if later.kind == "keep":
            return self
        if self.kind == "keep":
            return later
        return PixelEffect.CHANGE


PixelEffect.KEEP = PixelEffect("keep")
PixelEffect.CHANGE = PixelEffect("change")


def pixel_effect_of(transform: Any) -> PixelEffect:
    """`transform.pixel_effect()` when it has that method and it returns a `PixelEffect`; else
    `PixelEffect.CHANGE` (openpi's transforms and other callables that declare nothing)."""
    declare = getattr(transform, "pixel_effect", None)
    if callable(declare):
        effect = declare()
        if isinstance(effect, PixelEffect):
            return effect
    return PixelEffect.CHANGE


def decode_size(stages: Iterable[tuple[str, Iterable[Any]]]) -> tuple[int, int] | None:
    """(height, width) in pixels at which the decode workers may resize each frame, or None.

    `stages` is `fastmix.openpi.data_loader.transform_stages`' list of (stage name, transforms), walked in
    order. The first transform declaring a resize gives its size when every transform before it declares
    "keep": resizing at decode time with the same `resize_with_pad` then gives the same bytes, and the
    pipeline's own resize finds the images already at size (a no-op). A transform that may change pixels
    before any resize, or no resize at all, gives None.
    """
    for _, transforms in stages:
        for t in transforms:
            effect = pixel_effect_of(t)
            if effect.kind == "resize":
                return effect.size
            if effect.kind != "keep":
                return None
    return None


__all__ = ["PixelEffect", "decode_size", "pixel_effect_of"]
