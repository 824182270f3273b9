"""`fastmix COMMAND`: bad input is one `fastmix COMMAND: error: ...` line and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmix.demo.configs  # noqa: F401  (registers the demo configs)
from fastmix import cli
from fastmix.openpi import config as C
from fastmix.openpi import registry as R

BAD_INPUT = [
    (["verify", "no_such_cfg"], "Config 'no_such_cfg' not found."),
    (["compute-norm-stats", "no_such_cfg"], "Config 'no_such_cfg' not found."),
    (["equivalence", "--sizes", "10", "5", "--draws", "0"], "draws=0"),
    (["equivalence", "--sizes", "10", "0"], "dataset_sizes"),
    (["equivalence", "--sizes", "10", "5", "--weights", "1", "-1"], "-1"),
    (["demo", "--steps", "0"], "--steps and --batch-size must be >= 1"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_error_line(argv, message, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastmix {argv[0]}: error: ") and message in err, err
    assert "Traceback" not in err


def test_malformed_norm_stats_file_is_named_not_a_traceback(tmp_path, capsys) -> None:
    """A norm_stats.json that is not openpi's format used to escape as a bare ValueError."""
    (tmp_path / "assets" / "shared").mkdir(parents=True)
    bad = tmp_path / "assets" / "shared" / "norm_stats.json"
    bad.write_text('{"stats": {}}')
    cfg = R.register(C.TrainConfig(
        name="cli_bad_stats", data=C.MultiDatasetLiberoDataConfig(
            repo_ids=["fake/a"], assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets"), asset_id="shared"))))
    try:
        assert cli.main(["compute-norm-stats", cfg.name]) == 2
    finally:
        R.unregister(cfg.name)
    err = capsys.readouterr().err
    assert f"malformed norm stats file {bad}" in err and "Traceback" not in err


def test_the_installed_entry_point_prints_no_traceback() -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *sys.path]))
    res = subprocess.run([sys.executable, "-m", "fastmix", "equivalence", "--sizes", "3", "--draws", "-5"],
                         capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == "fastmix equivalence: error: draws must be an integer >= 1, got draws=-5"


def _du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


def test_cache_list_and_clear(video_ds, image_ds, tmp_path, monkeypatch, capsys) -> None:
    """`fastmix cache list` shows each entry (dataset, size, last use, in use, root, entry directory); `clear
    --dataset` removes only that dataset's entries, `clear` every entry no live process uses, saying what it
    removed and kept."""
    import gc

    from fastmix.sources import store
    from fastmix.sources.lerobot_source import LeRobotSource

    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMIX_CACHE_MAX", raising=False)
    a = LeRobotSource("fastmix-test/video_ds", root=video_ds, episodes=[0, 1])
    b = LeRobotSource("fastmix-test/image_ds", root=image_ds, episodes=[2])
    entry_a = store.entry_dir(video_ds, np.array([0, 1]), "fastmix-test/video_ds")
    entry_b = store.entry_dir(image_ds, np.array([2]), "fastmix-test/image_ds")
    assert entry_a.is_dir() and entry_b.is_dir()

    assert cli.main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert f"low-dim store {store.cache_root()} (bound 20.0 GiB, FASTMIX_CACHE_MAX): 2 entries" in out
    for name, root, entry in [("fastmix-test/video_ds", video_ds, entry_a), ("fastmix-test/image_ds", image_ds, entry_b)]:
        (line,) = [ln for ln in out.splitlines() if ln.startswith(name)]
        assert os.path.realpath(root) in line and str(entry) in line and "in use" in line
        assert f"{_du(entry) / 1024:.1f} KiB" in line

    del a
    gc.collect()
    assert cli.main(["cache", "clear", "--dataset", "fastmix-test/video_ds"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 entry" in out and str(entry_a) in out and str(entry_b) not in out
    assert not entry_a.exists() and entry_b.is_dir()

    assert cli.main(["cache", "clear"]) == 0  # b is still open in this process
    out = capsys.readouterr().out
    assert "removed 0 entries" in out and "kept (in use by a live process)" in out and str(entry_b) in out
    assert entry_b.is_dir()
    np.testing.assert_array_equal(b.gather_lowdim(np.arange(3))["index"], [60, 61, 62])  # still served

    del b
    gc.collect()
    assert cli.main(["cache", "clear", "--dataset", str(image_ds)]) == 0  # by root directory
    assert "removed 1 entry" in capsys.readouterr().out and not entry_b.exists()
    assert cli.main(["cache", "list"]) == 0
    assert ": 0 entries" in capsys.readouterr().out


@pytest.mark.parametrize("argv, env, message", [
    (["cache", "clear", "--dataset", "nobody/nothing"], None, "no low-dim store entry of dataset 'nobody/nothing'"),
    (["cache", "list"], "20 apples", "FASTMIX_CACHE_MAX='20 apples' is not a size"),
])
def test_cache_bad_input_is_one_error_line(argv, env, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))
    if env is None:
        monkeypatch.delenv("FASTMIX_CACHE_MAX", raising=False)
    else:
        monkeypatch.setenv("FASTMIX_CACHE_MAX", env)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastmix cache: error: ") and message in err and "Traceback" not in err, err
