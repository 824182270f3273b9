"""`fastmix verify CONFIG N --openpi`: measure the per-dataset shares openpi's own loader draws for a config
(for users still on the fork) against the shares the config declares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix._args import check_int
from fastmix.errors import ConfigError
from fastmix.tools import verify_report as _r


def verify_openpi(
    config: Any,
    num_samples: int = _r.DEFAULT_NUM_SAMPLES,
    *,
    alpha: float = _r.DEFAULT_ALPHA,
    out: Callable[[str], None] = print,
) -> _r.Report:
    """Measure the per-dataset shares openpi's own loader draws for `config` (for users still on the fork).

    Draws `num_samples` indices through openpi's un-patched training loader (`fastmix.openpi.openpi_draws`)
    and tests them against the shares the config declares (per-sample weights, ∝ w_i·N_i, as openpi's
    COTRAINING_GUIDE describes them). FAIL when they differ, e.g. because openpi's loader ignores
    `dataset_weights` (it wraps the ConcatDataset before checking for one, so it draws with RandomSampler:
    uniform over frames, shares N_i / N).
    """
    from fastmix.openpi import openpi_draws

    num_samples = check_int(num_samples, "num_samples", minimum=1)
    alpha = _r.check_alpha(alpha)
    report = _r.Report(config.name)
    bar = "=" * 72
    out(f"{bar}\nMeasuring openpi's own loader for config: {config.name}\n{bar}")
    data_config = _create_data_config(config)
    repo_ids = list(getattr(data_config, "repo_ids", None) or [data_config.repo_id])
    weights = None if data_config.dataset_weights is None else [float(w) for w in data_config.dataset_weights]
    sizes, counts, sampler = openpi_draws(config, num_samples)
    exp = _r.expected_shares(sizes, weights, "per_sample")
    uniform = _r.expected_shares(sizes, None, "per_sample")
    stat, p = _r.chi_square(counts, exp)
    _, p_uniform = _r.chi_square(counts, uniform)
    report.expected_shares, report.observed_counts, report.p_value = exp.tolist(), counts.tolist(), p
    out(f"  sampler: {sampler}\n  dataset_weights: {weights}\n")
    widths = [max(8, *(len(r) for r in repo_ids)), 8, 8, 9, 9, 9, 7]
    out(_r.fmt_row(["dataset", "weight", "frames", "expected", "uniform", "observed", "count"], widths))
    total = max(1, int(counts.sum()))
    for i, r in enumerate(repo_ids):
        w = 1.0 if weights is None else weights[i]
        out(_r.fmt_row([r, f"{w:g}", sizes[i], f"{exp[i]:.4f}", f"{uniform[i]:.4f}", f"{counts[i] / total:.4f}",
                        int(counts[i])], widths))
    detail = (f"chi-square {stat:.2f}, p-value {p:.4g} ({'>=' if p >= alpha else '<'} alpha {alpha:g}) against "
              f"the declared weights over {total} draws; against uniform-over-frames p = {p_uniform:.4g}; "
              f"{_r.sample_size_note(exp, total, alpha)}")
    short = _r.too_few_samples(exp, int(counts.sum()), repo_ids)
    if short is not None:
        report.checks.append(_r.Check("mixture", False, short))
        out(f"[FAIL] mixture: {short}")
        return _r.finish(report, out)
    ignored = weights is not None and p < alpha <= p_uniform
    if ignored:
        detail += (f"; openpi's loader ignores dataset_weights={weights} ({sampler} draws uniformly over frames):"
                   f" expected {np.round(exp, 4).tolist()}, observed {np.round(counts / total, 4).tolist()}."
                   " fastmix.openpi.install() applies them")
    report.checks.append(_r.Check("mixture", p >= alpha, detail))
    out(f"[{'PASS' if p >= alpha else 'FAIL'}] mixture: {detail}")
    return _r.finish(report, out)


def _asset_path(config: Any) -> str:
    """Where openpi looks for the config's norm stats: (assets.assets_dir or config.assets_dirs) / asset_id."""
    data = getattr(config, "data", None)
    assets = getattr(data, "assets", None)
    base = getattr(assets, "assets_dir", None) or getattr(config, "assets_dirs", None)
    asset_id = getattr(assets, "asset_id", None) or getattr(data, "repo_id", None)
    return f"{str(base).rstrip('/')}/{asset_id}" if asset_id else str(base)


def _create_data_config(config: Any) -> Any:
    """openpi's `config.data.create(...)`: its norm stats are loaded (downloaded when the assets are remote) here.
    Any failure is a one-line ConfigError naming the config and its asset path (openpi's message kept)."""
    try:
        return config.data.create(config.assets_dirs, config.model)
    except Exception as e:  # noqa: BLE001 - openpi's own errors (ImportError: gcsfs, network, missing files)
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"openpi cannot create the data config of '{config.name}' (norm stats from "
                          f"{_asset_path(config)}): {type(e).__name__}: {text}") from e


__all__ = ["verify_openpi"]
