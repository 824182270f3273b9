"""Large synthetic LeRobot datasets (v3.0 or v2.1, many files) written fast, for scale tests and benchmarks.

`make_large_dataset(root, num_frames=..., num_episodes=..., num_data_files=..., num_video_files=...)` writes
"state" (float32, 8) and "actions" (float32, 7) standard-normal random values plus the index columns with
vectorized pyarrow writes, and camera videos that all point into ONE real small mp4 (H.264, made once with
PyAV, as many frames as the longest file's run of episodes): every video file of every camera is a hard link
to it (a copy where links are not possible); the episodes of a file are consecutive, non-overlapping segments
of it, as lerobot writes them (v2.1: every episode its own file, from timestamp 0). Frames therefore decode,
but are not distinct across files — these datasets measure metadata, low-dim and file-count scaling, not
pixels.

Layouts: v3.0 (lerobot 0.4.4's: `data/chunk-XXX/file-XXX.parquet` holding contiguous runs of episodes,
`meta/episodes/chunk-000/file-000.parquet`, `meta/tasks.parquet`, `meta/stats.json`) and v2.1 (one parquet and
one mp4 per episode, `meta/episodes.jsonl`, `tasks.jsonl`, `episodes_stats.jsonl`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STATE_DIM, ACTION_DIM = 8, 7
V30_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
DEFAULT_TASKS: tuple[str, ...] = ("pick up the bowl", "open the drawer", "push the plate")


def write_mp4(path: Path, num_frames: int, fps: int, shape: tuple[int, int, int] = (32, 32, 3)) -> Path:
    """A real H.264 mp4 of `num_frames` small moving-gradient frames at `fps` (time base 1/fps)."""
    import av

    h, w, _ = shape
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"preset": "ultrafast", "g": "10", "bf": "0"}
        for i in range(num_frames):
            img = np.stack([(xx * 7 + i * 3) % 256, (yy * 5 + i) % 256, (xx + yy + i * 2) % 256], -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def episode_lengths(num_frames: int, num_episodes: int) -> np.ndarray:
    """int64 (E,): num_frames split as evenly as possible (the first num_frames % E episodes one longer)."""
    if num_episodes <= 0 or num_frames < num_episodes:
        raise ValueError(f"need 1 <= num_episodes <= num_frames, got {num_episodes} episodes, {num_frames} frames")
    base, extra = divmod(num_frames, num_episodes)
    return np.full(num_episodes, base, np.int64) + (np.arange(num_episodes) < extra)


def _frames_table(lo: int, hi: int, ep_start: np.ndarray, lengths: np.ndarray, ep_first: int, ep_last: int,
                  fps: int, num_tasks: int, seed: int) -> pa.Table:
    """Rows lo..hi-1 (absolute indices) covering episodes ep_first..ep_last-1."""
    n = hi - lo
    rng = np.random.default_rng([seed, lo])
    ep = np.repeat(np.arange(ep_first, ep_last, dtype=np.int64), lengths[ep_first:ep_last])
    index = np.arange(lo, hi, dtype=np.int64)
    frame = index - ep_start[ep]
    state = rng.standard_normal((n, STATE_DIM), dtype=np.float32)
    actions = rng.standard_normal((n, ACTION_DIM), dtype=np.float32)
    return pa.table({
        "state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), STATE_DIM),
        "actions": pa.FixedSizeListArray.from_arrays(pa.array(actions.ravel()), ACTION_DIM),
        "timestamp": pa.array((frame / fps).astype(np.float32)),
        "frame_index": pa.array(frame),
        "episode_index": pa.array(ep),
        "index": pa.array(index),
        "task_index": pa.array(ep % num_tasks),
    })


def _features(cameras: Sequence[str], camera_shape: tuple[int, int, int], fps: int) -> dict:
    feats: dict = {cam: {"dtype": "video", "shape": list(camera_shape), "names": ["height", "width", "channel"],
                         "info": {"video.height": camera_shape[0], "video.width": camera_shape[1],
                                  "video.codec": "h264", "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                  "video.fps": fps, "video.channels": 3, "has_audio": False}}
                   for cam in cameras}
    feats["state"] = {"dtype": "float32", "shape": [STATE_DIM], "names": [f"s{i}" for i in range(STATE_DIM)]}
    feats["actions"] = {"dtype": "float32", "shape": [ACTION_DIM], "names": [f"a{i}" for i in range(ACTION_DIM)]}
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64")):
        feats[k] = {"dtype": dt, "shape": [1], "names": None}
    return feats


def _stats(num_frames: int) -> dict:
    """Dataset stats of the standard normal columns (nominal: the generator draws N(0, 1))."""
    def one(dim: int) -> dict:
        return {"min": [-5.0] * dim, "max": [5.0] * dim, "mean": [0.0] * dim, "std": [1.0] * dim,
                "count": [num_frames]}
    return {"state": one(STATE_DIM), "actions": one(ACTION_DIM)}


def _write_many(jobs: list, fn, threads: int) -> None:
    if threads <= 1 or len(jobs) <= 1:
        for j in jobs:
            fn(j)
        return
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, jobs):
            pass


def _write_v30(root: Path, meta: Path, mp4: Path | None, layout: tuple, *, lengths: np.ndarray,
               ep_start: np.ndarray, cameras: Sequence[str], tasks: list[str], fps: int, chunks_size: int,
               seed: int, threads: int, compression: str) -> dict:
    """The v3.0 files (data parquets, video links, meta/episodes, meta/tasks.parquet); returns info.json's
    layout fields. `layout` = (F, V, data_of, video_of, seg_from) from `_v30_layout`."""
    F, V, data_of, video_of, seg_from = layout
    E = len(lengths)
    bounds = np.searchsorted(data_of, np.arange(F + 1))

    def write_data(f: int) -> None:
        e0, e1 = int(bounds[f]), int(bounds[f + 1])
        path = root / V30_DATA.format(chunk_index=f // chunks_size, file_index=f % chunks_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = _frames_table(int(ep_start[e0]), int(ep_start[e1]), ep_start, lengths, e0, e1, fps, len(tasks), seed)
        pq.write_table(t, path, compression=compression)

    _write_many(list(range(F)), write_data, threads)
    for cam in cameras:
        for v in range(V):
            _link(mp4, root / V30_VIDEO.format(video_key=cam, chunk_index=v // chunks_size,
                                               file_index=v % chunks_size))
    ep_idx = np.arange(E, dtype=np.int64)
    cols: dict[str, pa.Array] = {
        "episode_index": pa.array(ep_idx),
        "tasks": pa.array([[tasks[e % len(tasks)]] for e in range(E)], type=pa.list_(pa.string())),
        "length": pa.array(lengths),
        "data/chunk_index": pa.array(data_of // chunks_size),
        "data/file_index": pa.array(data_of % chunks_size),
        "dataset_from_index": pa.array(ep_start[:-1]),
        "dataset_to_index": pa.array(ep_start[1:]),
    }
    for cam in cameras:
        cols[f"videos/{cam}/chunk_index"] = pa.array(video_of // chunks_size)
        cols[f"videos/{cam}/file_index"] = pa.array(video_of % chunks_size)
        cols[f"videos/{cam}/from_timestamp"] = pa.array(seg_from / fps)
        cols[f"videos/{cam}/to_timestamp"] = pa.array((seg_from + lengths) / fps)
    cols["meta/episodes/chunk_index"] = pa.array(np.zeros(E, np.int64))
    cols["meta/episodes/file_index"] = pa.array(np.zeros(E, np.int64))
    (meta / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(cols), meta / "episodes" / "chunk-000" / "file-000.parquet")
    import pandas as pd

    pd.DataFrame({"task_index": np.arange(len(tasks))}, index=pd.Index(tasks)).to_parquet(meta / "tasks.parquet")
    return {"data_path": V30_DATA, "video_path": V30_VIDEO if cameras else None,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200}


def _write_v21(root: Path, meta: Path, mp4: Path | None, *, lengths: np.ndarray, ep_start: np.ndarray,
               cameras: Sequence[str], tasks: list[str], fps: int, chunks_size: int, seed: int, threads: int,
               compression: str) -> dict:
    """The v2.1 files (one parquet and one video link per camera per episode, the jsonl metadata); returns
    info.json's layout fields."""
    E = len(lengths)

    def write_episode(e: int) -> None:
        chunk = e // chunks_size
        path = root / V21_DATA.format(episode_chunk=chunk, episode_index=e)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = _frames_table(int(ep_start[e]), int(ep_start[e + 1]), ep_start, lengths, e, e + 1, fps, len(tasks),
                          seed)
        pq.write_table(t, path, compression=compression)
        for cam in cameras:
            _link(mp4, root / V21_VIDEO.format(episode_chunk=chunk, video_key=cam, episode_index=e))

    _write_many(list(range(E)), write_episode, threads)
    with (meta / "episodes.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(f'{{"episode_index": {e}, "tasks": {json.dumps([tasks[e % len(tasks)]])}, '
                     f'"length": {int(n)}}}\n' for e, n in enumerate(lengths.tolist()))
    with (meta / "tasks.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks))
    st = _stats(0)
    with (meta / "episodes_stats.jsonl").open("w", encoding="utf-8") as f:
        for e, n in enumerate(lengths.tolist()):
            s = {k: {**v, "count": [n]} for k, v in st.items()}
            f.write(f'{{"episode_index": {e}, "stats": {json.dumps(s)}}}\n')
    return {"data_path": V21_DATA, "video_path": V21_VIDEO if cameras else None,
            "total_chunks": (E - 1) // chunks_size + 1, "total_videos": E * len(cameras)}


def _v30_layout(lengths: np.ndarray, ep_start: np.ndarray, num_data_files: int, num_video_files: int) -> tuple:
    """(F, V, data_of, video_of, seg_from): file counts, the data and video file of each episode (contiguous
    runs), and each episode's first frame inside its video file — the episodes of a video file are
    consecutive segments of it (as lerobot writes them: never overlapping)."""
    E = len(lengths)
    F = max(1, min(int(num_data_files), E))
    V = max(1, min(int(num_video_files), E))
    data_of = np.arange(E) * F // E  # file of each episode (contiguous runs)
    video_of = np.arange(E) * V // E
    file_first = np.searchsorted(video_of, video_of)
    seg_from = (ep_start[:-1] - ep_start[file_first]).astype(np.int64)
    return F, V, data_of, video_of, seg_from


def make_large_dataset(root: str | Path, *, num_frames: int, num_episodes: int, num_data_files: int = 1,
                       num_video_files: int = 1, cameras: Sequence[str] = ("image",), version: str = "v3.0",
                       fps: int = 10, camera_shape: tuple[int, int, int] = (32, 32, 3),
                       tasks: Sequence[str] = DEFAULT_TASKS, chunks_size: int = 1000, seed: int = 0,
                       threads: int | None = None, compression: str = "snappy") -> Path:
    """Write a synthetic dataset at `root` (must not exist); returns `root`.

    v3.0: episodes split into `num_data_files` parquet files and, per camera, `num_video_files` mp4 files
    (contiguous runs of episodes each). v2.1: one parquet and one mp4 per camera per episode (the two file
    counts are ignored). `threads` (default: cpu count) write files in parallel.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"make_large_dataset: {root} already exists")
    if version not in ("v3.0", "v2.1"):
        raise ValueError(f"version should be 'v3.0' or 'v2.1', got {version!r}")
    lengths = episode_lengths(int(num_frames), int(num_episodes))
    E = len(lengths)
    ep_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    threads = (os.cpu_count() or 1) if threads is None else int(threads)
    tasks = list(tasks)
    meta = root / "meta"
    meta.mkdir(parents=True)
    common = dict(lengths=lengths, ep_start=ep_start, cameras=cameras, tasks=tasks, fps=fps,
                  chunks_size=chunks_size, seed=seed, threads=threads, compression=compression)
    if version == "v3.0":
        layout = _v30_layout(lengths, ep_start, num_data_files, num_video_files)
        span = int((layout[4] + lengths).max())  # the longest run of segments in one video file
    else:
        layout, span = None, int(lengths.max())
    mp4 = write_mp4(meta / ".source.mp4", span + 1, fps, camera_shape) if cameras else None
    if layout is not None:
        info_extra = _write_v30(root, meta, mp4, layout, **common)
    else:
        info_extra = _write_v21(root, meta, mp4, **common)
    if mp4 is not None:
        mp4.unlink()
    (meta / "stats.json").write_text(json.dumps(_stats(int(num_frames))), encoding="utf-8")
    info = {"codebase_version": version, "robot_type": "synthetic", "total_episodes": E,
            "total_frames": int(num_frames), "total_tasks": len(tasks), "chunks_size": chunks_size, "fps": fps,
            "splits": {"train": f"0:{E}"}, **info_extra, "features": _features(cameras, camera_shape, fps)}
    (meta / "info.json").write_text(json.dumps(info, indent=4), encoding="utf-8")
    return root
