"""`fastmix verify` of a `MixtureDataConfig` (a mixture of data configs, one entry per robot or dataset group).

What it checks, beside what every entry's loader run shows (loading, prompts):
- norm stats per entry: its asset (present, with its keys; or missing, with the command that computes it);
- shares per entry and per dataset inside each entry, expected vs observed, each with a chi-square goodness of
  fit (pass when p >= alpha; fail when a cell expects fewer than 5 draws, too few for the test);
- per episode, where weighting is per_episode or a frame filter is set: the draws of every (dataset, episode)
  against its expected share (chi-square over the cells expecting >= 5 draws, the rest pooled);
- frame filters: no drawn frame is one a filter drops;
- per entry, the single-config checks (its datasets, their compatibility, NaN/inf in their numeric features,
  loading through its own pipeline, per-key statistics, every transform stage, prompts), the entries' outputs
  against each other, and the mixture's own final batches (structure, padding, finite values naming entry,
  dataset, key, episode and frame): `fastmix.tools.verify_entries`.

The expected probabilities are computed here, independently of the loader's sampling tables, as exact fractions
(`fractions.Fraction`) from each dataset's episode lengths, the entry weights, a multi-dataset entry's inner
per-sample weights, the weighting and the frame filters (`expected_episode_shares`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from fastmix.tools.verify_entries import FinalBatches, check_entries
from fastmix.tools.verify_report import (
    Check,
    Report,
    chi_square,
    finish,
    fmt_row,
    plot_shares,
    sample_size_note,
    too_few_samples,
)


class EpisodeLayout:
    """A dataset's frames laid out episode after episode: `ids` (E,) episode ids ascending, `lengths` (E,)
    frames each (counted from the rows' episode_index), `offset` (E,) the position of each episode's frame 0."""

    def __init__(self, source: Any) -> None:
        ep, _ = source.frame_positions()
        ids, counts = np.unique(np.asarray(ep, dtype=np.int64), return_counts=True)
        self.ids, self.lengths = ids, counts.astype(np.int64)
        self.offset = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.size = int(self.lengths.sum())

    def position(self, episode: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """int64 position of each (episode id, frame index); -1 where no such frame exists."""
        episode, frame = np.asarray(episode, dtype=np.int64), np.asarray(frame, dtype=np.int64)
        k = np.minimum(np.searchsorted(self.ids, episode), self.ids.size - 1)
        ok = (self.ids[k] == episode) & (frame >= 0) & (frame < self.lengths[k])
        return np.where(ok, self.offset[k] + frame, -1)


def kept_mask(flt: Any, layout: EpisodeLayout) -> np.ndarray:
    """bool (frames,) in `layout` order: what `flt` (a `FrameFilter` or None) keeps — the union of its
    keep-ranges in each episode (all frames without keep-ranges; none in an episode they do not list), then
    frames [trim_start, length - trim_end) of every episode."""
    if flt is None:
        return np.ones(layout.size, dtype=bool)
    e_of = np.repeat(np.arange(layout.ids.size), layout.lengths)
    f_of = np.arange(layout.size) - layout.offset[e_of]
    if flt.has_ranges:
        ep = np.asarray(flt.key_episode, dtype=np.int64)[np.asarray(flt.range_key, dtype=np.int64)]
        k = np.minimum(np.searchsorted(layout.ids, ep), layout.ids.size - 1)
        known = layout.ids[k] == ep
        k, a, b = k[known], np.asarray(flt.range_start)[known], np.asarray(flt.range_end)[known]
        a, b = np.minimum(a, layout.lengths[k]), np.minimum(b, layout.lengths[k])
        cover = np.zeros(layout.size + 1, dtype=np.int64)
        np.add.at(cover, layout.offset[k] + a, 1)
        np.add.at(cover, layout.offset[k] + b, -1)
        keep = np.cumsum(cover)[:-1] > 0
    else:
        keep = np.ones(layout.size, dtype=bool)
    return keep & (f_of >= flt.trim_start) & (f_of < layout.lengths[e_of] - flt.trim_end)


def expected_episode_shares(data: Any, sources: Sequence[Any]) -> list[dict[int, Fraction]]:
    """Per dataset of `data.repo_ids` (sources in that order): episode id -> exact probability that a draw is a
    frame of that episode (they sum to 1 over all datasets). Rules (`MixtureDataConfig`): w_i entry weight,
    v_d a multi-dataset entry's inner weight, M_d = kept frames of dataset d, M_de of its episode e, E_d its
    episodes keeping a frame. per_sample: a kept frame weighs w_i·v_d. per_dataset: entry i's share w_i/Σw, split
    ∝ v_d·M_d over its datasets, kept frames uniform. per_episode: the same dataset shares, 1/E_d per kept
    episode, uniform inside it."""
    from fastmix.openpi.mixture_config import entry_repo_ids, flat_frame_filters

    filters = flat_frame_filters(data) or {}
    w_entry = [Fraction(w).limit_denominator(10**9) for w in data.dataset_weights]
    rows = []  # (entry, v_d, {episode: kept frames})
    for i, e in enumerate(data.entries):
        inner = getattr(e, "dataset_weights", None) if len(entry_repo_ids(e)) > 1 else None
        for k, repo in enumerate(entry_repo_ids(e)):
            layout = EpisodeLayout(sources[len(rows)])
            per_ep = np.add.reduceat(kept_mask(filters.get(repo), layout), layout.offset) if layout.size else []
            v = Fraction(1) if inner is None else Fraction(float(inner[k])).limit_denominator(10**9)
            rows.append((i, v, dict(zip(layout.ids.tolist(), np.asarray(per_ep).tolist(), strict=True))))
    out: list[dict[int, Fraction]] = []
    if data.weighting == "per_sample":
        total = sum(w_entry[i] * v * sum(m.values()) for i, v, m in rows)
        return [{ep: w_entry[i] * v * n / total for ep, n in m.items()} for i, v, m in rows]
    entry_mass = [sum(v * sum(m.values()) for j, v, m in rows if j == i) for i in range(len(data.entries))]
    sw = sum(w_entry)
    for i, v, m in rows:
        share = w_entry[i] / sw * (v * sum(m.values()) / entry_mass[i] if entry_mass[i] else 0)
        kept_total, n_eps = sum(m.values()), sum(1 for n in m.values() if n)
        if data.weighting == "per_dataset":
            out.append({ep: share * n / kept_total if kept_total else Fraction(0) for ep, n in m.items()})
        else:
            out.append({ep: share / n_eps if n else Fraction(0) for ep, n in m.items()})
    return out


def _gof(name: str, counts: np.ndarray, expected: np.ndarray, labels: list[str], alpha: float,
         add: Callable[[str, bool, str], None], pool: bool = False) -> float:
    """A chi-square check of `counts` against the shares `expected` (cells of share 0 must have no draws)."""
    n = int(counts.sum())
    zero = expected == 0
    if counts[zero].any():
        bad = [labels[j] for j in np.flatnonzero(zero & (counts > 0))[:3]]
        add(name, False, f"draws where none are expected: {bad}")
        return 0.0
    c, e, lab = counts[~zero], expected[~zero], [lb for lb, z in zip(labels, zero, strict=True) if not z]
    if pool:  # cells expecting < 5 draws pooled into one (when that pool itself expects >= 5)
        small = e * n < 5
        if small.any() and e[small].sum() * n >= 5 and (~small).any():
            c = np.r_[c[~small], c[small].sum()]
            e = np.r_[e[~small], e[small].sum()]
            lab = [lb for lb, s in zip(lab, small, strict=True) if not s] + ["(pooled)"]
    if c.size < 2:
        add(name, True, f"one cell ({lab[0] if lab else '-'}) holds every expected draw; nothing to test")
        return 1.0
    stat, p = chi_square(c, e / e.sum())
    short = too_few_samples(e / e.sum(), n, lab)
    if short is not None:
        add(name, False, f"{short} (chi-square {stat:.2f}, p-value {p:.4g} not trusted)")
    else:
        add(name, p >= alpha, f"chi-square {stat:.2f}, p-value {p:.4g} ({'>=' if p >= alpha else '<'} alpha "
            f"{alpha:g}) over {n} samples, {c.size} cells; {sample_size_note(e / e.sum(), n, alpha)}")
    return p


def _norm_stats(config: Any, data: Any, add: Callable[[str, bool, str], None]) -> bool:
    """Each entry's norm stats asset: present (keys) or missing (with the command that computes it)."""
    from fastmix.openpi.norm_stats import NORM_STATS_FILE, missing_norm_stats_message, norm_stats_dir

    ok = True
    for name, e in zip(data.names, data.entries, strict=True):
        asset = getattr(e, "asset_id", None)
        if e.norm_stats is not None:
            add(f"norm stats {name}", True, f"asset {asset!r}: keys {sorted(e.norm_stats)}")
            continue
        ok = False
        try:
            path = norm_stats_dir(config, e) / NORM_STATS_FILE
        except ValueError:
            path = None
        add(f"norm stats {name}", False, f"asset {asset!r} missing: " + missing_norm_stats_message(config.name, path))
    return ok


def _draw(config: Any, sources: list, num_samples: int, normalize: bool, create_loader: Callable[..., Any],
          finals: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """(dataset, episode, frame) of `num_samples` samples (rounded up to whole batches) through the config's
    loader, and the prompts per dataset; every batch goes to `finals.add(batch, meta)` (`FinalBatches`)."""
    import collections

    num_batches = max(1, math.ceil(num_samples / max(1, int(config.batch_size))))
    ds, ep, fr, prompts = [], [], [], [collections.Counter() for _ in sources]
    with create_loader(config, shuffle=True, num_batches=num_batches, skip_norm_stats=not normalize,
                       framework="pytorch") as loader:
        for batch, meta in loader.batches(with_meta=True):
            finals.add(batch, meta)
            d = np.asarray(meta["dataset_index"]).astype(np.int64)
            ds.append(d)
            ep.append(np.asarray(meta["episode_index"]).astype(np.int64))
            fr.append(np.asarray(meta["frame_index"]).astype(np.int64))
            for j, p in zip(d.tolist(), batch.get("prompt", []), strict=False):
                prompts[j][str(p)] += 1
    return np.concatenate(ds), np.concatenate(ep), np.concatenate(fr), prompts


def verify_mixture(config: Any, data: Any, num_samples: int, *, alpha: float, out: Callable[[str], None],
                   create_loader: Callable[..., Any] | None = None, plot_path: Any = None) -> Report:
    """`verify` of a config whose data is a `MixtureDataConfig` (`data`: its created `MixtureData`); the PNG
    chart at `plot_path` (None: none) shows expected vs observed shares per entry."""
    from fastmix.openpi import data_loader as _dl
    from fastmix.openpi.mixture_config import flat_frame_filters

    report = Report(config.name)

    def add(name: str, ok: bool, detail: str) -> None:
        report.checks.append(Check(name, ok, detail))
        out(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")

    out(f"  mixture of {len(data.entries)} entries, weights {list(data.dataset_weights)} ({data.weighting})")
    for name in data.names:
        out(f"    {name}")
    try:
        sources = [s for e in data.entries for s in _dl.open_sources(e)]
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        add("datasets", False, f"{type(e).__name__}: {e}")
        return finish(report, out)
    add("datasets", True, f"{len(sources)} datasets in {len(data.entries)} entries, {sum(map(len, sources))} frames")
    normalize = _norm_stats(config, data, add)
    check_entries(config, data, sources, num_samples, alpha=alpha, report=report, out=out)
    out("\n--- the mixture")
    finals = FinalBatches(data.names, sources, data.entry_of(), int(config.batch_size),
                          getattr(config.model, "action_dim", None))
    try:
        expected = expected_episode_shares(data, sources)
        d, ep, fr, prompts = _draw(config, sources, num_samples, normalize, create_loader or _dl.create_data_loader,
                                   finals)
    except Exception as e:  # noqa: BLE001
        add("loading", False, f"{type(e).__name__}: {e}")
        return finish(report, out)
    n = d.size
    add("loading", True, f"{n} samples (dataset, episode and frame of each)")
    finals.finish(add)
    entry_of = np.asarray(data.entry_of())
    ds_exp = np.array([float(sum(x.values())) for x in expected])
    ds_cnt = np.bincount(d, minlength=len(sources))
    en_exp = np.bincount(entry_of, weights=ds_exp, minlength=len(data.entries))
    en_cnt = np.bincount(entry_of, weights=ds_cnt, minlength=len(data.entries)).astype(np.int64)
    report.expected_shares, report.observed_counts = ds_exp.tolist(), ds_cnt.tolist()
    filters = flat_frame_filters(data) or {}
    kept = [0] * len(sources)
    out("\nMixture per entry and per dataset (expected from the config: weights, weighting, kept frames):")
    widths = [max(10, *(len(x) for x in data.names)), 8, 9, 9, 9, 7]
    out(fmt_row(["entry / dataset", "weight", "kept", "expected", "observed", "count"], widths))
    for i, name in enumerate(data.names):
        out(fmt_row([name, f"{data.dataset_weights[i]:g}", "", f"{en_exp[i]:.4f}", f"{en_cnt[i] / n:.4f}",
                     int(en_cnt[i])], widths))
        for j in np.flatnonzero(entry_of == i):
            kept[j] = int(kept_mask(filters.get(sources[j].name), EpisodeLayout(sources[j])).sum())
            out(fmt_row([f"  {sources[j].name}", "", f"{kept[j]}/{len(sources[j])}", f"{ds_exp[j]:.4f}",
                         f"{ds_cnt[j] / n:.4f}", int(ds_cnt[j])], widths))
    report.p_value = _gof("mixture entries", en_cnt, en_exp, list(data.names), alpha, add)
    for i, name in enumerate(data.names):
        js = np.flatnonzero(entry_of == i)
        if js.size > 1:
            _gof(f"datasets of {name}", ds_cnt[js], ds_exp[js], [sources[j].name for j in js], alpha, add)
    if data.weighting == "per_episode" or filters:
        cells = [(j, e) for j, x in enumerate(expected) for e in sorted(x)]
        exp_c = np.array([float(expected[j][e]) for j, e in cells])
        index = {c: k for k, c in enumerate(cells)}
        cnt_c = np.bincount([index[(int(a), int(b))] for a, b in zip(d, ep, strict=True)], minlength=len(cells))
        _gof("episodes", cnt_c, exp_c, [f"{sources[j].name} episode {e}" for j, e in cells], alpha, add, pool=True)
    if filters:
        _check_filtered(sources, filters, d, ep, fr, kept, add)
    if plot_path is not None:
        _plot(report, plot_path, list(data.names), en_exp, en_cnt / n, f"{config.name}: p = {report.p_value:.3g}", add)
    for j, s in enumerate(sources):
        out(f"  prompts {s.name}: " + ("; ".join(f"{p!r} x{c}" for p, c in prompts[j].most_common(3)) or "(none)"))
    return finish(report, out)


def _plot(report: Report, path: Any, names: list[str], exp: np.ndarray, obs: np.ndarray, title: str,
          add: Callable[[str, bool, str], None]) -> None:
    import pathlib

    try:
        plot_shares(pathlib.Path(path), names, exp, obs, title)
        report.plot_path = pathlib.Path(path)
        add("plot", True, f"wrote {path}")
    except Exception as e:  # noqa: BLE001
        add("plot", False, f"{type(e).__name__}: {e}")


def _check_filtered(sources: list, filters: Mapping[str, Any], d: np.ndarray, ep: np.ndarray, fr: np.ndarray,
                    kept: list[int], add: Callable[[str, bool, str], None]) -> None:
    """No draw is a frame its dataset's filter drops."""
    bad = []
    for j, s in enumerate(sources):
        layout = EpisodeLayout(s)
        keep = np.r_[kept_mask(filters.get(s.name), layout), False]  # position -1: no such frame
        sel = np.flatnonzero(d == j)
        out = sel[~keep[layout.position(ep[sel], fr[sel])]]
        bad += [f"{s.name} episode {int(ep[k])} frame {int(fr[k])}" for k in out[:3]]
    summary = ", ".join(f"{s.name} {kept[j]}/{len(s)}" for j, s in enumerate(sources))
    add("frame filters", not bad, f"kept frames {summary}; none of the {d.size} draws is a filtered-out frame"
        if not bad else f"draws of filtered-out frames: {'; '.join(bad)}")


__all__ = ["EpisodeLayout", "expected_episode_shares", "kept_mask", "verify_mixture"]
