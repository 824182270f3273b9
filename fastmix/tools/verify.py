"""`fastmix verify CONFIG_NAME [NUM_SAMPLES] [--configs MODULE_OR_FILE]`: check a config's data pipeline and its
mixture. CONFIG_NAME is fastmix's own, or one of the user's loaded with `--configs` / `$FASTMIX_CONFIGS` (or named
as `FILE.py:NAME`, `MODULE:NAME`; `fastmix.tools.user_configs`).

The reference's `verify_cotraining_data_loader.py` printed information; this command checks it:
each dataset (size, format version, fps, cameras, tasks), feature compatibility, norm stats, loading,
per-key statistics (finite), that every transform stage ran and did its job, the observed per-dataset
shares against the shares the config declares (its weights, weighting — per_episode included — and frame filters:
shares over kept frames only; with frame filters, also that no drawn frame is one a filter drops) (chi-square goodness of fit, pass when p >= alpha; it says how
large a share deviation its number of samples detects, and fails when a dataset expects fewer than 5 draws, too
few for the test), the prompts seen per dataset (each one a task of its dataset), and a PNG bar chart of
expected vs observed shares. The exit status is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from fastmix._args import check_int
from fastmix.tools import user_configs
from fastmix.tools.verify_checks import (
    Run,
    check_compatibility,
    check_datasets,
    check_finite_data,
    check_loading,
    check_mixture,
    check_norm_stats,
    check_plot,
    check_prompts,
    check_statistics,
    check_transforms,
)
from fastmix.tools.verify_openpi import verify_openpi
from fastmix.tools.verify_report import (
    DEFAULT_ALPHA,
    DEFAULT_NUM_SAMPLES,
    Check,
    Report,
    check_alpha,
    chi_square,
    expected_shares,
    finish,
    plot_shares,
)


def verify(
    config: Any,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    *,
    plot_path: pathlib.Path | str | None = None,
    alpha: float = DEFAULT_ALPHA,
    out: Callable[[str], None] = print,
    open_sources: Callable[[Any], list] | None = None,
    check_compatible: Callable[[list], None] | None = None,
    create_loader: Callable[..., Any] | None = None,
) -> Report:
    """Run every check on `config` (a TrainConfig) drawing `num_samples` samples; returns the report.

    Args:
        open_sources: `open_sources(data_config) -> sources` (default: `fastmix.openpi.data_loader.open_sources`).
        check_compatible: raises when the sources differ (default: `fastmix.sources.compat.check_compatible`).
        create_loader: `create_data_loader`-like factory (default: `fastmix.openpi.data_loader.create_data_loader`);
            it is handed the opened sources as `open_sources=`.
    """
    from fastmix.openpi import data_loader as _dl
    from fastmix.sources.compat import check_compatible as _check_compatible

    num_samples = check_int(num_samples, "num_samples", minimum=1)
    alpha = check_alpha(alpha)
    run = Run(config, num_samples, alpha, out, Report(config.name),
              open_sources or _dl.open_sources, check_compatible or _check_compatible,
              create_loader or _dl.create_data_loader)
    bar = "=" * 72
    out(f"{bar}\nVerifying config: {config.name}\n{bar}")
    data_config = run.data_config = config.data.create(config.assets_dirs, config.model)
    if _is_mixture(data_config):  # a MixtureDataConfig: shares per entry and per dataset, norm stats per entry
        from fastmix.tools.verify_mixture import verify_mixture

        return verify_mixture(config, data_config, num_samples, alpha=alpha, out=out, create_loader=create_loader,
                              plot_path=plot_path if plot_path is not None else f"verify_{config.name}.png")
    run.weights = None if data_config.dataset_weights is None else [float(w) for w in data_config.dataset_weights]
    run.weighting = getattr(data_config, "weighting", "per_sample")
    run.frame_filters = getattr(data_config, "frame_filters", None)
    if run.frame_filters is not None:
        out(f"  frame_filters: {run.frame_filters}")
    out(f"  repo_ids: {_dl.repo_ids_of(data_config)}\n  dataset_weights: {run.weights} ({run.weighting})"
        f"\n  asset_id: {data_config.asset_id}\n  prompt_from_task: {data_config.prompt_from_task}"
        f"\n  use_quantile_norm: {data_config.use_quantile_norm}")
    if not check_datasets(run):
        return finish(run.report, out)
    check_compatibility(run)
    check_finite_data(run)
    normalize = check_norm_stats(run)
    if not check_loading(run, normalize):
        return finish(run.report, out)
    check_statistics(run)
    check_transforms(run)
    exp, obs_share, p = check_mixture(run)
    check_prompts(run)
    path = pathlib.Path(plot_path) if plot_path is not None else pathlib.Path(f"verify_{config.name}.png")
    check_plot(run, path, exp, obs_share, p)
    return finish(run.report, out)


def _is_mixture(data_config: Any) -> bool:
    from fastmix.openpi.mixture_pipeline import is_mixture

    return is_mixture(data_config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config_name", metavar="CONFIG_NAME",
                        help="a registered config: fastmix's own, one from --configs, or FILE.py:NAME / MODULE:NAME")
    parser.add_argument("num_samples", metavar="NUM_SAMPLES", nargs="?", type=int, default=DEFAULT_NUM_SAMPLES,
                        help=f"samples to draw, rounded up to whole batches (default {DEFAULT_NUM_SAMPLES}); the "
                             "mixture check needs >= 5 expected draws of every dataset")
    user_configs.add_argument(parser)
    parser.add_argument("--plot", default=None, help="PNG path of the shares chart (default ./verify_CONFIG.png)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"chi-square significance level, in (0, 1) (default {DEFAULT_ALPHA:g})")
    parser.add_argument("--openpi", action="store_true",
                        help="measure openpi's own loader instead (CONFIG_NAME from openpi's registry): its "
                             "observed per-dataset shares against the config's dataset_weights")


def _run_openpi(args: argparse.Namespace) -> int:
    """`--openpi`: openpi's config and loader; any failure to build them is one line naming the config."""
    try:
        import openpi.training.config as openpi_config
    except ImportError as e:
        print(f"fastmix verify --openpi: error: openpi is not importable ({e})", file=sys.stderr)
        return 2
    from fastmix.errors import FastmixError

    try:
        config = openpi_config.get_config(args.config_name)
    except ValueError as e:  # openpi's "Config '...' not found"
        print(f"fastmix verify --openpi: error: {e}", file=sys.stderr)
        return 2
    try:
        report = verify_openpi(config, args.num_samples, alpha=args.alpha)
    except FastmixError as e:  # e.g. openpi cannot create the config's data config (its assets unreachable)
        print(f"fastmix verify --openpi: error: {e}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def run(args: argparse.Namespace) -> int:
    from fastmix.errors import FastmixError

    try:
        check_alpha(args.alpha, "--alpha")
    except FastmixError as e:
        print(f"fastmix verify: error: {e}", file=sys.stderr)
        return 2
    if args.openpi:
        return _run_openpi(args)
    try:
        config = user_configs.lookup(args.config_name, getattr(args, "configs", None))
    except FastmixError as e:
        print(f"fastmix verify: error: {e}", file=sys.stderr)
        return 2
    report = verify(config, args.num_samples, plot_path=args.plot, alpha=args.alpha)
    return 0 if report.ok else 1


__all__ = ["Check", "Report", "add_arguments", "chi_square", "expected_shares", "plot_shares", "run", "verify",
           "verify_openpi"]
