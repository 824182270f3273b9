"""Kernels: the only door to the native extension `fastmix.kernels._native` (C++ from `csrc/`).

`backend` chooses the sampling kernels (the extension or its bit-identical numba twin, `numba_kernels`);
`resize` (openpi's resize-with-pad, Pillow-exact) and `pixels` (uint8 → float32 through a value table of a
reference conversion) use the extension's pixel kernels with a numpy/PIL fallback; `stats` holds the
vectorized histogram kernels of the norm statistics. numpy only: decode workers import this without torch.
Import the submodules directly.
"""
