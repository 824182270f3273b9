"""`Mixture`: the weighting semantics of a multi-dataset mixture, its effective per-dataset shares, the
alias tables the sampler draws from, and a printable table.

Weighting modes (w_i = dataset weight, N_i = frames, f_i = per-frame weights of dataset i):

* ``per_sample`` (default, the reference's semantics): a frame of dataset i is drawn with probability
  proportional to w_i (times f_i[frame]); dataset i's share is ∝ w_i·N_i (or w_i·Σf_i). This is exactly
  `WeightedRandomSampler` over the concatenated per-sample weights w_i·f_i.
* ``per_dataset``: dataset i's share is w_i / Σw; inside the dataset frames are uniform (or ∝ f_i).

A zero weight is allowed: that dataset is never drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from fastmix._args import check_weights
from fastmix.core.alias import AliasTable
from fastmix.core.index_map import IndexMap
from fastmix.errors import ConfigError

WEIGHTINGS = ("per_sample", "per_dataset")
_TWO64 = 1 << 64


def _packed_probabilities(table: AliasTable) -> np.ndarray:
    """Exact float64 (K,) distribution of the packed one-word alias draw (csrc/alias.hpp alias_pick_packed):
    column j = high half of x*K (Lemire, rejecting low < 2^64 mod K), coin = the low half."""
    k = len(table)
    t = _TWO64 % k

    def count(l0: int, a: int, b: int) -> int:  # #{m >= 0 : a <= l0 + m*k < b}
        up = lambda v: max(0, -((l0 - v) // k))  # noqa: E731  (ceil((v - l0) / k), floored at 0)
        return max(0, up(b) - up(a))

    probs = [Fraction(0)] * k
    totals = []
    for j in range(k):
        l0 = (-j * _TWO64) % k  # low half of the first x whose column is j
        totals.append(count(l0, t, _TWO64))
    grand = sum(totals)
    for j in range(k):
        l0 = (-j * _TWO64) % k
        keep = count(l0, t, max(t, int(table.threshold[j])))
        probs[j] += Fraction(keep, grand)
        probs[int(table.alias[j])] += Fraction(totals[j] - keep, grand)
    return np.array([float(p) for p in probs], dtype=np.float64)


class Mixture:
    """Weighting semantics and sampling tables of K datasets.

    Args:
        dataset_sizes: frames per dataset (K,), each >= 1.
        dataset_weights: (K,) finite, >= 0, not all zero; default all ones.
        weighting: "per_sample" (share ∝ w_i·N_i) or "per_dataset" (share ∝ w_i).
        frame_weights: None, or K entries each None (uniform) or a float array (N_i,) of per-frame weights.
        backend: kernels to build the tables and the index map with (None: `fastmix.backend()`).
        names: K dataset names (errors and `format_table` name them; default "dataset i").

    Attributes:
        index_map IndexMap (the mixture's one global ↔ (dataset, local) map), sizes int64 (K,), names list[str],
        weights float64 (K,), weighting str, masses float64 (K,) (unnormalized shares), shares float64 (K,)
        (sum 1), dataset_table AliasTable (K), frame_tables list of AliasTable | None.
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int] | np.ndarray,
        dataset_weights: Sequence[float] | np.ndarray | None = None,
        *,
        weighting: str = "per_sample",
        frame_weights: Sequence[Sequence[float] | np.ndarray | None] | None = None,
        backend: str | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.index_map = IndexMap(dataset_sizes, backend=backend)
        self.sizes = self.index_map.sizes
        k = self.sizes.size
        self.names = [f"dataset {i}" for i in range(k)] if names is None else [str(n) for n in names]
        if len(self.names) != k:
            raise ConfigError(f"names length ({len(self.names)}) must match dataset_sizes length ({k}): "
                              f"names={self.names}, dataset_sizes={self.sizes.tolist()}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting={weighting!r} is not one of {WEIGHTINGS}")
        self.weighting = weighting
        weights = check_weights(dataset_weights, self.names, names_what="datasets")
        self.weights = np.ones(k) if weights is None else weights
        self.frame_weights = self._check_frame_weights(frame_weights)
        frame_mass = np.array([self.sizes[i] if f is None else f.sum() for i, f in enumerate(self.frame_weights)],
                              dtype=np.float64)
        self.masses = self.weights * frame_mass if weighting == "per_sample" else self.weights.copy()
        if not np.isfinite(self.masses).all():
            i = int(np.argmax(~np.isfinite(self.masses)))
            raise ConfigError(f"dataset {i}: weight {float(self.weights[i])!r} x {float(frame_mass[i])!r} frames overflows float64")
        self.shares = self.masses / self.masses.sum()
        self.dataset_table = AliasTable(self.masses, name="dataset_weights", backend=backend)
        self.frame_tables = [None if f is None else AliasTable(f, name=f"frame_weights[{i}]", backend=backend)
                             for i, f in enumerate(self.frame_weights)]
        self._build_frame_arrays()

    def _check_frame_weights(self, frame_weights) -> list[np.ndarray | None]:
        k = self.sizes.size
        if frame_weights is None:
            return [None] * k
        if len(frame_weights) != k:
            raise ConfigError(f"frame_weights length ({len(frame_weights)}) must match datasets length ({k}): "
                              f"datasets={self.names}")
        out: list[np.ndarray | None] = []
        for i, f in enumerate(frame_weights):
            if f is None:
                out.append(None)
                continue
            w = check_weights(f, what=f"frame_weights[{i}]")
            if w.size != self.sizes[i]:
                raise ConfigError(f"frame_weights[{i}] has {w.size} entries but dataset {i} has "
                                  f"{int(self.sizes[i])} frames")
            out.append(w)
        return out

    def _build_frame_arrays(self) -> None:
        """Concatenated per-frame tables for the kernels; empty arrays select the uniform layout."""
        self.has_frame_weights = any(t is not None for t in self.frame_tables)
        if not self.has_frame_weights:
            self.frame_threshold = np.empty(0, dtype=np.uint64)
            self.frame_alias = np.empty(0, dtype=np.int64)
            self.frame_offsets = np.empty(0, dtype=np.int64)
            return
        lengths = [0 if t is None else len(t) for t in self.frame_tables]
        self.frame_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.frame_offsets[1:])
        tables = [t for t in self.frame_tables if t is not None]
        self.frame_threshold = np.concatenate([t.threshold for t in tables])
        self.frame_alias = np.concatenate([t.alias for t in tables])

    @property
    def num_datasets(self) -> int:
        return int(self.sizes.size)

    @property
    def total(self) -> int:
        return self.index_map.total

    def dataset_probabilities(self) -> np.ndarray:
        """float64 (K,): the exact probability of each dataset under the sampler's dataset draw (from the
        built table; equals `shares` up to float rounding)."""
        return _packed_probabilities(self.dataset_table)

    def frame_probabilities(self, d: int) -> np.ndarray:
        """float64 (N_d,): ideal probability of each frame of dataset d given that d is drawn."""
        f = self.frame_weights[d]
        if f is None:
            return np.full(int(self.sizes[d]), 1.0 / float(self.sizes[d]))
        return f / f.sum()

    def sample_probabilities(self) -> np.ndarray:
        """float64 (N,): ideal probability of every frame of the concatenation (materializes N floats)."""
        return np.concatenate([self.shares[d] * self.frame_probabilities(d) for d in range(self.num_datasets)])

    def reference_weights(self) -> np.ndarray:
        """float64 (N,): per-sample weights that make `WeightedRandomSampler` draw this mixture
        (per_sample: w_i·f_i, the reference's own list; per_dataset: w_i·f_i / Σf_i)."""
        parts = []
        for d in range(self.num_datasets):
            f = self.frame_weights[d]
            base = np.ones(int(self.sizes[d])) if f is None else f
            scale = self.weights[d] if self.weighting == "per_sample" else self.weights[d] / base.sum()
            parts.append(scale * base)
        return np.concatenate(parts)

    def format_table(self, names: Sequence[str] | None = None) -> str:
        """Printable table: dataset, frames, weight, frame weighting, expected share (%)."""
        k = self.num_datasets
        names = self.names if names is None else [str(n) for n in names]
        if len(names) != k:
            raise ConfigError(f"format_table got {len(names)} names for {k} datasets")
        rule = "share ∝ weight × frames" if self.weighting == "per_sample" else "share ∝ weight"
        head = f"mixture: {k} datasets, {self.total:,} frames, weighting={self.weighting} ({rule})"
        w = max(7, *(len(n) for n in names))
        lines = [head, f"  {'#':>3}  {'dataset':<{w}}  {'frames':>13}  {'weight':>10}  {'frames drawn':>12}  {'share':>8}"]
        for i in range(k):
            frames = "uniform" if self.frame_weights[i] is None else "per-frame"
            share = f"{100 * self.shares[i]:7.3f}%"
            note = "  (weight 0: never drawn)" if self.masses[i] == 0 else ""
            lines.append(f"  {i:>3}  {names[i]:<{w}}  {int(self.sizes[i]):>13,}  {self.weights[i]:>10.4g}  "
                         f"{frames:>12}  {share:>8}{note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Mixture(sizes={self.sizes.tolist()}, weights={self.weights.tolist()}, "
                f"weighting={self.weighting!r}, shares={np.round(self.shares, 6).tolist()})")


__all__ = ["WEIGHTINGS", "Mixture"]
