"""Statistical helpers shared by `fastmix equivalence` (`fastmix.tools.equivalence`) and its check of a mixture
config (`fastmix.tools.equivalence_mixture`): chi-square goodness of fit with pooling of small categories, the
two-sample (homogeneity) test, the coverage test of never-drawn frames, and the reference draws of torch's
`WeightedRandomSampler`."""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fastmix.errors import ConfigError

DEFAULT_ALPHA = 1e-3  # family-wise false-alarm rate of a whole check
MIN_EXPECTED = 5.0  # smallest expected count of a chi-square category


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """`alpha` as a float: a significance level, a real number strictly between 0 and 1. Otherwise ConfigError
    "`name` must be a number between 0 and 1 (exclusive), got name=value"."""
    ok = isinstance(alpha, (numbers.Real, np.floating, np.integer)) and not isinstance(alpha, (bool, np.bool_))
    if not (ok and math.isfinite(alpha) and 0.0 < float(alpha) < 1.0):
        raise ConfigError(f"{name} must be a number between 0 and 1 (exclusive; a significance level such as "
                          f"{DEFAULT_ALPHA:g}), got {name}={alpha!r}")
    return float(alpha)


@dataclass
class TestResult:
    """One test: chi-square `statistic` with `dof` degrees of freedom, or (coverage test) the largest expected
    count of a never-drawn frame with `dof` = the number of frames at least that likely."""

    __test__ = False  # not a pytest class

    name: str
    statistic: float
    dof: int
    p_value: float



class BonferroniVerdict:
    """The verdict of a result dataclass with `alpha`, `tests` (list of TestResult) and `zero_probability_draws`:
    each test must pass at `alpha` / number of tests, and no draw may have probability 0."""

    @property
    def per_test_alpha(self) -> float:
        """Bonferroni threshold: `alpha` / number of tests."""
        return self.alpha / max(1, len(self.tests))

    @property
    def passed(self) -> bool:
        return self.zero_probability_draws == 0 and all(t.p_value > self.per_test_alpha for t in self.tests)

    def to_dict(self) -> dict:
        return {**asdict(self), "per_test_alpha": self.per_test_alpha, "verdict": "PASS" if self.passed else "FAIL"}

def _pool_small(observed: np.ndarray, expected: np.ndarray, min_expected: float) -> tuple[np.ndarray, np.ndarray]:
    """Categories expecting fewer than `min_expected` counts pooled into one; a pool still short of it is merged
    into the least expected of the others. Returns (observed, expected) float64."""
    small = expected < min_expected
    if not small.any() or min_expected <= 0:
        return observed.astype(np.float64), expected.astype(np.float64)
    obs, exp = observed[~small].astype(np.float64), expected[~small].astype(np.float64)
    pool_o, pool_e = float(observed[small].sum()), float(expected[small].sum())
    if pool_e >= min_expected or obs.size == 0:
        return np.append(obs, pool_o), np.append(exp, pool_e)
    j = int(np.argmin(exp))
    obs[j] += pool_o
    exp[j] += pool_e
    return obs, exp


def chi_square_gof(observed: np.ndarray, expected_p: np.ndarray, name: str = "goodness of fit", *,
                   min_expected: float = 0.0) -> TestResult:
    """Chi-square goodness of fit of counts (C,) to probabilities (C,) (normalized here). A count in a category of
    probability 0 gives statistic inf, p = 0; categories expecting fewer than `min_expected` are pooled
    (`_pool_small`); fewer than two categories left gives p = 1, dof 0."""
    from scipy import stats

    observed = np.asarray(observed)
    expected_p = np.asarray(expected_p, dtype=np.float64)
    keep = expected_p > 0
    if observed[~keep].any():
        return TestResult(name, float("inf"), int(keep.sum()) - 1, 0.0)
    n = float(observed.sum())
    obs, exp = _pool_small(observed[keep], expected_p[keep] / expected_p[keep].sum() * n, min_expected)
    if obs.size < 2:
        return TestResult(name, 0.0, 0, 1.0)
    stat, p = stats.chisquare(obs, exp * (obs.sum() / exp.sum()))
    return TestResult(name, float(stat), int(obs.size - 1), float(p))


def _two_sample(name: str, a: np.ndarray, b: np.ndarray) -> TestResult:
    """Chi-square test of homogeneity of two count vectors (categories empty in both dropped)."""
    from scipy import stats

    keep = (a + b) > 0
    if keep.sum() < 2:
        return TestResult(name, 0.0, 0, 1.0)
    res = stats.chi2_contingency(np.stack([a[keep], b[keep]]), correction=False)
    return TestResult(name, float(res.statistic), int(res.dof), float(res.pvalue))


def _coverage(name: str, counts: np.ndarray, probabilities: np.ndarray, draws: int) -> TestResult:
    """Frames never drawn: statistic e = the largest expected count among them, p = Σ (1 - p_i)^draws over the
    frames expecting at least e (>= P(some frame that likely is never drawn), by the union bound)."""
    expected = probabilities * draws
    unseen = (counts == 0) & (probabilities > 0)
    if not unseen.any():
        return TestResult(name, 0.0, 0, 1.0)
    e_max = float(expected[unseen].max())
    likely = probabilities[expected >= e_max]
    p = float(np.exp(draws * np.log1p(-likely)).sum())
    return TestResult(name, e_max, int(likely.size), min(1.0, p))


def reference_draws(weights: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """int64 (draws,) from torch's WeightedRandomSampler(weights, num_samples=len(weights), replacement=True),
    iterated epoch after epoch like a DataLoader."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    gen = torch.Generator().manual_seed(seed)
    sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(weights),
                                    replacement=True, generator=gen)
    epochs = itertools.chain.from_iterable(iter(sampler) for _ in itertools.count())
    return np.fromiter(itertools.islice(epochs, draws), dtype=np.int64, count=draws)


__all__ = ["DEFAULT_ALPHA", "MIN_EXPECTED", "TestResult", "check_alpha", "chi_square_gof", "reference_draws"]
