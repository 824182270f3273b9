"""`fastmix COMMAND`: bad input is one `fastmix COMMAND: error: ...` line and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
