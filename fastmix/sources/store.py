"""The low-dim store: a dataset's low-dim columns as `.npy` files that every process on a node maps read-only.

Built once per (dataset root, selected episodes) by `fastmix.sources.lowdim.load_lowdim` and reused while the
dataset's files are unchanged; all ranks and their workers map the same files, so the page cache holds one
physical copy per node (the pages are shared, clean and file-backed: PSS, not RSS, shows what each process
costs).

Where it lives: `$FASTMIX_CACHE/lowdim/`, else `$XDG_CACHE_HOME/fastmix/lowdim/`, else
`~/.cache/fastmix/lowdim/` — never inside the dataset directory, so read-only datasets work. One entry per
(realpath of the root, selected episode indices): `<name>-<sha256[:16]>/`, holding `.lock`, `source.json` and
one directory per fingerprint, `<fingerprint[:16]>/`, with `meta.json` (rows, data files, column dtypes) and one
`.npy` per column: `col-<quoted key>.npy` for every materialized key (INDEX_KEYS included), `file_id.npy`,
`file_row.npy`, `ep_pos.npy`, `sorted_pos.npy` and, only when the "index" column is not already ascending,
`sorted_index.npy`.

Invalidation: the fingerprint hashes info.json's bytes and (path, size, mtime_ns) of every file under `meta/`
and of every data parquet of the selection; any change gives a new fingerprint directory (a rebuild), and the
builder deletes the entry's other fingerprint directories (processes still mapping them keep their pages:
unlinked files stay valid while mapped). Entries whose dataset root no longer exists are deleted when any
store is built. `FASTMIX_LOWDIM_STORE=0` disables the store (columns load into memory).

Concurrency: builders and extenders take an exclusive `flock` on the entry's `.lock`; others starting at the
same time wait on it and then reuse what the winner built. A build writes into `<fp>.tmp-<pid>-<rand>/` and
renames it into place (a crash leaves only a temp dir, removed by the next builder); an extra key is written
to a temp file and `os.replace`d. A complete fingerprint directory is only read, so readers take no lock.

Read-only cache: an existing complete store is mapped as usual; when something must be written and cannot be
(permissions, read-only file system, disk full), `load_lowdim` warns and loads the columns into memory.

The cache directory's policy (`fastmix.sources.cache_dir`): files 0600 and directories 0700 whatever the umask;
entries and files of another user never read; the size bound `FASTMIX_CACHE_MAX` (least recently used entries
not in use are evicted); temporary files of dead processes removed. A damaged store file (empty, a garbage
header, truncated, a row count other than meta.json's) raises `DamagedFileError` naming it: `load_lowdim` warns
and rebuilds.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import mmap
import os
import secrets
import shutil
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from fastmix.errors import MissingFileError
from fastmix.sources import cache_dir

STORE_FORMAT = 1  # bump when the layout or the meaning of a file changes
_META = "meta.json"


def cache_root() -> Path:
    """Directory holding every low-dim store entry (see the module docstring)."""
    if os.environ.get("FASTMIX_CACHE"):
        return Path(os.environ["FASTMIX_CACHE"]).expanduser() / "lowdim"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "fastmix" / "lowdim"


def store_enabled() -> bool:
    """False when `FASTMIX_LOWDIM_STORE` is "0"/"false"/"no"/"off" (load columns into memory instead)."""
    return os.environ.get("FASTMIX_LOWDIM_STORE", "1").strip().lower() not in ("0", "false", "no", "off")


def column_file(key: str) -> str:
    """File name of column `key` in a store directory (keys may hold '/', '.' or spaces)."""
    return f"col-{quote(key, safe='')}.npy"


def entry_dir(root: Path, episodes: np.ndarray, name: str) -> Path:
    """The store entry of dataset `root` restricted to the episode indices `episodes` (int64, ascending)."""
    h = hashlib.sha256()
    h.update(f"fastmix-lowdim-{STORE_FORMAT}\0{os.path.realpath(root)}\0".encode())
    h.update(np.ascontiguousarray(episodes, dtype=np.int64).tobytes())
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-40:].lstrip(".") or "dataset"
    return cache_root() / f"{slug}-{h.hexdigest()[:16]}"


def fingerprint(root: Path, data_files: Sequence[str], dataset: str) -> str:
    """Hex digest of info.json's bytes and (path, size, mtime_ns, ctime_ns, inode) of every file under meta/ and
    of `data_files` (paths relative to `root`). A missing data file raises MissingFileError naming it. The ctime
    and inode catch what size and mtime miss: a file edited in place with its size kept and its mtime set back
    (`touch -r`, tools that preserve times) still gets a new ctime, which nothing sets back."""

    def stamp(st: os.stat_result) -> str:
        return f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"

    h = hashlib.sha256(f"fastmix-lowdim-{STORE_FORMAT}\0".encode())
    info = root / "meta" / "info.json"
    with contextlib.suppress(OSError):
        h.update(info.read_bytes())
    meta_dir = root / "meta"
    for dirpath, dirnames, filenames in sorted(os.walk(meta_dir)):
        dirnames.sort()
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            with contextlib.suppress(OSError):
                st = os.stat(p)
                h.update(f"m\0{os.path.relpath(p, root)}\0{stamp(st)}\n".encode())
    base = os.fspath(root)
    for rel in data_files:
        path = os.path.join(base, rel)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise MissingFileError(f"dataset '{dataset}': data file {path} is missing") from None
        h.update(f"d\0{rel}\0{stamp(st)}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Hold an exclusive flock on `entry/.lock` (created with the entry); released on exit or process death."""
    fd = cache_dir.lock_entry(entry, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)  # closing drops the lock


def read_meta(fp_dir: Path) -> dict[str, Any] | None:
    """The `meta.json` of a complete fingerprint directory, or None when there is none (ForeignEntryError when
    it is another user's)."""
    try:
        with open(fp_dir / _META, "rb") as f:
            cache_dir.check_owner(fp_dir / _META, os.fstat(f.fileno()))
            return json.loads(f.read().decode("utf-8"))
    except cache_dir.ForeignEntryError:
        raise
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    with open(cache_dir.create_private(tmp), "w", encoding="utf-8") as f:
        f.write(json.dumps(obj))
    os.replace(tmp, path)


def new_temp_dir(fp_dir: Path) -> Path:
    tmp = fp_dir.with_name(f"{fp_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    cache_dir.make_private_dirs(tmp)
    return tmp


def publish_dir(tmp: Path, fp_dir: Path) -> None:
    """Rename the finished temp dir `tmp` to `fp_dir`; if another builder got there first, keep theirs."""
    try:
        os.rename(tmp, fp_dir)
    except OSError:
        if read_meta(fp_dir) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(entry: Path, keep: str) -> None:
    """Best effort: delete the entry's fingerprint and temp directories other than `keep` (called under the
    entry lock, so no builder is writing them), and entries of other datasets whose root is gone (unless in use
    or another user's)."""
    for p in entry.iterdir():
        if p.is_dir() and p.name != keep and not p.name.startswith("."):
            shutil.rmtree(p, ignore_errors=True)
    with contextlib.suppress(OSError):
        for other in entry.parent.iterdir():
            if other == entry or not other.is_dir():
                continue
            try:
                src = json.loads((other / "source.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(src, dict) and src.get("root") and not os.path.isdir(src["root"]):
                cache_dir.remove_entry(other)


# -- column files ----------------------------------------------------------------------------------------
class FileColumn:
    """A preallocated `.npy` file written in row blocks with pwrite (positional, thread-safe, GIL released).

    Pages written this way live in the page cache, not in the writer's mapped memory, so the builder's RSS
    does not grow with the column."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(int(s) for s in shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with open(cache_dir.create_private(path), "wb") as f:
            np.lib.format.write_array_header_2_0(
                f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})
            self.offset = f.tell()
            f.truncate(self.offset + self.row_bytes * self.shape[0])
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, row: int, values: np.ndarray) -> None:
        """Write `values` (n, *shape[1:]) at rows row..row+n-1."""
        buf = memoryview(np.ascontiguousarray(values, dtype=self.dtype)).cast("B")
        pos = self.offset + row * self.row_bytes
        while len(buf):
            n = os.pwrite(self.fd, buf, pos)
            buf, pos = buf[n:], pos + n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemoryColumn:
    """The in-memory stand-in of FileColumn (the fallback when the store cannot be written)."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.array = np.empty(shape, dtype=dtype)

    def write(self, row: int, values: np.ndarray) -> None:
        self.array[row:row + len(values)] = values

    def close(self) -> None:
        pass


# -- mapping without holding file descriptors --------------------------------------------------------------
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.c_long]
    _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _MAP_FAILED = ctypes.c_void_p(-1).value
except (OSError, AttributeError):  # pragma: no cover - non-POSIX
    _libc = None


class DamagedFileError(OSError):
    """A low-dim store file that is empty, has no valid `.npy` header, is truncated or disagrees with its
    fingerprint directory's meta.json (the message names it; `path` is its path)."""


def damaged(path: Path, why: str) -> DamagedFileError:
    err = DamagedFileError(f"low-dim store file {path} is damaged: {why}")
    err.path = os.fspath(path)
    return err


def map_npy(path: Path, rows: int | None = None) -> np.ndarray:
    """Read-only view of the `.npy` file `path`, memory-mapped MAP_SHARED (one page-cache copy for every
    process mapping it). Holds no file descriptor (unmapped when the last view dies). A file that is not a
    whole C-ordered `.npy` (of `rows` rows when given) raises DamagedFileError naming it; a file of another
    user ForeignEntryError."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        cache_dir.check_owner(path, st)
        try:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # pragma: no cover - not written by fastmix
                return np.load(path, mmap_mode="r")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except Exception as e:  # numpy raises ValueError, SyntaxError, tokenize.TokenError... for a bad header
            raise damaged(path, f"not a .npy file ({e})") from None
        offset = f.tell()
        size = st.st_size
        count = int(np.prod(shape, dtype=np.int64))
        if fortran or size < offset + count * dtype.itemsize:
            raise damaged(path, f"truncated or not C-ordered ({size} bytes for {count} {dtype} values)")
        if rows is not None and (not shape or shape[0] != rows):
            raise damaged(path, f"its shape is {shape} but its meta.json says {rows} rows")
        if count == 0:
            return np.empty(shape, dtype=dtype)
        if _libc is None:  # pragma: no cover
            return np.load(path, mmap_mode="r")
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {path} failed: {os.strerror(err)}")
    buf = (ctypes.c_char * size).from_address(addr)
    weakref.finalize(buf, _libc.munmap, addr, size)
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
    arr.flags.writeable = False
    _MAPPED[id(arr)] = arr
    return arr


_MAPPED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> array map_npy returned
_MADV_DONTNEED = 4


def release_pages(arrays: Sequence[np.ndarray]) -> int:
    """Drop the pages of store-mapped arrays from this process's resident set (madvise MADV_DONTNEED on a
    shared file mapping: the data stays in the page cache and is faulted back in on the next read). For
    columns read once at open (the integrity checks), so that they do not count as this process's memory.
    Arrays not returned by `map_npy` are skipped (on anonymous memory DONTNEED would discard data). Returns
    the bytes released."""
    if _libc is None:  # pragma: no cover
        return 0
    page = mmap.PAGESIZE
    done = 0
    for arr in arrays:
        if not isinstance(arr, np.ndarray) or _MAPPED.get(id(arr)) is not arr or arr.nbytes == 0:
            continue
        ptr = arr.__array_interface__["data"][0]
        start = ptr - ptr % page
        length = arr.nbytes + (ptr - start)
        if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_DONTNEED) == 0:
            done += length
    return done
