"""Metadata and low-dim data of a remote dataset root, mirrored once per node; then read exactly as local data.

`open_root(url, options, dataset)` lists the root (S3 ListObjectsV2: sizes and ETags of every object under
it), writes the listing to `manifest.json` and brings `meta/` into a local tree; `sync_data` then brings the
selected episodes' data parquets. Both go to `$FASTMIX_CACHE/remote/<name>-<sha256(url)[:16]>/tree/` (the
fastmix cache, see `fastmix.sources.store.cache_root`; 0700/0600). An object is downloaded only when its
(size, ETag) differs from the one recorded in `state.json` for the local copy, so a warm open costs the
listing (one request per 1000 objects) and nothing else; a changed object is downloaded again and replaced
atomically, which changes the local file and so the low-dim store's fingerprint (the store is rebuilt from it).
A data parquet that holds image columns (image-in-parquet datasets) is mirrored without them — only its other
columns' byte ranges are fetched (same rows, same order, same dtypes): the frames are read from the remote
file by byte ranges at decode time.

The local tree is what `load_meta`, the integrity checks and the low-dim store read: the remote dataset is
served from there exactly as a local one. Videos are not mirrored (`fastmix.sources.remote_file`). Ranks that
open together serialize on the entry's `flock` and the later ones find everything up to date. The manifest is
registered (`remote.register_root`) so decode workers know each object's size and ETag without a request.

http(s):// roots cannot be listed: they are refused with a ConfigError (see README).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastmix.errors import FastmixError, MissingFileError
from fastmix.sources import cache_dir, remote, store
from fastmix.sources.remote import ObjectInfo

_STATE, _MANIFEST = "state.json", "manifest.json"


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
    cache_dir.make_private_dirs(entry)
    fd = os.open(entry / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
    """List `url`, mirror its meta/ and register it (see the module docstring). A root without
    meta/info.json raises MissingFileError naming the URL and what the listing found."""
    options = dict(options or {})
    client, prefix = remote.client_for(url, options)
    if client.scheme != "s3":
        from fastmix.errors import ConfigError

        raise ConfigError(f"dataset '{dataset}': root {url} is an http(s) URL; fastmix lists a root to find its "
                          f"files, which plain HTTP cannot do: use an s3:// root (any S3-compatible store)")
    entry = _entry(url)
    tree = entry / "tree"
    with _locked(entry):
        try:
            objects = client.list(prefix, url)
        except MissingFileError as e:
            raise MissingFileError(f"dataset '{dataset}': {e} (the bucket of {url} does not exist?)") from e
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
        manifest = entry / _MANIFEST
        _write_atomic(manifest, json.dumps({"url": url, "objects": {k: [v.size, v.etag] for k, v in
                                                                   objects.items()}}).encode())
    remote.register_root(url, options, os.fspath(manifest))
    return RemoteRoot(url, tree, objects, manifest, options)


def sync_data(root: RemoteRoot, rels: Sequence[str], image_columns: Sequence[str], dataset: str) -> None:
    """Bring the data parquets `rels` (relative paths) into the local tree; `image_columns` are left out
    of files that hold them. Files absent from the listing are left absent (the integrity checks name them)."""
    client, prefix = remote.client_for(root.url, root.options)
    entry = root.tree.parent
    wanted = [r for r in rels if r in root.objects]
    with _locked(entry):
        _sync(client, prefix, root.url, entry, root.tree, root.objects, wanted, tuple(image_columns))


def _sync(client: remote.Client, prefix: str, url: str, entry: Path, tree: Path, objects: dict[str, ObjectInfo],
          rels: Sequence[str], drop: tuple[str, ...]) -> None:
    """Download each of `rels` whose local copy is absent or of another (size, ETag); record them in state.json
    (caller holds the entry lock)."""
    state = _read_json(entry / _STATE)
    todo = []
    for rel in rels:
        info = objects[rel]
        if state.get(rel) != [info.size, info.etag, list(drop)] or not (tree / rel).is_file():
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
        state[rel] = [info.size, info.etag, list(drop)]
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


__all__ = ["RemoteRoot", "mirror_base", "open_root", "sync_data"]
