"""Datasets in object storage, against a real S3-compatible server (SeaweedFS, started by `tests/remote_server.py`).

The session's generated datasets (v3.0 video, v3.0 image-in-parquet, v2.1 video) are uploaded with boto3 and
read back through `s3://`: every index equals lerobot 0.4.4's LeRobotDataset on the local copy (frames within
1/255, measured identical) and fastmix's local read bit for bit; the loader's batches equal the local loader's;
credentials and endpoint come from storage_options or the AWS_* environment, and `lerobot_home` may be a URL.
Then what the remote reading costs: a warm open lists and downloads nothing else, a changed object is read
again, the byte cache serves a second process without a range request (bounded, LRU, atomic, off on demand),
and frames are fetched by the byte ranges their decoding reads (measured against PyAV's own packet table).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fastmix.sources import byte_cache, remote, remote_file
from fastmix.sources.lerobot_source import LeRobotSource
from tests.conftest import EPISODE_LENGTH, FPS, NUM_EPISODES
from tests.remote_server import BUCKET, isolated_remote, read_frames, read_frames_child, serve
from tests.test_source_parity import MAX_FRAME_DIFF, assert_items_equal, lerobot_dataset

pytestmark = pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities:UserWarning")

ACTION_DTS = {"actions": [t / FPS for t in range(10)]}
s3_server = pytest.fixture(scope="module", name="s3_server")(serve)


@pytest.fixture(scope="module")
def s3_roots(s3_server, video_ds, image_ds, v21_ds) -> dict[str, str]:
    """{fixture name: s3:// URL} of the uploaded datasets, under s3://BUCKET/lerobot/fastmix-test/<name>."""
    return {name: s3_server.upload(root, f"lerobot/fastmix-test/{name}")
            for name, root in (("video_ds", video_ds), ("image_ds", image_ds), ("v21_ds", v21_ds))}


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A private fastmix cache (mirror, low-dim store) and byte cache for one test; this process's remote
    objects, clients, counters and prefetch byte budget start empty and are dropped after."""
    yield from isolated_remote(tmp_path, monkeypatch)


def assert_sources_equal(a: LeRobotSource, b: LeRobotSource) -> None:
    """Every index of `a` equals `b`'s bit for bit, and the batch path's low-dim arrays too."""
    assert len(a) == len(b) and a.tasks == b.tasks and a.camera_keys == b.camera_keys
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert list(x) == list(y), i
        for k in x:
            assert x[k] == y[k] if isinstance(x[k], str) else torch.equal(x[k], y[k]), (i, k)
    rows = np.arange(len(a), dtype=np.int64)
    la, lb = a.gather_lowdim(rows), b.gather_lowdim(rows)
    assert la.keys() == lb.keys() and all(np.array_equal(la[k], lb[k]) for k in la)


@pytest.mark.parametrize("name", ["video_ds", "image_ds", "v21_ds"])
def test_every_index_equals_lerobot_and_the_local_read(name, s3_roots, s3_server, fresh, request):
    """v3.0 video, v3.0 image-in-parquet, v2.1 video read from s3:// (storage_options): every index equals
    LeRobotDataset on the local copy (the v2.1 copy: on its v3.0 original, which lerobot 0.4.4 reads) and the
    local LeRobotSource bit for bit; metadata and stats too."""
    local_root = request.getfixturevalue(name)
    src = LeRobotSource(root=s3_roots[name], storage_options=s3_server.options, delta_timestamps=ACTION_DTS)
    assert src.url == s3_roots[name] and src.name == name
    ref_root = request.getfixturevalue("video_ds") if name == "v21_ds" else local_root
    ref = lerobot_dataset(ref_root, delta_timestamps=ACTION_DTS)
    assert len(src) == len(ref) == NUM_EPISODES * EPISODE_LENGTH
    worst = 0.0
    for i in range(len(src)):
        worst = max(worst, assert_items_equal(ref[i], src[i], f"{name}[{i}]"))
    assert worst <= MAX_FRAME_DIFF
    local = LeRobotSource(root=local_root, delta_timestamps=ACTION_DTS)
    assert_sources_equal(src, local)
    assert src.codebase_version == local.codebase_version and src.fps == local.fps
    for key, stats in local.stats.items():
        assert all(np.array_equal(stats[s], src.stats[key][s]) for s in stats), key
    assert remote.stats().get("range_gets", 0) > 0  # frames came by byte ranges


def test_loader_batches_equal_the_local_loader(s3_roots, s3_server, video_ds, image_ds, fresh, monkeypatch):
    """A MixtureLoader over the s3:// video and image datasets (2 spawned decode workers, which learn the
    storage options and objects from the opening process) gives the local loader's batches, every key."""
    from fastmix import MixtureLoader

    stats_dir = fresh / "stats"
    stats_dir.mkdir()
    monkeypatch.setenv("FASTMIX_REMOTE_STATS_DIR", str(stats_dir))

    def batches(roots, **kw):
        sources = [LeRobotSource(root=r, **kw) for r in roots]
        loader = MixtureLoader(sources, dataset_weights=[1.0, 2.0], batch_size=16, action_horizon=10, num_workers=2,
                               seed=5, num_batches=6)
        try:
            return [{k: v if isinstance(v, list) else v.numpy().copy() for k, v in b.items()} for b in loader]
        finally:
            loader.close()

    got = batches([s3_roots["video_ds"], s3_roots["image_ds"]], storage_options=s3_server.options)
    want = batches([video_ds, image_ds])
    assert len(got) == len(want) == 6
    for b, (x, y) in enumerate(zip(got, want, strict=True)):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == y[k] if isinstance(x[k], list) else np.array_equal(x[k], y[k]), (b, k)
    workers = remote.collect_stats(str(stats_dir))
    assert workers.get("range_gets", 0) + workers.get("cache_hits", 0) > 0  # the workers read by ranges


def test_aws_environment_and_a_url_lerobot_home(s3_roots, s3_server, video_ds, fresh, monkeypatch):
    """No storage_options: credentials and endpoint from AWS_* (AWS_ENDPOINT_URL); a repo id under
    HF_LEROBOT_HOME=s3://...; and the openpi path's `resolve_root(repo_id, "s3://...")`, which joins with
    pathlib (s3:/bucket/...), opens the same dataset."""
    from fastmix.openpi.data_loader import resolve_root

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    home = f"s3://{BUCKET}/lerobot"
    local = LeRobotSource(root=video_ds)
    rows = np.arange(len(local), dtype=np.int64)
    want = local.gather_lowdim(rows)
    monkeypatch.setenv("HF_LEROBOT_HOME", home)
    by_home = LeRobotSource("fastmix-test/video_ds")
    by_config = LeRobotSource("fastmix-test/video_ds", root=resolve_root("fastmix-test/video_ds", home))
    for src in (by_home, by_config):
        assert src.url == s3_roots["video_ds"] and src.name == "fastmix-test/video_ds"
        got = src.gather_lowdim(rows)
        assert all(np.array_equal(got[k], want[k]) for k in want)
        assert torch.equal(src[37]["image"], local[37]["image"])


def test_a_warm_open_lists_once_and_downloads_nothing(s3_roots, s3_server, fresh):
    """The second open of a dataset (metadata and low-dim store of this node already filled) costs one LIST
    request and reuses the store; the mirror holds meta/ and data/ only, never a video."""
    LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)
    store_files = sorted(p for p in (fresh / "cache" / "lowdim").rglob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in store_files]
    remote_file.forget_objects()
    remote.reset_stats()
    src = LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)
    counts = remote.stats()  # the listing; the videos' headers (integrity) come from the node's byte cache
    assert counts["requests"] == 1 and "range_gets" not in counts and counts["cache_hits"] == 2
    assert [p.stat().st_mtime_ns for p in store_files] == stamps and store_files
    mirrored = {p.relative_to(src.root).parts[0] for p in src.root.rglob("*") if p.is_file()}
    assert mirrored == {"meta", "data"}


def test_a_changed_object_is_read_again(s3_server, video_ds, fresh, tmp_path, monkeypatch):
    """Objects are fingerprinted by ETag: after the data parquet and the task table change in the bucket, the
    next open serves the new actions and tasks (the store is rebuilt), not the node's old copy; an mp4 replaced
    under an open source is a RemoteError at read (its new bytes never mixed with the old), and the next open
    decodes the new file."""
    url = s3_server.upload(video_ds, "changing/video_ds")
    before = LeRobotSource(root=url, storage_options=s3_server.options)
    rows = np.arange(len(before), dtype=np.int64)
    old_actions = before.gather_lowdim(rows)["actions"].copy()
    c = s3_server.client()
    data_rel = "data/chunk-000/file-000.parquet"
    table = pq.read_table(video_ds / data_rel)
    i = table.column_names.index("actions")
    doubled = pa.array([[2 * x for x in row] for row in table.column("actions").to_pylist()],
                       type=table.schema.field("actions").type)
    edited = tmp_path / "edited.parquet"
    pq.write_table(table.set_column(i, table.schema.field("actions"), doubled), edited)
    c.upload_file(str(edited), BUCKET, f"changing/video_ds/{data_rel}")
    tasks = pq.read_table(video_ds / "meta" / "tasks.parquet").to_pandas()
    tasks.index = [f"{t} (edited)" for t in tasks.index]
    tasks.to_parquet(tmp_path / "tasks.parquet")
    c.upload_file(str(tmp_path / "tasks.parquet"), BUCKET, "changing/video_ds/meta/tasks.parquet")
    after = LeRobotSource(root=url, storage_options=s3_server.options)
    assert np.array_equal(after.gather_lowdim(rows)["actions"], 2 * old_actions)
    assert sorted(after.tasks.values()) == sorted(f"{t} (edited)" for t in before.tasks.values())
    # a video replaced under a reader that opened the old version: refused, never mixed; a new open reads it
    image_rel, wrist_rel = (before.meta.episodes.video_file[k][0] for k in ("image", "wrist_image"))
    c.upload_file(str(video_ds / wrist_rel), BUCKET, f"changing/video_ds/{image_rel}")
    remote_file.forget_objects()
    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", "off")
    with pytest.raises(remote.RemoteError, match=r"has changed since the dataset was opened .*dataset 'video_ds'"):
        read_frames(before, rows[100:101])
    remote_file.forget_objects()
    now = LeRobotSource(root=url, storage_options=s3_server.options)
    local = LeRobotSource(root=video_ds)
    assert np.array_equal(read_frames(now, rows[100:101])["image"], read_frames(local, rows[100:101])["wrist_image"])




@pytest.mark.parametrize("name", ["video_ds", "image_ds"])
def test_the_byte_cache_serves_another_process_without_range_requests(name, s3_roots, s3_server, fresh, request):
    """Two spawned processes read the same frames at once into a cold byte cache (both exact); a third then
    reads them with no range request; no temporary file is left and the cache holds whole ranges."""
    src = LeRobotSource(root=s3_roots[name], storage_options=s3_server.options)
    local = LeRobotSource(root=request.getfixturevalue(name))
    rows = np.random.default_rng(0).permutation(len(src))[:64].astype(np.int64)
    want = read_frames(local, rows)
    ctx = multiprocessing.get_context("spawn")
    shapes = {k: src.camera_shape(k) for k in src.camera_keys}
    env = {k: os.environ[k] for k in (remote.ROOTS_ENV, "FASTMIX_REMOTE_CACHE", "FASTMIX_CACHE")}
    args = (src.frame_requests(rows), shapes, env)
    with ctx.Pool(2) as pool:
        first = pool.starmap(read_frames_child, [args, args])
    with ctx.Pool(1) as pool:
        (third,) = pool.starmap(read_frames_child, [args])
    for frames, _ in (*first, third):
        assert all(np.array_equal(frames[k], want[k]) for k in want)
    assert sum(s.get("range_gets", 0) for _, s in first) > 0
    assert third[1].get("range_gets", 0) == 0 and third[1].get("cache_hits", 0) > 0
    names = [p.name for p in (fresh / "bytes").rglob("*") if p.is_file()]
    assert names and not [n for n in names if n.startswith(".tmp")]
    originals = [p.read_bytes() for p in Path(request.getfixturevalue(name)).rglob("*") if p.is_file()]
    files = [p for p in (fresh / "bytes").rglob("*") if p.is_file() and "-" in p.name and not p.name.startswith(".")]
    assert files
    for p in files:  # a file holds the ranges its name lists, back to back: the object's own bytes
        ranges = [tuple(map(int, r.split("-"))) for r in p.name.split(",")]
        data = p.read_bytes()
        assert len(data) == sum(b - a for a, b in ranges) and p.stat().st_mode & 0o777 == 0o600
        pieces, pos = [], 0
        for a, b in ranges:
            pieces.append((a, b, data[pos:pos + b - a]))
            pos += b - a
        assert any(all(o[a:b] == piece for a, b, piece in pieces) for o in originals), p.name


def test_the_byte_cache_is_bounded_lru_and_can_be_off(s3_roots, s3_server, video_ds, fresh, monkeypatch):
    """FASTMIX_REMOTE_CACHE_MAX bounds the cache (least recently used ranges go first; the frames stay exact);
    FASTMIX_REMOTE_CACHE=off writes nothing and fetches again after the process forgets its bytes."""
    src = LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)
    local = LeRobotSource(root=video_ds)
    rows = np.arange(len(src), dtype=np.int64)
    want = read_frames(local, rows)
    limit = 40 << 10
    monkeypatch.setenv(byte_cache.ENV_MAX, str(limit))
    remote_file.forget_objects()
    got = {k: np.zeros_like(v) for k, v in want.items()}
    for chunk in np.array_split(rows, 24):  # episode after episode: the first ones are the least recent
        part = read_frames(src, chunk)
        for k in got:
            got[k][chunk] = part[k]
    assert all(np.array_equal(got[k], want[k]) for k in want)
    total = byte_cache.total_bytes(fresh / "bytes")
    assert 0 < total <= limit * 1.1
    kept = sorted(int(p.name.split("-")[0]) for p in (fresh / "bytes").rglob("*")
                  if p.is_file() and p.name[0].isdigit())
    assert kept and min(kept) > 0  # the first ranges read (the files' headers at offset 0) were evicted

    off = fresh / "off-home"
    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(off))
    for _ in range(2):
        remote_file.forget_objects()
        remote.reset_stats()
        assert all(np.array_equal(v, want[k][:40]) for k, v in read_frames(src, rows[:40]).items())
        assert remote.stats()["range_gets"] > 0 and "cache_hits" not in remote.stats()
    assert not off.exists() and byte_cache.cache_path() is None


def _packets(path: Path) -> list[tuple[float, int, int, bool]]:
    """(pts seconds, byte offset, size, keyframe) of every packet of the mp4's video stream, by PyAV."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(float(p.pts * s.time_base), p.pos, p.size, bool(p.is_keyframe)) for p in c.demux(s) if p.size]


def test_frames_are_fetched_by_the_ranges_their_decoding_reads(s3_roots, s3_server, video_ds, fresh):
    """Frames far apart (past the 16 KiB header read at open, and more than FFmpeg's read-through of 64 KiB
    from each other): the bytes fetched are at most 1.5x the compressed bytes their decoding needs — the
    packets from each frame's keyframe to it, from PyAV's own packet table of the local file — in one request
    per frame; 12 consecutive frames of one episode (both cameras) take one request per file."""
    from fastmix.sources.remote_file import FFMPEG_READ_THROUGH, HEADER_READAHEAD

    src = LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)  # reads the headers
    packets = {k: _packets(video_ds / src.meta.episodes.video_file[k][0]) for k in src.video_keys}
    ts = src.gather_lowdim(np.arange(len(src)))["timestamp"]

    def span(key: str, row: int) -> tuple[int, int, int]:  # (first byte, last byte, bytes) decoding row reads
        p = packets[key]
        i = min(range(len(p)), key=lambda j: abs(p[j][0] - float(ts[row]) - float(
            src.meta.episodes.video_from_ts[key][row // EPISODE_LENGTH])))
        k = max(j for j in range(i + 1) if p[j][3])
        return p[k][1], p[i][1] + p[i][2], sum(q[2] for q in p[k:i + 1])

    rows, last = [], {k: HEADER_READAHEAD for k in packets}
    for row in range(len(src)):
        spans = {k: span(k, row) for k in packets}
        if all(spans[k][0] > last[k] + FFMPEG_READ_THROUGH for k in packets):
            rows.append(row)
            last = {k: spans[k][1] for k in packets}
    assert len(rows) >= 1
    needed = sum(span(k, r)[2] for k in packets for r in rows)
    remote.reset_stats()
    got = read_frames(src, np.array(rows, dtype=np.int64))
    want = read_frames(LeRobotSource(root=video_ds), np.array(rows, dtype=np.int64))
    assert all(np.array_equal(got[k], want[k]) for k in want)
    counts = remote.stats()
    assert counts["range_bytes"] <= 1.5 * needed, (counts, needed)
    assert counts["range_gets"] == len(rows) * len(packets)
    rows = np.arange(3 * EPISODE_LENGTH + 5, 3 * EPISODE_LENGTH + 17, dtype=np.int64)
    remote_file.forget_objects()  # nothing held in memory; the headers again (from the byte cache), then:
    for url in {r.path for r in src.frame_requests(rows)}:
        remote_file.object_for(url).sample_index()
    remote.reset_stats()
    got = read_frames(src, rows)
    assert remote.stats()["range_gets"] == 2  # one per camera file
    assert all(np.array_equal(got[k], read_frames(LeRobotSource(root=video_ds), rows)[k]) for k in got)


def test_the_mp4_sample_table_matches_pyav(video_ds, v21_ds):
    """mp4_index reads each mp4's sample table exactly as PyAV demuxes it: pts, byte offset, size, keyframe."""
    import av

    from fastmix.sources import mp4_index

    paths = sorted(Path(video_ds).rglob("*.mp4")) + sorted(Path(v21_ds).rglob("*.mp4"))[:4]
    assert paths
    for path in paths:
        data = path.read_bytes()
        index = mp4_index.parse(mp4_index.find_moov(lambda p, n, d=data: d[p:p + n], len(data)))
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            packets = [(float(p.pts * s.time_base), p.pos, p.size, p.is_keyframe) for p in c.demux(s) if p.size]
        assert len(packets) == len(index.pts_s), path
        assert np.allclose(index.pts_s, [p[0] for p in packets], atol=1e-9, rtol=0)
        assert index.offset.tolist() == [p[1] for p in packets]
        assert index.size.tolist() == [p[2] for p in packets]
        assert index.sync.tolist() == [bool(p[3]) for p in packets]


def test_the_request_rate_is_bounded_per_process(s3_roots, s3_server, video_ds, fresh, monkeypatch):
    """FASTMIX_REMOTE_MAX_RPS=30: 10 frames read one by one with no cache (each one opening its files again)
    take at least (requests - 1) / 30 s, the waits are counted, and the frames are exact."""
    monkeypatch.setenv("FASTMIX_REMOTE_MAX_RPS", "30")
    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", "off")
    remote.close_clients()  # clients read the policy when made
    src = LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)
    rows = np.arange(0, len(src), 24, dtype=np.int64)
    want = read_frames(LeRobotSource(root=video_ds), rows)
    remote.reset_stats()
    start = time.monotonic()
    for i, row in enumerate(rows.tolist()):
        remote_file.forget_objects()
        got = read_frames(src, np.array([row], dtype=np.int64))
        assert all(np.array_equal(got[k][0], want[k][i]) for k in want)
    elapsed = time.monotonic() - start
    n = remote.stats()["requests"]
    assert n >= 30 and elapsed >= (n - 1) / 30 * 0.95 and remote.stats()["rate_waits"] > 0


def _needed_bytes(src: LeRobotSource, local_root: Path, rows: np.ndarray) -> int:
    """Compressed bytes the frames of `rows` decode from, every camera: the distinct packets from each frame's
    keyframe to it, from PyAV's own packet table of the local file."""
    ts = src.gather_lowdim(rows)["timestamp"]
    distinct: set[tuple[str, int]] = set()
    sizes: dict[tuple[str, int], int] = {}
    for key in src.video_keys:
        for row, t in zip(rows.tolist(), ts.tolist(), strict=True):
            ep = row // EPISODE_LENGTH
            rel = src.meta.episodes.video_file[key][ep]
            p = _packets(local_root / rel)
            t_file = float(t) + float(src.meta.episodes.video_from_ts[key][ep])
            i = min(range(len(p)), key=lambda j: abs(p[j][0] - t_file))
            k = max(j for j in range(i + 1) if p[j][3])
            for j in range(k, i + 1):
                distinct.add((rel, j))
                sizes[(rel, j)] = p[j][2]
    return sum(sizes[x] for x in distinct)


@pytest.fixture(params=["packets", "demuxer"])
def decode_path(request, monkeypatch) -> str:
    """How remote mp4s are decoded: "packets" (the default for a file without reordered frames: its packets
    fed to the decoder from the sample table) or "demuxer" (the container sought and demuxed, gaps FFmpeg
    reads through served as zeros: what files with B-frames take)."""
    from fastmix.sources.remote_video import RemoteVideo

    if request.param == "demuxer":
        monkeypatch.setattr(RemoteVideo, "direct", property(lambda self: False, lambda self, value: None),
                            raising=False)
    return request.param


def test_dense_frames_fetch_at_most_1_5x_their_compressed_bytes(s3_roots, s3_server, video_ds, fresh, decode_path):
    """40 random rows in one read (frames closer than FFmpeg's 64 KiB read-through): the bytes fetched, past
    the files' headers, are at most 1.5x the distinct compressed bytes the frames decode from (PyAV's packet
    table of the local file), and the frames equal the local read bit for bit. Through the demuxer, FFmpeg
    reads through the gaps between the frames: they were served as zeros, not fetched."""
    src = LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)
    rows = np.sort(np.random.default_rng(5).choice(len(src), 40, replace=False)).astype(np.int64)
    urls = {r.path for r in src.frame_requests(rows)}
    for url in urls:
        remote_file.object_for(url).sample_index()
    remote.reset_stats()
    got = read_frames(src, rows)
    counts = remote.stats()
    assert all(np.array_equal(got[k], read_frames(LeRobotSource(root=video_ds), rows)[k]) for k in got)
    needed = _needed_bytes(src, video_ds, rows)
    assert counts["range_bytes"] <= 1.5 * needed, (counts, needed)
    zeroed = any(remote_file.object_for(u)._zeroed for u in urls)
    assert zeroed == (decode_path == "demuxer")


def test_frames_decode_exactly_with_nothing_prefetched(s3_roots, s3_server, video_ds, fresh, decode_path,
                                                       monkeypatch):
    """With nothing fetched before decoding (prefetch off), every packet is fetched as the decoder needs it —
    through the demuxer, each packet it reads lies in bytes served as zeros and is replaced by its real bytes
    before decoding — so every frame still equals the local read bit for bit (and again, in another order,
    from what is now held)."""
    from fastmix.sources import frames

    monkeypatch.setattr(frames, "prefetch_videos", lambda times: None)
    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", "off")
    src = LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)
    rows = np.array([1, 2, 9, 33, 34, 61, 100, 131, 170, 239], dtype=np.int64)
    want = read_frames(LeRobotSource(root=video_ds), rows)
    remote.reset_stats()
    got = read_frames(src, rows)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert remote.stats()["range_gets"] >= len(rows)  # packet by packet, as the decoder met them
    back = read_frames(src, rows[::-1].copy())
    assert all(np.array_equal(back[k], want[k][::-1]) for k in want)


def test_a_worker_fetches_the_items_sent_ahead_in_the_background(s3_roots, s3_server, video_ds, fresh,
                                                                  monkeypatch):
    """worker_main given three work items at once: the first is fetched whole before it is decoded, the two
    others by the look-ahead thread while the first decodes; every read finds its frames' byte ranges already
    held; the slots equal the local frames; the look-ahead thread has ended when the worker returns."""
    import signal
    import threading
    from multiprocessing import Pipe

    from fastmix.loader.slots import SlotRing
    from fastmix.loader.worker_main import worker_main
    from fastmix.sources.frames import FrameReader

    monkeypatch.setenv("FASTMIX_REMOTE_CACHE", "off")  # held = in this process's memory
    src = LeRobotSource(root=s3_roots["video_ds"], storage_options=s3_server.options)
    items = [np.arange(e * EPISODE_LENGTH + 3, e * EPISODE_LENGTH + 27, 4, dtype=np.int64) for e in (1, 4, 6)]
    prefetches: list[tuple[str, bool]] = []
    missing_at_read: list[int] = []

    class Recording(FrameReader):
        def prefetch(self, requests, ahead=False):
            prefetches.append((threading.current_thread().name, ahead))
            super().prefetch(requests, ahead)

        def read(self, requests, out, store=None):
            for url in {r.path for r in requests}:
                obj = remote_file.object_for(url)
                ranges = obj.sample_index().ranges([r.timestamp for r in requests if r.path == url])
                missing_at_read.append(len(obj.missing(ranges, 0)))
            super().read(requests, out, store)

    shapes = {k: (src.camera_shape(k), np.uint8) for k in src.camera_keys}
    ring = SlotRing(shapes, batch_size=len(items[0]), num_slots=3, num_workers=1)
    main_end, worker_end = Pipe()
    old = signal.getsignal(signal.SIGINT)
    try:
        for seq, rows in enumerate(items):
            main_end.send((seq, seq, sorted(src.frame_requests(rows), key=lambda r: r.path)))
        main_end.send(None)
        worker_main(0, worker_end, ring.layout, Recording, os.getppid())
        answers = [main_end.recv() for _ in range(4)]
        assert answers[0][0] == "ready" and answers[1:] == [("done", 0), ("done", 1), ("done", 2)], answers
        local = LeRobotSource(root=video_ds)
        for seq, rows in enumerate(items):
            want = read_frames(local, rows)
            assert all(np.array_equal(ring.views(seq)[k], want[k]) for k in want), seq
    finally:
        signal.signal(signal.SIGINT, old)
        main_end.close()
        ring.close()
    assert prefetches[0] == (threading.current_thread().name, False)
    assert [a for _, a in prefetches[1:]] == [True, True]
    assert all(name.startswith("fastmix-lookahead") for name, _ in prefetches[1:])
    assert missing_at_read and not any(missing_at_read), missing_at_read
    assert not [t for t in threading.enumerate() if t.name.startswith("fastmix-lookahead")]
