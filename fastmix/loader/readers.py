"""The worker-side reader stack: the frame readers a decode worker builds, and their picklable factories.

A reader has `read(requests, out)` (writes each request's frame into `out[key][slot]`) and `close()`; a reader
may also accept `read(requests, out, store=...)`, a hook that is handed each uint8 (H, W, C) frame and its
destination (`fastmix.sources.frames.Store`) instead of the plain copy. The stack, innermost first:

* `FrameReader` (`fastmix.sources.frames`, `default_reader_factory`): decodes uint8 frames, accepts a store hook.
* `ResizingReader` (`resizing_reader_factory`): frames resized with padding to the loader's `resize_images`,
  as openpi's `ResizeImages` would (`fastmix.kernels.resize`); passes a store hook on.
* `FloatingReader` (`floating_reader_factory`): frames as float32 (C, H, W) through a value table
  (`fastmix.kernels.pixels`, e.g. `unit_table()`). It hands its inner reader the store hook `FloatStore`, which
  converts each decoded frame straight into its float32 slot row; an inner reader without the hook decodes
  into a uint8 scratch row first.

Torch-free (numpy, fastmix.kernels, and PyAV / pyarrow through fastmix.sources.frames, imported only where a
FrameReader is built): a spawned worker imports this module when it unpickles its reader factory.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastmix.kernels.pixels import to_float
from fastmix.kernels.resize import resize_with_pad


def accepts_store(reader: Any) -> bool:
    """Whether `reader.read` has a `store` parameter (a store hook, `fastmix.sources.frames.Store`)."""
    try:
        return "store" in inspect.signature(reader.read).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _copy(dest: np.ndarray, slot: int, frame: np.ndarray) -> None:
    """`dest[slot] = frame` (the plain store, as `fastmix.sources.frames.store_frame`)."""
    if dest.shape[1:] != frame.shape:
        raise ValueError(f"decoded frame has shape {frame.shape}, the output expects {dest.shape[1:]}")
    dest[slot] = frame


# -- FrameReader ----------------------------------------------------------------------------------------------
def _make_frame_reader(max_open_files: int, tolerance_s: float) -> Any:
    from fastmix.sources.frames import FrameReader

    return FrameReader(max_open_files=max_open_files, tolerance_s=tolerance_s)


def default_reader_factory(max_open_files: int, tolerance_s: float) -> Callable[[], Any]:
    """Picklable factory of the default reader: `FrameReader(max_open_files, tolerance_s)` built in the worker."""
    return functools.partial(_make_frame_reader, int(max_open_files), float(tolerance_s))


# -- resizing -------------------------------------------------------------------------------------------------
class ResizingReader:
    """A frame reader whose frames come out resized with padding to (height, width), exactly as openpi's
    `ResizeImages` would resize them later (`fastmix.kernels.resize.resize_with_pad`: PIL bilinear, centred, zero
    padding, natively where checked bit-identical to PIL). `native` maps (dataset, key) to the decoded (H, W, C).
    Frames are decoded into a scratch buffer reused per (key, shape); a group whose slots are consecutive is
    resized straight into the slot. With a store hook, frames already of the target size go to the inner
    reader's hook, resized ones to the hook after resizing."""

    def __init__(self, inner: Any, height: int, width: int, native: dict[tuple[str, str], tuple[int, ...]]) -> None:
        self.inner, self.height, self.width, self.native = inner, int(height), int(width), native
        self._inner_store = accepts_store(inner)
        self._scratch: dict[tuple, np.ndarray] = {}

    def _buffer(self, tag: tuple, shape: tuple[int, ...], n: int) -> np.ndarray:
        buf = self._scratch.get((tag, shape))
        if buf is None or len(buf) < n:
            buf = self._scratch[(tag, shape)] = np.empty((n, *shape), dtype=np.uint8)
        return buf[:n]

    def _decode(self, key: str, shape: tuple[int, ...], group: list[Any]) -> np.ndarray:
        """The group's frames, uint8 (len(group), *shape), in a scratch buffer."""
        frames = self._buffer(("decoded", key), shape, len(group))
        self.inner.read([dataclasses.replace(r, slot=j) for j, r in enumerate(group)], {key: frames})
        return frames

    def read(self, requests: Sequence[Any], out: dict[str, Any],
             store: Callable[[np.ndarray, int, np.ndarray], None] | None = None) -> None:
        by_shape: dict[tuple, list[Any]] = {}
        for r in requests:
            by_shape.setdefault((r.key, tuple(self.native[(r.dataset, r.key)])), []).append(r)
        size = (self.height, self.width)
        for (key, shape), group in by_shape.items():
            dest = out[key]
            if tuple(shape[:2]) == size:  # nothing to resize
                if store is None:
                    self.inner.read(group, out)
                elif self._inner_store:
                    self.inner.read(group, out, store=store)
                else:
                    frames = self._decode(key, shape, group)
                    for j, r in enumerate(group):
                        store(dest, r.slot, frames[j])
                continue
            frames = self._decode(key, shape, group)
            if store is None:
                first = group[0].slot
                block = dest[first:first + len(group)]
                if all(r.slot == first + j for j, r in enumerate(group)) and block.flags.c_contiguous:
                    resize_with_pad(frames, *size, out=block)  # straight into the slot
                    continue
                store = _copy
            resized = self._buffer(("resized", key), (*size, shape[2]), len(group))
            resize_with_pad(frames, *size, out=resized)
            for j, r in enumerate(group):
                store(dest, r.slot, resized[j])

    def close(self) -> None:
        self.inner.close()


def _make_resizing_reader(inner_factory: Callable[[], Any], height: int, width: int,
                          native: dict[tuple[str, str], tuple[int, ...]]) -> ResizingReader:
    return ResizingReader(inner_factory(), height, width, native)


def resizing_reader_factory(inner_factory: Callable[[], Any], size: tuple[int, int],
                            native: dict[tuple[str, str], tuple[int, ...]]) -> Callable[[], Any]:
    """Picklable factory of a `ResizingReader` around the reader `inner_factory` builds (in the worker)."""
    return functools.partial(_make_resizing_reader, inner_factory, int(size[0]), int(size[1]), dict(native))


# -- float32 --------------------------------------------------------------------------------------------------
class FloatStore:
    """Store hook: a uint8 (H, W, C) frame into a float32 (C, H, W) row as `table[frame]` transposed
    (`fastmix.kernels.pixels.to_float`); a uint8 destination gets the frame as is."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def __call__(self, dest: np.ndarray, slot: int, frame: np.ndarray) -> None:
        if dest.dtype != np.float32:
            _copy(dest, slot, frame)
            return
        h, w, c = frame.shape
        if dest.shape[1:] != (c, h, w):
            raise ValueError(f"decoded frame has shape {frame.shape}, the float32 output expects (C, H, W) "
                             f"{dest.shape[1:]}")
        to_float(frame[None], self.table, chw=True, out=dest[slot:slot + 1])


class FloatingReader:
    """A frame reader whose camera frames land in float32 (C, H, W) slots as `table[frame]` (`table`: float32
    (256,), the reference conversion of every byte value, e.g. `fastmix.kernels.pixels.unit_table()`).

    An inner reader that accepts a store hook gets `FloatStore(table)`: each decoded frame is converted straight
    into its slot row. Another inner reader decodes uint8 (H, W, C) frames into a scratch row, converted after."""

    def __init__(self, inner: Any, table: np.ndarray) -> None:
        self.inner, self.table = inner, table
        self.store = FloatStore(table)
        self._direct = accepts_store(inner)
        self._scratch: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def read(self, requests: Sequence[Any], out: dict[str, Any]) -> None:
        if self._direct:
            self.inner.read(requests, out, store=self.store)
            return
        scratch: dict[str, np.ndarray] = {}
        for r in requests:
            if r.key not in scratch:
                b, c, h, w = out[r.key].shape
                buf = self._scratch.get((r.key, (b, h, w, c)))
                if buf is None:
                    buf = self._scratch[(r.key, (b, h, w, c))] = np.empty((b, h, w, c), dtype=np.uint8)
                scratch[r.key] = buf
        self.inner.read(requests, scratch)
        for r in requests:
            to_float(scratch[r.key][r.slot:r.slot + 1], self.table, chw=True, out=out[r.key][r.slot:r.slot + 1])

    def close(self) -> None:
        self.inner.close()


def _make_floating_reader(inner_factory: Callable[[], Any], table: np.ndarray) -> FloatingReader:
    return FloatingReader(inner_factory(), table)


def floating_reader_factory(inner_factory: Callable[[], Any], table: np.ndarray) -> Callable[[], Any]:
    """Picklable factory of a `FloatingReader` around the reader `inner_factory` builds (in the worker);
    `table`: float32 (256,), e.g. `fastmix.kernels.pixels.unit_table()`."""
    return functools.partial(_make_floating_reader, inner_factory, table)


# -- groups ---------------------------------------------------------------------------------------------------
class GroupedReader:
    """The reader of a grouped mixture (`fastmix.loader.groups`): one reader stack per group (its own
    decode-time size and image format), each request routed by its dataset to its group's reader, which
    writes `out[prefix + key][slot]` (slot: the row within the group). `group_of`: dataset name -> group;
    `camera_keys`: each group's camera keys; `prefixes`: each group's field prefix."""

    def __init__(self, readers: Sequence[Any], group_of: dict[str, int], camera_keys: Sequence[Sequence[str]],
                 prefixes: Sequence[str]) -> None:
        self.readers, self.group_of = list(readers), dict(group_of)
        self.camera_keys, self.prefixes = [list(k) for k in camera_keys], list(prefixes)

    def read(self, requests: Sequence[Any], out: dict[str, Any]) -> None:
        by_group: dict[int, list[Any]] = {}
        for r in requests:
            by_group.setdefault(self.group_of[r.dataset], []).append(r)
        for g, reqs in by_group.items():
            pre = self.prefixes[g]
            self.readers[g].read(reqs, {k: out[pre + k] for k in self.camera_keys[g]})

    def close(self) -> None:
        for r in self.readers:
            r.close()


def _make_grouped_reader(factories: Sequence[Callable[[], Any]], group_of: dict[str, int],
                         camera_keys: Sequence[Sequence[str]], prefixes: Sequence[str]) -> GroupedReader:
    return GroupedReader([f() for f in factories], group_of, camera_keys, prefixes)


def grouped_reader_factory(factories: Sequence[Callable[[], Any]], group_of: dict[str, int],
                           camera_keys: Sequence[Sequence[str]], prefixes: Sequence[str]) -> Callable[[], Any]:
    """Picklable factory of a `GroupedReader` over the per-group reader stacks `factories` build (in the worker)."""
    return functools.partial(_make_grouped_reader, list(factories), dict(group_of),
                             [list(k) for k in camera_keys], list(prefixes))


__all__ = ["FloatStore", "FloatingReader", "GroupedReader", "ResizingReader", "accepts_store",
           "default_reader_factory", "floating_reader_factory", "grouped_reader_factory", "resizing_reader_factory"]
