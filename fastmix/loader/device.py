"""Host → device stage: pinned slots and the FFCV epoch-iterator pattern.

* `PinnedRegion`: registers the shared-memory ring as page-locked memory (``cudaHostRegister``), so slot
  tensors are pinned without a copy; unregistered on close.
* `DeviceStage`: one CUDA stream per slot. A batch is copied on its slot's stream (``non_blocking``), the
  images converted there when ``image_dtype="float32"`` (`images_to_float`), an event recorded; the slot is
  reused only after its
  event completed, and the consumer's current stream waits on the slot's stream before the batch is handed
  out (``record_stream`` keeps the caching allocator from recycling the batch while the consumer uses it).
* `host_batch`: the CPU path (no device): copies out of the slot into fresh (optionally pinned) tensors, so a
  batch stays valid after its slot is reused; float32 images are converted in the same pass (native table
  lookup, on the loader's pipeline thread).

float32 images are torch's `x.to(torch.float32) / 255` on the CPU, bit for bit, on every path: each path looks
the bytes up in `fastmix.kernels.pixels.unit_table()` (the decode workers too, for float32 slots).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fastmix.errors import ConfigError
from fastmix.kernels.pixels import to_float, unit_table

IMAGE_DTYPES = ("uint8", "float32")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(device: Any) -> torch.device | None:
    """None/"cpu" → None (host tensors); "cuda"/"cuda:1"/torch.device → that device (ConfigError without CUDA)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a torch device") from exc
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was requested but CUDA is not available "
                              f"(torch {torch.__version__}); use device=None for CPU tensors")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev
    raise ConfigError(f"device={device!r}: only CPU and CUDA devices are supported")


def resolve_pin_memory(pin_memory: bool | None) -> bool:
    if pin_memory is None:
        return cuda_available()
    if pin_memory and not cuda_available():
        warnings.warn("pin_memory=True but CUDA is not available; host tensors will not be pinned",
                      RuntimeWarning, stacklevel=3)
        return False
    return bool(pin_memory)


class PinnedRegion:
    """Page-locks `buffer` (uint8 numpy array over the shm ring) with cudaHostRegister; `close()` unregisters."""

    def __init__(self, buffer: np.ndarray) -> None:
        self._ptr = int(buffer.ctypes.data)
        self._nbytes = int(buffer.nbytes)
        self._buffer = buffer  # keep the mapping alive while registered
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(self._ptr, self._nbytes, 0)  # cudaHostRegisterDefault
        if int(err) != 0:
            raise RuntimeError(f"cudaHostRegister of {self._nbytes} bytes of shared memory failed with "
                               f"cudaError {int(err)}; pass pin_memory=False")
        self.registered = True

    def close(self) -> None:
        if self.registered:
            self.registered = False
            try:
                torch.cuda.cudart().cudaHostUnregister(self._ptr)
            except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA context may be gone
                pass
            self._buffer = None


@functools.cache
def _unit_lut(device: torch.device) -> torch.Tensor:
    return torch.tensor(unit_table(), dtype=torch.float32, device=device)


def images_to_float(t: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,C) → float32 (B,C,H,W) in [0, 1] on t's device: `unit_table()[t]`, i.e. torch's
    `t.to(torch.float32) / 255` as the CPU computes it (CUDA's division by a scalar multiplies by the reciprocal,
    which differs in the last bit for some bytes; the table keeps GPU and CPU batches identical)."""
    return _unit_lut(t.device)[t.int()].permute(0, 3, 1, 2).contiguous()


def rows_of(n: int | Mapping[str, int], key: str) -> int:
    """Rows of field `key` to hand out: `n`, or `n[key]` when rows differ per field (grouped batches)."""
    return n if isinstance(n, int) else int(n[key])


def host_batch(views: Mapping[str, np.ndarray], n: int | Mapping[str, int], camera_keys: Sequence[str], *,
               pin: bool, image_dtype: str) -> dict[str, torch.Tensor]:
    """CPU path: fresh tensors copied out of rows [:n] of a slot (pinned when `pin`; `n` may give the rows per
    field, see `rows_of`). float32 images are
    `unit_table()[image]` transposed, written by one native pass (`fastmix.kernels.pixels.to_float`, GIL
    released)."""
    out: dict[str, torch.Tensor] = {}
    cams = set(camera_keys)
    for key, arr in views.items():
        src = arr[:rows_of(n, key)]
        if key in cams and image_dtype == "float32" and src.dtype == np.uint8:  # (float slots: plain copy)
            b, h, w, c = src.shape
            t = torch.empty((b, c, h, w), dtype=torch.float32, pin_memory=pin)
            to_float(src, unit_table(), chw=True, out=t.numpy())
            out[key] = t
            continue
        t = torch.empty(src.shape, dtype=torch.from_numpy(src[:0]).dtype, pin_memory=pin)
        np.copyto(t.numpy(), src)
        out[key] = t
    return out


class DeviceStage:
    """Per-slot CUDA streams and events (FFCV epoch-iterator pattern).

    Args:
        device: CUDA device. num_slots: slots in the ring. camera_keys: keys converted when
        image_dtype="float32".
    """

    def __init__(self, device: torch.device, num_slots: int, camera_keys: Sequence[str], image_dtype: str) -> None:
        self.device = device
        self.camera_keys = set(camera_keys)
        self.image_dtype = image_dtype
        self.streams = [torch.cuda.Stream(device=device) for _ in range(num_slots)]
        self.events: list[torch.cuda.Event | None] = [None] * num_slots

    def copy(self, slot: int, views: Mapping[str, np.ndarray], n: int | Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Launch the copies of rows [:n] of `slot` on the slot's stream (`n`: see `rows_of`); record the
        slot's event."""
        stream = self.streams[slot]
        out: dict[str, torch.Tensor] = {}
        with torch.cuda.stream(stream):
            for key, arr in views.items():
                t = torch.from_numpy(arr[:rows_of(n, key)]).to(self.device, non_blocking=True)
                if key in self.camera_keys and self.image_dtype == "float32" and t.dtype == torch.uint8:
                    t = images_to_float(t)
                out[key] = t
            ev = torch.cuda.Event()
            ev.record(stream)
        self.events[slot] = ev
        return out

    def slot_free(self, slot: int) -> bool:
        ev = self.events[slot]
        return ev is None or ev.query()

    def wait_slot(self, slot: int) -> None:
        """Block until the copies out of `slot` are done (the host buffer may then be rewritten)."""
        ev = self.events[slot]
        if ev is not None:
            ev.synchronize()
            self.events[slot] = None

    def hand_out(self, slot: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Make the consumer's current stream wait for the slot's copies; tie the tensors to that stream."""
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.streams[slot])
        for t in batch.values():
            t.record_stream(current)
        return batch

    def close(self) -> None:
        for s in range(len(self.events)):
            try:
                self.wait_slot(s)
            except Exception:  # noqa: BLE001
                pass


__all__ = ["IMAGE_DTYPES", "DeviceStage", "PinnedRegion", "cuda_available", "host_batch", "images_to_float", "rows_of",
           "resolve_device", "resolve_pin_memory"]
