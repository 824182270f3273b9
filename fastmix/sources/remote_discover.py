"""The files of a dataset root that cannot be listed (a plain http(s):// server): found from its metadata.

LeRobot's layout is templated, so nothing needs a listing: `meta/info.json` names the version; v2.x keeps
`meta/episodes.jsonl`, `meta/tasks.jsonl` (and optionally `meta/episodes_stats.jsonl`, `meta/stats.json`);
v3.0 keeps `meta/tasks.parquet`, optionally `meta/stats.json`, and its episode metadata in
`meta/episodes/chunk-CCC/file-FFF.parquet`, numbered in order (file index wrapping at `chunks_size` into the
next chunk) until they hold `total_episodes` rows. The data and video files are then named by the episode
table (`data_path` / `video_path` templates), and `head_all` asks for each one's size and version (HEAD: the
ETag, else Last-Modified and Content-Length) — an absent one (404) is left out, so the integrity checks name it.

Each file costs one HEAD per open (a listing does it in one request per 1000 objects on S3 and the Hub).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastmix.errors import DatasetFormatError, MissingFileError
from fastmix.sources.remote import url_join
from fastmix.sources.remote_http import Client, ObjectInfo

V2_META = ("meta/episodes.jsonl", "meta/tasks.jsonl", "meta/episodes_stats.jsonl", "meta/stats.json")
V3_META = ("meta/tasks.parquet", "meta/stats.json")
EPISODES_V3 = "meta/episodes/chunk-{chunk:03d}/file-{file:03d}.parquet"
_HEADS = 16  # concurrent HEADs


def head_all(client: Client, prefix: str, url: str, rels: Sequence[str]) -> dict[str, ObjectInfo]:
    """{rel: ObjectInfo} of the files `rels` under `prefix` that exist (HEAD each, concurrently)."""
    def one(rel: str) -> tuple[str, ObjectInfo | None]:
        try:
            return rel, client.head(url_join(prefix, rel), url_join(url, rel))
        except MissingFileError:
            return rel, None

    rels = list(dict.fromkeys(rels))
    if len(rels) <= 1:
        found = [one(r) for r in rels]
    else:
        with ThreadPoolExecutor(min(_HEADS, len(rels)), thread_name_prefix="fastmix-head") as pool:
            found = list(pool.map(one, rels))
    return {rel: info for rel, info in found if info is not None}


def discover_meta(client: Client, prefix: str, url: str, dataset: str,
                  fetch: Callable[[dict[str, ObjectInfo]], None], tree: Path) -> dict[str, ObjectInfo]:
    """{rel: ObjectInfo} of the meta/ files of the root `url`; `fetch(objects)` brings the given files into
    `tree` (where they are read to find the next ones). A root without meta/info.json is a MissingFileError."""
    objects = head_all(client, prefix, url, ["meta/info.json"])
    if not objects:
        raise MissingFileError(f"dataset '{dataset}': {url}/meta/info.json does not exist (HTTP 404); check the URL "
                               f"(https://host/path/<repo_id>, the directory holding meta/, data/, videos/)")
    fetch(objects)
    try:
        info = json.loads((tree / "meta/info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetFormatError(f"dataset '{dataset}': {url}/meta/info.json is not valid JSON: {e}") from e
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        found = head_all(client, prefix, url, V2_META)
        fetch(found)
        return {**objects, **found}
    found = head_all(client, prefix, url, V3_META)
    fetch(found)
    objects.update(found)
    total = int(info.get("total_episodes", 0) or 0)
    chunks_size = max(1, int(info.get("chunks_size", 1000) or 1000))
    seen, chunk, file = 0, 0, 0
    while seen < total:
        rel = EPISODES_V3.format(chunk=chunk, file=file)
        one = head_all(client, prefix, url, [rel])
        if not one:
            raise MissingFileError(
                f"dataset '{dataset}': {url}/{rel} does not exist (HTTP 404), but meta/info.json says "
                f"total_episodes={total} and the episode metadata files before it hold {seen}; the dataset is "
                f"incomplete on the server")
        fetch(one)
        objects.update(one)
        seen += _rows(tree / rel, url_join(url, rel), dataset)
        file += 1
        if file >= chunks_size:
            chunk, file = chunk + 1, 0
    return objects


def _rows(path: Path, name: str, dataset: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as e:
        raise DatasetFormatError(f"dataset '{dataset}': episode metadata {name} is not a parquet file: {e}") from e
    if rows == 0:
        raise DatasetFormatError(f"dataset '{dataset}': episode metadata {name} holds no episodes")
    return rows


__all__ = ["discover_meta", "head_all"]
