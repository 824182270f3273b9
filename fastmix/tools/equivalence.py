"""Statistical equivalence of `MixtureSampler` to the reference `WeightedRandomSampler`.

The reference is built the way the slow path builds it: one weight per sample of the concatenation
(`Mixture.reference_weights()`: w_i, times per-frame weights when given), `replacement=True`,
`num_samples` = total frames, iterated epoch after epoch as a DataLoader would until `draws` indices.
fastmix draws the same number from `MixtureSampler.next_indices`.

Tests, each reported with its p-value. For fastmix and for the reference, against the exact distribution:
  * chi-square goodness of fit of the counts per dataset;
  * ... per position bin (consecutive frames grouped into bins of roughly equal expected count, at least
    `min_expected` = 5 per bin, at most `max_bins` bins);
  * ... per hash bin (the same grouping after ordering frames by a fixed hash of their global index, so every
    bin holds frames scattered over the whole mixture: a sampler that favours some frames over their
    neighbours is seen here, not in position bins);
  * ... per (dataset, local frame index mod 6) residue class (catches skipping odd frames, every third frame);
  * ... per frame, frames expecting fewer than 5 draws pooled into one category (with `draws` >= 5 / the
    smallest frame probability, every frame is its own category);
  * coverage: the largest expected count e of a frame never drawn; p = Σ (1 - p_i)^draws over the frames with
    expected count >= e (a union bound, so conservative): a frame missed though it should have been drawn
    e.g. 20 times (the last frame of a dataset, an off-by-one) fails here.
And fastmix against the reference, two-sample (2 x C contingency) chi-square tests per dataset, position bin,
hash bin and residue class.
Verdict PASS when every p-value exceeds `alpha / number of tests` (Bonferroni: a correct sampler, with a correct
reference, FAILs with probability at most `alpha`, default 0.001) and no frame of probability 0 was drawn.

Sampling controls. With episodes (per_episode weighting) and frame filters the exact distribution is the
mixture's (`Mixture.sample_probabilities`: a filtered-out frame has probability 0 — drawing one fails the
check — and per_episode gives frame j of episode e of dataset i share_i / (E_i · M_{i,e})); the reference is
WeightedRandomSampler over `Mixture.reference_weights()` (those probabilities as per-sample weights).
`--weighting all` runs the check once per weighting mode (a chi-square set per mode); `--episodes-seed` splits
each dataset into random episodes, `--filter-seed` gives each dataset random keep-ranges, `--trim-start` /
`--trim-end` trim every episode.
The seeds are fixed, so a given run is reproducible. What it cannot see: a frame missed whose expected count is
small (a few draws), and deviations smaller than the statistical noise of `draws` draws.
CLI: `fastmix equivalence --sizes 10000 1000 --weights 1 10 --draws 1000000`; exit status 1 on FAIL;
`fastmix equivalence --sizes 3000 800 --weighting all --episodes-seed 1 --filter-seed 2 --trim-start 1`.
A mixture of data configs: `fastmix equivalence --config NAME [--configs MODULE_OR_FILE] [--weighting all]` checks
that config's loader, per entry, dataset, episode and frame (`fastmix.tools.equivalence_mixture`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fastmix._args import check_int
from fastmix.core.episodes import EpisodeRuns
from fastmix.core.filters import FrameFilter
from fastmix.core.mixture import WEIGHTINGS, Mixture
from fastmix.core.sampler import MixtureSampler
from fastmix.errors import ConfigError
from fastmix.tools.equivalence_stats import (  # noqa: F401 - re-exported (former home of these helpers)
    DEFAULT_ALPHA,
    MIN_EXPECTED,
    BonferroniVerdict,
    TestResult,
    _coverage,
    _pool_small,
    _two_sample,
    check_alpha,
    chi_square_gof,
    reference_draws,
)

RESIDUE_MODULUS = 6  # residue classes of the local frame index: mod 2 and mod 3 at once


ChiSquareResult = TestResult  # former name


@dataclass
class EquivalenceResult(BonferroniVerdict):
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
    tests: list[TestResult] = field(default_factory=list)
    zero_probability_draws: int = 0
    kept_frames: list[int] | None = None  # per dataset, with frame filters
    episodes: list[int] | None = None  # per dataset, where episodes were given

    def format(self) -> str:
        controls = "" if self.episodes is None else f" episodes={self.episodes}"
        controls += "" if self.kept_frames is None else f" kept frames={self.kept_frames}"
        lines = [f"fastmix equivalence: sizes={self.sizes} weights={self.weights} weighting={self.weighting} "
                 f"draws={self.draws:,} seed={self.seed}{controls}",
                 f"  {'dataset':>7}  {'expected':>9}  {'fastmix':>9}  {'reference':>9}"]
        for i, (e, f, r) in enumerate(zip(self.expected_shares, self.fastmix_shares, self.reference_shares, strict=True)):
            lines.append(f"  {i:>7}  {100 * e:8.4f}%  {100 * f:8.4f}%  {100 * r:8.4f}%")
        lines.append(f"  {'test':<44}  {'statistic':>12}  {'dof':>6}  {'p-value':>9}")
        for t in self.tests:
            flag = "" if t.p_value > self.per_test_alpha else "  <- fails"
            lines.append(f"  {t.name:<44}  {t.statistic:12.2f}  {t.dof:>6}  {t.p_value:9.2e}{flag}")
        if self.zero_probability_draws:
            lines.append(f"  {self.zero_probability_draws} draws hit frames of probability 0")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"verdict: {verdict} (PASS needs every p-value > {self.alpha:g}/{len(self.tests)} = "
                     f"{self.per_test_alpha:.3g}, Bonferroni: a correct sampler FAILs with probability <= "
                     f"{self.alpha:g}; {self.num_bins} position bins)")
        return "\n".join(lines)


def frame_bins(probabilities: np.ndarray, draws: int, *, min_expected: float = MIN_EXPECTED,
               max_bins: int = 1000, order: np.ndarray | None = None) -> np.ndarray:
    """int64 (N,) bin of every frame: frames taken in `order` (default: index order) and grouped greedily so each
    bin expects at least max(min_expected, draws / max_bins) draws; a short last bin is merged into the one
    before."""
    order = np.arange(probabilities.size) if order is None else np.asarray(order)
    expected = probabilities[order] * draws
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
    bins = np.empty(n, dtype=np.int64)
    bins[order] = np.searchsorted(np.asarray(starts), np.arange(n), side="right") - 1
    return bins


def hash_order(n: int) -> np.ndarray:
    """int64 (n,): the frames 0..n-1 sorted by a fixed 64-bit hash of the index (splitmix64's finalizer)."""
    z = np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable").astype(np.int64)


def check_equivalence(
    sizes: Sequence[int],
    weights: Sequence[float] | None = None,
    *,
    weighting: str = "per_sample",
    frame_weights: Sequence[np.ndarray | None] | None = None,
    episodes: Sequence[EpisodeRuns | Sequence[int] | np.ndarray | None] | None = None,
    frame_filters: Sequence[FrameFilter | None] | None = None,
    draws: int = 1_000_000,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    max_bins: int = 1000,
    sampler: MixtureSampler | None = None,
) -> EquivalenceResult:
    """Compare fastmix's draws with WeightedRandomSampler's and with the exact expected distribution of the
    mixture (sizes, weights, weighting, frame_weights, episodes, frame_filters). `sampler` replaces the fastmix
    sampler under test (default: a MixtureSampler of that same mixture, seeded with `seed`); the reference uses
    `seed` too."""
    draws = check_int(draws, "draws", minimum=1)
    alpha = check_alpha(alpha)
    spec = dict(weighting=weighting, frame_weights=frame_weights, episodes=episodes, frame_filters=frame_filters)
    if sampler is None:
        sampler = MixtureSampler(sizes, weights, **spec, seed=seed, rank=0, world_size=1)
        mixture = sampler.mixture
    else:  # the declared mixture, independent of the sampler under test
        mixture = Mixture(sizes, weights, **spec)
    if sampler.index_map.total != mixture.total:
        raise ConfigError(f"sampler covers {sampler.index_map.total} frames, the mixture {mixture.total}")
    fast = sampler.next_indices(draws)
    ref = reference_draws(mixture.reference_weights(), draws, seed)

    probs = mixture.sample_probabilities()
    categories = _Categories(mixture, probs, draws, max_bins)
    c_fast, c_ref = categories.count(fast), categories.count(ref)
    result = EquivalenceResult(
        sizes=[int(s) for s in mixture.sizes], weights=mixture.weights.tolist(), weighting=weighting, draws=draws,
        seed=seed, alpha=alpha, expected_shares=mixture.shares.tolist(),
        fastmix_shares=(c_fast["datasets"] / draws).tolist(), reference_shares=(c_ref["datasets"] / draws).tolist(),
        num_bins=categories.num_bins, zero_probability_draws=int((probs[fast] == 0).sum()),
        kept_frames=mixture.kept_sizes.tolist() if mixture.filtered else None,
        episodes=None if all(e is None for e in mixture.episodes) else
        [0 if e is None else e.num_episodes for e in mixture.episodes],
    )
    for who, counts in (("fastmix", c_fast), ("reference", c_ref)):
        for kind, p in categories.probabilities.items():
            result.tests.append(chi_square_gof(counts[kind], p, f"{who} vs expected ({kind})",
                                               min_expected=MIN_EXPECTED))
        result.tests.append(_coverage(f"{who} never-drawn frames (coverage)", counts["frames"], probs, draws))
    for kind in ("datasets", "position bins", "hash bins", categories.residues):
        result.tests.append(_two_sample(f"fastmix vs reference ({kind})", c_fast[kind], c_ref[kind]))
    return result


class _Categories:
    """The category partitions of the tests: datasets, position bins, hash bins, residue classes, frames; each
    with its exact probabilities (`probabilities[kind]`) and a counter of draws (`count(indices)`)."""

    def __init__(self, mixture: Mixture, probs: np.ndarray, draws: int, max_bins: int) -> None:
        self.residues = f"dataset, frame mod {RESIDUE_MODULUS}"
        d, local = mixture.index_map.to_local(np.arange(probs.size, dtype=np.int64))
        self._of = {
            "datasets": d.astype(np.int64),
            "position bins": frame_bins(probs, draws, max_bins=max_bins),
            "hash bins": frame_bins(probs, draws, max_bins=max_bins, order=hash_order(probs.size)),
            self.residues: d.astype(np.int64) * RESIDUE_MODULUS + local % RESIDUE_MODULUS,
            "frames": np.arange(probs.size, dtype=np.int64),
        }
        self._size = {kind: int(c.max()) + 1 for kind, c in self._of.items()}
        self._size["datasets"] = mixture.num_datasets
        self.num_bins = self._size["position bins"]
        self.probabilities = {kind: np.bincount(c, weights=probs, minlength=self._size[kind])
                              for kind, c in self._of.items()}

    def count(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """int64 counts of `indices` (global frame indices) per category, for every partition."""
        return {kind: np.bincount(c[indices], minlength=self._size[kind]) for kind, c in self._of.items()}


def mixture_datasets(sampler: MixtureSampler, indices: np.ndarray) -> np.ndarray:
    """Dataset index of each global index."""
    return sampler.index_map.to_local(indices)[0]


def random_frame_weights(sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Per-frame weights for testing: Uniform[0.1, 2) per frame, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.1, 2.0, size=int(n)) for n in sizes]


def random_episode_lengths(sizes: Sequence[int], seed: int, mean: int = 40) -> list[np.ndarray]:
    """Per dataset, int64 episode lengths (>= 1, about `mean` each, varied 1:8) summing to its size."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (int(v) for v in sizes):
        cuts = np.cumsum(rng.integers(max(1, mean // 4), 2 * mean + 1, size=n // max(1, mean // 4) + 1))
        cuts = cuts[cuts < n]
        out.append(np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64))
    return out


def random_frame_filters(episode_lengths: Sequence[np.ndarray], seed: int, *, trim_start: int = 0,
                         trim_end: int = 0) -> list[FrameFilter]:
    """Per dataset, a FrameFilter keeping 0 to 3 random (possibly overlapping) ranges of each episode (episode
    indices 0, 1, ...; about a tenth of the episodes keep nothing), then trimming."""
    rng = np.random.default_rng(seed)
    out = []
    for lengths in episode_lengths:
        ranges = {}
        for e, n in enumerate(int(v) for v in lengths):
            k = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.4, 0.3, 0.2]))
            a = np.sort(rng.integers(0, n + 1, size=(k, 2)), axis=1)
            ranges[str(e)] = a.tolist()
        if not any(b > a for r in ranges.values() for a, b in r):  # keep at least one frame
            ranges["0"] = [[0, int(lengths[0])]]
        out.append(FrameFilter(ranges, trim_start=trim_start, trim_end=trim_end))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="frames per dataset (or --config)")
    parser.add_argument("--config", default=None, metavar="CONFIG_NAME",
                        help="check the loader of this config instead, a MixtureDataConfig (its entries' "
                             "datasets, weights, weighting and frame filters; --weighting all: once per mode)")
    from fastmix.tools import user_configs

    user_configs.add_argument(parser)
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="dataset weights (default 1 each)")
    parser.add_argument("--weighting", choices=(*WEIGHTINGS, "all"), default=None,
                        help="weighting mode (default per_sample; with --config, the config's); 'all': the check "
                             "once per mode")
    parser.add_argument("--episodes-seed", type=int, default=None,
                        help="split each dataset into random episodes (lengths ~40, from this seed); needed by "
                             "per_episode and the frame filters (default with them: seed 0)")
    parser.add_argument("--filter-seed", type=int, default=None,
                        help="give each dataset a frame filter of random keep-ranges per episode (from this seed)")
    parser.add_argument("--trim-start", type=int, default=0, help="frame filter: frames trimmed at episode starts")
    parser.add_argument("--trim-end", type=int, default=0, help="frame filter: frames trimmed at episode ends")
    parser.add_argument("--draws", type=int, default=1_000_000, help="indices drawn from each sampler")
    parser.add_argument("--frame-weights-seed", type=int, default=None,
                        help="also use random per-frame weights (Uniform[0.1, 2)) generated from this seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of both samplers")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help="family-wise false-alarm rate: PASS needs every p-value > alpha / number of tests")
    parser.add_argument("--max-bins", type=int, default=1000, help="most frame bins of the per-bin tests")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _run_config(args: argparse.Namespace) -> int:
    """`--config NAME`: a MixtureDataConfig's loader (`fastmix.tools.equivalence_mixture`)."""
    import sys

    from fastmix.errors import FastmixError
    from fastmix.tools import user_configs
    from fastmix.tools.equivalence_mixture import check_mixture_config

    try:
        config = user_configs.lookup(args.config, getattr(args, "configs", None))
        modes = list(WEIGHTINGS) if args.weighting == "all" else [args.weighting]
        results = [check_mixture_config(config, draws=args.draws, weighting=m, alpha=args.alpha) for m in modes]
    except FastmixError as e:
        print(f"fastmix equivalence: error: {e}", file=sys.stderr)
        return 2
    return _report(results, as_json=args.json)


def _report(results: list, *, as_json: bool) -> int:
    """Print the results (JSON: one object, or a list for several modes); exit status 0 when all passed."""
    if as_json:
        out = [r.to_dict() for r in results]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    else:
        print("\n\n".join(r.format() for r in results))
    return 0 if all(r.passed for r in results) else 1


def run(args: argparse.Namespace) -> int:
    check_alpha(args.alpha, "--alpha")
    if getattr(args, "config", None) is not None:
        return _run_config(args)
    if not args.sizes:
        raise ConfigError("fastmix equivalence needs --sizes N [N ...] (frames per dataset) or --config NAME")
    fw = None if args.frame_weights_seed is None else random_frame_weights(args.sizes, args.frame_weights_seed)
    modes = list(WEIGHTINGS) if args.weighting == "all" else [args.weighting or "per_sample"]
    filtered = args.filter_seed is not None or args.trim_start or args.trim_end
    episodes = filters = None
    if args.episodes_seed is not None or filtered or "per_episode" in modes:
        episodes = random_episode_lengths(args.sizes, args.episodes_seed or 0)
    if filtered:
        filters = random_frame_filters(episodes, args.filter_seed, trim_start=args.trim_start,
                                       trim_end=args.trim_end) if args.filter_seed is not None else \
            [FrameFilter(trim_start=args.trim_start, trim_end=args.trim_end) for _ in args.sizes]
    results = [check_equivalence(args.sizes, args.weights, weighting=mode, frame_weights=fw, episodes=episodes,
                                 frame_filters=filters, draws=args.draws, seed=args.seed, alpha=args.alpha,
                                 max_bins=args.max_bins) for mode in modes]
    return _report(results, as_json=args.json)


__all__ = ["EquivalenceResult", "ChiSquareResult", "TestResult", "add_arguments", "check_alpha", "check_equivalence",
           "chi_square_gof", "frame_bins", "hash_order", "random_episode_lengths", "random_frame_filters",
           "reference_draws", "run"]
