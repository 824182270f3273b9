"""`fastmix equivalence --config NAME`: the sampler of a `MixtureDataConfig`'s loader against the exact
distribution the config declares and against torch's `WeightedRandomSampler` over those exact probabilities.

The exact probability of every frame is computed independently of the loader's sampling tables, as fractions
(`fastmix.tools.verify_mixture.expected_episode_shares`: entry weights, a multi-dataset entry's inner weights, the
weighting, the frame filters), then spread uniformly over the kept frames of each episode (every mode draws the
frames of one episode uniformly). Tests, each with a p-value (PASS when all exceed alpha / number of tests,
Bonferroni, and no frame of probability 0 was drawn): for fastmix and for the reference, chi-square goodness of
fit per entry, per dataset, per (dataset, episode) and per frame (cells expecting fewer than 5 draws pooled),
and coverage (frames never drawn); fastmix against the reference, two-sample chi-square per entry, per dataset
and per episode. `--weighting all` runs it once per weighting mode (the config's weights and filters kept).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastmix.errors import ConfigError
from fastmix.tools.equivalence_stats import (
    MIN_EXPECTED,
    BonferroniVerdict,
    TestResult,
    _coverage,
    _two_sample,
    check_alpha,
    chi_square_gof,
    reference_draws,
)


@dataclass
class MixtureEquivalenceResult(BonferroniVerdict):
    """The check of one config and weighting: exact vs observed shares per entry, and the tests."""

    config: str
    weighting: str
    draws: int
    seed: int
    alpha: float
    entries: list[str]
    expected_shares: list[float]  # per entry
    fastmix_shares: list[float]
    reference_shares: list[float]
    tests: list[TestResult] = field(default_factory=list)
    zero_probability_draws: int = 0

    def format(self) -> str:
        lines = [f"fastmix equivalence: config {self.config!r} weighting={self.weighting} draws={self.draws:,} "
                 f"seed={self.seed}", f"  {'entry':<48}  {'expected':>9}  {'fastmix':>9}  {'reference':>9}"]
        for name, e, f, r in zip(self.entries, self.expected_shares, self.fastmix_shares, self.reference_shares,
                                 strict=True):
            lines.append(f"  {name[:48]:<48}  {100 * e:8.4f}%  {100 * f:8.4f}%  {100 * r:8.4f}%")
        lines.append(f"  {'test':<48}  {'statistic':>12}  {'dof':>6}  {'p-value':>9}")
        for t in self.tests:
            flag = "" if t.p_value > self.per_test_alpha else "  <- fails"
            lines.append(f"  {t.name:<48}  {t.statistic:12.2f}  {t.dof:>6}  {t.p_value:9.2e}{flag}")
        if self.zero_probability_draws:
            lines.append(f"  {self.zero_probability_draws} draws hit frames of probability 0")
        lines.append(f"verdict: {'PASS' if self.passed else 'FAIL'} (PASS needs every p-value > {self.alpha:g}/"
                     f"{len(self.tests)} = {self.per_test_alpha:.3g})")
        return "\n".join(lines)


def exact_frame_probabilities(data: Any, sources: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability float64 (N,), dataset int64 (N,), (dataset, episode) cell int64 (N,)) of every frame of the
    concatenated datasets (sources in `data.repo_ids` order, each in its row order)."""
    from fastmix.openpi.mixture_config import flat_frame_filters
    from fastmix.tools.verify_mixture import EpisodeLayout, expected_episode_shares, kept_mask

    shares = expected_episode_shares(data, sources)
    filters = flat_frame_filters(data) or {}
    probs, dataset, cell, base = [], [], [], 0
    for j, s in enumerate(sources):
        layout = EpisodeLayout(s)
        keep = kept_mask(filters.get(s.name), layout)
        per_ep = np.add.reduceat(keep, layout.offset)
        ep_p = np.array([float(shares[j][e] / n) if n else 0.0
                         for e, n in zip(layout.ids.tolist(), per_ep.tolist(), strict=True)])
        ep, fr = (np.asarray(a, dtype=np.int64) for a in s.frame_positions())
        k = np.searchsorted(layout.ids, ep)
        probs.append(np.where(keep[layout.position(ep, fr)], ep_p[k], 0.0))
        dataset.append(np.full(ep.size, j, dtype=np.int64))
        cell.append(base + k)
        base += layout.ids.size
    return np.concatenate(probs), np.concatenate(dataset), np.concatenate(cell)


def check_mixture_config(config: Any, *, draws: int = 200_000, weighting: str | None = None,
                         alpha: float = 1e-3, sampler: Any = None) -> MixtureEquivalenceResult:
    """Check the sampler of `config`'s loader (a TrainConfig whose data is a `MixtureDataConfig`; `weighting`
    overrides its weighting) with `draws` draws seeded by `config.seed`. `sampler` replaces the sampler under
    test (anything with `next_indices(n)` over the same frames)."""
    from fastmix.openpi.data_loader import create_data_loader
    from fastmix.openpi.mixture_pipeline import is_mixture

    alpha = check_alpha(alpha)
    if weighting is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, weighting=weighting))
    data = config.data.create(config.assets_dirs, config.model)
    if not is_mixture(data):
        raise ConfigError(f"config {config.name!r}: its data ({type(config.data).__name__}) is not a "
                          "MixtureDataConfig; use --sizes/--weights for a plain mixture")
    with create_data_loader(config, shuffle=True, num_batches=1, skip_norm_stats=True) as dl:
        sources = list(dl.sources)
        fast = np.asarray((sampler or dl.loader.sampler).next_indices(draws), dtype=np.int64)
    probs, dataset, cell = exact_frame_probabilities(data, sources)
    ref = reference_draws(probs, draws, int(config.seed))
    entry = np.asarray(data.entry_of(), dtype=np.int64)[dataset]
    kinds = {"entries": entry, "datasets": dataset, "episodes": cell}
    exp = {k: np.bincount(c, weights=probs) for k, c in kinds.items()}

    def counts(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.bincount(c[idx], minlength=exp[k].size) for k, c in kinds.items()}

    c_fast, c_ref = counts(fast), counts(ref)
    result = MixtureEquivalenceResult(
        config=config.name, weighting=data.weighting, draws=draws, seed=int(config.seed), alpha=alpha,
        entries=list(data.names), expected_shares=exp["entries"].tolist(),
        fastmix_shares=(c_fast["entries"] / draws).tolist(), reference_shares=(c_ref["entries"] / draws).tolist(),
        zero_probability_draws=int((probs[fast] == 0).sum()))
    for who, c, idx in (("fastmix", c_fast, fast), ("reference", c_ref, ref)):
        for k in kinds:
            result.tests.append(chi_square_gof(c[k], exp[k], f"{who} vs expected ({k})", min_expected=MIN_EXPECTED))
        frames = np.bincount(idx, minlength=probs.size)
        result.tests.append(chi_square_gof(frames, probs, f"{who} vs expected (frames)", min_expected=MIN_EXPECTED))
        result.tests.append(_coverage(f"{who} never-drawn frames (coverage)", frames, probs, draws))
    for k in kinds:
        result.tests.append(_two_sample(f"fastmix vs reference ({k})", c_fast[k], c_ref[k]))
    return result


__all__ = ["MixtureEquivalenceResult", "check_mixture_config", "exact_frame_probabilities"]
