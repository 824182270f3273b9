"""Statistical equivalence to WeightedRandomSampler: passes when it should, fails on wrong weights (power)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from fastmix import equivalence
from fastmix.equivalence import check_equivalence, frame_bins, random_frame_weights
from fastmix.sampler import MixtureSampler

DRAWS = 200_000


def test_two_datasets_pass() -> None:
    r = check_equivalence([10000, 1000], [1.0, 10.0], draws=DRAWS, seed=0)
    assert r.passed, r.format()
    assert len(r.tests) == 6 and all(0 <= t.p_value <= 1 for t in r.tests)
    np.testing.assert_allclose(r.expected_shares, [0.5, 0.5])


def test_five_datasets_with_per_frame_weights_pass() -> None:
    sizes = [3000, 500, 1200, 50, 800]
    r = check_equivalence(sizes, [1.0, 4.0, 0.5, 20.0, 2.0], frame_weights=random_frame_weights(sizes, 1),
                          draws=DRAWS, seed=1)
    assert r.passed, r.format()


def test_per_dataset_weighting_passes() -> None:
    r = check_equivalence([5000, 200, 40], [1.0, 1.0, 2.0], weighting="per_dataset", draws=DRAWS, seed=2)
    assert r.passed, r.format()


@pytest.mark.parametrize("wrong", [
    dict(dataset_weights=[1.0, 10.0], weighting="per_dataset"),  # wrong semantics
    dict(dataset_weights=[1.0, 11.0]),  # 10 % too much weight on dataset 1
])
def test_wrong_weights_fail(wrong: dict) -> None:
    sampler = MixtureSampler([10000, 1000], seed=0, **wrong)
    r = check_equivalence([10000, 1000], [1.0, 10.0], draws=DRAWS, seed=0, sampler=sampler)
    assert not r.passed
    by_name = {t.name: t.p_value for t in r.tests}
    assert by_name["fastmix vs expected (datasets)"] < 1e-6
    assert by_name["fastmix vs reference (datasets)"] < 1e-6
    assert by_name["reference vs expected (datasets)"] > 1e-3  # the reference itself is fine
    assert "verdict: FAIL" in r.format()


def test_wrong_frame_weights_fail() -> None:
    sizes = [2000, 2000]
    fw = random_frame_weights(sizes, 3)
    flipped = [fw[0][::-1].copy(), fw[1]]  # same dataset shares, frames reweighted
    sampler = MixtureSampler(sizes, frame_weights=flipped, seed=0)
    r = check_equivalence(sizes, frame_weights=fw, draws=DRAWS, seed=0, sampler=sampler)
    assert not r.passed
    assert {t.name: t.p_value for t in r.tests}["fastmix vs expected (frame bins)"] < 1e-6


def test_frame_bins_expect_at_least_five() -> None:
    p = np.random.default_rng(0).pareto(1.5, 20000)
    p /= p.sum()
    bins = frame_bins(p, 50_000, max_bins=1000)
    expected = np.bincount(bins, weights=p * 50_000)
    assert (expected >= 5).all() and bins.max() < 1000 and (np.diff(bins) >= 0).all()


def test_cli_exit_status_and_json(capsys) -> None:
    parser = argparse.ArgumentParser()
    equivalence.add_arguments(parser)
    args = parser.parse_args(["--sizes", "1000", "100", "--weights", "1", "10", "--draws", "50000", "--json"])
    assert equivalence.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "PASS" and out["draws"] == 50000 and len(out["tests"]) == 6
    args = parser.parse_args(["--sizes", "300", "200", "100", "--frame-weights-seed", "4", "--draws", "50000"])
    assert equivalence.run(args) == 0
    assert "verdict: PASS" in capsys.readouterr().out
