"""The low-dim store's cache directory: who may read an entry, how large the cache may grow, what is garbage.

Used by `fastmix.sources.store` and `fastmix.sources.lowdim`; `fastmix cache list|clear` shows and clears it.

- **Private**: every directory fastmix creates in the cache is 0700 and every file 0600, whatever the umask (the
  columns of a private dataset are not readable by other users of a shared machine); an existing entry of this
  user whose directory is open to others is closed (chmod 0700) when it is opened.
- **Owned**: an entry, fingerprint directory or file not owned by the current user is never read
  (`ForeignEntryError`); `load_lowdim` then warns naming it and uses the private entry `<entry>-u<uid>`
  instead (if that is not this user's either, the columns load into memory). Nothing that fastmix removes
  (eviction, `fastmix cache clear`, entries of deleted datasets) belongs to another user.
- **In use**: a process that maps an entry stamps `<entry>/.used` (its mtime is the entry's last use) and
  registers as `<entry>/.user-<pid>-<start time>@<host>` (created under a shared flock of the entry's `.lock`,
  removed when its last table of that entry is collected or the process exits). An entry is in use while its
  `.lock` is held (a build or an extension) or one of its registered processes is alive: on this host, the pid
  runs with the same start time; on another host (a shared file system), registered within
  `FOREIGN_HOST_TTL_S`.
- **Bounded**: after a build or an extension, this user's entries are evicted least recently used first until
  their total size (bytes of their files) is at most `FASTMIX_CACHE_MAX` (bytes, or with a K, M, G or T suffix
  in powers of 1024, e.g. `500M`, `2G`; `none`: no bound; default 20 GiB). Entries in use and the entry being
  opened are never evicted, so one entry larger than the bound stays.
- **Temporary files** (`*.tmp-<pid>-*`) are written only under the entry's exclusive lock: one whose process is
  not alive on this host is removed at the next open of its entry that gets the lock (a build or an extension
  killed midway leaves one).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastmix.errors import ConfigError

ENV_MAX = "FASTMIX_CACHE_MAX"
DEFAULT_MAX_BYTES = 20 << 30
FOREIGN_HOST_TTL_S = 7 * 24 * 3600  # a registration of another host counts as live this long (seconds)
LOCK, USED, USER_PREFIX = ".lock", ".used", ".user-"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TEMP = re.compile(r"\.(?:tmp|trash)-(\d+)-")
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


class ForeignEntryError(OSError):
    """A cache entry, fingerprint directory or store file owned by another user: never read."""


def foreign(path: os.PathLike | str, uid: int) -> ForeignEntryError:
    """The ForeignEntryError of `path`, owned by `uid`."""
    err = ForeignEntryError(f"{path} is owned by uid {uid}, not by the current user (uid {os.geteuid()})")
    err.path = os.fspath(path)
    return err


# -- size bound --------------------------------------------------------------------------------------------
def parse_size(text: str) -> int | None:
    """Bytes of a size like "20G", "500M", "1.5GiB", "4096" (suffixes are powers of 1024); None for "none"
    (no bound). ValueError when it is not a size."""
    s = text.strip().upper().replace(" ", "")
    if s in ("NONE", "INF", "OFF", "UNLIMITED"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([KMGT]?)(?:I?B)?", s)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m[1]) * _UNITS[m[2]])


def cache_max() -> int | None:
    """The bound on this user's store entries in bytes (`FASTMIX_CACHE_MAX`, default 20 GiB; None: unbounded)."""
    raw = os.environ.get(ENV_MAX, "")
    if not raw.strip():
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(raw)
    except ValueError:
        raise ConfigError(f"{ENV_MAX}={raw!r} is not a size: give bytes, optionally with a K, M, G or T suffix "
                          f"(powers of 1024), e.g. {ENV_MAX}=500M or {ENV_MAX}=20G, or {ENV_MAX}=none for no "
                          f"bound") from None


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# -- private files and directories -------------------------------------------------------------------------
def make_private_dirs(path: Path) -> None:
    """`mkdir -p path`; every directory this creates is 0700, whatever the umask."""
    missing, p = [], Path(path)
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


def create_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """os.open(path, flags) with mode 0600 whatever the umask (an existing file of this user is set to 0600)."""
    fd = os.open(path, flags, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o777 != 0o600 and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_owner(path: Path, st: os.stat_result | None = None) -> None:
    """Raise ForeignEntryError when `path` exists and is not the current user's (a directory of this user
    open to others is closed to 0700)."""
    try:
        st = st if st is not None else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if st.st_uid != os.geteuid():
        raise foreign(path, st.st_uid)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)


def private_entry(entry: Path) -> Path:
    """Where this user's store of `entry` goes when `entry` belongs to another user."""
    return entry.with_name(f"{entry.name}-u{os.geteuid()}")


def warn_foreign(err: ForeignEntryError, dataset: str, instead: Path) -> None:
    warnings.warn(f"fastmix: the low-dim store of dataset '{dataset}' is not read: {err}; another user's files "
                  f"are never trusted. Building this user's own store at {instead} instead.", RuntimeWarning,
                  stacklevel=4)


# -- locks -------------------------------------------------------------------------------------------------
def lock_entry(entry: Path, op: int, mkdir: bool = True) -> int:
    """A descriptor of `entry/.lock` holding flock `op` (fcntl.LOCK_SH or LOCK_EX, | LOCK_NB: BlockingIOError
    while another holds it). `mkdir`: create the entry (0700) first, else FileNotFoundError when it is gone.
    Retried when the entry was removed or replaced while waiting, so the lock is always the one at the path.
    On a read-only cache the existing `.lock` is opened read-only (flock works on it)."""
    path = entry / LOCK
    while True:
        if mkdir:
            make_private_dirs(entry)
        try:
            fd = create_private(path, os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:
            raise
        except OSError:  # read-only cache
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, op)
            st = os.fstat(fd)
            try:
                cur = os.stat(path)
                same = (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                return fd
            if not mkdir:
                raise FileNotFoundError(f"store entry {entry} was removed")
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


# -- processes ---------------------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a pid <= 0 never does)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot ("0" when unknown): a pid reused by another
    process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "0"


def _user_live(name: str, mtime: float) -> bool:
    """Whether the registration file `name` (".user-<pid>-<start>@<host>") names a live process."""
    pid_start, _, host = name[len(USER_PREFIX):].rpartition("@")
    if host != _HOST:
        return time.time() - mtime < FOREIGN_HOST_TTL_S
    pid, _, start = pid_start.partition("-")
    try:
        return pid_alive(int(pid)) and start in ("0", _start_time(int(pid)))
    except ValueError:
        return False


def live_users(entry: Path, prune: bool = False) -> int:
    """Registered processes of `entry` that are alive; `prune` removes the registrations of dead ones."""
    n = 0
    with contextlib.suppress(OSError), os.scandir(entry) as it:
        for e in it:
            if not e.name.startswith(USER_PREFIX):
                continue
            try:
                live = _user_live(e.name, e.stat(follow_symlinks=False).st_mtime)
            except OSError:
                continue
            n += live
            if not live and prune:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
    return n


_USES: dict[tuple[int, str], int] = {}  # (pid, entry) -> tables of this process mapping it
_USES_LOCK = threading.Lock()


def use(entry: Path) -> Callable[[], None]:
    """Stamp `entry`'s last use and register this process as its user until the returned function has been
    called once per `use` (as each table's finalizer). ForeignEntryError when the entry is another user's,
    ConfigError when FASTMIX_CACHE_MAX is not a size; nothing else raises (a read-only cache is used
    unregistered)."""
    cache_max()
    check_owner(entry)
    with contextlib.suppress(OSError):
        make_private_dirs(entry)
    pid = os.getpid()
    key, name = (pid, os.fspath(entry)), f"{USER_PREFIX}{pid}-{_start_time(pid)}@{_HOST}"
    with contextlib.suppress(OSError):
        fd = create_private(entry / USED, os.O_WRONLY | os.O_CREAT)
        try:
            os.utime(fd)
        finally:
            os.close(fd)
    with _USES_LOCK:  # the registration file exists while the count is positive
        registered = bool(_USES.get(key))
        if registered:
            _USES[key] += 1
    if not registered:
        try:
            fd = lock_entry(entry, fcntl.LOCK_SH)  # no eviction can be halfway while it is held
        except OSError:
            return _no_release
        try:
            with _USES_LOCK:
                if not _USES.get(key):
                    os.close(create_private(entry / name))
                _USES[key] = _USES.get(key, 0) + 1
        except OSError:
            return _no_release
        finally:
            os.close(fd)
    done = []

    def release() -> None:
        if done or os.getpid() != pid:  # once; never in a forked child
            return
        done.append(True)
        with _USES_LOCK:
            _USES[key] -= 1
            if _USES[key] == 0:
                del _USES[key]
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(key[1], name))

    return release


def _no_release() -> None:
    pass


# -- garbage -----------------------------------------------------------------------------------------------
def _dead_temps(d: Path) -> list[str]:
    try:
        names = os.listdir(d)
    except OSError:
        return []
    out = []
    for name in names:
        m = _TEMP.search(name)
        if m and not pid_alive(int(m[1])):
            out.append(os.path.join(d, name))
    return out


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def remove_dead_temps(entry: Path, fp_dir: Path) -> list[str]:
    """Remove the temporary files and directories of `entry` and `fp_dir` whose process is not alive on this
    host, when the entry's exclusive lock is free (every writer of a temp holds it). Returns what was removed."""
    found = _dead_temps(entry) + _dead_temps(fp_dir)
    if not found:
        return []
    try:
        fd = lock_entry(entry, fcntl.LOCK_EX | fcntl.LOCK_NB, mkdir=False)
    except OSError:
        return []
    try:
        found = _dead_temps(entry) + _dead_temps(fp_dir)
        for p in found:
            _remove(p)
    finally:
        os.close(fd)
    return found


# -- entries -----------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One store entry: `dataset` and `root` as recorded by its builder (None before a build completed), `size`
    bytes of its files, `last_use` (seconds since the epoch)."""

    path: Path
    dataset: str | None
    root: str | None
    size: int
    last_use: float


def entry_size(entry: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(entry):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def entries(root: Path) -> tuple[list[Entry], int]:
    """This user's entries under the cache root `root` (least recently used first) and how many entries of
    other users are there (left alone)."""
    out, others = [], 0
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return [], 0
    for name in names:
        path = root / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if name.startswith(".") or not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid != os.geteuid():
            others += 1
            continue
        src: dict = {}
        with contextlib.suppress(OSError, ValueError):
            src = json.loads((path / "source.json").read_text(encoding="utf-8"))
        try:
            last = os.stat(path / USED).st_mtime
        except OSError:
            last = st.st_mtime
        src = src if isinstance(src, dict) else {}
        out.append(Entry(path, src.get("dataset"), src.get("root"), entry_size(path), last))
    out.sort(key=lambda e: e.last_use)
    return out, others


def in_use(entry: Path) -> bool:
    """Whether a build or extension holds the entry's lock or a live process is registered as its user."""
    try:
        os.close(lock_entry(entry, fcntl.LOCK_SH | fcntl.LOCK_NB, mkdir=False))
    except BlockingIOError:
        return True
    except OSError:
        pass
    return live_users(entry) > 0


def remove_entry(entry: Path) -> bool:
    """Delete `entry` unless it is another user's or in use (lock held, live user); True when it is gone."""
    try:
        check_owner(entry)
        fd = lock_entry(entry, fcntl.LOCK_EX | fcntl.LOCK_NB, mkdir=False)
    except FileNotFoundError:
        return not entry.exists()
    except OSError:
        return False
    try:
        if live_users(entry, prune=True):
            return False
        trash = entry.parent / f".trash-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(entry, trash)  # atomic: an opener sees the whole entry or none
    except OSError:
        return False
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def enforce_bound(keep: Path) -> list[Path]:
    """Evict this user's least recently used entries (never `keep`, never one in use) until their total size is
    at most `cache_max()`; returns the evicted entries. Best effort: file system errors are ignored."""
    limit = cache_max()
    root = keep.parent
    for p in _dead_temps(root):
        _remove(p)
    if limit is None:
        return []
    found, _ = entries(root)
    total = sum(e.size for e in found)
    evicted = []
    for e in found:
        if total <= limit:
            break
        if e.path != keep and remove_entry(e.path):
            total -= e.size
            evicted.append(e.path)
    return evicted
