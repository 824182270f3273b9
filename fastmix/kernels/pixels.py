"""uint8 images → float32, through a 256-entry table of the reference's own operations.

A conversion such as torch's `x.to(float32) / 255.0` or openpi's `x.astype(float32) / 255.0 * 2.0 - 1.0` maps
each byte to one float32 value. `value_table(fn)` applies the reference function `fn` itself to the 256 byte
values once; `to_float(images, table)` then writes `table[images]` (optionally transposed HWC → CHW) in one pass
of native code that releases the GIL (`fastmix.kernels._native.lut_u8_to_f32`; numpy indexing when the extension
lacks it). Every output element is therefore the reference's own result for its byte — bit for bit, without
relying on the compiler reproducing the reference's float arithmetic.

Numpy-only (no torch): decode workers may import it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BYTES = np.arange(256, dtype=np.uint8)


def value_table(fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float32 (256,): `fn` applied to the uint8 images (1, 1, 256, 1) holding every byte value, flattened.

    `fn` takes and returns a (1, 1, 256, 1)-shaped array (numpy, or anything `np.asarray` accepts) — so a
    layout-changing reference (HWC → CHW) is fine: the 256 values are all it contributes."""
    out = np.asarray(fn(BYTES.reshape(1, 1, 256, 1)), dtype=None).reshape(-1)
    if out.shape != (256,) or out.dtype != np.float32:
        raise ValueError(f"a value table needs 256 float32 values, the function gave {out.dtype} {out.shape}")
    return np.ascontiguousarray(out)


def _native_kernel() -> Callable[..., None] | None:
    try:
        from fastmix.kernels import _native
    except ImportError:
        return None
    return getattr(_native, "lut_u8_to_f32", None)


_KERNEL = _native_kernel()


def to_float(images: np.ndarray, table: np.ndarray, *, chw: bool, out: np.ndarray | None = None) -> np.ndarray:
    """`table[images]` as float32: (B, H, W, C) uint8 → (B, C, H, W) when `chw`, else (B, H, W, C).

    `out`: a C-contiguous float32 array of the result's shape to write into (e.g. a pinned tensor's numpy
    view); allocated when None. Returns it."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"to_float expects uint8 images (B, H, W, C), got {images.dtype} {images.shape}")
    b, h, w, c = images.shape
    shape = (b, c, h, w) if chw else (b, h, w, c)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out should be C-contiguous float32 {shape}, got {out.dtype} {out.shape}")
    if _KERNEL is not None:
        _KERNEL(images, table, out, chw)
    else:  # pragma: no cover - exercised when the extension is not built
        np.take(table, images.transpose(0, 3, 1, 2) if chw else images, out=out)
    return out


__all__ = ["to_float", "value_table"]
