"""The low-dim store (fastmix.sources.store, load_lowdim): mapped columns equal an independent pyarrow read of the
data files; reuse, invalidation, key subsets, concurrency, read-only fallbacks, pickling, no fds held."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastmix.errors import ConfigError, DatasetFormatError
from fastmix.sources import lowdim, store
from fastmix.sources.lerobot_source import LeRobotSource
from fastmix.sources.lowdim import load_lowdim
from fastmix.sources.meta import load_meta

INDEX = ("timestamp", "frame_index", "episode_index", "index", "task_index")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("FASTMIX_CACHE", str(d))
    monkeypatch.delenv("FASTMIX_LOWDIM_STORE", raising=False)
    return d / "lowdim"


def reference(root: Path, episodes: list[int] | None = None) -> dict[str, np.ndarray]:
    """Every numeric column of the data files read with plain pyarrow → python lists → numpy, rows in sorted-file
    order, filtered to `episodes`; plus file_id / file_row / ep_pos computed by hand."""
    files = sorted(p for p in root.glob("data/**/*.parquet"))
    all_eps = sorted({e for p in files for e in pq.read_table(p, columns=["episode_index"])
                      .column("episode_index").to_pylist()})
    out: dict[str, list] = {}
    used = []
    for p in files:
        t = pq.read_table(p)
        ep = np.array(t.column("episode_index").to_pylist())
        keep = np.ones(len(ep), bool) if episodes is None else np.isin(ep, episodes)
        if not keep.any():
            continue
        fid = len(used)
        used.append(str(p))
        for name in t.column_names:
            if name in ("image", "wrist_image"):
                continue
            out.setdefault(name, []).append(np.array(t.column(name).to_pylist())[keep])
        out.setdefault("file_id", []).append(np.full(int(keep.sum()), fid))
        out.setdefault("file_row", []).append(np.flatnonzero(keep))
        out.setdefault("ep_pos", []).append(np.searchsorted(all_eps, ep[keep]))
    ref = {k: np.concatenate(v) for k, v in out.items()}
    ref["data_files"] = np.array(used)
    return ref


def check_equal(table, ref: dict[str, np.ndarray], keys) -> None:
    for k in keys:
        got = table.values[k]
        want = ref[k].astype(np.float32) if k == "timestamp" else ref[k]
        if k in INDEX:
            assert got.dtype == (np.float32 if k == "timestamp" else np.int64), k
        np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=k)
    np.testing.assert_array_equal(table.file_id, ref["file_id"])
    np.testing.assert_array_equal(table.file_row, ref["file_row"])
    np.testing.assert_array_equal(table.ep_pos, ref["ep_pos"])
    assert table.data_files == ref["data_files"].tolist()
    order = np.argsort(ref["index"], kind="stable")
    np.testing.assert_array_equal(table.sorted_index, ref["index"][order])
    np.testing.assert_array_equal(table.sorted_pos, order)


def fp_dirs(cache: Path) -> list[Path]:
    return sorted(d for e in cache.iterdir() for d in e.iterdir() if d.is_dir())


@pytest.mark.parametrize("ds", ["video_ds", "image_ds", "v21_ds"])
@pytest.mark.parametrize("episodes", [None, [1, 4, 5, 7]])
def test_store_matches_pyarrow_reference(ds, episodes, request, cache):
    root = request.getfixturevalue(ds)
    meta = load_meta(root, ds)
    pos = np.arange(len(meta.episodes)) if episodes is None else np.searchsorted(meta.episodes.episode_index, episodes)
    table = load_lowdim(meta, pos)
    ref = reference(root, episodes)
    check_equal(table, ref, [*meta.lowdim_keys, *INDEX])
    assert not table.values["state"].flags.writeable
    (fp,) = fp_dirs(cache)  # one store entry, one fingerprint directory, nothing in the dataset dir
    assert (fp / store.column_file("state")).is_file() and (fp / "meta.json").is_file()


def test_warm_open_reuses_without_rebuilding(video_ds, cache, monkeypatch):
    meta = load_meta(video_ds, "v")
    first = load_lowdim(meta, np.arange(len(meta.episodes)))
    (fp,) = fp_dirs(cache)
    stamp = {p.name: p.stat().st_mtime_ns for p in fp.iterdir()}
    monkeypatch.setattr(lowdim, "_build", lambda *a: pytest.fail("warm open rebuilt the store"))
    monkeypatch.setattr(lowdim, "_fill", lambda *a, **k: pytest.fail("warm open read parquet"))
    second = load_lowdim(meta, np.arange(len(meta.episodes)))
    assert {p.name: p.stat().st_mtime_ns for p in fp.iterdir()} == stamp
    for k in first.values:
        np.testing.assert_array_equal(first.values[k], second.values[k])


def test_incomplete_store_dir_is_rebuilt(video_ds, cache):
    meta = load_meta(video_ds, "v")
    load_lowdim(meta, np.arange(len(meta.episodes)))
    (fp,) = fp_dirs(cache)
    (fp / "meta.json").unlink()  # as if a store directory had been damaged
    (fp / store.column_file("state")).write_bytes(b"garbage")
    table = load_lowdim(meta, np.arange(len(meta.episodes)))
    check_equal(table, reference(video_ds), ["state", "actions", *INDEX])
    assert (fp / "meta.json").is_file()


def open_descriptors() -> dict[int, str]:
    """This process's open file descriptors: number -> what it refers to (/proc/self/fd)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return out


def test_dataset_dir_untouched_and_no_fds_held(video_ds, cache):
    before = {str(p): p.stat().st_mtime_ns for p in video_ds.rglob("*")}
    gc.collect()  # earlier tests' garbage (an mmap closes its descriptor when collected) must not count here
    fds = open_descriptors()
    src = LeRobotSource("v", root=video_ds)
    # maps hold no descriptor: no descriptor opened meanwhile refers to the dataset or the store (descriptors of
    # other threads, e.g. an earlier test's, and ones closed meanwhile do not count: sets of targets compared)
    new = set(open_descriptors().items()) - set(fds.items())
    held = [(fd, target) for fd, target in new if target.startswith((str(video_ds), str(cache.parent)))]
    assert held == [], new
    assert fp_dirs(cache)  # the store was built in this cache
    assert src.gather_lowdim(np.arange(5))["state"].shape == (5, 8)
    assert {str(p): p.stat().st_mtime_ns for p in video_ds.rglob("*")} == before


def test_changed_data_file_rebuilds(video_ds, tmp_path, cache):
    root = tmp_path / "ds"
    shutil.copytree(video_ds, root)
    meta = load_meta(root, "copy")
    old = load_lowdim(meta, np.arange(len(meta.episodes)))
    old_state = np.array(old.values["state"])
    (old_fp,) = fp_dirs(cache)
    data = sorted(root.glob("data/*/*.parquet"))[0]
    t = pq.read_table(data)
    state = np.array(t.column("state").to_pylist(), dtype=np.float32) + 1.0
    t = t.set_column(t.column_names.index("state"), "state",
                     pa.array(list(state), type=t.schema.field("state").type))
    pq.write_table(t, data)
    new = load_lowdim(load_meta(root, "copy"), np.arange(len(meta.episodes)))
    check_equal(new, reference(root), ["state", "actions", *INDEX])
    assert not np.array_equal(np.asarray(new.values["state"]), old_state)
    np.testing.assert_array_equal(old.values["state"], old_state)  # old maps stay valid
    (new_fp,) = fp_dirs(cache)  # stale fingerprint dir removed
    assert new_fp != old_fp


def test_only_requested_keys_materialized_then_extended(video_ds, cache):
    meta = load_meta(video_ds, "v")
    table = load_lowdim(meta, np.arange(len(meta.episodes)), keys=[])
    (fp,) = fp_dirs(cache)
    names = {p.name for p in fp.glob("col-*.npy")}
    assert names == {store.column_file(k) for k in ["actions", *INDEX]}  # action + index keys only
    assert "state" in table.values
    state = table.values["state"]  # first read extends the store
    assert (fp / store.column_file("state")).is_file()
    np.testing.assert_array_equal(state, reference(video_ds)["state"])
    again = load_lowdim(meta, np.arange(len(meta.episodes)), keys=["state"])
    np.testing.assert_array_equal(again.values["state"], state)
    with pytest.raises(ConfigError, match="'nope'"):
        load_lowdim(meta, np.arange(len(meta.episodes)), keys=["nope"])


def test_source_lowdim_keys_kwarg(video_ds, cache):
    src = LeRobotSource("v", root=video_ds, lowdim_keys=["state"])
    np.testing.assert_array_equal(src.gather_lowdim(np.arange(10))["state"], reference(video_ds)["state"][:10])


def test_unwritable_cache_falls_back_to_memory(video_ds, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("FASTMIX_CACHE", str(blocker / "cache"))  # cannot be created
    meta = load_meta(video_ds, "v")
    with pytest.warns(RuntimeWarning, match="into memory"):
        table = load_lowdim(meta, np.arange(len(meta.episodes)))
    check_equal(table, reference(video_ds), ["state", "actions", *INDEX])
    assert table.values["state"].flags.writeable  # plain in-memory arrays


def test_read_only_cache_with_complete_store_maps_it(video_ds, monkeypatch, recwarn):
    meta = load_meta(video_ds, "v")
    load_lowdim(meta, np.arange(len(meta.episodes)))

    def refuse(*a, **k):
        raise PermissionError("read-only")

    monkeypatch.setattr(store, "locked", refuse)
    monkeypatch.setattr(store.FileColumn, "__init__", refuse)
    table = load_lowdim(meta, np.arange(len(meta.episodes)))
    assert not [w for w in recwarn if "into memory" in str(w.message)]
    check_equal(table, reference(video_ds), ["state", "actions", *INDEX])


def test_disabled_store_loads_in_memory(video_ds, cache, monkeypatch):
    monkeypatch.setenv("FASTMIX_LOWDIM_STORE", "0")
    meta = load_meta(video_ds, "v")
    check_equal(load_lowdim(meta, np.arange(len(meta.episodes))), reference(video_ds), ["state", *INDEX])
    assert not cache.exists()


def test_pickle_reopens_the_store(video_ds):
    meta = load_meta(video_ds, "v")
    table = load_lowdim(meta, np.arange(len(meta.episodes)))
    blob = pickle.dumps(table)
    assert len(blob) < table.values["state"].nbytes + table.file_row.nbytes  # arrays are not copied
    back = pickle.loads(blob)
    for k in table.values:
        np.testing.assert_array_equal(back.values[k], table.values[k])
    np.testing.assert_array_equal(back.sorted_pos, table.sorted_pos)


def test_row_count_mismatch_names_the_file(v21_ds, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(v21_ds, root)
    data = sorted(root.glob("data/*/*.parquet"))[2]
    t = pq.read_table(data)
    pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), data)  # one duplicated row
    with pytest.raises(DatasetFormatError, match="episode 2 .*holds 31 rows but the metadata says length 30") as e:
        LeRobotSource("broken", root=root)
    assert str(data) in str(e.value) and "'broken'" in str(e.value)


def _open_in_child(root: str, cache_dir: str, log: str, q) -> None:
    os.environ["FASTMIX_CACHE"] = cache_dir
    from fastmix.sources import lowdim as ld

    real = ld._build

    def logged(*a, **k):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*a, **k)

    ld._build = logged
    meta = load_meta(Path(root), "v")
    t = ld.load_lowdim(meta, np.arange(len(meta.episodes)))
    q.put(float(np.asarray(t.values["state"], dtype=np.float64).sum()))


def test_concurrent_openers_build_once(video_ds, tmp_path, cache):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    log = tmp_path / "builds.log"
    procs = [ctx.Process(target=_open_in_child, args=(str(video_ds), os.environ["FASTMIX_CACHE"], str(log), q))
             for _ in range(3)]
    for p in procs:
        p.start()
    sums = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1  # one builder; the others waited and mapped its files
    assert len(set(sums)) == 1
    assert sums[0] == pytest.approx(float(reference(video_ds)["state"].astype(np.float64).sum()))
    (entry,) = cache.iterdir()
    assert [p.name for p in entry.iterdir() if ".tmp-" in p.name] == []


def test_release_pages_keeps_the_data_and_skips_memory_arrays(tmp_path):
    """release_pages drops a store mapping's pages from the process (values read back unchanged from the page
    cache) and never touches an in-memory array (DONTNEED on anonymous memory would zero it)."""
    from fastmix.sources import store

    values = np.arange(1 << 20, dtype=np.int64) * 7
    path = tmp_path / "col.npy"
    np.save(path, values)
    mapped = store.map_npy(path)
    assert int(mapped.sum()) == int(values.sum())  # pages faulted in
    assert store.release_pages([mapped]) >= mapped.nbytes
    np.testing.assert_array_equal(mapped, values)
    in_memory = values.copy()
    assert store.release_pages([in_memory, mapped[:0]]) == 0
    np.testing.assert_array_equal(in_memory, values)


# -- the cache directory's policy (fastmix.sources.cache_dir) ---------------------------------------------
def test_cache_max_sizes_and_bad_value(video_ds, monkeypatch):
    from fastmix.sources import cache_dir

    sizes = {"4096": 4096, "500M": 500 << 20, "2G": 2 << 30, "2gb": 2 << 30, "1.5GiB": 3 << 29, " 64 k ": 64 << 10,
             "none": None}
    for text, want in sizes.items():
        assert cache_dir.parse_size(text) == want, text
    monkeypatch.delenv("FASTMIX_CACHE_MAX", raising=False)
    assert cache_dir.cache_max() == 20 << 30
    meta = load_meta(video_ds, "v")
    for bad in ("2X", "-1", "G"):
        monkeypatch.setenv("FASTMIX_CACHE_MAX", bad)
        with pytest.raises(ConfigError, match=f"FASTMIX_CACHE_MAX='{bad}' is not a size"):
            load_lowdim(meta, np.arange(len(meta.episodes)))


def _hold_open(root: str, cache_dir: str, episodes: list[int], ready) -> None:
    import time

    os.environ["FASTMIX_CACHE"] = cache_dir
    meta = load_meta(Path(root), "v")
    table = load_lowdim(meta, np.searchsorted(meta.episodes.episode_index, episodes))
    ready.set()
    time.sleep(120)  # killed by the test before
    del table


def test_entry_of_a_live_process_is_not_evicted_and_a_dead_ones_is(video_ds, cache, monkeypatch):
    """A process that maps an entry keeps it (registered in the entry); once that process is SIGKILLed its
    registration is stale and the entry goes at the next eviction."""
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_open, args=(str(video_ds), os.environ["FASTMIX_CACHE"], [0], ready))
    child.start()
    try:
        assert ready.wait(120)
        held = store.entry_dir(video_ds, np.array([0]), "v")
        assert [p.name for p in held.glob(".user-*")] and held.is_dir()
        monkeypatch.setenv("FASTMIX_CACHE_MAX", "1")  # evict whatever may be evicted
        meta = load_meta(video_ds, "v")
        mine = load_lowdim(meta, np.array([1]))
        assert held.is_dir()  # in use by the child
        child.kill()
        child.join(30)
        del mine
        gc.collect()
        load_lowdim(meta, np.array([2]))
        assert not held.exists()  # its user is dead
        np.testing.assert_array_equal(load_lowdim(meta, np.array([0])).values["state"],
                                      reference(video_ds, [0])["state"])  # and it reopens
    finally:
        if child.is_alive():
            child.kill()
        child.join(30)


def test_registration_lasts_as_long_as_the_table(video_ds, cache):
    meta = load_meta(video_ds, "v")
    table = load_lowdim(meta, np.arange(len(meta.episodes)))
    entry = store.entry_dir(video_ds, meta.episodes.episode_index, "v")
    again = load_lowdim(meta, np.arange(len(meta.episodes)))
    (reg,) = entry.glob(f".user-{os.getpid()}-*")
    del table
    gc.collect()
    assert reg.exists()  # the second table still maps it
    del again
    gc.collect()
    assert not reg.exists()
    assert (entry / ".used").is_file()
