"""Metadata and low-dim data of a remote dataset root, mirrored once per node; then read exactly as local data.

`open_root(url, options, dataset)` finds the root's objects — a listing (S3 / GCS ListObjectsV2, the Hub's tree
API at the commit the revision was pinned to) or, for a plain http(s):// server that cannot be listed, the
files the metadata names (`fastmix.sources.remote_discover`: one HEAD each) — writes them to a manifest
(`manifest-<sha256 of its content>.json`: a new listing is a new file, so a process never reads another version's
sizes under a name it has cached; the newest 4 are kept) and brings `meta/` into a local tree; `sync_data` then brings the selected episodes' data parquets (and, for an
unlisted root, HEADs their videos). Both go to `$FASTMIX_CACHE/remote/<name>-<sha256(url)[:16]>/tree/` (the
fastmix cache, see `fastmix.sources.store.cache_root`; 0700/0600). An object is downloaded only when its
(size, ETag) differs from the one recorded in `state.json` for the local copy, or the local copy is not the
file written then (its size or mtime differ: a damaged or edited copy is downloaded again), so a warm open
costs the listing (one request per 1000 objects) and nothing else; a changed object is downloaded again and
replaced atomically, which changes the local file and so the low-dim store's fingerprint (the store is rebuilt
from it). A data parquet that holds image columns (image-in-parquet datasets) is mirrored without them — only
its other columns' byte ranges are fetched (same rows, same order, same dtypes): the frames are read from the
remote file by byte ranges at decode time.

The local tree is what `load_meta`, the integrity checks and the low-dim store read: the remote dataset is
served from there exactly as a local one. Videos are not mirrored (`fastmix.sources.remote_file`). Ranks that
open together serialize on the entry's `flock` and the later ones find everything up to date. The manifest is
registered (`remote.register_root`) so decode workers know each object's size and ETag without a request.

**Bounded**: each entry records its dataset and URL (`source.json`) and its last use (`.used`); a process that
opened it is registered as its user while its `RemoteRoot` lives (`cache_dir.use`). After each open the
least recently used entries of this user are removed until the mirrors total at most
`FASTMIX_REMOTE_META_MAX` bytes (K/M/G/T suffixes, `none`: no bound; default 20 GiB); the entry being opened
and entries in use are kept. `fastmix cache list|clear` shows and removes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastmix.errors import ConfigError, FastmixError, MissingFileError
from fastmix.sources import cache_dir, remote, store
from fastmix.sources.remote import ObjectInfo
from fastmix.sources.remote_discover import discover_meta, head_all

_STATE, _SOURCE = "state.json", "source.json"
_KEEP_MANIFESTS = 4
ENV_MAX = "FASTMIX_REMOTE_META_MAX"
DEFAULT_MAX_BYTES = 20 << 30


def mirror_base() -> Path:
    """Where mirrors live: `remote/` beside the low-dim store's directory in the fastmix cache."""
    return store.cache_root().parent / "remote"


@dataclass(frozen=True)
class RemoteRoot:
    """A remote dataset root: its URL, the local tree mirroring meta/ and data/, and the listing."""

    url: str
    tree: Path
    objects: dict[str, ObjectInfo]
    manifest: Path
    options: dict[str, Any]

    def url_of(self, rel: str) -> str:
        return remote.url_join(self.url, rel)

    def exists(self, rel: str) -> bool:
        return os.path.normpath(rel) in self.objects

    def to_url(self, path: str) -> str:
        """The URL of a path inside the local tree (other paths unchanged)."""
        base = os.fspath(self.tree)
        return self.url_of(os.path.relpath(path, base)) if path.startswith(base + os.sep) else path

    def rename_in(self, text: str) -> str:
        """`text` with every path inside the local tree written as its URL (for messages)."""
        return text.replace(os.fspath(self.tree) + os.sep, self.url + "/").replace(os.fspath(self.tree), self.url)


def _entry(url: str) -> Path:
    h = hashlib.sha256(f"fastmix-remote-1\0{url}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1])[-40:].lstrip(".") or "dataset"
    return mirror_base() / f"{slug}-{h}"


@contextlib.contextmanager
def _locked(entry: Path) -> Iterator[None]:
    fd = cache_dir.lock_entry(entry, fcntl.LOCK_EX)  # the lock at the path, even if the entry was just evicted
    try:
        yield
    finally:
        os.close(fd)


def meta_max() -> int | None:
    """The bound on this user's mirrors in bytes (`FASTMIX_REMOTE_META_MAX`, default 20 GiB; None: unbounded)."""
    raw = os.environ.get(ENV_MAX, "")
    if not raw.strip():
        return DEFAULT_MAX_BYTES
    try:
        return cache_dir.parse_size(raw)
    except ValueError:
        raise ConfigError(f"{ENV_MAX}={raw!r} is not a size: give bytes, optionally with a K, M, G or T suffix "
                          f"(powers of 1024), e.g. {ENV_MAX}=2G, or {ENV_MAX}=none for no bound") from None


def enforce_bound(keep: Path) -> list[Path]:
    """Remove this user's least recently used mirrors (never `keep`, never one in use) until they total at most
    `meta_max()` bytes; returns the removed entries."""
    limit = meta_max()
    if limit is None:
        return []
    found, _ = cache_dir.entries(keep.parent)
    total = sum(e.size for e in found)
    removed = []
    for e in found:
        if total <= limit:
            break
        if e.path != keep and cache_dir.remove_entry(e.path):
            total -= e.size
            removed.append(e.path)
    return removed


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, data: bytes) -> None:
    cache_dir.make_private_dirs(path.parent)
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    fd = cache_dir.create_private(tmp)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def open_root(url: str, options: dict[str, Any] | None, dataset: str) -> RemoteRoot:
    """Find the objects of `url`, mirror its meta/ and register it (see the module docstring). A root without
    meta/info.json raises MissingFileError naming the URL and what the listing found."""
    meta_max()  # a bad bound is a ConfigError before any request
    options = dict(options or {})
    client, prefix = remote.client_for(url, options)
    entry, given = _entry(url), url
    if client.scheme == "hf":  # pinned: every file read at the commit the revision names now
        from fastmix.sources.remote_hf import parse, pinned_url

        try:
            options["_commit"] = client.resolve(parse(url)[1], url)
        except (MissingFileError, remote.RemoteError) as e:
            raise type(e)(f"dataset '{dataset}': {e}") from e
        url = pinned_url(url, options["_commit"])
        client, prefix = remote.client_for(url, options)
    tree = entry / "tree"
    with _locked(entry):
        _write_atomic(entry / _SOURCE, json.dumps({"dataset": dataset, "root": given}).encode())
        try:
            if client.listable:
                objects = client.list(prefix, url)
            else:
                objects = discover_meta(client, prefix, url, dataset,
                                        lambda found: _sync(client, prefix, url, entry, tree, found, list(found), ()),
                                        tree)
        except MissingFileError as e:
            raise MissingFileError(f"dataset '{dataset}': {e}" + ("" if "dataset '" in str(e) else
                                                                   f" (the bucket or repo of {url} does not exist?)")
                                   ) from e
        except remote.RemoteError as e:
            raise type(e)(f"dataset '{dataset}': {e}") from e
        if "meta/info.json" not in objects:
            found = sorted({k.split("/", 1)[0] for k in objects})[:10]
            raise MissingFileError(
                f"dataset '{dataset}': {url}/meta/info.json does not exist ("
                + (f"the prefix holds {len(objects)} objects under {found}" if objects else "nothing under the prefix")
                + "); check the URL (s3://bucket/prefix/<repo_id>) and the endpoint (AWS_ENDPOINT_URL)")
        metas = sorted(k for k in objects if k.startswith("meta/"))
        _sync(client, prefix, url, entry, tree, objects, metas, ())
        for p in sorted(tree.joinpath("meta").rglob("*")) if tree.joinpath("meta").is_dir() else []:
            rel = os.path.relpath(p, tree)
            if p.is_file() and rel not in objects:
                p.unlink()
        manifest = _write_manifest(entry, url, objects)
    root = RemoteRoot(url, tree, objects, manifest, options)
    weakref.finalize(root, cache_dir.use(entry))  # in use while the root lives: never evicted under a reader
    enforce_bound(entry)
    remote.register_root(url, options, os.fspath(manifest))
    return root


def _write_manifest(entry: Path, url: str, objects: dict[str, ObjectInfo]) -> Path:
    """Write the listing to `entry/manifest-<content hash>.json` (caller holds the entry lock); older manifests
    beyond the newest `_KEEP_MANIFESTS` are removed. Returns its path."""
    data = json.dumps({"url": url, "objects": {k: [v.size, v.etag] for k, v in sorted(objects.items())}}).encode()
    path = entry / f"manifest-{hashlib.sha256(data).hexdigest()[:16]}.json"
    if not path.is_file():
        _write_atomic(path, data)
    else:
        os.utime(path)
    old = sorted(entry.glob("manifest-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[_KEEP_MANIFESTS:]:
        if p != path:
            with contextlib.suppress(OSError):
                p.unlink()
    return path


def sync_data(root: RemoteRoot, rels: Sequence[str], image_columns: Sequence[str], dataset: str,
              videos: Sequence[str] = ()) -> None:
    """Bring the data parquets `rels` (relative paths) into the local tree; `image_columns` are left out
    of files that hold them. Files absent from the listing are left absent (the integrity checks name them).
    For a root that cannot be listed, the data files and `videos` are looked up first (HEAD) and added to the
    root's objects and manifest."""
    client, prefix = remote.client_for(root.url, root.options)
    entry = root.tree.parent
    if not client.listable:
        unknown = [r for r in [*rels, *videos] if r not in root.objects]
        if unknown:
            try:
                root.objects.update(head_all(client, prefix, root.url, unknown))
            except remote.RemoteError as e:
                raise type(e)(f"dataset '{dataset}': {e}") from e
            with _locked(entry):
                manifest = _write_manifest(entry, root.url, root.objects)
            remote.register_root(root.url, root.options, os.fspath(manifest))
    wanted = [r for r in rels if r in root.objects]
    with _locked(entry):
        _sync(client, prefix, root.url, entry, root.tree, root.objects, wanted, tuple(image_columns))


def _local_stamp(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _sync(client: remote.Client, prefix: str, url: str, entry: Path, tree: Path, objects: dict[str, ObjectInfo],
          rels: Sequence[str], drop: tuple[str, ...]) -> None:
    """Download each of `rels` whose local copy is absent, of another (size, ETag), or not the file written
    then (size, mtime); record them in state.json (caller holds the entry lock)."""
    state = _read_json(entry / _STATE)
    todo = []
    for rel in rels:
        info = objects[rel]
        rec = state.get(rel)
        if (not isinstance(rec, list) or rec[:3] != [info.size, info.etag, list(drop)]
                or rec[3:] != [_local_stamp(tree / rel)]):
            todo.append(rel)
    if not todo:
        return

    def one(rel: str) -> None:
        name = remote.url_join(url, rel)
        if drop and rel.endswith(".parquet"):
            data = _projected(name, objects[rel], drop)
        else:
            data = client.get(remote.url_join(prefix, rel), name)
        _write_atomic(tree / rel, data)

    threads = min(16, len(todo))
    if threads == 1:
        one(todo[0])
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="fastmix-mirror") as pool:
            list(pool.map(one, todo))
    for rel in todo:
        info = objects[rel]
        state[rel] = [info.size, info.etag, list(drop), _local_stamp(tree / rel)]
    _write_atomic(entry / _STATE, json.dumps(state).encode())


def _projected(url: str, info: ObjectInfo, drop: tuple[str, ...]) -> bytes:
    """The parquet at `url` without the columns `drop`, read by byte ranges (footer, then the kept columns)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastmix.sources.remote_file import RemoteFile, object_for

    try:
        pf = pq.ParquetFile(RemoteFile(object_for(url, info), readahead=0, whole_reads=True))
        keep = [c for c in pf.schema_arrow.names if c not in drop]
        table = pf.read(columns=keep, use_threads=False)
    except FastmixError:
        raise
    except (OSError, pa.ArrowException) as e:
        from fastmix.errors import DatasetFormatError

        raise DatasetFormatError(f"cannot read data file {url}: {e}") from e
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


__all__ = ["ENV_MAX", "RemoteRoot", "enforce_bound", "meta_max", "mirror_base", "open_root", "sync_data"]
