"""The report of `fastmix verify` and its statistics: `Check`, `Report`, the declared shares of a mixture
(`expected_shares`), the chi-square test of observed counts (`chi_square`), the shares chart (`plot_shares`)
and the printed table rows and verdict."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix.tools.equivalence_stats import MIN_EXPECTED, check_alpha

DEFAULT_NUM_SAMPLES = 1000
DEFAULT_ALPHA = 1e-3
POWER = 0.8  # the detection probability `detectable_deviation` is stated at


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclasses.dataclass
class Report:
    config_name: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    expected_shares: list[float] = dataclasses.field(default_factory=list)
    observed_counts: list[int] = dataclasses.field(default_factory=list)
    p_value: float | None = None
    plot_path: pathlib.Path | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")


def expected_mixture(sizes: list[int], weights: list[float] | None, weighting: str, *, sources: list | None = None,
                     frame_filters: Any = None) -> Any:
    """The `Mixture` a config declares: its weights and weighting over `sizes`, with its frame filters (a list per
    dataset or a dict name -> FrameFilter) and, where per_episode weighting or a filter needs them, the episodes
    of `sources`."""
    from fastmix.core.mixture import Mixture
    from fastmix.loader.loader import resolve_frame_filters, source_episodes

    if sources is None:
        return Mixture(sizes, weights, weighting=weighting)
    filters = resolve_frame_filters(frame_filters, sources)
    return Mixture(sizes, weights, weighting=weighting, frame_filters=filters,
                   episodes=source_episodes(sources, filters, weighting), names=[s.name for s in sources])


def expected_shares(sizes: list[int], weights: list[float] | None, weighting: str, *, sources: list | None = None,
                    frame_filters: Any = None) -> np.ndarray:
    """Per-dataset shares a config declares (`Mixture.shares`): per_sample ∝ w_i·M_i (the reference's
    WeightedRandomSampler; M_i = frames its frame filter keeps, N_i without one), per_dataset and per_episode ∝
    w_i (`expected_mixture`)."""
    return expected_mixture(sizes, weights, weighting, sources=sources, frame_filters=frame_filters).shares


def chi_square(observed: np.ndarray, expected_share: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of observed counts against expected shares (`equivalence.chi_square_gof`); a count
    where the share is 0 gives (inf, 0)."""
    from fastmix.tools.equivalence_stats import chi_square_gof

    res = chi_square_gof(np.asarray(observed), np.asarray(expected_share, dtype=np.float64))
    return res.statistic, res.p_value


def too_few_samples(shares: np.ndarray, n: int, names: list[str]) -> str | None:
    """None when every dataset with a share > 0 expects at least MIN_EXPECTED (5) of `n` draws (what the
    chi-square approximation needs); else why not, naming the dataset, and how many samples would do."""
    shares = np.asarray(shares, dtype=np.float64)
    drawn = np.flatnonzero(shares > 0)
    if drawn.size < 2:
        return None
    i = int(drawn[np.argmin(shares[drawn])])
    if n * shares[i] >= MIN_EXPECTED * (1 - 1e-9):
        return None
    need = math.ceil(MIN_EXPECTED / shares[i] * (1 - 1e-9))
    return (f"{n} samples are too few to test the mixture: '{names[i]}' (share {shares[i]:.4f}) expects "
            f"{n * shares[i]:.1f} draws and the chi-square test needs >= {MIN_EXPECTED:g} per dataset; "
            f"draw at least {need} samples")


def detectable_deviation(shares: np.ndarray, n: int, alpha: float, power: float = POWER) -> float:
    """The share deviation the chi-square test of `n` draws detects at level `alpha` with probability `power`:
    the largest over the datasets j of delta_j = sqrt(lam * p_j * (1 - p_j) / n), where a dataset's share moved
    from p_j to p_j ± delta_j (the others rescaled) gives the noncentrality n * delta_j**2 / (p_j * (1 - p_j)),
    and lam is the noncentrality at which P(chi2_{k-1}(lam) > chi2_{k-1, 1-alpha}) = power. A share (0..1);
    NaN with fewer than 2 drawn datasets."""
    from scipy import optimize, stats

    p = np.asarray(shares, dtype=np.float64)
    p = p[p > 0]
    if p.size < 2 or n < 1:
        return float("nan")
    dof = p.size - 1
    critical = stats.chi2.isf(alpha, dof)
    lam = optimize.brentq(lambda x: stats.ncx2.sf(critical, dof, x) - power, 1e-9, 1e7)
    return float(np.sqrt(lam * p * (1 - p) / n).max())


def sample_size_note(shares: np.ndarray, n: int, alpha: float) -> str:
    """What a test over `n` samples can see, in one clause."""
    delta = detectable_deviation(shares, n, alpha)
    if not math.isfinite(delta):
        return f"{n} samples of one dataset: no share to test"
    return (f"{n} samples detect (with probability {POWER:g}) a dataset's share off by {delta:.3f} or more; "
            "smaller ones may pass unseen")


def plot_shares(path: pathlib.Path, names: list[str], expected: np.ndarray, observed: np.ndarray, title: str) -> None:
    """A PNG bar chart of expected vs observed per-dataset shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names)), 3.8))
    ax.bar(x - 0.2, expected, 0.4, label="expected (config)")
    ax.bar(x + 0.2, observed, 0.4, label="observed (loader)")
    ax.set_xticks(x, [n.split("/")[-1] for n in names], rotation=15)
    ax.set_ylabel("share of samples")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt_row(cells: list[Any], widths: list[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))


def finish(report: Report, out: Callable[[str], None]) -> Report:
    failed = [c.name for c in report.checks if not c.ok]
    out("=" * 72)
    out("Verification passed." if not failed else f"Verification FAILED: {', '.join(failed)}")
    return report


__all__ = ["DEFAULT_ALPHA", "DEFAULT_NUM_SAMPLES", "POWER", "Check", "Report", "check_alpha", "chi_square",
           "detectable_deviation", "expected_mixture", "expected_shares", "finish", "fmt_row", "plot_shares", "sample_size_note",
           "too_few_samples"]
