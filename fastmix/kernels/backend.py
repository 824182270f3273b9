"""The one door to the C++ extension `fastmix.kernels._native`, and the switch between it and its fallbacks.

`FASTMIX_BACKEND=numba` forces the fallbacks; `FASTMIX_BACKEND=native` requires the extension. Without the
variable, the extension is used when importable, else the fallbacks with a warning. The switch covers every
kernel: the sampling kernels (`kernels()`: the extension or its bit-identical numba twin, same streams —
tests/test_backends.py) and the pixel kernels, which ask `native()` for the extension and use their numpy/PIL
fallback (same results) when it gives None (`resize`, `pixels`). No other module imports the extension.

The resolution is cached per value of FASTMIX_BACKEND (setting the variable takes effect at the next call);
`reset()` forgets it, for tests that replace how the extension is loaded.
"""

from __future__ import annotations

import importlib
import os
import types
import warnings
from functools import cache, lru_cache

from fastmix.errors import ConfigError

_ENV = "FASTMIX_BACKEND"
_CHOICES = ("native", "numba")
ABI_VERSION = 2  # the extension's ABI_VERSION these sources call (csrc/module.cpp); an older build is stale


@cache
def _load(name: str) -> types.ModuleType:
    if name != "native":
        return importlib.import_module("fastmix.kernels.numba_kernels")
    module = importlib.import_module("fastmix.kernels._native")
    built = getattr(module, "ABI_VERSION", 1)
    if built != ABI_VERSION:  # built from older (or newer) sources: its kernels take other arguments
        raise ImportError(f"fastmix.kernels._native at {module.__file__} was built from other sources (ABI "
                          f"{built}, these sources need {ABI_VERSION}); rebuild it with `pip install -e .`")
    return module


@lru_cache(maxsize=1)
def _resolve(requested: str) -> str:
    if requested not in ("", *_CHOICES):
        raise ConfigError(f"{_ENV}={requested!r} is not one of {_CHOICES}")
    if requested == "numba":
        return "numba"
    try:
        _load("native")
        return "native"
    except ImportError as exc:
        if requested == "native":
            raise ImportError(f"{_ENV}=native but the extension fastmix.kernels._native is missing: {exc}") from exc
        warnings.warn(
            f"fastmix.kernels._native is not built ({exc}); using the numba kernels and the numpy/PIL pixel "
            "kernels (same results, slower). "
            "Build it with `pip install -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "numba"


def backend() -> str:
    """Name of the kernels in use: "native" or "numba" (reads FASTMIX_BACKEND on every call)."""
    return _resolve(os.environ.get(_ENV, "").strip().lower())


def native() -> types.ModuleType | None:
    """The extension module when the backend in use is "native", else None (FASTMIX_BACKEND=numba, or the
    extension is not built): what the pixel kernels call through, falling back to numpy/PIL on None."""
    return _load("native") if backend() == "native" else None


def reset() -> None:
    """Forget the resolved backend: the next call resolves it again (and warns again when falling back)."""
    _resolve.cache_clear()


def max_threads() -> int:
    """Threads a large native draw may use: FASTMIX_THREADS, else the CPUs this process may run on (max 8)."""
    env = os.environ.get("FASTMIX_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"FASTMIX_THREADS={env!r} must be a positive integer")
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def threads_for(n: int) -> int:
    """Threads for a draw of n indices: 1 below 2^17 (thread start-up would dominate), else up to max_threads()."""
    return max(1, min(max_threads(), n >> 17))


def kernels(name: str | None = None) -> types.ModuleType:
    """The kernel module in use, or the one named ("native" / "numba"); both expose the same functions."""
    if name is None:
        name = backend()
    if name not in _CHOICES:
        raise ConfigError(f"backend {name!r} is not one of {_CHOICES}")
    return _load(name)


__all__ = ["backend", "kernels", "max_threads", "native", "reset", "threads_for"]
