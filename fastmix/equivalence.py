"""Statistical equivalence of `MixtureSampler` to the reference `WeightedRandomSampler`.

The reference is built the way the slow path builds it: one weight per sample of the concatenation
(`Mixture.reference_weights()`: w_i, times per-frame weights when given), `replacement=True`,
`num_samples` = total frames, iterated epoch after epoch as a DataLoader would until `draws` indices.
fastmix draws the same number from `MixtureSampler.next_indices`.

Six chi-square tests, each reported with its p-value:
  * goodness of fit of per-dataset counts and of per-bin frame counts to the exact expected distribution,
    for fastmix and for the reference (frames are binned in index order into bins of roughly equal expected
    count, at least `min_expected` = 5 per bin and at most `max_bins` bins);
  * two-sample (2 x C contingency) tests of fastmix against the reference, per dataset and per bin.
Verdict PASS when every p-value exceeds `alpha` (default 0.001: with six tests a correct sampler fails with
probability below 0.6 %; the seeds are fixed, so a given run is reproducible) and no frame of probability 0
was drawn. CLI: `fastmix equivalence --sizes 10000 1000 --weights 1 10 --draws 1000000`; exit status 1 on FAIL.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fastmix.errors import ConfigError
from fastmix.mixture import WEIGHTINGS, Mixture
from fastmix.sampler import MixtureSampler

DEFAULT_ALPHA = 1e-3


@dataclass
class ChiSquareResult:
    name: str
    statistic: float
    dof: int
    p_value: float


@dataclass
class EquivalenceResult:
    sizes: list[int]
    weights: list[float]
    weighting: str
    draws: int
    seed: int
    alpha: float
    expected_shares: list[float]
    fastmix_shares: list[float]
    reference_shares: list[float]
    num_bins: int
    tests: list[ChiSquareResult] = field(default_factory=list)
    zero_probability_draws: int = 0

    @property
    def passed(self) -> bool:
        return self.zero_probability_draws == 0 and all(t.p_value > self.alpha for t in self.tests)

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": "PASS" if self.passed else "FAIL"}

    def format(self) -> str:
        lines = [f"fastmix equivalence: sizes={self.sizes} weights={self.weights} weighting={self.weighting} "
                 f"draws={self.draws:,} seed={self.seed}",
                 f"  {'dataset':>7}  {'expected':>9}  {'fastmix':>9}  {'reference':>9}"]
        for i, (e, f, r) in enumerate(zip(self.expected_shares, self.fastmix_shares, self.reference_shares, strict=True)):
            lines.append(f"  {i:>7}  {100 * e:8.4f}%  {100 * f:8.4f}%  {100 * r:8.4f}%")
        lines.append(f"  {'chi-square test':<34}  {'statistic':>12}  {'dof':>6}  {'p-value':>9}")
        for t in self.tests:
            lines.append(f"  {t.name:<34}  {t.statistic:12.2f}  {t.dof:>6}  {t.p_value:9.4f}")
        if self.zero_probability_draws:
            lines.append(f"  {self.zero_probability_draws} draws hit frames of probability 0")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"verdict: {verdict} (PASS needs every p-value > {self.alpha:g}; {self.num_bins} frame bins)")
        return "\n".join(lines)


def _gof(name: str, observed: np.ndarray, expected_p: np.ndarray) -> ChiSquareResult:
    """Chi-square goodness of fit over categories of positive expected probability."""
    from scipy import stats

    keep = expected_p > 0
    obs, exp = observed[keep].astype(np.float64), expected_p[keep] * observed.sum()
    if keep.sum() < 2:
        return ChiSquareResult(name, 0.0, 0, 1.0)
    stat, p = stats.chisquare(obs, exp)
    return ChiSquareResult(name, float(stat), int(keep.sum() - 1), float(p))


def _two_sample(name: str, a: np.ndarray, b: np.ndarray) -> ChiSquareResult:
    """Chi-square test of homogeneity of two count vectors (categories empty in both dropped)."""
    from scipy import stats

    keep = (a + b) > 0
    if keep.sum() < 2:
        return ChiSquareResult(name, 0.0, 0, 1.0)
    res = stats.chi2_contingency(np.stack([a[keep], b[keep]]), correction=False)
    return ChiSquareResult(name, float(res.statistic), int(res.dof), float(res.pvalue))


def frame_bins(probabilities: np.ndarray, draws: int, *, min_expected: float = 5.0,
               max_bins: int = 1000) -> np.ndarray:
    """int64 (N,) bin of every frame: consecutive frames grouped greedily so each bin expects at least
    max(min_expected, draws / max_bins) draws; a short last bin is merged into the one before."""
    expected = probabilities * draws
    target = max(min_expected, expected.sum() / max_bins)
    cum = np.concatenate([[0.0], np.cumsum(expected)])  # cum[i]: expected draws of frames before i
    n = expected.size
    starts = [0]
    while True:
        end = max(int(np.searchsorted(cum, cum[starts[-1]] + target, side="left")), starts[-1] + 1)
        if end >= n:
            break
        starts.append(end)
    if len(starts) > 1 and cum[n] - cum[starts[-1]] < target:  # the tail falls short: merge it
        starts.pop()
    return np.searchsorted(np.asarray(starts), np.arange(n), side="right").astype(np.int64) - 1


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


def check_equivalence(
    sizes: Sequence[int],
    weights: Sequence[float] | None = None,
    *,
    weighting: str = "per_sample",
    frame_weights: Sequence[np.ndarray | None] | None = None,
    draws: int = 1_000_000,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    max_bins: int = 1000,
    sampler: MixtureSampler | None = None,
) -> EquivalenceResult:
    """Compare fastmix's draws with WeightedRandomSampler's and with the exact expected distribution of the
    mixture (sizes, weights, weighting, frame_weights). `sampler` replaces the fastmix sampler under test
    (default: a MixtureSampler of that same mixture, seeded with `seed`); the reference uses `seed` too."""
    if draws < 1:
        raise ConfigError(f"draws should be a positive integer value, but got draws={draws}")
    mixture = Mixture(sizes, weights, weighting=weighting, frame_weights=frame_weights)
    if sampler is None:
        sampler = MixtureSampler(sizes, weights, weighting=weighting, frame_weights=frame_weights, seed=seed,
                                 rank=0, world_size=1)
    if sampler.index_map.total != mixture.total:
        raise ConfigError(f"sampler covers {sampler.index_map.total} frames, the mixture {mixture.total}")
    fast = sampler.next_indices(draws)
    ref = reference_draws(mixture.reference_weights(), draws, seed)

    k = mixture.num_datasets
    probs = mixture.sample_probabilities()
    ds_fast = np.bincount(mixture_datasets(sampler, fast), minlength=k)
    ds_ref = np.bincount(mixture_datasets(sampler, ref), minlength=k)
    bins = frame_bins(probs, draws, max_bins=max_bins)
    nb = int(bins.max()) + 1
    bin_p = np.bincount(bins, weights=probs, minlength=nb)
    bin_fast = np.bincount(bins[fast], minlength=nb)
    bin_ref = np.bincount(bins[ref], minlength=nb)
    result = EquivalenceResult(
        sizes=[int(s) for s in mixture.sizes], weights=mixture.weights.tolist(), weighting=weighting, draws=draws,
        seed=seed, alpha=alpha, expected_shares=mixture.shares.tolist(),
        fastmix_shares=(ds_fast / draws).tolist(), reference_shares=(ds_ref / draws).tolist(), num_bins=nb,
        zero_probability_draws=int((probs[fast] == 0).sum()),
    )
    result.tests = [
        _gof("fastmix vs expected (datasets)", ds_fast, mixture.shares),
        _gof("fastmix vs expected (frame bins)", bin_fast, bin_p),
        _gof("reference vs expected (datasets)", ds_ref, mixture.shares),
        _gof("reference vs expected (frame bins)", bin_ref, bin_p),
        _two_sample("fastmix vs reference (datasets)", ds_fast, ds_ref),
        _two_sample("fastmix vs reference (frame bins)", bin_fast, bin_ref),
    ]
    return result


def mixture_datasets(sampler: MixtureSampler, indices: np.ndarray) -> np.ndarray:
    """Dataset index of each global index."""
    return sampler.index_map.to_local(indices)[0]


def random_frame_weights(sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Per-frame weights for testing: Uniform[0.1, 2) per frame, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.1, 2.0, size=int(n)) for n in sizes]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", required=True, help="frames per dataset")
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="dataset weights (default 1 each)")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="per_sample")
    parser.add_argument("--draws", type=int, default=1_000_000, help="indices drawn from each sampler")
    parser.add_argument("--frame-weights-seed", type=int, default=None,
                        help="also use random per-frame weights (Uniform[0.1, 2)) generated from this seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of both samplers")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="PASS needs every p-value > alpha")
    parser.add_argument("--max-bins", type=int, default=1000, help="most frame bins of the per-bin tests")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    fw = None if args.frame_weights_seed is None else random_frame_weights(args.sizes, args.frame_weights_seed)
    result = check_equivalence(args.sizes, args.weights, weighting=args.weighting, frame_weights=fw,
                               draws=args.draws, seed=args.seed, alpha=args.alpha, max_bins=args.max_bins)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0 if result.passed else 1


__all__ = ["EquivalenceResult", "ChiSquareResult", "add_arguments", "check_equivalence", "frame_bins",
           "reference_draws", "run"]
