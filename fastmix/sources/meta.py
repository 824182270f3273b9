"""LeRobot dataset metadata: `meta/info.json`, version detection, episodes, tasks and stats (v2.0, v2.1, v3.0).

Everything here is read once at open time into plain numpy arrays and dicts; nothing stays open.
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastmix.errors import DatasetFormatError, MissingFileError

SUPPORTED_VERSIONS: tuple[str, ...] = ("v2.0", "v2.1", "v3.0")
# Columns every LeRobot frame has besides its features' own values.
INDEX_KEYS: tuple[str, ...] = ("timestamp", "frame_index", "episode_index", "index", "task_index")
CAMERA_DTYPES: tuple[str, ...] = ("video", "image")
# Bounds on what info.json may ask for, checked before anything is formatted or allocated.
MAX_FEATURE_ELEMENTS = 1 << 28  # values per frame of one feature (a 4K RGB frame holds 2**24.6)
MAX_FORMAT_WIDTH = 64  # widths / precisions in data_path and video_path format specs
PATH_FIELDS = ("chunk_index", "file_index", "episode_chunk", "episode_index", "video_key")


def lerobot_home() -> Path:
    """lerobot's dataset home, resolved as lerobot (0cf8648 and 0.4.4) and huggingface_hub resolve it.

    `$HF_LEROBOT_HOME` when set (even empty: lerobot then uses the working directory), else
    `$HF_HOME/lerobot` where HF_HOME defaults to `$XDG_CACHE_HOME/huggingface` and XDG_CACHE_HOME to
    `~/.cache`; `~` and (in HF_HOME) `$VARS` are expanded. Read from the environment at each call.
    """
    env = os.environ
    home = env.get("HF_LEROBOT_HOME")
    if home is not None:
        return Path(home).expanduser()
    xdg = env.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    hf_home = os.path.expandvars(os.path.expanduser(env.get("HF_HOME", os.path.join(xdg, "huggingface"))))
    return Path(hf_home) / "lerobot"


@dataclass(frozen=True)
class EpisodeTable:
    """Per-episode metadata of the whole dataset, rows sorted by episode index.

    episode_index, length, dataset_from_index, dataset_to_index: int64 (E,) — [from, to) are absolute frame
    indices (the "index" column). data_file: (E,) relative data parquet path. video_file[key]: (E,) relative
    mp4 path; video_from_ts[key]: float64 (E,) seconds where the episode starts inside that mp4 (0 in v2.x);
    video_to_ts[key]: float64 (E,) where it ends (v3.0 `to_timestamp`; NaN when the metadata has none).
    In v2.x, [from, to) is a cumulative sum of lengths until `integrity.check_episode_rows` replaces it by the
    range the data's `index` column holds.
    """

    episode_index: np.ndarray
    length: np.ndarray
    dataset_from_index: np.ndarray
    dataset_to_index: np.ndarray
    data_file: np.ndarray
    video_file: dict[str, np.ndarray]
    video_from_ts: dict[str, np.ndarray]
    video_to_ts: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.episode_index)

    def positions(self, episodes: np.ndarray, dataset: str) -> np.ndarray:
        """Row positions in this table of the episode indices `episodes` (int64); unknown ones raise."""
        pos = np.searchsorted(self.episode_index, episodes)
        pos = np.minimum(pos, len(self.episode_index) - 1)
        bad = self.episode_index[pos] != episodes
        if bad.any():
            raise DatasetFormatError(
                f"dataset '{dataset}': episode(s) {np.unique(episodes[bad]).tolist()[:10]} are not in its "
                f"episode metadata (it lists {len(self)} episodes, "
                f"{int(self.episode_index[0]) if len(self) else '-'}..{int(self.episode_index[-1]) if len(self) else '-'})")
        return pos


@dataclass(frozen=True)
class DatasetMeta:
    """What `meta/` says about a dataset. remote: for a dataset in object storage, its
    `remote_mirror.RemoteRoot` (`root` is then the local tree mirroring meta/ and data/; videos are remote)."""

    name: str
    root: Path
    codebase_version: str
    info: dict[str, Any]
    episodes: EpisodeTable
    tasks: dict[int, str]
    stats: dict[str, dict[str, np.ndarray]]
    remote: Any = None

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict]:
        return self.info["features"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] in CAMERA_DTYPES]

    @property
    def lowdim_keys(self) -> list[str]:
        """Numeric non-camera features, without timestamp and the index columns."""
        return [k for k, ft in self.features.items()
                if ft["dtype"] not in (*CAMERA_DTYPES, "string") and k not in INDEX_KEYS]


def read_json(path: Path, dataset: str) -> Any:
    """Parse one JSON file; a missing or malformed file raises naming it."""
    if not path.is_file():
        raise MissingFileError(f"dataset '{dataset}': metadata file {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"dataset '{dataset}': {path} is not UTF-8 ({e}); re-save it as UTF-8") from e
    except ValueError as e:
        raise DatasetFormatError(f"dataset '{dataset}': {path} is not valid JSON: {e}") from e


def read_jsonl(path: Path, dataset: str) -> list[dict]:
    """Parse a JSON-lines file (blank lines skipped)."""
    if not path.is_file():
        raise MissingFileError(f"dataset '{dataset}': metadata file {path} is missing")
    rows = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetFormatError(
                f"dataset '{dataset}': {path} line {n} is not UTF-8 (byte {raw[e.start:e.start + 1]!r} at "
                f"column {e.start}); LeRobot metadata is UTF-8 JSON: re-save the file as UTF-8 "
                f"(e.g. `iconv -f latin1 -t utf-8`)") from e
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DatasetFormatError(f"dataset '{dataset}': {path} line {n} is not valid JSON: {e}") from e
    return rows


def read_info(root: Path, dataset: str) -> dict[str, Any]:
    """`meta/info.json`, with its version checked against SUPPORTED_VERSIONS."""
    path = root / "meta" / "info.json"
    info = read_json(path, dataset)
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise DatasetFormatError(
            f"dataset '{dataset}': codebase_version {version!r} in {path} is not supported; "
            f"fastmix reads {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DatasetFormatError(f"dataset '{dataset}': {path} has no {key!r}")
    for key in ("fps", "chunks_size"):
        value = info.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise DatasetFormatError(f"dataset '{dataset}': {path} gives {key}={value!r}; it must be a positive number")
    for key, ft in info["features"].items():
        if "dtype" not in ft or "shape" not in ft:
            raise DatasetFormatError(f"dataset '{dataset}': feature {key!r} in {path} lacks dtype or shape")
        ft["shape"] = _shape(ft["shape"], key, path, dataset)
    for key in ("data_path", "video_path"):
        if info.get(key) is not None:
            check_path_template(info[key], key, path, dataset)
    depth = [key for key, ft in info["features"].items() if is_depth_map(ft)]
    if depth:
        raise DatasetFormatError(
            f"dataset '{dataset}': feature(s) {depth} in {path} are depth maps (is_depth_map / grey pixel "
            f"format); fastmix decodes RGB uint8 cameras only. Use a copy of the dataset without these "
            f"features in info.json, or read it with lerobot's LeRobotDataset")
    if any(ft["dtype"] == "video" for ft in info["features"].values()) and not info.get("video_path"):
        raise DatasetFormatError(f"dataset '{dataset}': {path} has video features but no 'video_path'")
    return info


def is_depth_map(feature: dict) -> bool:
    """Whether an info.json feature is a depth map: lerobot marks them `is_depth_map` (0.6: at the feature's
    top level or in its `info` / `video_info`, also as `video.is_depth_map`) or stores grey pixels (gray*,
    e.g. 12-bit `gray12le` HEVC)."""
    if feature.get("dtype") not in (*CAMERA_DTYPES, "depth"):
        return False
    if feature.get("dtype") == "depth" or feature.get("is_depth_map"):
        return True
    for sub in ("info", "video_info"):
        extra = feature.get(sub) or {}
        if isinstance(extra, dict):
            if extra.get("video.is_depth_map") or extra.get("is_depth_map"):
                return True
            if str(extra.get("video.pix_fmt", "")).startswith("gray"):
                return True
    return False


def _shape(shape: Any, key: str, path: Path, dataset: str) -> tuple[int, ...]:
    """info.json's `shape` of feature `key` as a tuple of ints, refused (naming the feature) when it is not a
    list of non-negative integers or holds more than MAX_FEATURE_ELEMENTS values per frame."""
    try:
        dims = tuple(int(d) for d in shape)
        bad = any(d < 0 or d != float(s) for d, s in zip(dims, shape, strict=True))
    except (TypeError, ValueError, OverflowError):
        bad, dims = True, ()
    if bad:
        raise DatasetFormatError(f"dataset '{dataset}': feature {key!r} in {path} declares shape {shape!r}; a "
                                 f"shape is a list of non-negative integers")
    count = 1
    for d in dims:  # Python ints: no overflow
        count *= d
    if count > MAX_FEATURE_ELEMENTS:
        raise DatasetFormatError(
            f"dataset '{dataset}': feature {key!r} in {path} declares shape {list(dims)}, {count} values per "
            f"frame (more than {MAX_FEATURE_ELEMENTS}); fix the shape in info.json")
    return dims


_DIGITS = re.compile(r"\d+")


def check_path_template(template: Any, key: str, path: Path, dataset: str) -> None:
    """Refuse a `data_path` / `video_path` template that is not a relative path inside the dataset root (absolute,
    a `..` component), names a field other than PATH_FIELDS, or whose format specs ask for a width or precision
    above MAX_FORMAT_WIDTH (`{file_index:>1500000000}` would allocate gigabytes) — before anything is formatted."""
    where = f"dataset '{dataset}': {key} {template!r} in {path}"
    if not isinstance(template, str):
        raise DatasetFormatError(f"{where} is not a string")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DatasetFormatError(f"{where} is not a valid format string: {e}") from e
    skeleton = "".join(text + ("X" if name is not None else "") for text, name, *_ in parts)  # fields as "X"
    if os.path.isabs(skeleton) or skeleton.startswith("\\") or ".." in re.split(r"[/\\]", skeleton):
        raise DatasetFormatError(f"{where} leaves the dataset root (absolute, or a '..' component); data and "
                                 f"videos must lie under the root: fix {key} in info.json")
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if name not in PATH_FIELDS:
            raise DatasetFormatError(f"{where} names the field {{{name}}}; a path template may use only "
                                     f"{', '.join(PATH_FIELDS)}")
        if "{" in (spec or "") or any(len(d) > 3 or int(d) > MAX_FORMAT_WIDTH for d in _DIGITS.findall(spec or "")):
            raise DatasetFormatError(f"{where} has the format spec {{{name}:{spec}}}: widths and precisions above "
                                     f"{MAX_FORMAT_WIDTH} (or nested fields) are refused; fix {key} in info.json")


def _format(template: str, dataset: str, **fields: Any) -> str:
    try:
        out = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetFormatError(
            f"dataset '{dataset}': path template {template!r} from info.json cannot be filled with "
            f"{sorted(fields)}: {e}") from e
    if os.path.isabs(out) or os.path.normpath(out).split(os.sep)[0] == "..":
        raise DatasetFormatError(
            f"dataset '{dataset}': path template {template!r} from info.json filled with {fields} gives {out!r}, "
            f"which leaves the dataset root; fix the template or the feature name")
    return out


def _episodes_v2(root: Path, info: dict, dataset: str) -> EpisodeTable:
    rows = sorted(read_jsonl(root / "meta" / "episodes.jsonl", dataset), key=lambda r: int(r["episode_index"]))
    ep = np.array([int(r["episode_index"]) for r in rows], dtype=np.int64)
    length = np.array([int(r["length"]) for r in rows], dtype=np.int64)
    to = np.cumsum(length)
    chunks_size = int(info.get("chunks_size", 1000))
    data_file = np.array([_format(info["data_path"], dataset, episode_chunk=int(e) // chunks_size,
                                  episode_index=int(e)) for e in ep], dtype=object)
    video_file, video_from = {}, {}
    for key, ft in info["features"].items():
        if ft["dtype"] == "video":
            video_file[key] = np.array([_format(info["video_path"], dataset, episode_chunk=int(e) // chunks_size,
                                                video_key=key, episode_index=int(e)) for e in ep], dtype=object)
            video_from[key] = np.zeros(len(ep), dtype=np.float64)
    video_to = {key: np.full(len(ep), np.nan) for key in video_from}
    return EpisodeTable(ep, length, to - length, to, data_file, video_file, video_from, video_to)


def _episodes_v3(root: Path, info: dict, dataset: str) -> EpisodeTable:
    meta_dir = root / "meta" / "episodes"
    paths = sorted(meta_dir.glob("*/*.parquet"))
    if not paths:
        raise MissingFileError(f"dataset '{dataset}': no episode metadata parquet under {meta_dir}")
    video_keys = [k for k, ft in info["features"].items() if ft["dtype"] == "video"]
    needed = ["episode_index", "length", "dataset_from_index", "dataset_to_index",
              "data/chunk_index", "data/file_index"]
    for key in video_keys:
        needed += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    optional = [f"videos/{key}/to_timestamp" for key in video_keys]
    tables = []
    for p in paths:
        names = pq.read_schema(p).names
        missing = [c for c in needed if c not in names]
        if missing:
            raise DatasetFormatError(f"dataset '{dataset}': episode metadata {p} lacks column(s) {missing}")
        table = pq.read_table(p, columns=needed + [c for c in optional if c in names])
        for c in optional:
            if c not in names:
                table = table.append_column(c, pa.array(np.full(table.num_rows, np.nan)))
        tables.append(table.select(needed + optional))
    t = pa.concat_tables(tables)
    col = {c: t.column(c).to_numpy() for c in needed + optional}
    order = np.argsort(col["episode_index"], kind="stable")
    col = {c: v[order] for c, v in col.items()}
    ep = col["episode_index"].astype(np.int64)
    data_file = np.array([_format(info["data_path"], dataset, chunk_index=int(c), file_index=int(f))
                          for c, f in zip(col["data/chunk_index"], col["data/file_index"], strict=True)], dtype=object)
    video_file, video_from, video_to = {}, {}, {}
    for key in video_keys:
        video_file[key] = np.array(
            [_format(info["video_path"], dataset, video_key=key, chunk_index=int(c), file_index=int(f))
             for c, f in zip(col[f"videos/{key}/chunk_index"], col[f"videos/{key}/file_index"], strict=True)],
            dtype=object)
        video_from[key] = col[f"videos/{key}/from_timestamp"].astype(np.float64)
        video_to[key] = col[f"videos/{key}/to_timestamp"].astype(np.float64)
    return EpisodeTable(ep, col["length"].astype(np.int64), col["dataset_from_index"].astype(np.int64),
                        col["dataset_to_index"].astype(np.int64), data_file, video_file, video_from, video_to)


def _task_table(pairs: Any, path: Path, dataset: str) -> dict[int, str]:
    """{task_index: task} from (index, string) pairs; one index with two different strings is refused (lerobot
    would take one, another reader the other: a prompt would differ from the reference)."""
    out: dict[int, str] = {}
    for i, s in pairs:
        index, task = int(i), str(s)
        if out.setdefault(index, task) != task:
            raise DatasetFormatError(
                f"dataset '{dataset}': {path} gives task_index {index} two strings, {out[index]!r} and {task!r}; "
                f"keep one row per task_index (fix the task table)")
    return out


def _tasks_v2(root: Path, dataset: str) -> dict[int, str]:
    path = root / "meta" / "tasks.jsonl"
    return _task_table(((r["task_index"], r["task"]) for r in read_jsonl(path, dataset)), path, dataset)


def _tasks_v3(root: Path, dataset: str) -> dict[int, str]:
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise MissingFileError(f"dataset '{dataset}': metadata file {path} is missing")
    table = pq.read_table(path)
    task_col = "task"
    pandas_meta = (table.schema.metadata or {}).get(b"pandas")
    if task_col not in table.column_names and pandas_meta:
        index_cols = json.loads(pandas_meta).get("index_columns", [])
        task_col = next((c for c in index_cols if isinstance(c, str)), task_col)
    if task_col not in table.column_names or "task_index" not in table.column_names:
        raise DatasetFormatError(f"dataset '{dataset}': {path} has no task string column or no 'task_index' "
                                 f"(columns {table.column_names})")
    return _task_table(zip(table.column("task_index").to_pylist(), table.column(task_col).to_pylist(), strict=True),
                       path, dataset)


def stats_to_numpy(raw: dict) -> dict[str, dict[str, np.ndarray]]:
    """{feature: {stat: nested list}} → {feature: {stat: np.ndarray}} (float64 / int64 as parsed)."""
    return {key: {s: np.asarray(v) for s, v in per.items()} for key, per in raw.items() if isinstance(per, dict)}


def aggregate_stats(per_episode: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset stats from per-episode stats, as lerobot aggregates them.

    min/max elementwise; mean weighted by count; std from the pooled variance
    sum(count * (std² + (mean - total_mean)²)) / total count; quantiles q.. as count-weighted means.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    keys = sorted({k for st in per_episode for k in st})
    for key in keys:
        items = [st[key] for st in per_episode if key in st]
        means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in items])
        var = np.stack([np.asarray(s["std"], dtype=np.float64) ** 2 for s in items])
        counts = np.stack([np.asarray(s["count"]) for s in items])
        total = counts.sum(axis=0)
        w = counts.reshape(counts.shape + (1,) * (means.ndim - counts.ndim))
        mean = (means * w).sum(axis=0) / total
        variance = ((var + (means - mean) ** 2) * w).sum(axis=0) / total
        agg = {"min": np.min(np.stack([s["min"] for s in items]), axis=0),
               "max": np.max(np.stack([s["max"] for s in items]), axis=0),
               "mean": mean, "std": np.sqrt(variance), "count": total}
        for q in [k for k in items[0] if k.startswith("q") and k[1:].isdigit()]:
            if all(q in s for s in items):
                agg[q] = (np.stack([np.asarray(s[q], dtype=np.float64) for s in items]) * w).sum(axis=0) / total
        out[key] = agg
    return out


def _stats(root: Path, version: str, dataset: str) -> dict[str, dict[str, np.ndarray]]:
    if version == "v2.1":
        path = root / "meta" / "episodes_stats.jsonl"
        if path.is_file():
            return aggregate_stats([stats_to_numpy(r["stats"]) for r in read_jsonl(path, dataset)])
    path = root / "meta" / "stats.json"
    return stats_to_numpy(read_json(path, dataset)) if path.is_file() else {}


def load_meta(root: Path, dataset: str) -> DatasetMeta:
    """Read `root/meta` of a v2.0, v2.1 or v3.0 dataset."""
    if not root.is_dir():
        if root.is_symlink():
            raise MissingFileError(f"dataset '{dataset}': root {root} is a symlink to {os.readlink(root)} "
                                   f"(resolved: {os.path.realpath(root)}), which is not an existing directory")
        if root.exists():
            raise MissingFileError(f"dataset '{dataset}': root {root} is not a directory")
        raise MissingFileError(f"dataset '{dataset}': root directory {root} does not exist")
    info = read_info(root, dataset)
    version = info["codebase_version"]
    if version == "v3.0":
        episodes, tasks = _episodes_v3(root, info, dataset), _tasks_v3(root, dataset)
    else:
        episodes, tasks = _episodes_v2(root, info, dataset), _tasks_v2(root, dataset)
    return DatasetMeta(dataset, root, version, info, episodes, tasks, _stats(root, version, dataset))


def column_to_numpy(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...], key: str, path: Path,
                    dataset: str) -> np.ndarray:
    """A numeric (possibly nested fixed-size-list) parquet column → contiguous ndarray (n, *shape).

    Feature shape (1,) gives (n,) — a scalar per row, as LeRobotDataset returns it.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    while (isinstance(arr, pa.ExtensionArray) or pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type)
           or pa.types.is_large_list(arr.type)):
        arr = arr.storage if isinstance(arr, pa.ExtensionArray) else pc.list_flatten(arr)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
        raise DatasetFormatError(f"dataset '{dataset}': column {key!r} of {path} holds {arr.type} values, not "
                                 f"numbers; rewrite the column with its numeric dtype from info.json")
    values = arr.to_numpy(zero_copy_only=False)
    row_shape = () if tuple(shape) == (1,) else tuple(shape)
    if values.size != n * int(np.prod(row_shape, dtype=np.int64)):
        raise DatasetFormatError(f"dataset '{dataset}': column {key!r} of {path} holds {values.size} values for "
                                 f"{n} rows, not the shape {tuple(shape)} that info.json declares")
    return np.ascontiguousarray(values.reshape((n, *row_shape)))
