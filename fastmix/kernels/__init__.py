"""Kernels: numpy-level compute, and the home of the native extension `fastmix.kernels._native` (C++ from `csrc/`).

`backend` is the extension's only importer and the switch (`FASTMIX_BACKEND=native|numba`) between it and its
fallbacks: the sampling kernels (the extension or its bit-identical numba twin, `numba_kernels`) and, through
`backend.native()`, the pixel kernels of `resize` (openpi's resize-with-pad, Pillow-exact; PIL fallback) and
`pixels` (uint8 → float32 through the value tables of the reference conversions; numpy fallback). `stats`
holds the vectorized histogram kernels of the norm statistics. numpy only: decode workers import this without
torch. Import the submodules directly.
"""
