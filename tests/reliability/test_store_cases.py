"""Reliability catalogue, the low-dim store's cache (issue 20): damaged cache files, temporary files of killed
processes, the size bound, file modes, entries of another user, and the suite's own cache use. Values are
compared with a plain pyarrow read of the data files (`reference`), never with fastmix's own output."""

from __future__ import annotations

import fcntl
import gc
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastmix.sources import cache_dir, store
from fastmix.sources.lerobot_source import LeRobotSource

pytestmark = pytest.mark.timeout(60)
NAME = "rel/tiny3"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh FASTMIX_CACHE per test; returns its low-dim store root."""
    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMIX_LOWDIM_STORE", raising=False)
    monkeypatch.delenv("FASTMIX_CACHE_MAX", raising=False)
    return tmp_path / "cache" / "lowdim"


@pytest.fixture(scope="module")
def twelve(rel_root) -> Path:
    """A v3.0 image-in-parquet dataset of 12 episodes x 4 frames (12 distinct one-episode selections)."""
    from fastmix.testing.synth import make_dataset

    return make_dataset(rel_root / "twelve", "rel/twelve", num_episodes=12, episode_length=4, cameras=("image",),
                        camera_shape=(8, 8, 3), use_videos=False, seed=12)


def reference(root: Path, episodes: list[int] | None = None) -> dict[str, np.ndarray]:
    """state / actions / index of the selected episodes, read with pyarrow → python lists → numpy."""
    out: dict[str, list] = {"state": [], "actions": [], "index": []}
    for p in sorted(root.glob("data/**/*.parquet")):
        t = pq.read_table(p)
        ep = np.array(t.column("episode_index").to_pylist())
        keep = np.ones(len(ep), bool) if episodes is None else np.isin(ep, episodes)
        for k in out:
            out[k].append(np.array(t.column(k).to_pylist())[keep])
    return {k: np.concatenate(v) for k, v in out.items()}


def check_values(src: LeRobotSource, ref: dict[str, np.ndarray]) -> None:
    got = src.gather_lowdim(np.arange(src.num_frames))
    assert src.num_frames == len(ref["index"])
    for k, want in ref.items():
        np.testing.assert_array_equal(got[k], want.astype(got[k].dtype).reshape(got[k].shape), err_msg=k)


def fp_dirs(cache: Path) -> list[Path]:
    return sorted(d for e in cache.iterdir() for d in e.iterdir() if d.is_dir())


def du(path: Path) -> int:
    """Bytes of every file under `path` (os.walk + lstat)."""
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


def open_and_drop(root: Path, name: str, **kw) -> None:
    src = LeRobotSource(name, root=root, **kw)
    del src
    gc.collect()


# ------------------------------------------------------------------------------------ damaged cache files
DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"this is not a numpy file at all " * 8),
    "bad_header": lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x76\x00" + b"{'descr': '<f4', 'shape': (oops".ljust(117) + b"\n"),
    "short": lambda p: np.save(p, np.zeros((2, 7), np.float32)),  # a whole .npy with 2 rows, not 18
}


@pytest.mark.parametrize("file, damage", [("col-state.npy", "empty"), ("col-state.npy", "garbage"),
                                          ("col-actions.npy", "bad_header"), ("file_row.npy", "empty"),
                                          ("col-actions.npy", "short")])
def test_damaged_cache_file_is_rebuilt_with_a_warning_naming_it(tiny3, cache, file, damage, no_leaks):
    open_and_drop(tiny3, NAME)
    (fp,) = fp_dirs(cache)
    target = fp / file
    DAMAGE[damage](target)
    with pytest.warns(RuntimeWarning, match="(?s)" + re.escape(str(target)) + r" is damaged.*'rel/tiny3'.*rebuilding"):
        src = LeRobotSource(NAME, root=tiny3)
    check_values(src, reference(tiny3))
    assert len(np.load(target, mmap_mode="r")) == 18  # the file was rewritten whole
    del src
    gc.collect()
    with warnings.catch_warnings():  # the repaired store opens silently
        warnings.simplefilter("error", RuntimeWarning)
        check_values(LeRobotSource(NAME, root=tiny3), reference(tiny3))


# ------------------------------------------------------------------------- temp files of killed processes
def test_temp_files_of_dead_processes_removed_at_next_open(tiny3, cache, no_leaks):
    open_and_drop(tiny3, NAME)
    (fp,) = fp_dirs(cache)
    entry = fp.parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        column_tmp = fp / f"{store.column_file('state')}.tmp-{dead.pid}-140245"  # a killed extension
        column_tmp.write_bytes(os.urandom(4 << 20))
        build_tmp = entry / f"{fp.name}.tmp-{dead.pid}-0a1b2c3d"  # a killed build
        build_tmp.mkdir()
        (build_tmp / "col-state.npy").write_bytes(os.urandom(1 << 20))
        json_tmp = entry / f"source.json.tmp-{dead.pid}-0a1b2c3d"
        json_tmp.write_text("{")
        in_progress = fp / f"{store.column_file('actions')}.tmp-{live.pid}-7"  # its writer is alive
        in_progress.write_bytes(b"x")
        src = LeRobotSource(NAME, root=tiny3)
        assert not column_tmp.exists() and not build_tmp.exists() and not json_tmp.exists()
        assert in_progress.exists()
        check_values(src, reference(tiny3))
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------------------- the size bound
def test_cache_bounded_lru_keeps_entries_in_use_and_evicted_ones_reopen(twelve, cache, monkeypatch):
    """12 one-episode selections under FASTMIX_CACHE_MAX = 4.5 entries: after every open the cache is within
    the bound; an entry kept open by this process and one whose lock is held (a builder elsewhere) stay; the
    least recently used entry goes first; every evicted selection opens again with the right values."""
    name = "rel/twelve"
    entry = {i: store.entry_dir(twelve, np.array([i]), name) for i in range(12)}
    first = LeRobotSource(name, root=twelve, episodes=[0])  # kept open: in use
    size = du(cache)
    bound = int(4.5 * size)
    monkeypatch.setenv("FASTMIX_CACHE_MAX", str(bound))
    open_and_drop(twelve, name, episodes=[1])
    held = cache_dir.lock_entry(entry[1], fcntl.LOCK_EX)  # as a builder in another process
    try:
        for i in (2, 3):
            open_and_drop(twelve, name, episodes=[i])
        open_and_drop(twelve, name, episodes=[2])  # 2 is now used more recently than 3
        open_and_drop(twelve, name, episodes=[4])
        assert entry[2].exists() and not entry[3].exists()  # least recently used first
        for i in range(5, 12):
            open_and_drop(twelve, name, episodes=[i])
            assert du(cache) <= bound, (i, du(cache), bound)
            assert entry[0].exists() and entry[1].exists() and entry[i].exists()
        assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 4
    finally:
        os.close(held)
    check_values(first, reference(twelve, [0]))
    for i in range(12):  # evicted ones are rebuilt
        src = LeRobotSource(name, root=twelve, episodes=[i])
        check_values(src, reference(twelve, [i]))
        del src
        gc.collect()
        assert du(cache) <= bound


# ---------------------------------------------------------------------------------------------- file modes
def test_cache_files_0600_and_directories_0700_whatever_the_umask(tiny3, cache, no_leaks):
    from fastmix.sources.lowdim import load_lowdim
    from fastmix.sources.meta import load_meta

    old = os.umask(0o022)
    try:
        src = LeRobotSource(NAME, root=tiny3, lowdim_keys=[])
        meta = load_meta(tiny3, NAME)
        table = load_lowdim(meta, np.arange(len(meta.episodes)), keys=[])
        table.values["state"]  # added to the store now (an extension)
    finally:
        os.umask(old)
    top = cache.parent  # FASTMIX_CACHE itself was created by the store
    modes = {}
    for d, _dirs, files in os.walk(top):
        modes[d] = stat.S_IMODE(os.lstat(d).st_mode)
        for f in files:
            modes[os.path.join(d, f)] = stat.S_IMODE(os.lstat(os.path.join(d, f)).st_mode)
    assert any(p.endswith(store.column_file("state")) for p in modes)
    bad = {p: oct(m) for p, m in modes.items() if m != (0o700 if os.path.isdir(p) else 0o600)}
    assert not bad, bad
    del src, table


# ----------------------------------------------------------------------------------- another user's entry
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the test chowns a store entry to another uid")
@pytest.mark.parametrize("what", ["entry", "file"])
def test_entry_of_another_user_is_never_read(tiny3, cache, what, monkeypatch, no_leaks):
    """Another user's entry (or one file in an entry) holding other values than the data: never read, a
    RuntimeWarning names it, a private `-u<uid>` entry serves the right values; never evicted nor cleared."""
    open_and_drop(tiny3, NAME)
    (fp,) = fp_dirs(cache)
    entry = fp.parent
    planted = fp / store.column_file("state")
    np.save(planted, reference(tiny3)["state"].astype(np.float32) + 100.0)  # same shape, other values
    foreign = entry if what == "entry" else planted
    for p in [entry, *entry.rglob("*")] if what == "entry" else [planted]:
        os.chown(p, 12345, 12345)
    watched = [p for p in entry.rglob("*") if p.is_file()] if what == "entry" else [planted]
    before = {p: p.read_bytes() for p in watched}
    with pytest.warns(RuntimeWarning, match=re.escape(str(foreign)) + " is owned by uid 12345"):
        src = LeRobotSource(NAME, root=tiny3)
    check_values(src, reference(tiny3))
    own = entry.with_name(f"{entry.name}-u{os.geteuid()}")
    assert own.is_dir() and own.stat().st_uid == os.geteuid()
    assert {p: p.read_bytes() for p in watched} == before  # nothing of it changed
    assert what == "file" or {p for p in entry.rglob("*") if p.is_file()} == set(watched)  # nothing written in it
    del src
    gc.collect()
    monkeypatch.setenv("FASTMIX_CACHE_MAX", "1")  # evict everything evictable
    open_and_drop(tiny3, NAME, episodes=[1])
    from fastmix import cli

    assert cli.main(["cache", "clear"]) == 0
    if what == "entry":  # this user's own entry (with another user's file in it) may go; another user's never
        assert {p: p.read_bytes() for p in watched} == before


# ---------------------------------------------------------------------------------- the suite's own cache
def test_the_suite_leaves_no_store_entry_in_the_users_cache(tiny3, tmp_path):
    """Opened with the suite's environment (no FASTMIX_CACHE of the test's own): the entry goes to the session's
    temporary cache, never to ~/.cache/fastmix/lowdim."""
    user = Path.home() / ".cache" / "fastmix" / "lowdim"
    name = f"leakcheck_{secrets.token_hex(4)}"
    root = tmp_path / name
    shutil.copytree(tiny3, root)
    try:
        src = LeRobotSource(name, root=root)
        check_values(src, reference(root))
        leaked = sorted(user.glob(f"{name}-*"))
        assert not leaked, f"the test suite wrote {leaked} into the user's cache"
        assert sorted(store.cache_root().glob(f"{name}-*")), "the store entry is not in the session's cache"
        assert not store.cache_root().resolve().is_relative_to(Path.home().resolve() / ".cache")
    finally:
        for p in user.glob(f"{name}-*"):
            shutil.rmtree(p, ignore_errors=True)


def test_the_suite_redirects_other_user_caches():
    """XDG_CACHE_HOME (Hugging Face datasets' cache that lerobot's LeRobotDataset fills, matplotlib, ...) points
    into the session's temporary directory too."""
    import datasets.config

    home_cache = Path.home().resolve() / ".cache"
    assert not Path(os.environ.get("XDG_CACHE_HOME", home_cache)).resolve().is_relative_to(home_cache)
    assert not Path(datasets.config.HF_DATASETS_CACHE).resolve().is_relative_to(home_cache)
