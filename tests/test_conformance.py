"""Conformance: every dataset we can get reads, index for index and key for key, as lerobot's own reader reads it.

The reference is lerobot 0.4.4's `LeRobotDataset(..., video_backend="pyav")[i]` (v3.0); v2.1 needs the lerobot the
openpi fork pins, which lives in the seed environment: `tests/seed/test_conformance_v21.py` (the real G1 dataset
of ../shared/data and a v2.1 dataset the fork's lerobot wrote).

The datasets here are written by lerobot 0.4.4's own writer (`LeRobotDataset.create`, add_frame, save_episode)
in each layout it supports — AV1 streamed into one file; AV1 split over several files and chunks
(`update_chunk_settings`: chunks_size, data_files_size_in_mb, video_files_size_in_mb); H.264 encoded from the
PNGs the writer saves first (not streamed); PNG images in parquet over several files — plus a copy whose
`to_timestamp`s follow the
other convention found in public datasets, the last frame's time `from + (length - 1) / fps`. Episodes have
unequal lengths; each sample carries an action chunk and a previous-state window (padding at both ends). Every
index is compared (the datasets are tiny: 16x16 cameras, 4 episodes), camera frames bit for bit. Not covered:
`batch_encoding_size > 1`, which lerobot 0.4.4's writer cannot use on a new dataset (`_batch_save_episode_video`
reads `meta.episodes`, still None: TypeError).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

FPS = 10
DTS = {"actions": [t / FPS for t in range(4)], "state": [-1 / FPS, 0.0]}
TASKS = ("pick up the bowl", "open the drawer")
LAYOUTS: dict[str, dict] = {
    "av1_one_file": dict(use_videos=True, lengths=(5, 7, 4)),
    # ~2 KiB per episode's parquet and ~1.5 KiB per episode's AV1: data over 3 files in 2 chunks, 2 mp4s of 2 episodes
    "av1_files_and_chunks": dict(use_videos=True, lengths=(5, 7, 4, 6), chunks_size=2, data_files_size_in_mb=0.002,
                                 video_files_size_in_mb=0.004),
    "h264_from_pngs": dict(use_videos=True, lengths=(5, 7, 4, 6), streaming=False, vcodec="h264"),
    "images_in_parquet_files": dict(use_videos=False, lengths=(5, 7, 4, 6), chunks_size=2,
                                    data_files_size_in_mb=0.004),
}
REWRITES = {"to_last_frame_time": "av1_files_and_chunks"}  # name -> the layout it rewrites

pytestmark = pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities:UserWarning")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The low-dim store under tmp_path, never the user's ~/.cache."""
    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))


def write_with_lerobot(root: Path, repo_id: str, *, lengths: tuple[int, ...], use_videos: bool, streaming: bool = True,
                       vcodec: str = "libsvtav1", chunks_size: int | None = None,
                       data_files_size_in_mb: float | None = None, video_files_size_in_mb: float | None = None,
                       seed: int = 0) -> Path:
    """A dataset with one 16x16 camera "image", "state" (8) and "actions" (7), written by lerobot 0.4.4's writer
    with the given layout options; episode e has lengths[e] frames and task TASKS[e % 2]."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from fastmix.testing.synth import lerobot_features, lowdim_values, synth_frame

    shape = (16, 16, 3)
    ds = LeRobotDataset.create(repo_id=repo_id, fps=FPS, features=lerobot_features(("image",), shape, use_videos, 8, 7),
                               root=root, robot_type="synthetic", use_videos=use_videos, image_writer_threads=0,
                               image_writer_processes=0, streaming_encoding=use_videos and streaming,
                               encoder_threads=1, encoder_queue_maxsize=max(lengths) + 1, vcodec=vcodec)
    if chunks_size or data_files_size_in_mb or video_files_size_in_mb:
        ds.meta.update_chunk_settings(chunks_size=chunks_size, data_files_size_in_mb=data_files_size_in_mb,
                                      video_files_size_in_mb=video_files_size_in_mb)
    rng = np.random.default_rng(seed)
    for ep, n in enumerate(lengths):
        state, actions = lowdim_values(rng, n, 8), lowdim_values(rng, n, 7)
        for f in range(n):
            ds.add_frame({"image": synth_frame(shape, ep, f, 0), "state": state[f], "actions": actions[f],
                          "task": TASKS[ep % len(TASKS)]})
        ds.save_episode(parallel_encoding=False)
    ds.finalize()
    return root


def to_last_frame_time(root: Path) -> None:
    """Rewrite every `videos/<key>/to_timestamp` of meta/episodes as from + (length - 1) / fps."""
    for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        t = pq.read_table(path)
        for name in [c for c in t.column_names if c.endswith("/to_timestamp")]:
            start = t.column(name.replace("/to_timestamp", "/from_timestamp")).to_numpy()
            last = start + (t.column("length").to_numpy() - 1) / FPS
            t = t.set_column(t.column_names.index(name), t.schema.field(name), pa.array(last, type=pa.float64()))
        pq.write_table(t, path)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """get(name) -> root of the layout or rewrite `name`, written once per module."""
    import shutil

    base = tmp_path_factory.mktemp("conformance")
    roots: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in roots:
            if name in REWRITES:
                roots[name] = base / name
                shutil.copytree(get(REWRITES[name]), roots[name])
                to_last_frame_time(roots[name])
            else:
                roots[name] = write_with_lerobot(base / name, f"conformance/{name}", **LAYOUTS[name])
        return roots[name]

    return get


def lerobot_dataset(name: str, root: Path, **kw):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's video-API deprecation warning
        return LeRobotDataset(f"conformance/{name}", root=root, video_backend="pyav", **kw)


def assert_every_index_equal(src, ref, where: str) -> None:
    """src[i] == ref[i] for every i: same keys in the same order, dtypes, shapes, values (frames bit for bit)."""
    assert len(src) == len(ref), where
    for i in range(len(ref)):
        a, b = ref[i], src[i]
        assert list(a) == list(b), f"{where}[{i}]: keys {list(a)} vs {list(b)}"
        for key, want in a.items():
            got = b[key]
            if isinstance(want, str):
                assert want == got, f"{where}[{i}] {key}: {want!r} vs {got!r}"
                continue
            assert (want.dtype, tuple(want.shape)) == (got.dtype, tuple(got.shape)), f"{where}[{i}] {key}"
            assert torch.equal(want, got), f"{where}[{i}] {key}: max |diff| {float((want.double() - got.double()).abs().max())}"


def episodes_table(root: Path) -> pa.Table:
    """meta/episodes of a v3.0 dataset, every file, read with pyarrow."""
    return pa.concat_tables([pq.read_table(p) for p in sorted((root / "meta" / "episodes").glob("*/*.parquet"))])


def layout_of(root: Path) -> dict[str, int]:
    """How many data files and video files the dataset has, and the most episodes one file holds."""
    eps = episodes_table(root).to_pydict()
    data = list(zip(eps["data/chunk_index"], eps["data/file_index"], strict=True))
    out = {"data_files": len(set(data)), "max_eps_per_data_file": max(data.count(d) for d in data),
           "chunks": len(set(c for c, _ in data))}
    if "videos/image/chunk_index" in eps:
        video = list(zip(eps["videos/image/chunk_index"], eps["videos/image/file_index"], strict=True))
        out.update(video_files=len(set(video)), max_eps_per_video_file=max(video.count(v) for v in video))
    return out


@pytest.mark.parametrize("name", [*LAYOUTS, *REWRITES])
def test_every_index_equals_lerobot(written, name):
    from fastmix.sources.lerobot_source import LeRobotSource

    root = written(name)
    src = LeRobotSource(f"conformance/{name}", root=root, delta_timestamps=DTS)
    ref = lerobot_dataset(name, root, delta_timestamps=DTS)
    assert len(src) == sum(LAYOUTS[REWRITES.get(name, name)]["lengths"])
    assert_every_index_equal(src, ref, name)


def test_layouts_are_what_they_claim(written):
    """The writer options produced the layouts the suite is about (else the comparison above proves less)."""
    one = layout_of(written("av1_one_file"))
    assert (one["data_files"], one["video_files"], one["max_eps_per_video_file"]) == (1, 1, 3)
    many = layout_of(written("av1_files_and_chunks"))
    assert many["data_files"] > 1 and many["chunks"] > 1 and many["max_eps_per_data_file"] > 1
    assert many["video_files"] > 1 and many["max_eps_per_video_file"] > 1  # several episodes per file, several files
    images = layout_of(written("images_in_parquet_files"))
    assert images["data_files"] > 1 and "video_files" not in images
    import av

    with av.open(str(next((written("h264_from_pngs") / "videos").rglob("*.mp4")))) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_to_last_frame_time_copy_opens_without_videos_too(written):
    """The rewrite of §1 (issue 20): to_timestamp is the last frame's time; it opens with require_videos=False
    (the old check refused it even then), and the rewrite really holds that convention."""
    from fastmix.sources.lerobot_source import LeRobotSource

    root = written("to_last_frame_time")
    eps = episodes_table(root)
    start, to = eps.column("videos/image/from_timestamp").to_numpy(), eps.column("videos/image/to_timestamp").to_numpy()
    np.testing.assert_allclose(to - start, (eps.column("length").to_numpy() - 1) / FPS)
    assert len(LeRobotSource("conformance/to_last_frame_time", root=root, require_videos=False)) == 22


def test_v21_is_compared_with_the_pinned_lerobot(g1_root):
    """lerobot 0.4.4 does not read v2.1 (it asks for a conversion), so ../shared/data/g1_v21_partial and the
    fork-written v2.1 datasets are compared with the lerobot the fork pins: tests/seed/test_conformance_v21.py."""
    from lerobot.datasets.backward_compatibility import BackwardCompatibilityError

    with pytest.raises(BackwardCompatibilityError):
        lerobot_dataset("g1_v21_partial", g1_root)
