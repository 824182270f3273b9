"""`LeRobotSource`: one LeRobot dataset (v2.0, v2.1, v3.0) read natively — metadata and low-dim columns in
numpy, frames through `FrameReader` — with `source[i]` equal to `LeRobotDataset(...)[i]` and a vectorized batch
path (`gather_lowdim`, `tasks_of`, `frame_requests`) for the loader.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fastmix._args import check_int, check_int_list, check_seconds
from fastmix.errors import ConfigError, DatasetFormatError, FastmixError
from fastmix.sources import integrity, remote
from fastmix.sources.deltas import check_delta_timestamps, chunk_indices, delta_indices
from fastmix.sources.frames import FrameReader, FrameRequest
from fastmix.sources.lowdim import LowDimTable, load_lowdim
from fastmix.sources.meta import INDEX_KEYS, DatasetMeta, lerobot_home, load_meta
from fastmix.sources.remote_mirror import RemoteRoot, open_root, sync_data
from fastmix.sources.store import release_pages

_CHW_NAMES = (("channels", "height", "width"), ("channel", "height", "width"))


class LeRobotSource:
    """A LeRobot dataset on local disk or in object storage.

    Args:
        repo_id: resolved as lerobot does, to `$HF_LEROBOT_HOME/<repo_id>` (default
            `~/.cache/huggingface/lerobot/<repo_id>`; `$HF_LEROBOT_HOME` may be an s3:// URL), unless `root` is
            given. Also the name used in errors.
        root: the dataset directory (holding `meta/`, `data/`, `videos/`), or an `s3://bucket/prefix/<repo>`
            URL (also as a `Path`, "s3:/bucket/..."): its meta/ and data parquets are mirrored once per node
            (`fastmix.sources.remote_mirror`; `root` is then that local tree and `url` the URL) and its frames
            read by byte ranges (`fastmix.sources.remote_file`).
        storage_options: for a URL root: credentials and endpoint (s3fs's names: key, secret, token,
            endpoint_url, region_name, profile, anon); default: the AWS_* environment (`fastmix.sources.remote`).
        episodes: episode indices to keep (as `LeRobotDataset(episodes=...)`); None keeps all.
        delta_timestamps: {key: [seconds, ...]} relative frames to return per sample, e.g. openpi's
            {"actions": [t / fps for t in range(action_horizon)]}; each must be a multiple of 1/fps ± tolerance_s.
        tolerance_s: tolerance of the delta check and of video frame timestamps, in seconds.
        max_open_files: bound of the open-container LRU used by `source[i]`.
        check_finite: also refuse NaN/inf in numeric features at open (`integrity.find_nonfinite`; a scan of every
            numeric value, off by default because lerobot loads such data).
        require_videos: refuse at open when a video file of a selected episode is missing (lerobot refuses
            too); False finds them only when a frame is read (e.g. low-dim-only use of a partial download).
            Missing data files are always refused at open, all of them listed with an `episodes=` hint.
        lowdim_keys: the numeric features this source serves (None: all): only they (and the keys of
            `delta_timestamps`, and the indices) are materialized, and `gather_lowdim` returns only them;
            naming a key the dataset lacks is a ConfigError (see `fastmix.sources.store`).

    At open the metadata is checked against the data (`fastmix.sources.integrity`): per-episode rows, index,
    frame_index, timestamps (spaced 1/fps within tolerance_s where they pick video frames), v3.0 video segments
    (each frame inside its segment and its mp4, no two episodes' frames at one video time), column dtypes, task
    ids, file existence. Any disagreement raises DatasetFormatError / MissingFileError naming dataset, file,
    episode and both values.

    Example:
        >>> src = LeRobotSource(root="/data/libero", delta_timestamps={"actions": [t / 10 for t in range(10)]})
        >>> item = src[0]                                   # what LeRobotDataset returns
        >>> low = src.gather_lowdim(np.arange(32))         # batch path: numpy arrays
    """

    def __init__(self, repo_id: str | None = None, *, root: str | Path | None = None,
                 episodes: Sequence[int] | None = None,
                 delta_timestamps: Mapping[str, Sequence[float]] | None = None, tolerance_s: float = 1e-4,
                 max_open_files: int = 16, check_finite: bool = False, require_videos: bool = True,
                 lowdim_keys: Sequence[str] | None = None, storage_options: Mapping[str, Any] | None = None) -> None:
        if repo_id is None and root is None:
            raise ConfigError("LeRobotSource needs a repo_id or a root, but got neither")
        self.url = remote.as_url(root) if root is not None else remote.as_url(os.environ.get("HF_LEROBOT_HOME"))
        if self.url is not None and root is None:
            self.url = remote.url_join(self.url, str(repo_id))
        self._remote: RemoteRoot | None = None
        if self.url is not None:
            self.name: str = repo_id if repo_id is not None else self.url.rsplit("/", 1)[-1]
            self._remote = open_root(self.url, dict(storage_options or {}), self.name)
            self.root = self._remote.tree
            try:
                self._open(episodes, delta_timestamps, tolerance_s, max_open_files, check_finite, require_videos,
                           lowdim_keys)
            except FastmixError as e:  # name the URLs, not the local mirror
                renamed = _renamed(e, self._remote.rename_in(str(e)))
                if renamed is e:
                    raise
                raise renamed from e
            return
        self.root = Path(root).expanduser() if root is not None else lerobot_home() / str(repo_id)
        self.name = repo_id if repo_id is not None else self.root.name
        self._open(episodes, delta_timestamps, tolerance_s, max_open_files, check_finite, require_videos, lowdim_keys)

    def _open(self, episodes: Sequence[int] | None, delta_timestamps: Mapping[str, Sequence[float]] | None,
              tolerance_s: float, max_open_files: int, check_finite: bool, require_videos: bool,
              lowdim_keys: Sequence[str] | None) -> None:
        self.tolerance_s = check_seconds(tolerance_s, "tolerance_s", allow_zero=True)
        self.delta_timestamps = _parse_deltas(delta_timestamps, self.name)
        self.meta: DatasetMeta = load_meta(self.root, self.name)
        self._ep_positions = self._select_episodes(episodes)
        self._lowdim_keys = self._select_lowdim_keys(lowdim_keys)
        data_files = sorted(set(self.meta.episodes.data_file[self._ep_positions].tolist()))
        if self._remote is not None:
            self.meta = replace(self.meta, remote=self._remote)
            videos = [f for k in self.meta.video_keys for f in self.meta.episodes.video_file[k][self._ep_positions]]
            sync_data(self._remote, data_files, self.meta.image_keys, self.name, videos=videos)
        integrity.check_data_files(self.meta, data_files)
        integrity.check_files_exist(self.meta, self._ep_positions, videos=require_videos)
        try:
            self._low: LowDimTable = load_lowdim(self.meta, self._ep_positions, self._lowdim_keys)
        except DatasetFormatError as e:
            if "meta/ lists" in str(e):  # total frame count differs: name the episode
                integrity.explain_row_counts(self.meta, self._ep_positions, e)
            raise
        low = self._low
        self.meta = replace(self.meta, episodes=integrity.check_episode_rows(
            self.meta, low.values, low.ep_pos, low.sorted_pos, self._ep_positions, self.tolerance_s))
        integrity.check_task_ids(self.meta, low.values["task_index"], low.values["episode_index"])
        # the checks read every row of the index columns once: let their pages go (they stay in the page cache)
        release_pages([low.values[k] for k in INDEX_KEYS] + [low.sorted_pos, low.sorted_index, low.ep_pos])
        if check_finite:
            integrity.check_finite(self)
        self._offsets_cache: dict[tuple, dict[str, np.ndarray]] = {}
        self._offsets(self.delta_timestamps)  # validates now
        where = self._remote.url_of if self._remote is not None else (lambda p: str(self.root / p))
        self._video_paths = {k: np.array([where(p) for p in self.meta.episodes.video_file[k]], dtype=object)
                             for k in self.video_keys}
        self._image_files = ([self._remote.to_url(p) for p in self._low.data_files] if self._remote is not None
                             else self._low.data_files)
        self._max_open_files = check_int(max_open_files, "max_open_files", minimum=1)
        self._reader: FrameReader | None = None

    # -- description --------------------------------------------------------------------------------------
    def _select_episodes(self, episodes: Sequence[int] | None) -> np.ndarray:
        table = self.meta.episodes
        if episodes is None:
            return np.arange(len(table), dtype=np.int64)
        wanted = np.unique(np.asarray(check_int_list(
            episodes if isinstance(episodes, np.ndarray) else list(episodes), "episodes"), dtype=np.int64))
        pos = np.searchsorted(table.episode_index, wanted)
        ok = (pos < len(table)) & (table.episode_index[np.minimum(pos, len(table) - 1)] == wanted)
        if not ok.all():
            raise ConfigError(f"dataset '{self.name}': episodes {wanted[~ok].tolist()} do not exist "
                              f"(it has {len(table)} episodes, indices {int(table.episode_index.min())}.."
                              f"{int(table.episode_index.max())})")
        return pos.astype(np.int64)

    @property
    def codebase_version(self) -> str:
        return self.meta.codebase_version

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, dict]:
        """info.json's features (shapes as tuples)."""
        return self.meta.features

    @property
    def num_frames(self) -> int:
        """Frames in the selected episodes."""
        return self._low.num_rows

    def __len__(self) -> int:
        return self._low.num_rows

    @property
    def num_episodes(self) -> int:
        return len(self._ep_positions)

    @property
    def episodes(self) -> list[int]:
        """The selected episode indices, ascending."""
        return self.meta.episodes.episode_index[self._ep_positions].tolist()

    def frame_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(episode_index, frame_index): int64 (num_frames,) each, the episode and the frame within it of every
        local row (read-only; what per-episode weighting and frame filters build `EpisodeRuns` from)."""
        return self._low.values["episode_index"], self._low.values["frame_index"]

    @property
    def video_keys(self) -> list[str]:
        return self.meta.video_keys

    @property
    def image_keys(self) -> list[str]:
        return self.meta.image_keys

    @property
    def camera_keys(self) -> list[str]:
        """Video and image keys, in info.json order."""
        return self.meta.camera_keys

    @property
    def lowdim_keys(self) -> list[str]:
        return self.meta.lowdim_keys if self._lowdim_keys is None else list(self._lowdim_keys)

    def _select_lowdim_keys(self, keys: Sequence[str] | None) -> list[str] | None:
        """The served numeric features, in the dataset's order: `keys` plus the delta_timestamps keys."""
        if keys is None:
            return None
        wanted = set(keys) | set(self.delta_timestamps or {})
        unknown = sorted(set(keys) - set(self.meta.lowdim_keys))
        if unknown:
            raise ConfigError(f"dataset '{self.name}' has no numeric feature(s) {unknown} (lowdim_keys); its "
                              f"numeric features: {self.meta.lowdim_keys}")
        return [k for k in self.meta.lowdim_keys if k in wanted]

    @property
    def tasks(self) -> dict[int, str]:
        return self.meta.tasks

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        return self.meta.stats

    def camera_shape(self, key: str) -> tuple[int, int, int]:
        """(H, W, C) of the uint8 frames of camera `key` as decoded."""
        ft = self.features.get(key)
        if ft is None or key not in self.camera_keys:
            raise KeyError(f"dataset '{self.name}' has no camera key {key!r}; its cameras: {self.camera_keys}")
        shape = tuple(int(d) for d in ft["shape"])
        names = tuple(ft.get("names") or ())
        if names in _CHW_NAMES:
            return (shape[1], shape[2], shape[0])
        return shape  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"LeRobotSource(name={self.name!r}, version={self.codebase_version}, episodes={self.num_episodes}, "
                f"frames={self.num_frames}, fps={self.fps}, cameras={self.camera_keys}, lowdim={self.lowdim_keys})")

    def with_delta_timestamps(self, delta_timestamps: Mapping[str, Sequence[float]] | None) -> LeRobotSource:
        """This dataset serving `delta_timestamps` (e.g. an action chunk at its own fps, known only once it is
        open): a copy sharing the opened metadata, the low-dim tables and the checks already made — the files
        are not opened again. The copy has its own frame reader."""
        other = copy.copy(self)
        other.delta_timestamps = _parse_deltas(delta_timestamps, self.name)
        other._offsets_cache = {}
        other._reader = None
        other._offsets(other.delta_timestamps)  # validates now
        return other

    # -- batch path -------------------------------------------------------------------------------------
    def _offsets(self, delta_timestamps: Mapping[str, Sequence[float]] | None) -> dict[str, np.ndarray]:
        if not delta_timestamps:
            return {}
        cache_key = tuple((k, tuple(float(d) for d in v)) for k, v in delta_timestamps.items())
        hit = self._offsets_cache.get(cache_key)
        if hit is None:
            unknown = [k for k in delta_timestamps if k not in self.features]
            if unknown:
                raise ConfigError(f"dataset '{self.name}': delta_timestamps keys {unknown} are not features "
                                  f"(features: {list(self.features)})")
            check_delta_timestamps(delta_timestamps, self.fps, self.tolerance_s, self.name)
            hit = delta_indices(delta_timestamps, self.fps)
            self._offsets_cache[cache_key] = hit
        return hit

    def _check_local(self, local: Any) -> np.ndarray:
        rows = np.asarray(local, dtype=np.int64)
        if rows.ndim != 1:
            raise ConfigError(f"dataset '{self.name}': row positions must be 1-D, got shape {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_frames):
            bad = rows[(rows < 0) | (rows >= self.num_frames)]
            raise IndexError(f"dataset '{self.name}': row(s) {bad[:10].tolist()} out of range 0..{self.num_frames - 1}")
        return rows

    def chunk_positions(self, local: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row positions (int64 (B, H)) of each sample's chunk, clamped to its episode, and is_pad (bool (B, H))."""
        ep = self._low.ep_pos[local]
        query, pad = chunk_indices(self._low.values["index"][local], self.meta.episodes.dataset_from_index[ep],
                                   self.meta.episodes.dataset_to_index[ep], offsets)
        return self._low.positions_of(query.ravel(), self.name).reshape(query.shape), pad

    def gather_lowdim(self, local: Any, delta_timestamps: Mapping[str, Sequence[float]] | None = None
                      ) -> dict[str, np.ndarray]:
        """Low-dim values of rows `local` (int64 (B,)), vectorized.

        Returns each low-dim key as (B, *shape) in its stored dtype ((B,) for shape-(1,) features), or
        (B, H, *shape) with f"{key}_is_pad" bool (B, H) when the key is in `delta_timestamps` (default: the
        source's own); plus "timestamp" float32 (B,) and "frame_index", "episode_index", "index", "task_index"
        int64 (B,). Camera keys in `delta_timestamps` are ignored here (frames come from `frame_requests`).
        """
        rows = self._check_local(local)
        offsets = self._offsets(self.delta_timestamps if delta_timestamps is None else delta_timestamps)
        values = self._low.values
        out: dict[str, np.ndarray] = {}
        for key in self.lowdim_keys:
            if key in offsets:
                pos, pad = self.chunk_positions(rows, offsets[key])
                out[key] = values[key][pos]
                out[f"{key}_is_pad"] = pad
            else:
                out[key] = values[key][rows]
        for key in INDEX_KEYS:
            out[key] = values[key][rows]
        return out

    def tasks_of(self, local: Any) -> list[str]:
        """The task string of each row in `local`."""
        rows = self._check_local(local)
        tasks = self.tasks
        try:
            return [tasks[t] for t in self._low.values["task_index"][rows].tolist()]
        except KeyError as e:
            raise ConfigError(f"dataset '{self.name}': task_index {e.args[0]} is not in its task table") from e

    def frame_requests(self, local: Any, keys: Sequence[str] | None = None) -> list[FrameRequest]:
        """One FrameRequest per (row, camera key); request b of a key goes to slot b."""
        rows = self._check_local(local)
        keys = self.camera_keys if keys is None else list(keys)
        unknown = [k for k in keys if k not in self.camera_keys]
        if unknown:
            raise ConfigError(f"dataset '{self.name}': {unknown} are not camera keys; cameras: {self.camera_keys}")
        slot_of = range(len(rows))
        ep_pos = self._low.ep_pos[rows]
        episodes = self._low.values["episode_index"][rows].tolist()
        out: list[FrameRequest] = []
        for key in keys:
            if key in self._video_paths:
                paths = self._video_paths[key][ep_pos].tolist()
                ts = (self.meta.episodes.video_from_ts[key][ep_pos]
                      + self._low.values["timestamp"][rows].astype(np.float64)).tolist()
                out += [FrameRequest(s, key, p, t, -1, e, self.name)
                        for s, p, t, e in zip(slot_of, paths, ts, episodes, strict=True)]
            else:
                files = self._image_files
                paths = [files[f] for f in self._low.file_id[rows].tolist()]
                out += [FrameRequest(s, key, p, 0.0, r, e, self.name)
                        for s, p, r, e in zip(slot_of, paths, self._low.file_row[rows].tolist(), episodes, strict=True)]
        return out

    # -- item path ----------------------------------------------------------------------------------------
    @property
    def reader(self) -> FrameReader:
        """The FrameReader used by `source[i]` (created on first use)."""
        if self._reader is None:
            self._reader = FrameReader(max_open_files=self._max_open_files, tolerance_s=self.tolerance_s)
        return self._reader

    def close(self) -> None:
        """Close the files `source[i]` opened."""
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> LeRobotSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _frames(self, key: str, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), H, W, C) frames of camera `key` at row positions `rows`."""
        out = {key: np.empty((len(rows), *self.camera_shape(key)), dtype=np.uint8)}
        self.reader.read(self.frame_requests(rows, [key]), out)
        return out[key]

    def __getitem__(self, idx: Any) -> dict[str, Any]:
        """Sample `idx` exactly as `LeRobotDataset(...)[idx]` returns it: torch tensors (float32 CHW images in
        [0, 1], scalars 0-d), chunks and `<key>_is_pad` for delta_timestamps keys, and "task"."""
        import torch

        i = int(idx)
        if i < 0:
            i += self.num_frames
        row = self._check_local(np.array([i]))
        offsets = self._offsets(self.delta_timestamps)
        rows_of = {k: self.chunk_positions(row, off)[0][0] for k, off in offsets.items()}
        pads = {f"{k}_is_pad": torch.from_numpy(self.chunk_positions(row, off)[1][0]) for k, off in offsets.items()}

        item: dict[str, Any] = {}
        for key in self.features:
            if key in self.video_keys:
                continue
            if key in self.image_keys:
                frames = _to_chw_float(torch, self._frames(key, rows_of.get(key, row)))
                item[key] = frames if key in rows_of else frames[0]
            elif key in self._low.values:
                value = self._low.values[key][rows_of.get(key, row)]
                item[key] = _to_torch(torch, value if key in rows_of else value[0])
        item.update(pads)
        videos = {key: _to_chw_float(torch, self._frames(key, rows_of.get(key, row))).squeeze(0)
                  for key in self.video_keys}
        item = {**videos, **item}
        item["task"] = self.tasks_of(row)[0]
        return item


def _renamed(e: FastmixError, message: str) -> FastmixError:
    """An exception of e's type carrying `message` (e itself when its type cannot be built from one)."""
    try:
        return type(e)(message)
    except Exception:  # noqa: BLE001 - an exception type with another signature: keep the original
        return e


def _parse_deltas(delta_timestamps: Mapping[str, Sequence[float]] | None, dataset: str
                  ) -> dict[str, list[float]] | None:
    """{key: [float seconds]}; a non-number raises ConfigError naming the key and value."""
    if delta_timestamps is None:
        return None
    out = {}
    for key, deltas in delta_timestamps.items():
        try:
            out[key] = [float(d) for d in deltas]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"dataset '{dataset}': delta_timestamps[{key!r}] must be a list of numbers "
                              f"(seconds), got delta_timestamps[{key!r}]={deltas!r}") from e
    return out


def _to_torch(torch: Any, value: np.ndarray | np.generic) -> Any:
    """numpy → tensor with LeRobotDataset's dtypes: floats float32, integers int64, bools bool."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.int64, copy=False)
    return torch.from_numpy(np.array(arr, copy=True))


def _to_chw_float(torch: Any, frames: np.ndarray) -> Any:
    """uint8 (T, H, W, C) → float32 (T, C, H, W) in [0, 1], computed as LeRobotDataset does (x.float() / 255)."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).type(torch.float32) / 255
