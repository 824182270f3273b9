"""Reliability catalogue, data cases: damaged copies of tiny generated datasets (lerobot's writer, v3.0).
Each case asserts the exception type and that the message names the dataset and the file / key / episode /
timestamp at fault; metadata and low-dim problems surface when the source is opened, frame problems when a
frame is read (FrameReader, as a decode worker does)."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fastmix.errors import (
    ConfigError,
    DatasetFormatError,
    DecodeError,
    FastmixError,
    IncompatibleDatasetsError,
    MissingFileError,
    MixedFpsWarning,
)
from fastmix.loader.loader import MixtureLoader
from fastmix.loader.options import WorkerOptions
from fastmix.sources.compat import check_distinct, check_mixture
from fastmix.sources.frames import FrameReader, FrameRequest
from fastmix.sources.integrity import find_nonfinite
from fastmix.sources.lerobot_source import LeRobotSource
from fastmix.testing.fakes import FakeReader, FakeSource

pytestmark = pytest.mark.timeout(60)
DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/image/chunk-000/file-000.mp4"
META_EPS = "meta/episodes/chunk-000/file-000.parquet"


def read_frames(src, rows, tolerance_s=1e-4):
    reqs = src.frame_requests(np.asarray(rows, dtype=np.int64))
    out = {k: np.zeros((len(rows), *src.camera_shape(k)), np.uint8) for k in src.camera_keys}
    with FrameReader(tolerance_s=tolerance_s) as reader:
        reader.read(reqs, out)
    return out


def edit_info(root, fn):
    p = root / "meta" / "info.json"
    info = json.loads(p.read_text())
    fn(info)
    p.write_text(json.dumps(info))


# ------------------------------------------------------------------------------------------- metadata
def test_info_json_missing(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(MissingFileError) as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and str(root / "meta" / "info.json") in str(e.value)


def test_info_json_malformed(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    (root / "meta" / "info.json").write_text('{"codebase_version": "v3.0", "fps": ')
    with pytest.raises(DatasetFormatError, match="not valid JSON") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "info.json" in str(e.value)


def test_info_json_unsupported_version(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    edit_info(root, lambda i: i.update(codebase_version="v1.6"))
    with pytest.raises(DatasetFormatError, match="'v1.6'.*not supported") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "v3.0" in str(e.value)


# ------------------------------------------------------------------------------------------- low-dim data
def test_missing_parquet(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    (root / DATA).unlink()
    with pytest.raises(MissingFileError) as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and str(root / DATA) in str(e.value)


def test_missing_v21_data_files_listed_at_open(tiny3_v21, copy_ds, no_leaks):
    """v2.1 partial download without two episodes' parquets: all listed at open with the episodes= hint."""
    root = copy_ds(tiny3_v21)
    for e in (0, 2):
        (root / f"data/chunk-000/episode_{e:06d}.parquet").unlink()
    with pytest.raises(MissingFileError) as e:
        LeRobotSource("rel/partial", root=root)
    msg = str(e.value)
    assert "'rel/partial'" in msg and "2 data file(s) are missing" in msg and "episode(s) [0, 2]" in msg
    assert str(root / "data/chunk-000/episode_000000.parquet") in msg and "episodes=[1]" in msg
    assert len(LeRobotSource("rel/partial", root=root, episodes=[1])) == 6


def test_parquet_missing_column(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    t = pq.read_table(root / DATA)
    pq.write_table(t.drop_columns(["state"]), root / DATA)
    with pytest.raises(DatasetFormatError, match="lacks column") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "state" in str(e.value) and str(root / DATA) in str(e.value)


def test_parquet_wrong_shape(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    edit_info(root, lambda i: i["features"]["state"].update(shape=[9]))  # the file holds 8 per row
    with pytest.raises(DatasetFormatError, match="not the shape") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "'state'" in str(e.value) and "(9,)" in str(e.value)


# ------------------------------------------------------------------------------------------- video
def test_missing_video_file(tiny_video, copy_ds, no_leaks):
    """A partial download: found at open (as lerobot refuses to open it), listing the file, the affected
    episodes and an `episodes=` hint; with require_videos=False, at read, naming file, key and episode."""
    root = copy_ds(tiny_video)
    (root / VIDEO).unlink()
    with pytest.raises(MissingFileError) as e:
        LeRobotSource("rel/broken", root=root)
    msg = str(e.value)
    assert "'rel/broken'" in msg and VIDEO in msg and "episode(s) [0, 1]" in msg and "no episode is unaffected" in msg
    src = LeRobotSource("rel/broken", root=root, require_videos=False)
    with pytest.raises(MissingFileError) as e:
        read_frames(src, [0, 7])
    msg = str(e.value)
    assert "'rel/broken'" in msg and str(root / VIDEO) in msg and "'image'" in msg and "episode" in msg


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_truncated_or_corrupt_mp4(tiny_video, copy_ds, damage, no_leaks):
    root = copy_ds(tiny_video)
    p = root / VIDEO
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        for i in range(len(data) // 3, len(data)):
            data[i] = (data[i] * 7 + 13) % 256
    p.write_bytes(bytes(data))
    src = LeRobotSource("rel/broken", root=root)
    with pytest.raises(DecodeError) as e:
        read_frames(src, list(range(len(src))))
    msg = str(e.value)
    assert "'rel/broken'" in msg and str(p) in msg and "'image'" in msg and "episode" in msg and "timestamp" in msg


def _request(src, key, timestamp, episode=1):
    return FrameRequest(slot=0, key=key, path=str(src.root / VIDEO), timestamp=timestamp, row=-1,
                        episode=episode, dataset=src.name)


def test_video_shorter_than_episode(tiny_video, no_leaks):
    """A frame requested past the end of the video (as when the mp4 is shorter than its episode)."""
    src = LeRobotSource("rel/tiny_video", root=tiny_video)
    out = {"image": np.zeros((1, *src.camera_shape("image")), np.uint8)}
    with FrameReader() as reader, pytest.raises(DecodeError) as e:
        reader.read([_request(src, "image", 5.0)], out)  # 12 frames at 10 fps: the video ends at 1.1 s
    msg = str(e.value)
    assert "'rel/tiny_video'" in msg and "episode 1" in msg and "5.000000" in msg and VIDEO in msg


def test_timestamp_outside_tolerance(tiny_video, no_leaks):
    src = LeRobotSource("rel/tiny_video", root=tiny_video)
    out = {"image": np.zeros((1, *src.camera_shape("image")), np.uint8)}
    with FrameReader(tolerance_s=1e-4) as reader, pytest.raises(DecodeError, match="tolerance_s") as e:
        reader.read([_request(src, "image", 0.3 + 0.03)], out)  # between frames 3 and 4
    assert "'rel/tiny_video'" in str(e.value) and "0.330000" in str(e.value)
    with FrameReader(tolerance_s=0.04) as reader:  # within a looser tolerance it is the nearest frame
        reader.read([_request(src, "image", 0.3 + 0.03)], out)


# ------------------------------------------------------------------------------------------- mixtures
def test_different_keys_and_shapes_table(no_leaks):
    a = FakeSource("ds_a", state_dim=8)
    b = FakeSource("ds_b", state_dim=9, cameras=("image",))
    with pytest.raises(IncompatibleDatasetsError) as e:
        MixtureLoader([a, b], batch_size=4, num_workers=0, workers=WorkerOptions(reader_factory=FakeReader))
    lines = str(e.value).splitlines()
    row = {ln.split()[0]: ln for ln in lines[1:]}
    assert "state" in row and "(8,)" in row["state"] and "(9,)" in row["state"]
    assert "wrist_image" in row and "ds_a" in row["wrist_image"] and "ds_b" in row["wrist_image"]


def test_different_dtypes_and_fps_table(tiny_video, tiny_image, copy_ds, no_leaks):
    from fastmix.sources.compat import check_compatible

    a = FakeSource("ds_a", state_dim=8, fps=10)
    b = FakeSource("rel/fps20", state_dim=8, fps=20)
    with pytest.raises(IncompatibleDatasetsError) as e:
        check_compatible([a, b])
    msg = str(e.value)
    assert "fps" in msg and "10" in msg and "20" in msg and "rel/fps20" in msg and "ds_a" in msg
    c = LeRobotSource("rel/tiny_image", root=tiny_image)  # same keys, cameras stored as images not video
    root2 = copy_ds(tiny_image)
    edit_info(root2, lambda i: i["features"]["state"].update(dtype="float64"))
    t = pq.read_table(root2 / DATA)  # the data must match (a dtype mismatch is refused at open)
    i = t.column_names.index("state")
    pq.write_table(t.set_column(i, pa.field("state", pa.list_(pa.float64(), 8)),
                                t.column("state").cast(pa.list_(pa.float64(), 8))), root2 / DATA)
    d = LeRobotSource("rel/state64", root=root2)
    with pytest.raises(IncompatibleDatasetsError) as e:
        check_compatible([c, d])
    assert "state" in str(e.value) and "float64" in str(e.value) and "rel/state64" in str(e.value)


def test_empty_dataset_source(tiny_video, no_leaks):
    with pytest.raises(FastmixError) as e:
        LeRobotSource("rel/empty", root=tiny_video, episodes=[])
    assert "rel/empty" in str(e.value)


def test_empty_dataset_in_mixture(no_leaks):
    with pytest.raises(ConfigError) as e:
        MixtureLoader([FakeSource("ds_a"), FakeSource("empty_ds", num_episodes=0)], batch_size=4, num_workers=0, workers=WorkerOptions(reader_factory=FakeReader))
    assert "empty_ds" in str(e.value)


def test_one_frame_episodes_and_non_ascii_tasks(tiny_image, no_leaks):
    """tiny_image: 2 episodes of ONE frame each, tasks with accents, an emoji and CJK; image-in-parquet."""
    src = LeRobotSource("rel/tiny_image", root=tiny_image)
    assert len(src) == 2 and src.num_episodes == 2
    want = {"ramasser la tasse à café ☕", "把碗放进抽屉"}
    assert set(src.tasks.values()) == want
    with MixtureLoader([src], batch_size=2, action_horizon=4, num_workers=1, shuffle=False, num_batches=2) as ld:
        seen = []
        for b in ld:
            assert b["actions"].shape == (2, 4, 7)
            pad = b["actions_is_pad"].numpy()
            assert not pad[:, 0].any() and pad[:, 1:].all()  # one real step, the rest padding
            assert set(b["task"]) == want and b["prompt"] == b["task"]
            assert b["image"].shape == (2, 16, 16, 3)
            seen += b["index"].tolist()
    assert sorted(seen) == [0, 0, 1, 1]  # sequential order, each frame once per epoch (2 epochs' worth)


# ------------------------------------------------------------------------------------------- data integrity (#13)
def edit_parquet(path, fn):
    """Rewrite `path` with fn(columns) applied to its columns as Python lists (types and metadata kept)."""
    t = pq.read_table(path)
    cols = {c: t.column(c).to_pylist() for c in t.column_names}
    fn(cols)
    pq.write_table(pa.table({c: pa.array(cols[c], type=t.schema.field(c).type) for c in t.column_names},
                            schema=t.schema), path)


def drop_jsonl_episode(path, episode):
    lines = path.read_text().splitlines()
    path.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["episode_index"] != episode))


def test_v21_deleted_episode_rows_located_by_index(tiny3, tiny3_v21, copy_ds, no_leaks):
    """v2.1, episode 1 of 3 deleted (its jsonl lines, parquet and mp4); episode 2 keeps index 12..17. Rows are
    located by the real index column, so every sample equals lerobot 0.4.4's LeRobotDataset(episodes=[0, 2])
    on the intact v3.0 original, action chunks and padding included (a cumulative sum of lengths would put
    episode 2 at 6..11 and read other frames' actions)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = copy_ds(tiny3_v21)
    drop_jsonl_episode(root / "meta" / "episodes.jsonl", 1)
    drop_jsonl_episode(root / "meta" / "episodes_stats.jsonl", 1)
    (root / "data/chunk-000/episode_000001.parquet").unlink()
    (root / "videos/chunk-000/image/episode_000001.mp4").unlink()
    dts = {"actions": [t / 10 for t in range(4)]}
    src = LeRobotSource("rel/deleted", root=root, delta_timestamps=dts)
    ref = LeRobotDataset("rel/tiny3", root=tiny3, episodes=[0, 2], delta_timestamps=dts, video_backend="pyav")
    assert len(src) == len(ref) == 12
    batch = src.gather_lowdim(np.arange(12))  # the loader's vectorized path
    pads = 0
    for i in range(len(ref)):
        a, b = src[i], ref[i]
        for k in ("index", "episode_index", "frame_index", "state", "actions", "actions_is_pad", "image"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"row {i} key {k}")
        np.testing.assert_array_equal(batch["actions"][i], b["actions"].numpy())
        np.testing.assert_array_equal(batch["actions_is_pad"][i], b["actions_is_pad"].numpy())
        pads += int(b["actions_is_pad"].sum())
    assert src[11]["index"] == 17 and pads == 2 * (1 + 2 + 3)  # last 3 frames of each episode are padded


def test_v21_length_disagrees_with_data(tiny3_v21, copy_ds, no_leaks):
    root = copy_ds(tiny3_v21)
    p = root / "meta" / "episodes.jsonl"
    rows = [json.loads(ln) for ln in p.read_text().splitlines()]
    rows[1]["length"] = 8
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/broken", root=root)
    msg = str(e.value)
    assert "'rel/broken'" in msg and "episode 1 " in msg and "episode_000001.parquet" in msg
    assert "holds 6 rows" in msg and "length 8" in msg and "Repair" in msg


def _move_boundary(c):  # episode 0 gains 2 frames, episode 1 loses them
    c["dataset_to_index"][0] += 2
    c["length"][0] += 2
    c["dataset_from_index"][1] += 2
    c["length"][1] -= 2


def _shift_range(c):
    c["dataset_from_index"][1] += 1
    c["dataset_to_index"][1] += 1


def _length_only(c):
    c["length"][1] -= 1


def _shift_video_from(c):
    c["videos/image/from_timestamp"][1] += 0.2


def _overlap_video(c):
    c["videos/image/from_timestamp"][1] -= 0.2
    c["videos/image/to_timestamp"][1] -= 0.2


def _refusal(ds, copy_ds, rel: str, damage) -> tuple[Any, str]:
    """A copy of `ds` with the parquet `rel` damaged by `damage`: (its root, the DatasetFormatError opening it)."""
    root = copy_ds(ds)
    edit_parquet(root / rel, damage)
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/broken", root=root)
    return root, str(e.value)


@pytest.mark.parametrize("damage, expect", [
    (_move_boundary, ["episode 0 ", "holds 6 rows", "length 8"]),
    (_shift_range, ["episode 1 ", "dataset_from_index=7", "give 6"]),
    (_length_only, ["episode 1 ", "holds 6 rows", "length 5"]),
    (_shift_video_from, ["episode 1:", "'image'", VIDEO, "0.800000..1.300000 s", "from_timestamp=0.800000",
                         "to_timestamp=1.200000"]),
    (_overlap_video, ["episode 0 [0.000000, 0.600000)", "episode 1 [0.400000, 1.000000)", "overlap", VIDEO]),
], ids=["boundary_moved_2_frames", "index_range_shifted", "length_only", "video_from_timestamp_shifted", "video_segments_overlap"])
def test_v30_episode_metadata_disagrees_with_data(tiny_video, copy_ds, damage, expect, no_leaks):
    _, msg = _refusal(tiny_video, copy_ds, META_EPS, damage)
    assert "'rel/broken'" in msg and "Repair" in msg
    for part in expect:
        assert part in msg, (part, msg)


def _dup_ts(c):
    c["timestamp"][2] = c["timestamp"][1]


def _swap_ts(c):
    c["timestamp"][2], c["timestamp"][3] = c["timestamp"][3], c["timestamp"][2]


def _bad_frame_index(c):
    c["frame_index"][3] = 4


def _index_gap(c):
    c["index"][5] = 100


@pytest.mark.parametrize("damage, expect", [
    (_dup_ts, ["timestamps do not increase", "frame_index 1 is at 0.100000 s and frame_index 2 at 0.100000 s"]),
    (_swap_ts, ["timestamps do not increase", "frame_index 2 is at 0.300000 s and frame_index 3 at 0.200000 s"]),
    (_bad_frame_index, ["index 3 has frame_index 4", "position in the episode is 3"]),
    (_index_gap, ["index values [0, 1, 2, 3, 4, 100]", "not one contiguous range"]),
], ids=["duplicated_timestamp", "reversed_timestamps", "frame_index", "index_not_contiguous"])
def test_v30_data_columns_disagree(tiny_video, copy_ds, damage, expect, no_leaks):
    root, msg = _refusal(tiny_video, copy_ds, DATA, damage)
    assert "'rel/broken'" in msg and "episode 0 " in msg and str(root / DATA) in msg
    for part in expect:
        assert part in msg, (part, msg)


def test_nonfinite_values_reported(tiny_video, copy_ds, no_leaks):
    """NaN in actions at episode 1 frame 3 (row 9) and inf in state at episode 0 frame 2 (row 2)."""
    root = copy_ds(tiny_video)

    def poison(c):
        c["actions"][9][2] = float("nan")
        c["state"][2][0] = float("inf")

    edit_parquet(root / DATA, poison)
    src = LeRobotSource("rel/nan", root=root)  # off by default: lerobot loads such data too
    assert find_nonfinite(src) == [("state", 0, 2), ("actions", 1, 3)]
    assert find_nonfinite(src, ["actions"]) == [("actions", 1, 3)]
    assert find_nonfinite(LeRobotSource("rel/ok", root=tiny_video)) == []
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/nan", root=root, check_finite=True)
    msg = str(e.value)
    assert "'rel/nan'" in msg and "'state' episode 0 frame_index 2" in msg and "'actions' episode 1 frame_index 3" in msg


@pytest.mark.parametrize("key, arrow_type, found", [
    ("actions", pa.list_(pa.float64(), 7), "float64"),
    ("frame_index", pa.int32(), "int32"),
    ("index", pa.string(), "string"),
])
def test_wrong_column_dtype(tiny_video, copy_ds, key, arrow_type, found, no_leaks):
    """lerobot writes each column with info.json's dtype (float32 features, int64 indices); anything else is
    refused instead of parsed or cast."""
    root = copy_ds(tiny_video)
    t = pq.read_table(root / DATA)
    i = t.column_names.index(key)
    col = t.column(key).to_pylist()
    if arrow_type == pa.string():
        col = [str(v) for v in col]
    t = t.set_column(i, pa.field(key, arrow_type), pa.array(col, type=arrow_type))
    pq.write_table(t, root / DATA)
    want = "float32" if key == "actions" else "int64"
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/broken", root=root)
    msg = str(e.value)
    assert "'rel/broken'" in msg and f"column {key!r}" in msg and str(root / DATA) in msg
    assert f"stored as {found}" in msg and f"declares {want}" in msg


def test_same_dataset_twice_in_a_mixture(tiny_video, tmp_path, no_leaks):
    """Through a symlinked root (which opens fine) or under a second repo id: ConfigError naming both."""
    link = tmp_path / "link_to_tiny"
    link.symlink_to(tiny_video, target_is_directory=True)
    a = LeRobotSource("rel/a", root=tiny_video)
    b = LeRobotSource("rel/b", root=link)
    assert len(b) == len(a) == 12 and b.root == link
    with pytest.raises(ConfigError) as e:
        check_mixture([a, b])
    msg = str(e.value)
    assert "'rel/a'" in msg and "'rel/b'" in msg and str(link) in msg and "counted twice" in msg
    with pytest.raises(ConfigError, match="'rel/a'.*'rel/c'"):
        check_distinct([a, FakeSource("fake"), LeRobotSource("rel/c", root=tiny_video)])
    check_distinct([a, FakeSource("fake")])


def test_mixed_fps_rule(no_leaks):
    """10 and 20 fps: allowed with a MixedFpsWarning (chunks are built per dataset's fps); strict: an error."""
    a, b = FakeSource("ds_10", fps=10), FakeSource("ds_20", fps=20)
    with pytest.warns(MixedFpsWarning, match="'ds_10': 10, 'ds_20': 20"):
        check_mixture([a, b])
    with pytest.raises(IncompatibleDatasetsError, match="different fps"):
        check_mixture([a, b], strict_fps=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_mixture([a, FakeSource("ds_10b", fps=10)])


@pytest.mark.parametrize("info", [
    {"is_depth_map": True, "video.pix_fmt": "gray12le", "video.codec": "hevc", "video.depth_min": 0.01},  # 0.6
    {"video.is_depth_map": True},  # the older spelling
    {"video.pix_fmt": "gray12le"},
], ids=["lerobot_0.6", "video.is_depth_map", "gray12le"])
def test_depth_map_camera_refused_at_open(tiny_video, copy_ds, info, no_leaks):
    """lerobot 0.6.1 declares depth cameras (H, W, 1) with info {"is_depth_map": true, "video.pix_fmt":
    "gray12le", ...} (12-bit grey HEVC); fastmix decodes RGB only, so it refuses them at open."""
    root = copy_ds(tiny_video)

    def depth(i):
        i["features"]["wrist_image"].setdefault("info", {}).update(info)
        i["features"]["wrist_image"]["shape"] = [16, 16, 1]

    edit_info(root, depth)
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/depth", root=root)
    msg = str(e.value)
    assert "'rel/depth'" in msg and "['wrist_image']" in msg and "depth map" in msg


def test_non_utf8_tasks_jsonl(tiny3_v21, copy_ds, no_leaks):
    root = copy_ds(tiny3_v21)
    (root / "meta" / "tasks.jsonl").write_bytes(b'{"task_index": 0, "task": "pick the bowl"}\n'
                                                 b'{"task_index": 1, "task": "ouvrir le tiroir caf\xe9"}\n')
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/latin1", root=root)
    msg = str(e.value)
    assert "'rel/latin1'" in msg and "tasks.jsonl line 2 is not UTF-8" in msg and "\\xe9" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "soon"])
def test_nonfinite_delta_timestamps(tiny_video, bad, no_leaks):
    with pytest.raises(ConfigError) as e:
        LeRobotSource("rel/tiny_video", root=tiny_video, delta_timestamps={"actions": [0.0, bad]})
    assert "'rel/tiny_video'" in str(e.value) and "actions" in str(e.value) and repr(bad).strip("'") in str(e.value)


def test_unknown_task_id_found_at_open(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    edit_parquet(root / DATA, lambda c: c["task_index"].__setitem__(8, 5))  # a row of episode 1
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/broken", root=root)
    msg = str(e.value)
    assert "'rel/broken'" in msg and "task_index value(s) [5]" in msg and "episode(s) [1]" in msg
    assert "tasks.parquet" in msg and "episodes=[0]" in msg


def test_symlinked_root_and_lerobot_home(tiny_video, tmp_path, monkeypatch, no_leaks):
    """A dataset reached through symlinks (root itself, or `$HF_LEROBOT_HOME/<repo_id>` being a link) opens."""
    home = tmp_path / "home"
    (home / "rel").mkdir(parents=True)
    (home / "rel" / "linked").symlink_to(tiny_video, target_is_directory=True)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home))
    src = LeRobotSource("rel/linked")
    assert src.root == home / "rel" / "linked" and len(src) == 12
    (home / "rel" / "dangling").symlink_to(tmp_path / "gone", target_is_directory=True)
    with pytest.raises(MissingFileError) as e:
        LeRobotSource("rel/dangling")
    msg = str(e.value)
    assert "'rel/dangling'" in msg and "is a symlink to" in msg and str(tmp_path / "gone") in msg


# ------------------------------------------------------------------------------------------- data from the wild (#20)
@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """The low-dim store of this test under tmp_path (never the user's ~/.cache)."""
    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMIX_LOWDIM_STORE", raising=False)
    return tmp_path / "cache"


def lerobot_v30(repo_id, root, **kw):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's video-API deprecation warning
        return LeRobotDataset(repo_id, root=root, video_backend="pyav", **kw)


def assert_same_items(src, ref, indices, where):
    """src[i] == ref[i] on every key, in order, dtype, shape and value (frames bit for bit)."""
    for i in indices:
        a, b = ref[i], src[i]
        assert list(a) == list(b), f"{where}[{i}] keys"
        for k, v in a.items():
            if isinstance(v, str):
                assert v == b[k], f"{where}[{i}] {k}"
            else:
                assert v.dtype == b[k].dtype and v.shape == b[k].shape, f"{where}[{i}] {k}"
                assert torch.equal(v, b[k]), f"{where}[{i}] {k}"


def to_last_frame_time(root, fps):
    """Rewrite every `videos/<key>/to_timestamp` of meta/episodes as the last frame's time, from + (length-1)/fps
    (the convention of a public dataset's own tools; lerobot's writer records from + length/fps)."""
    for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        t = pq.read_table(path)
        for name in [c for c in t.column_names if c.endswith("/to_timestamp")]:
            start = t.column(name.replace("/to_timestamp", "/from_timestamp")).to_numpy()
            last = start + (t.column("length").to_numpy() - 1) / fps
            t = t.set_column(t.column_names.index(name), t.schema.field(name), pa.array(last, type=pa.float64()))
        pq.write_table(t, path)


def test_to_timestamp_as_last_frame_time_opens_and_equals_lerobot(tiny3, copy_ds, own_cache, no_leaks):
    """§1: to_timestamp = the last frame's time (from + (length-1)/fps) for every episode. Every frame still lies
    inside its own segment and no two episodes' frames share a video time: the dataset opens (also with
    require_videos=False) and every index equals lerobot 0.4.4's LeRobotDataset[i], which reads it too."""
    root = copy_ds(tiny3)
    to_last_frame_time(root, 10)
    eps = pq.read_table(root / META_EPS).to_pydict()
    assert eps["videos/image/to_timestamp"] == pytest.approx([0.5, 1.1, 1.7])  # the rewrite took
    assert len(LeRobotSource("rel/last_frame_to", root=root, require_videos=False)) == 18
    dts = {"actions": [t / 10 for t in range(4)]}
    src = LeRobotSource("rel/last_frame_to", root=root, delta_timestamps=dts)
    ref = lerobot_v30("rel/last_frame_to", root, delta_timestamps=dts)
    assert len(src) == len(ref) == 18
    assert_same_items(src, ref, range(18), "last_frame_to")


def _late_from(rows, fps, episode, frame):
    """Rows (dicts of columns as lists): from `frame` of `episode` on, each timestamp is 1/fps late."""
    for i, (e, f) in enumerate(zip(rows["episode_index"], rows["frame_index"], strict=True)):
        if e == episode and f >= frame:
            rows["timestamp"][i] += 1 / fps


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_timestamps_one_frame_late_refused_at_open(tiny3, tiny3_v21, copy_ds, own_cache, version, no_leaks):
    """§2: from frame 3 of episode 1 on, every timestamp is +1/fps (each row would read the next video frame,
    the last one none). The pinned lerobot refuses such v2.1 data at open (check_timestamps_sync); fastmix refuses
    both versions where timestamps pick video frames, naming dataset, episode, file, frame index and both
    values (tests/seed/test_conformance_v21.py: the pinned lerobot's own refusal)."""
    root = copy_ds(tiny3_v21 if version == "v2.1" else tiny3)
    data = root / ("data/chunk-000/episode_000001.parquet" if version == "v2.1" else DATA)
    edit_parquet(data, lambda c: _late_from(c, 10, 1, 3))
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/late", root=root)
    msg = str(e.value)
    assert "'rel/late'" in msg and "episode 1 " in msg and str(data) in msg and "not spaced 1/fps" in msg
    assert "frame_index 2 is at 0.200000 s and frame_index 3 at 0.400000 s" in msg and "Repair" in msg


def _shift_segment(episode, seconds):
    def damage(c):
        c["videos/image/from_timestamp"][episode] += seconds
        c["videos/image/to_timestamp"][episode] += seconds
    return damage


@pytest.mark.parametrize("damage, expect", [
    (_shift_segment(2, 0.1), ["episode 2:", "1.300000..1.800000 s", "0.000000..1.700000 s"]),
    (_shift_segment(2, 0.6), ["episode 2:", "1.800000..2.300000 s", "0.000000..1.700000 s"]),
    (_shift_segment(1, 0.6), ["episode 1 [1.200000, 1.800000)", "episode 2 [1.200000, 1.800000)", "overlap"]),
], ids=["last_one_frame_later", "last_one_episode_later", "middle_onto_the_next"])
def test_v30_segment_shifted_later_refused(tiny3, copy_ds, own_cache, damage, expect, no_leaks):
    """§2: an episode's from_timestamp and to_timestamp both shifted later. Its frames would be other frames
    (lerobot 0.4.4 decodes them without a word, or fails at read past the end). The mp4's own header (its frame
    count and duration, read once per file) bounds the last segment; a shift onto the next episode overlaps it.
    Refused at open, naming dataset, key, file, episode and both time ranges."""
    root, msg = _refusal(tiny3, copy_ds, META_EPS, damage)
    assert "'rel/broken'" in msg and "'image'" in msg and str(root / VIDEO) in msg and "Repair" in msg
    for part in expect:
        assert part in msg, (part, msg)


def test_v30_segment_shift_reads_other_frames_in_lerobot(tiny3, copy_ds, own_cache, no_leaks):
    """Why the middle shift must be refused: lerobot 0.4.4 opens that copy and hands out episode 2's pixels for
    episode 1."""
    root = copy_ds(tiny3)
    edit_parquet(root / META_EPS, _shift_segment(1, 0.6))
    broken, intact = lerobot_v30("rel/broken", root), lerobot_v30("rel/tiny3", tiny3)
    assert torch.equal(broken[6]["image"], intact[12]["image"]) and not torch.equal(broken[6]["image"], intact[6]["image"])
    with pytest.raises(DatasetFormatError, match="overlap"):
        LeRobotSource("rel/broken", root=root)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_two_strings_for_one_task_index(tiny3, tiny3_v21, copy_ds, own_cache, version, no_leaks):
    """§2: tasks.parquet / tasks.jsonl give task_index 0 a second string: refused, naming the index and both
    strings (lerobot takes one, another reader the other). The same string twice is harmless and opens."""
    import pandas as pd

    root = copy_ds(tiny3_v21 if version == "v2.1" else tiny3)
    if version == "v2.1":
        path = root / "meta" / "tasks.jsonl"
        original = path.read_text()
        path.write_text(original + json.dumps({"task_index": 0, "task": "stack the cups"}) + "\n")
    else:
        path = root / "meta" / "tasks.parquet"
        original = pd.read_parquet(path)
        pd.concat([original, pd.DataFrame({"task_index": [0]}, index=["stack the cups"])]).to_parquet(path)
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/tasks", root=root)
    msg = str(e.value)
    assert "'rel/tasks'" in msg and str(path) in msg and "task_index 0" in msg
    assert "'pick the bowl'" in msg and "'stack the cups'" in msg
    if version == "v2.1":
        path.write_text(original + json.dumps({"task_index": 0, "task": "pick the bowl"}) + "\n")
    else:
        pd.concat([original, pd.DataFrame({"task_index": [0]}, index=["pick the bowl"])]).to_parquet(path)
    assert LeRobotSource("rel/tasks", root=root).tasks == {0: "pick the bowl", 1: "open the drawer"}


def test_store_not_stale_after_same_size_edit_with_mtime_restored(tiny_video, copy_ds, own_cache, no_leaks):
    """§2: a data file edited in place, same size, its mtime set back (`touch -r`): the low-dim store must not
    serve the old values. The expected values come from pyarrow's own read of the edited file."""
    import os
    import time

    root = copy_ds(tiny_video)
    path = root / DATA
    table = pq.read_table(path)
    plain = {"compression": "none", "use_dictionary": False, "write_statistics": False}
    pq.write_table(table, path, **plain)  # fixed-size values: an edit keeps the size
    src = LeRobotSource("rel/edited", root=root)
    assert list((own_cache / "lowdim").iterdir()), "the store was not built"
    old = float(src.gather_lowdim(np.array([9]))["state"][0, 0])
    before = os.stat(path)
    time.sleep(0.05)  # a later ctime even on file systems with coarse timestamps
    cols = table.to_pydict()
    cols["state"][9][0] = old + 1.5
    pq.write_table(pa.table(cols, schema=table.schema), path, **plain)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    want = np.asarray(pq.read_table(path).column("state").to_pylist()[9], dtype=np.float32)
    assert want[0] == np.float32(old + 1.5)
    got = LeRobotSource("rel/edited", root=root).gather_lowdim(np.array([9]))["state"][0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("key, template", [
    ("data_path", "../outside/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
    ("data_path", "{root}/outside/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
    ("video_path", "videos/../../outside/videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"),
], ids=["data_dotdot", "data_absolute", "video_dotdot"])
def test_path_template_leaving_the_root_refused(tiny_video, tmp_path, own_cache, key, template, no_leaks):
    """§4: a data_path / video_path that leaves the dataset root (`..`, absolute) is refused before any file is
    read — even where a readable copy of the files waits outside the root."""
    import shutil

    root = tmp_path / "ds" / "root"
    shutil.copytree(tiny_video, root)
    shutil.copytree(root / "data", tmp_path / "ds" / "outside" / "data")  # what the templates would reach
    shutil.copytree(root / "videos", tmp_path / "ds" / "outside" / "videos")
    template = template.replace("{root}", str(tmp_path / "ds"))
    edit_info(root, lambda i: i.update({key: template}))
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/escape", root=root)
    msg = str(e.value)
    assert "'rel/escape'" in msg and key in msg and repr(template) in msg and "leaves the dataset root" in msg


@pytest.mark.parametrize("width", [100_000, 1_500_000_000])
def test_path_template_with_huge_width_refused(tiny_video, copy_ds, own_cache, width, no_leaks):
    """§4: `{file_index:>1500000000}` would build a 1.5 GB string per episode (MemoryError): refused from the
    format spec, before anything is formatted."""
    root = copy_ds(tiny_video)
    template = f"data/chunk-{{chunk_index:03d}}/file-{{file_index:>{width}}}.parquet"
    edit_info(root, lambda i: i.update(data_path=template))
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/wide", root=root)
    msg = str(e.value)
    assert "'rel/wide'" in msg and "data_path" in msg and f"{{file_index:>{width}}}" in msg and len(msg) < 1000


def test_absurd_feature_shape_refused(tiny_video, copy_ds, own_cache, no_leaks):
    """§4: a declared shape of [2**40] (4 TiB of float32 values per frame; today a misleading warning, then
    "Unable to allocate 2.14 PiB"): refused at open, naming the feature and the shape, before any allocation."""
    root = copy_ds(tiny_video)
    edit_info(root, lambda i: i["features"]["state"].update(shape=[2 ** 40]))
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("rel/huge", root=root)
    msg = str(e.value)
    assert "'rel/huge'" in msg and "'state'" in msg and str(2 ** 40) in msg and "info.json" in msg
