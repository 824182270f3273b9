"""openpi's resize-with-pad for uint8 images, pixel-exact to PIL, in native code where that is proven.

`resize_with_pad(images, height, width)` is openpi's `image_tools.resize_with_pad`: PIL `Image.resize((rw, rh),
BILINEAR)` to the aspect-preserving size, centred on a zero canvas. PIL stays the definition: the native kernel
(`resize_with_pad_u8` of the extension, csrc/resize.hpp, a replica of Pillow's 8-bit resample, asked for through
`fastmix.kernels.backend.native()`) serves a geometry (source H, W, C -> height, width) only after a one-time
self-check against the installed PIL on deterministic test images; otherwise — and for anything but uint8
BILINEAR with 1 or 3 channels, or when the extension is switched off (FASTMIX_BACKEND=numba) or not built — PIL
runs per image (2 and 4 channels are LA / RGBA, which PIL resizes with premultiplied alpha). The self-check
also learns the pass order: Pillow <= 12 resamples horizontally first, Pillow 13 vertically first for some
geometries.

numpy only (plus PIL on the fallback and self-check paths): decode workers import this without torch.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fastmix.kernels.backend import native

BILINEAR = 2  # PIL.Image.Resampling.BILINEAR (openpi's default), named here so the native path never imports PIL

_HORIZONTAL_FIRST, _VERTICAL_FIRST = "horizontal_first", "vertical_first"
# (src H, W, C, height, width) -> pass order the native kernel reproduces PIL with, or None: use PIL (consulted
# only while the native kernel is in use).
_plans: dict[tuple[int, int, int, int, int], str | None] = {}


def pad_geometry(cur_h: int, cur_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(rh, rw, top, left): the aspect-preserving size of a cur_h x cur_w image inside height x width and its
    offset on the canvas, exactly as openpi computes them (the extra padding row/column goes bottom/right)."""
    ratio = max(cur_w / width, cur_h / height)
    rh, rw = int(cur_h / ratio), int(cur_w / ratio)
    return rh, rw, max(0, int((height - rh) / 2)), max(0, int((width - rw) / 2))


def _kernel() -> Any:
    """The native resize kernel, or None (the backend is not "native", or the extension lacks it)."""
    ext = native()
    return None if ext is None else getattr(ext, "resize_with_pad_u8", None)


def _pil_resized(image: np.ndarray, rh: int, rw: int, method: int = BILINEAR) -> np.ndarray:
    """PIL's resize of one (H, W, C) image to (rh, rw, C); uint8 C == 1 as PIL mode "L"."""
    from PIL import Image

    plane = image[..., 0] if image.shape[-1] == 1 and image.dtype == np.uint8 else image
    return np.asarray(Image.fromarray(plane).resize((rw, rh), resample=method)).reshape(rh, rw, -1)


def _check_images(h: int, w: int, c: int) -> np.ndarray:
    """Deterministic test images for a geometry: uniform noise (two seeds), all 255, a 0/255 checkerboard."""
    rng = np.random.default_rng([h, w, c, 0x5EED])
    noise = rng.integers(0, 256, size=(2, h, w, c), dtype=np.uint8)
    full = np.full((1, h, w, c), 255, np.uint8)
    board = ((np.add.outer(np.arange(h), np.arange(w)) % 2) * 255).astype(np.uint8)
    board = np.repeat(board[None, :, :, None], c, axis=3)
    return np.ascontiguousarray(np.concatenate([noise, full, board]))


def _self_check(h: int, w: int, c: int, height: int, width: int) -> str | None:
    """The pass order with which the native kernel equals PIL on the check images, or None (warns on a mismatch)."""
    kernel = _kernel()
    rh, rw, top, left = pad_geometry(h, w, height, width)
    if kernel is None or c not in (1, 3) or rh < 1 or rw < 1:
        return None
    images = _check_images(h, w, c)
    want = np.zeros((len(images), height, width, c), np.uint8)
    for i, im in enumerate(images):
        want[i, top : top + rh, left : left + rw] = _pil_resized(im, rh, rw)
    orders = [_HORIZONTAL_FIRST, _VERTICAL_FIRST] if (rh != h and rw != w) else [_HORIZONTAL_FIRST]
    matching = []
    for order in orders:
        got = np.full_like(want, 77)  # not zero: the kernel must write the padding too
        kernel(images, got, rh, rw, top, left, order == _VERTICAL_FIRST)
        if np.array_equal(got, want):
            matching.append(order)
    if len(matching) == 1:
        return matching[0]
    if not matching:
        import PIL

        warnings.warn(
            f"fastmix.kernels.resize: the native resize does not reproduce Pillow {PIL.__version__} for images "
            f"{h}x{w}x{c} -> {height}x{width} (resized to {rh}x{rw}); PIL resizes this geometry instead (same "
            "result, slower). Please report it with the Pillow version.",
            RuntimeWarning,
            stacklevel=4,
        )
    return None  # no order matches, or the check images cannot tell the two orders apart: PIL decides


def _plan(src_shape: tuple[int, ...], height: int, width: int) -> str | None:
    key = (*(int(s) for s in src_shape[-3:]), int(height), int(width))
    if key not in _plans:
        _plans[key] = _self_check(*key)
    return _plans[key]


def native_geometry_ok(src_shape: tuple[int, ...], height: int, width: int) -> bool:
    """Whether uint8 BILINEAR images of shape (..., H, W, C) resize to (height, width) natively (self-checked)."""
    return _kernel() is not None and _plan(tuple(src_shape), height, width) is not None


def _pil_resize_with_pad(images: np.ndarray, height: int, width: int, method: int) -> np.ndarray:
    """The PIL path, image by image (1 channel as mode "L"); all-zero images are zeros without PIL."""
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.zeros((len(flat), height, width, *flat.shape[3:]), dtype=flat.dtype)
    rh, rw, top, left = pad_geometry(flat.shape[1], flat.shape[2], height, width)
    for i, im in enumerate(flat):
        if im.any():  # an all-zero image (e.g. LIBERO's absent right wrist camera) resizes and pads to zeros
            out[i, top : top + rh, left : left + rw] = _pil_resized(im, rh, rw, method)
    return out.reshape(*images.shape[:-3], *out.shape[-3:])


def resize_with_pad(images: Any, height: int, width: int, method: int | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Resize images [..., H, W, C] to (height, width) keeping the aspect ratio, zero-padding the rest.

    Same as openpi's `image_tools.resize_with_pad` (PIL, BILINEAR by default, the resized image centred; for
    uint8 BILINEAR images natively, bit-identical). Images already that size are returned as is. `out`
    (optional, [..., height, width, C]) receives the result and is returned; otherwise a new array is (or the
    input itself when it already has that size).
    """
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"resize_with_pad: images must be [..., H, W, C], got shape {images.shape}")
    height, width = int(height), int(width)
    if images.shape[-3:-1] == (height, width):
        if out is not None:
            out[...] = images
            return out
        return images
    method = BILINEAR if method is None else int(method)
    c = images.shape[-1]
    kernel = _kernel()
    if kernel is not None and images.dtype == np.uint8 and method == BILINEAR and images.size:
        order = _plan(images.shape, height, width)
        if order is not None:
            rh, rw, top, left = pad_geometry(images.shape[-3], images.shape[-2], height, width)
            flat = np.ascontiguousarray(images.reshape(-1, *images.shape[-3:]))
            shape = (*images.shape[:-3], height, width, c)
            if out is None or (out.shape == shape and out.dtype == np.uint8 and out.flags.c_contiguous):
                target = out if out is not None else np.empty(shape, np.uint8)
                kernel(flat, target.reshape(-1, height, width, c), rh, rw, top, left, order == _VERTICAL_FIRST)
                return target
    result = _pil_resize_with_pad(images, height, width, method)
    if out is not None:
        out[...] = result
        return out
    return result


__all__ = ["BILINEAR", "native_geometry_ok", "pad_geometry", "resize_with_pad"]
