"""fastmix's own LeRobot v2.1 writer (lerobot 0.4.4 only writes v3.0).

`write_v21(v30_root, root)` rewrites a v3.0 dataset as v2.1: one parquet per episode
(`data/chunk-XXX/episode_XXXXXX.parquet`), one mp4 per episode and camera
(`videos/chunk-XXX/<key>/episode_XXXXXX.mp4`, the episode's packets remuxed from the concatenated v3.0 file
without re-encoding, so every decoded frame is bit-identical), and `meta/info.json`, `episodes.jsonl`,
`tasks.jsonl`, `episodes_stats.jsonl`. The two copies hold the same samples. The parquet files carry their
`datasets` features as datasets 3.x writes them (`Sequence`, not datasets 4's `List`), so the v2.1 lerobot
(datasets 3.6) reads them.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastmix.sources.meta import load_meta, read_info

V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def remux_segment(src: Path, dst: Path, start_s: float, end_s: float) -> int:
    """Copy the video packets with start_s ≤ pts < end_s (seconds; half a frame of slack) from `src` into
    a new mp4 `dst`, shifting timestamps so the segment starts at 0. Returns the number of packets written.
    The segment must start on a keyframe (true for each episode of a lerobot-written v3.0 file)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist, opaque=True)
        tb = Fraction(ist.time_base)
        half = Fraction(1, 2) / Fraction(ist.average_rate or 30)
        lo, hi = Fraction(start_s) - half, Fraction(end_s) - half
        shift = int(round(Fraction(start_s) / tb))
        written = 0
        for pkt in inp.demux(ist):
            if pkt.pts is None or pkt.dts is None:
                continue
            t = pkt.pts * tb
            if t < lo or t >= hi:
                continue
            if written == 0 and not pkt.is_keyframe:
                raise ValueError(f"{src}: the segment at {start_s} s does not start on a keyframe")
            pkt.pts -= shift
            pkt.dts -= shift
            pkt.stream = ost
            out.mux(pkt)
            written += 1
    return written


def datasets3_features(feature: Any) -> Any:
    """A `datasets` features dict as datasets 3.x (the v2.1 era, the fork's pin) writes it: datasets 4's
    `{"_type": "List", ...}` becomes `{"_type": "Sequence", ...}` (same Arrow type), recursively."""
    if isinstance(feature, list):
        return [datasets3_features(f) for f in feature]
    if not isinstance(feature, dict):
        return feature
    out = {k: datasets3_features(v) for k, v in feature.items()}
    if out.get("_type") == "List":
        out["_type"] = "Sequence"
    return out


def _v21_schema_metadata(table: pa.Table) -> pa.Table:
    """`table` with its `huggingface` schema metadata rewritten by `datasets3_features` (datasets 3.6 fails
    on "Feature type 'List' not found" otherwise)."""
    meta = dict(table.schema.metadata or {})
    if b"huggingface" not in meta:
        return table
    hf = json.loads(meta[b"huggingface"])
    if "info" in hf and "features" in hf["info"]:
        hf["info"]["features"] = datasets3_features(hf["info"]["features"])
    meta[b"huggingface"] = json.dumps(hf).encode()
    return table.replace_schema_metadata(meta)


def _episode_stats(v30_root: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """{episode: {feature: {stat: list}}} from the `stats/<feature>/<stat>` columns of meta/episodes."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted((v30_root / "meta" / "episodes").glob("*/*.parquet"))])
    stat_cols = [c for c in table.column_names if c.startswith("stats/")]
    episodes = table.column("episode_index").to_pylist()
    out: dict[int, dict[str, dict[str, Any]]] = {int(e): {} for e in episodes}
    for col in stat_cols:
        _, rest = col.split("/", 1)
        feature, stat = rest.rsplit("/", 1)
        for e, value in zip(episodes, table.column(col).to_pylist(), strict=True):
            if value is not None:
                out[int(e)].setdefault(feature, {})[stat] = value
    return out


def write_v21(v30_root: str | Path, root: str | Path, *, chunks_size: int = 1000) -> Path:
    """Rewrite the v3.0 dataset at `v30_root` as v2.1 at `root` (must not exist). Returns `root`."""
    v30_root, root = Path(v30_root), Path(root)
    if root.exists():
        raise FileExistsError(f"write_v21: {root} already exists")
    meta = load_meta(v30_root, v30_root.name)
    if meta.codebase_version != "v3.0":
        raise ValueError(f"write_v21 converts v3.0 datasets, but {v30_root} is {meta.codebase_version}")
    eps = meta.episodes
    # data: one parquet per episode, rows in index order, every column kept (image structs included)
    for rel in sorted(set(eps.data_file.tolist())):
        table = _v21_schema_metadata(pq.read_table(v30_root / rel))
        ep_col = table.column("episode_index")
        for e in np.unique(ep_col.to_numpy()).tolist():
            part = table.filter(pc.equal(ep_col, pa.scalar(e, ep_col.type)))
            path = root / V21_DATA_PATH.format(episode_chunk=e // chunks_size, episode_index=e)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, path)
    # videos: the episode's segment of the concatenated file
    for key in meta.video_keys:
        for p, e in enumerate(eps.episode_index.tolist()):
            start = float(eps.video_from_ts[key][p])
            end = start + int(eps.length[p]) / meta.fps
            dst = root / V21_VIDEO_PATH.format(episode_chunk=e // chunks_size, video_key=key, episode_index=e)
            n = remux_segment(v30_root / eps.video_file[key][p], dst, start, end)
            if n != int(eps.length[p]):
                raise ValueError(f"{key} episode {e}: remuxed {n} packets for {int(eps.length[p])} frames")
    # meta
    info = read_info(v30_root, v30_root.name)
    tasks_of_ep = _episode_tasks(v30_root)
    num_chunks = int(eps.episode_index.max()) // chunks_size + 1 if len(eps) else 0
    info.update(codebase_version="v2.1", data_path=V21_DATA_PATH,
                video_path=V21_VIDEO_PATH if meta.video_keys else None, chunks_size=chunks_size,
                total_chunks=num_chunks, total_videos=len(eps) * len(meta.video_keys))
    for k in ("data_files_size_in_mb", "video_files_size_in_mb"):
        info.pop(k, None)
    for ft in info["features"].values():
        ft["shape"] = list(ft["shape"])
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4), encoding="utf-8")
    _write_jsonl(root / "meta" / "episodes.jsonl",
                 [{"episode_index": e, "tasks": tasks_of_ep[e], "length": int(n)}
                  for e, n in zip(eps.episode_index.tolist(), eps.length.tolist(), strict=True)])
    _write_jsonl(root / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in sorted(meta.tasks.items())])
    stats = _episode_stats(v30_root)
    _write_jsonl(root / "meta" / "episodes_stats.jsonl",
                 [{"episode_index": e, "stats": stats[e]} for e in eps.episode_index.tolist()])
    return root


def _episode_tasks(v30_root: Path) -> dict[int, list[str]]:
    """{episode: [task strings]} from meta/episodes."""
    paths = sorted((v30_root / "meta" / "episodes").glob("*/*.parquet"))
    rows = pa.concat_tables([pq.read_table(p, columns=["episode_index", "tasks"]) for p in paths]).to_pylist()
    return {int(r["episode_index"]): list(r["tasks"]) for r in rows}
