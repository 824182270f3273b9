"""uint8 images → float32 through a 256-entry value table: the home of the loader's and openpi's conversions.

A conversion of uint8 pixels to float32 maps each byte to one float32 value, so it is a table of 256 values:

* `unit_table()`: torch's `x.to(torch.float32) / 255` — the loader's `image_dtype="float32"` images in [0, 1];
* `openpi_table()`: openpi's `Observation.from_dict`, `x.astype(np.float32) / 255.0 * 2.0 - 1.0` — in [-1, 1].

Both are computed here with the same float32 operations (IEEE, correctly rounded: bit-identical to the
reference, checked on all 256 values in tests/test_pixels.py) and are read-only. `to_float(images, table)`
writes `table[images]` (optionally transposed HWC → CHW) in one pass of native code that releases the GIL
(`lut_u8_to_f32` of the extension, asked for through `fastmix.kernels.backend.native()`; numpy indexing when
the extension is switched off or not built). Every output element is thus the reference's own value for its
byte, without relying on a compiler reproducing the reference's float arithmetic.

Numpy-only (no torch): decode workers import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from fastmix.kernels.backend import native

BYTES = np.arange(256, dtype=np.uint8)


def _table(values: np.ndarray) -> np.ndarray:
    assert values.dtype == np.float32 and values.shape == (256,)
    values = np.ascontiguousarray(values)
    values.flags.writeable = False
    return values


@functools.cache
def unit_table() -> np.ndarray:
    """float32 (256,), read-only: torch's `x.to(torch.float32) / 255` for every byte value x (the loader's
    float32 images)."""
    return _table(BYTES.astype(np.float32) / np.float32(255.0))


@functools.cache
def openpi_table() -> np.ndarray:
    """float32 (256,), read-only: openpi's `x.astype(np.float32) / 255.0 * 2.0 - 1.0` for every byte value x,
    each step in float32 (openpi's Observation images)."""
    out = BYTES.astype(np.float32)
    out /= np.float32(255.0)
    out *= np.float32(2.0)
    out -= np.float32(1.0)
    return _table(out)


def _kernel() -> Callable[..., None] | None:
    ext = native()
    return None if ext is None else getattr(ext, "lut_u8_to_f32", None)


def to_float(images: np.ndarray, table: np.ndarray, *, chw: bool, out: np.ndarray | None = None) -> np.ndarray:
    """`table[images]` as float32: (B, H, W, C) uint8 → (B, C, H, W) when `chw`, else (B, H, W, C).

    `table`: float32 (256,), e.g. `unit_table()`. `out`: a C-contiguous float32 array of the result's shape to
    write into (e.g. a pinned tensor's numpy view, or rows of a float32 slot); allocated when None. Returns it."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"to_float expects uint8 images (B, H, W, C), got {images.dtype} {images.shape}")
    b, h, w, c = images.shape
    shape = (b, c, h, w) if chw else (b, h, w, c)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out should be C-contiguous float32 {shape}, got {out.dtype} {out.shape}")
    kernel = _kernel()
    if kernel is not None:
        kernel(images, table, out, chw)
    else:  # FASTMIX_BACKEND=numba, or the extension is not built
        np.take(table, images.transpose(0, 3, 1, 2) if chw else images, out=out)
    return out


__all__ = ["openpi_table", "to_float", "unit_table"]
