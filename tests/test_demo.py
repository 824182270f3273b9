"""`fastmix demo` end to end (few steps) in a temporary FASTMIX_HOME, plus its pieces: the chi-square check,
data reuse / regeneration via the completion marker, and the summary plot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastmix.demo import spec
from fastmix.demo.main import check_mixture
from fastmix.demo.plots import plot_summary

DEMO_TIMEOUT_S = 280


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """`fastmix demo` (through the CLI) with a short run in a fresh FASTMIX_HOME."""
    home = tmp_path_factory.mktemp("fastmix_home")
    out = home / "out"
    env = dict(os.environ, FASTMIX_HOME=str(home), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "fastmix", "demo", "--steps", "40", "--batch-size", "16", "--num-workers", "1",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    return proc, home, out


def test_demo_runs_end_to_end(demo_run: tuple[subprocess.CompletedProcess, Path, Path]) -> None:
    proc, home, out = demo_run
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    png = out / "fastmix_demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every dataset generated with its completion marker, norm stats written
    from fastmix.demo.data import MARKER

    for ds in spec.DEMO_DATASETS:
        marker = home / "lerobot" / ds.repo_id / MARKER
        assert json.loads(marker.read_text())["dataset"]["repo_id"] == ds.repo_id
    assert list((home / "assets").rglob("norm_stats.json")), "norm stats were not written"
    # the printed shares: observed close to expected, chi-square p > 0.01, and they sum to 1
    rows = re.findall(r"^\s+(\S+)\s+(0\.\d{4})\s+(0\.\d{4})\s+(\d+)\s*$", proc.stdout, flags=re.M)
    assert [r[0] for r in rows] == [d.repo_id for d in spec.DEMO_DATASETS], proc.stdout
    expected = np.array([float(r[1]) for r in rows])
    observed = np.array([float(r[2]) for r in rows])
    samples = np.array([int(r[3]) for r in rows])
    assert samples.sum() == 40 * 16
    assert expected.sum() == pytest.approx(1.0, abs=1e-3) and observed.sum() == pytest.approx(1.0, abs=1e-3)
    sizes = np.array([d.num_episodes * d.episode_length for d in spec.DEMO_DATASETS], dtype=float)
    mass = sizes * np.array(spec.DEMO_WEIGHTS)
    np.testing.assert_allclose(expected, mass / mass.sum(), atol=1e-4)  # per_sample: share ∝ weight × frames
    np.testing.assert_allclose(observed, expected, atol=0.08)
    p = float(re.search(r"p = ([0-9.]+)", proc.stdout).group(1))
    assert p > 0.01
    assert "samples/s" in log and "data-wait" in log


def test_demo_reuses_complete_data_and_regenerates_incomplete(
        demo_run: tuple[subprocess.CompletedProcess, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from fastmix.demo import data

    _, home, _ = demo_run
    monkeypatch.setenv("FASTMIX_HOME", str(home))
    assert all(data.is_complete(d) for d in spec.DEMO_DATASETS)
    logs: list[str] = []
    data.ensure_demo_data(log=logs.append)
    assert all("present" in line for line in logs)
    # an interrupted write (no marker) or a spec change (marker differs) is regenerated
    small = spec.DEMO_DATASETS[-1]
    (data.dataset_root(small) / data.MARKER).unlink()
    assert not data.is_complete(small)
    changed = spec.DemoDataset(small.repo_id, small.num_episodes + 1, small.episode_length, small.use_videos,
                               small.task, small.seed)
    monkeypatch.setattr(spec, "DEMO_DATASETS", (changed,))
    data.ensure_demo_data(log=logs.append)
    assert "generated" in logs[-1] and data.is_complete(changed)


def test_check_mixture_detects_a_wrong_mix() -> None:
    names = ["a", "b", "c"]
    expected = np.array([0.2, 0.3, 0.5])
    good = check_mixture(names, expected, np.array([2010, 2985, 5005]))
    assert good.ok and good.p_value > 0.5
    np.testing.assert_allclose(good.observed, [0.201, 0.2985, 0.5005])
    bad = check_mixture(names, expected, np.array([3000, 3000, 4000]))
    assert not bad.ok and bad.p_value < 1e-6
    # a zero-share dataset that was drawn fails even though the rest fits
    zero = check_mixture(names, np.array([0.4, 0.6, 0.0]), np.array([400, 600, 1]))
    assert not zero.ok
    assert "DISAGREE" in zero.format() and "agree" in good.format()


def test_plot_summary_writes_a_png(tmp_path: Path) -> None:
    steps = 30
    path = plot_summary(tmp_path / "sub" / "s.png", losses=np.linspace(1, 0.1, steps).tolist(),
                        samples_per_s=[100.0] * steps, data_wait=[0.2] * steps, names=["x/a", "x/b"],
                        expected=[0.25, 0.75], observed=[0.26, 0.74])
    assert path.exists() and path.stat().st_size > 10_000
