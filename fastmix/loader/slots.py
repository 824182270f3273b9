"""`SlotRing`: a preallocated ring of batch slots in one POSIX shared-memory segment.

The main process creates the segment (``/dev/shm/fastmix_<pid>_<hex>``), reserves its pages up front
(``posix_fallocate``, so a too-small ``/dev/shm`` is a clear error at start and never a SIGBUS mid-epoch),
and unlinks it on `close()`, on garbage collection and at interpreter exit — only the creating process: a
plain ``os.fork()`` child that exits leaves it alone. Views that outlive `close()` (lent batches a consumer
keeps) keep only their own pages: `close(keep=...)` punches the rest out of the file at once. It is also
registered with multiprocessing's resource tracker, which unlinks it if the main process is killed; when the
whole process group is killed (tracker included), `remove_stale_segments` — run when a loader is constructed —
unlinks segments whose creator pid is dead and whose lock (a shared flock the creator holds while the ring
lives) is free; only names matching `SEGMENT_PATTERN`. Workers attach by name with `SlotAttachment` (a plain
``mmap`` of the file: no resource-tracker registration, so a worker exit never unlinks the segment).

Layout: a header of ``num_workers`` rows of `PROGRESS_WORDS` int64 (what each worker is decoding, read by
the main process when a worker dies), then ``num_slots`` slots of identical layout; inside a slot one array
per key (``(batch_size, *shape)``, C-contiguous, 64-byte aligned), slots 4096-byte aligned.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
import secrets
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastmix.errors import ConfigError

SHM_DIR = "/dev/shm"
SEGMENT_PATTERN = re.compile(r"fastmix_(\d+)_[0-9a-f]{12}")  # fastmix_<creator pid>_<12 hex digits>
PROGRESS_WORDS = 8  # per worker (one 64-byte line): seq, request index, busy, pid, tick (worker_main.py), spare
_ARRAY_ALIGN = 64
_SLOT_ALIGN = 4096


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def shm_free_bytes(shm_dir: str = SHM_DIR) -> int:
    """Bytes available to an unprivileged writer in `shm_dir` (statvfs f_bavail * f_frsize)."""
    st = os.statvfs(shm_dir)
    return int(st.f_bavail) * int(st.f_frsize)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def shm_too_small_message(needed: int, free: int, shm_dir: str, what: str) -> str:
    return (f"{shm_dir} has {_fmt_bytes(free)} free but the loader's batch slots need {_fmt_bytes(needed)} "
            f"({needed} bytes; {what}). Lower batch_size or prefetch, or enlarge {shm_dir} (e.g. "
            f"`docker run --shm-size={max(1, -(-needed * 2 // (1 << 30)))}g`, or "
            f"`mount -o remount,size=... {shm_dir}`).")


@dataclass(frozen=True)
class SlotLayout:
    """Picklable description of a ring: what a worker needs to attach and build the same views.

    Attributes:
        name: segment name (file name under `shm_dir`).
        fields: ((key, shape per sample, numpy dtype str), ...) in slot order.
        batch_size: rows per slot. num_slots: slots. num_workers: progress-header rows.
    """

    name: str
    fields: tuple[tuple[str, tuple[int, ...], str], ...]
    batch_size: int
    num_slots: int
    num_workers: int
    shm_dir: str = SHM_DIR

    @property
    def header_nbytes(self) -> int:
        return _align(max(1, self.num_workers) * PROGRESS_WORDS * 8, _SLOT_ALIGN)

    def field_offsets(self) -> tuple[list[int], int]:
        """Byte offsets of each field inside a slot, and the slot stride."""
        offsets, pos = [], 0
        for _, shape, dtype in self.fields:
            pos = _align(pos, _ARRAY_ALIGN)
            offsets.append(pos)
            pos += self.batch_size * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return offsets, _align(max(pos, 1), _SLOT_ALIGN)

    @property
    def slot_nbytes(self) -> int:
        return self.field_offsets()[1]

    @property
    def nbytes(self) -> int:
        return self.header_nbytes + self.num_slots * self.slot_nbytes

    @property
    def path(self) -> str:
        return os.path.join(self.shm_dir, self.name)


def _map(fd: int, nbytes: int) -> mmap.mmap:
    """Shared read-write mapping of the segment with its page tables filled now (MAP_POPULATE where the
    platform has it): the first batches then pay no page fault per 4 KiB of slot, in any process."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, nbytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _views(buf: Any, layout: SlotLayout) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """(progress int64 (num_workers, PROGRESS_WORDS), per-slot {key: array}) over `buf`."""
    raw = np.frombuffer(buf, dtype=np.uint8, count=layout.nbytes)
    progress = raw[: max(1, layout.num_workers) * PROGRESS_WORDS * 8].view(np.int64)
    progress = progress.reshape(max(1, layout.num_workers), PROGRESS_WORDS)
    offsets, stride = layout.field_offsets()
    slots = []
    for s in range(layout.num_slots):
        base = layout.header_nbytes + s * stride
        views = {}
        for (key, shape, dtype), off in zip(layout.fields, offsets, strict=False):
            dt = np.dtype(dtype)
            count = layout.batch_size * int(np.prod(shape, dtype=np.int64))
            start = base + off
            views[key] = raw[start: start + count * dt.itemsize].view(dt).reshape((layout.batch_size, *shape))
        slots.append(views)
    return progress, slots


def _release(name: str, path: str, mm: mmap.mmap | None, tracked: bool, lock_fd: int | None = None,
             creator: int | None = None) -> None:
    """Unlink the segment (idempotent), drop its liveness lock and unmap it when no view is left; used by
    close() and finalizers. In a process other than `creator` (a plain `os.fork()` child, which inherits the
    ring and its finalizer) only this process's own mapping and lock descriptor are dropped: the segment
    belongs to the process that created it."""
    foreign = creator is not None and os.getpid() != creator
    if not foreign:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if lock_fd is not None:
        try:
            os.close(lock_fd)  # the creator's flock stays: it belongs to the open file, which the creator holds
        except OSError:
            pass
    if tracked and not foreign:
        try:
            from multiprocessing import resource_tracker

            resource_tracker.unregister("/" + name, "shared_memory")
        except Exception:  # noqa: BLE001 - the tracker may already be gone at interpreter exit
            pass
    if mm is not None:
        try:
            mm.close()
        except BufferError:
            # a view is still exported (e.g. a lent batch): the mapping goes with the last view, the file is
            # already unlinked so nothing is left in /dev/shm
            pass


def unheld_spans(nbytes: int, keep: Iterable[tuple[int, int]], page: int = mmap.PAGESIZE) -> list[tuple[int, int]]:
    """[start, stop) byte ranges of [0, nbytes) outside the `keep` ranges ((offset, length) pairs, each widened
    to whole pages); starts are multiples of `page`."""
    spans = sorted((max(0, off // page * page), min(nbytes, _align(off + n, page)))
                   for off, n in keep if n > 0 and off < nbytes and off + n > 0)
    out, pos = [], 0
    for a, b in spans:
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < nbytes:
        out.append((pos, nbytes))
    return out


class SlotRing:
    """Main-process side: creates, owns and unlinks the segment.

    Args:
        fields: {key: (shape per sample, dtype)} in slot order (camera arrays uint8 HWC, low-dim arrays).
        batch_size: rows per slot. num_slots: slots in the ring (FFCV: prefetch + 2).
        num_workers: rows of the progress header. shm_dir: where the segment lives (default /dev/shm).

    Raises:
        ConfigError: `shm_dir` lacks the space for the ring (the message names the bytes needed).
    """

    def __init__(self, fields: Mapping[str, tuple[tuple[int, ...], Any]], *, batch_size: int, num_slots: int,
                 num_workers: int = 0, shm_dir: str = SHM_DIR) -> None:
        if batch_size < 1 or num_slots < 1:
            raise ConfigError(f"SlotRing needs batch_size >= 1 and num_slots >= 1, got batch_size={batch_size}, "
                              f"num_slots={num_slots}")
        name = f"fastmix_{os.getpid()}_{secrets.token_hex(6)}"
        self.layout = SlotLayout(
            name=name,
            fields=tuple((k, tuple(int(d) for d in shape), np.dtype(dt).str) for k, (shape, dt) in fields.items()),
            batch_size=int(batch_size), num_slots=int(num_slots), num_workers=int(num_workers), shm_dir=shm_dir)
        needed = self.layout.nbytes
        what = f"{num_slots} slots x {_fmt_bytes(self.layout.slot_nbytes)} for batch_size={batch_size}"
        free = shm_free_bytes(shm_dir)
        if free < needed:
            raise ConfigError(shm_too_small_message(needed, free, shm_dir, what))
        path = self.layout.path
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        mm = None
        tracked = False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while the ring lives: `remove_stale_segments` never takes it
            try:
                os.posix_fallocate(fd, 0, needed)  # reserve now: ENOSPC here, not SIGBUS later
            except OSError as exc:
                raise ConfigError(shm_too_small_message(needed, shm_free_bytes(shm_dir), shm_dir, what)
                                  + f" ({exc.strerror})") from exc
            mm = _map(fd, needed)
            try:
                from multiprocessing import resource_tracker

                resource_tracker.register("/" + name, "shared_memory")  # unlinked if this process is killed
                tracked = True
            except Exception:  # noqa: BLE001 - no tracker (e.g. restricted platform): finalizers still unlink
                tracked = False
        except BaseException:
            _release(name, path, mm, tracked, fd)
            raise
        self._mm = mm
        self._pid = os.getpid()  # the creator: only it unlinks the segment (not a forked child)
        self._base = int(np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data)  # the mapping's address
        self.progress, self._slots = _views(mm, self.layout)
        self._finalizer = weakref.finalize(self, _release, name, path, mm, tracked, fd, self._pid)

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def num_slots(self) -> int:
        return self.layout.num_slots

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def views(self, slot: int) -> dict[str, np.ndarray]:
        """{key: (batch_size, *shape) array} of slot `slot` (writable, shared with the workers)."""
        if self.closed:
            raise RuntimeError(f"SlotRing {self.name} is closed")
        return self._slots[slot]

    def buffer(self) -> np.ndarray:
        """The whole segment as uint8 (nbytes,) (for registering it as pinned memory)."""
        if self.closed:
            raise RuntimeError(f"SlotRing {self.name} is closed")
        return np.frombuffer(self._mm, dtype=np.uint8, count=self.layout.nbytes)

    def close(self, keep: Iterable[tuple[int, int]] | None = None) -> None:
        """Unlink the segment and unmap it (idempotent).

        keep: (address, nbytes) of the views a consumer may still read after the close (lent batches); when
        given, the rest of the segment is released from memory now (punched out of the tmpfs file), so views
        that outlive the ring keep only their own pages resident, not the whole ring."""
        if keep is not None and not self.closed and os.getpid() == self._pid:
            self._punch(keep)
        self.progress = None
        self._slots = []
        self._finalizer()
        self._mm = None  # a mapping a view still holds goes with that view

    def _punch(self, keep: Iterable[tuple[int, int]]) -> None:
        """Free the pages of the segment outside `keep` ((address, nbytes) ranges), reading as zeros after."""
        advice = getattr(mmap, "MADV_REMOVE", None)
        if advice is None:  # pragma: no cover - not Linux
            return
        spans = unheld_spans(self.layout.nbytes, [(addr - self._base, n) for addr, n in keep])
        for start, stop in spans:
            try:
                self._mm.madvise(advice, start, stop - start)
            except (OSError, ValueError):  # a directory that cannot punch holes: freed when unmapped
                return

    def __enter__(self) -> SlotRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SlotRing(name={self.name!r}, slots={self.num_slots}, batch_size={self.layout.batch_size}, "
                f"nbytes={self.layout.nbytes}, closed={self.closed})")


class SlotAttachment:
    """Worker side: maps an existing ring by its `SlotLayout` (never creates or unlinks it)."""

    def __init__(self, layout: SlotLayout) -> None:
        self.layout = layout
        fd = os.open(layout.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < layout.nbytes:
                raise RuntimeError(f"shared-memory segment {layout.path} has {size} bytes, expected {layout.nbytes}")
            self._mm = _map(fd, layout.nbytes)
        finally:
            os.close(fd)
        self.progress, self._slots = _views(self._mm, layout)

    def views(self, slot: int) -> dict[str, np.ndarray]:
        return self._slots[slot]

    def close(self) -> None:
        self.progress = None
        self._slots = []
        try:
            self._mm.close()
        except BufferError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _unlink_if_unlocked(path: str) -> bool:
    """Unlink `path` unless a live ring holds its lock (the creator keeps a shared flock for its lifetime, so
    this also protects rings of processes in another pid namespace sharing the directory)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def remove_stale_segments(shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink fastmix ring segments in `shm_dir` whose creator is gone (left by `kill -9` of a whole process
    group, resource tracker included): names matching `SEGMENT_PATTERN` whose pid is dead and whose liveness
    lock nobody holds. Other files are never touched. Returns the names removed.

    A segment of a live pid is kept even if that pid was reused by another process (conservative)."""
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        m = SEGMENT_PATTERN.fullmatch(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            if _unlink_if_unlocked(os.path.join(shm_dir, name)):
                removed.append(name)
        except OSError as exc:  # e.g. another user's segment
            logging.getLogger(__name__).warning("could not remove stale shared-memory segment %s: %s",
                                                os.path.join(shm_dir, name), exc)
    if removed:
        logging.getLogger(__name__).warning("removed %d shared-memory segment(s) of dead fastmix processes "
                                            "from %s: %s", len(removed), shm_dir, ", ".join(sorted(removed)))
    return sorted(removed)


def leftover_segments(shm_dir: str = SHM_DIR, pid: int | None = None) -> list[str]:
    """Names of fastmix segments in `shm_dir` (of process `pid` when given); used by tests and benchmarks."""
    prefix = "fastmix_" if pid is None else f"fastmix_{pid}_"
    try:
        return sorted(n for n in os.listdir(shm_dir) if n.startswith(prefix))
    except FileNotFoundError:
        return []


__all__ = ["SEGMENT_PATTERN", "SHM_DIR", "SlotAttachment", "SlotLayout", "SlotRing", "leftover_segments",
           "remove_stale_segments", "shm_free_bytes", "unheld_spans"]
