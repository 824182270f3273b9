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
import collections
import dataclasses
import math
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix._args import check_int
from fastmix.tools import user_configs
from fastmix.tools.verify_openpi import verify_openpi
from fastmix.tools.verify_report import (
    DEFAULT_ALPHA,
    DEFAULT_NUM_SAMPLES,
    Check,
    Report,
    check_alpha,
    chi_square,
    expected_mixture,
    expected_shares,
    finish,
    fmt_row,
    plot_shares,
    sample_size_note,
    too_few_samples,
)
from fastmix.tools.verify_stages import StageMonitor


@dataclasses.dataclass
class _Run:
    """What the checks of one `verify` call share: inputs, injected dependencies, what earlier checks found."""

    config: Any
    num_samples: int
    alpha: float
    out: Callable[[str], None]
    report: Report
    open_sources: Callable[[Any], list]
    check_compatible: Callable[[list], None]
    create_loader: Callable[..., Any]
    data_config: Any = None
    sources: list = dataclasses.field(default_factory=list)
    weights: list[float] | None = None
    weighting: str = "per_sample"
    frame_filters: Any = None  # the config's (data_config.frame_filters), when it has them
    counts: np.ndarray | None = None
    drawn: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    prompts: list[collections.Counter] = dataclasses.field(default_factory=list)
    finals: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    n_batches: int = 0
    stages: list = dataclasses.field(default_factory=list)
    monitor: StageMonitor | None = None

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.report.checks.append(Check(name, ok, detail))
        self.out(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")


def _check_datasets(run: _Run) -> bool:
    """Open every dataset and print its size, version, fps, cameras and tasks; False when one cannot be opened."""
    try:
        run.sources = run.open_sources(run.data_config)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        run.add("datasets", False, f"{type(e).__name__}: {e}")
        return False
    sources = run.sources
    run.out("\nDatasets:")
    widths = [max(8, *(len(s.name) for s in sources)), 8, 5, 8, 9, 40]
    run.out(fmt_row(["name", "version", "fps", "frames", "episodes", "cameras"], widths))
    for s in sources:
        cams = ", ".join(f"{k} {'x'.join(map(str, s.camera_shape(k)))}" for k in s.camera_keys)
        run.out(fmt_row([s.name, s.codebase_version, s.fps, s.num_frames, s.num_episodes, cams], widths))
        tasks = list(s.tasks.values())
        run.out(f"    tasks ({len(tasks)}): {'; '.join(tasks[:3])}{' ...' if len(tasks) > 3 else ''}")
    empty = [s.name for s in sources if len(s) == 0]
    run.add("datasets", not empty, f"{len(sources)} datasets, {sum(len(s) for s in sources)} frames"
            + (f"; empty: {empty}" if empty else ""))
    return True


def _check_compatibility(run: _Run) -> None:
    """Same keys, shapes and dtypes (`check_compatible`); no dataset twice; one fps (a mixed-fps mixture is
    allowed by the loader with a warning, and reported here as a failure)."""
    from fastmix.sources.compat import check_mixture

    try:
        run.check_compatible(run.sources)
        check_mixture(run.sources, strict_fps=True)
        run.add("compatibility", True, "same keys, shapes, dtypes and fps; no dataset twice")
    except Exception as e:  # noqa: BLE001
        run.add("compatibility", False, f"{type(e).__name__}: {e}")


def _check_norm_stats(run: _Run) -> bool:
    """Whether the config has norm stats (False: the remaining checks run unnormalized)."""
    from fastmix.openpi import data_loader as _dl

    if run.data_config.norm_stats is not None:
        kind = "quantile" if run.data_config.use_quantile_norm else "z-score"
        run.add("norm stats", True, f"keys {sorted(run.data_config.norm_stats)} ({kind})")
        return True
    try:
        _dl.require_norm_stats(run.config, run.data_config)
    except Exception as e:  # noqa: BLE001
        run.add("norm stats", False, str(e))
    return False


def _check_finite_data(run: _Run) -> None:
    """NaN/inf in the datasets' numeric features (dataset, key, episode, frame of the first ones)."""
    from fastmix.sources.integrity import find_nonfinite

    found = []
    for s in run.sources:
        try:
            hits = find_nonfinite(s, limit=3)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            found.append(f"{s.name}: cannot check ({type(e).__name__}: {e})")
            continue
        found += [f"{s.name}: {key} episode {ep} frame {frame}" for key, ep, frame in hits]
    run.add("finite data", not found, "no NaN/inf in any numeric feature" if not found else
            "NaN/inf in " + "; ".join(found[:6]) + (" ..." if len(found) > 6 else ""))


def _check_loading(run: _Run, normalize: bool) -> bool:
    """Draw `num_samples` samples through the config's loader, recording per-dataset counts, prompts, final
    values and every transform call."""
    from fastmix.openpi import data_loader as _dl

    local_bs = max(1, int(run.config.batch_size))
    num_batches = max(1, math.ceil(run.num_samples / local_bs))
    run.monitor = StageMonitor(run.data_config)
    run.counts = np.zeros(len(run.sources), dtype=np.int64)
    run.prompts = [collections.Counter() for _ in run.sources]
    try:
        loader = run.create_loader(run.config, shuffle=True, num_batches=num_batches, skip_norm_stats=not normalize,
                                   framework="pytorch", open_sources=lambda _dc: run.sources)
        loader.trace = run.monitor
        run.stages = loader.stages
        obs_cls = _dl.observation_class()
        try:
            for batch, meta in loader.batches(with_meta=True):
                run.n_batches += 1
                d_idx = np.asarray(meta["dataset_index"]).astype(np.int64)
                run.counts += np.bincount(d_idx, minlength=len(run.sources))
                if run.frame_filters is not None and "episode_index" in meta:  # (dataset, episode, frame) drawn
                    run.drawn.append((d_idx, np.asarray(meta["episode_index"]).astype(np.int64),
                                      np.asarray(meta["frame_index"]).astype(np.int64)))
                for d, prompt in zip(d_idx, batch.get("prompt", []), strict=False):
                    run.prompts[int(d)][str(prompt)] += 1
                for k in ("state", "actions"):
                    run.finals[k].append(np.asarray(batch[k]))
                for k, v in batch.get("image", {}).items():
                    if len(run.finals[f"image/{k}"]) < 2:
                        run.finals[f"image/{k}"].append(np.asarray(v))
                obs_cls.from_dict({**batch, "image": dict(batch["image"])})
        finally:
            loader.close()
    except Exception as e:  # noqa: BLE001
        run.add("loading", False, f"{type(e).__name__}: {e}")
        return False
    drawn = int(run.counts.sum())
    rounded = f"; NUM_SAMPLES {run.num_samples} rounded up to whole batches" if drawn != run.num_samples else ""
    run.add("loading", True, f"{run.n_batches} batches of {local_bs} ({drawn} samples{rounded}), "
            "Observation.from_dict ok")
    return True


def _check_statistics(run: _Run) -> None:
    run.out("\nPer-key statistics (after all transforms):")
    bad = []
    for k, arrs in run.finals.items():
        a = np.concatenate(arrs).astype(np.float64)
        finite = bool(np.isfinite(a).all())
        bad += [] if finite else [k]
        run.out(f"  {k:28s} shape {tuple(arrs[0].shape[1:])}  min {a.min():9.4f}  max {a.max():9.4f}"
                f"  mean {a.mean():9.4f}  std {a.std():9.4f}{'' if finite else '  NON-FINITE'}")
    run.add("statistics", not bad, "all values finite" if not bad else f"non-finite values in {bad}")


def _check_transforms(run: _Run) -> None:
    monitor = run.monitor
    missing = [
        f"{stage}[{i}] {getattr(t, '__name__', type(t).__name__)} ran {monitor.calls[(stage, i)]}/{run.n_batches}"
        for stage, ts in run.stages
        for i, t in enumerate(ts)
        if monitor.calls[(stage, i)] != run.n_batches
    ]
    ran = ", ".join(f"{stage}: {len(ts)}" for stage, ts in run.stages)
    detail = f"transforms per stage ({ran}) each ran on every batch"
    if monitor.normalized_in_range:
        detail += f"; {100 * np.mean(monitor.normalized_in_range):.1f}% of normalized values in [-1, 1]"
    problems = missing + monitor.problems
    run.add("transforms", not problems, detail if not problems else "; ".join(problems))


def _check_mixture(run: _Run) -> tuple[np.ndarray, np.ndarray, float]:
    """Observed per-dataset shares against the declared ones; returns (expected, observed shares, p)."""
    sizes = [len(s) for s in run.sources]
    try:
        mixture = expected_mixture(sizes, run.weights, run.weighting, sources=run.sources,
                                   frame_filters=run.frame_filters)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        run.add("mixture", False, f"cannot build the declared mixture: {type(e).__name__}: {e}")
        return np.full(len(sizes), np.nan), run.counts / max(1, run.counts.sum()), 0.0
    exp = mixture.shares
    if mixture.filtered:
        sizes = mixture.kept_sizes.tolist()  # the table's "frames" are the kept frames
        _check_kept(run, mixture)
    counts = run.counts
    obs_share = counts / max(1, counts.sum())
    stat, p = chi_square(counts, exp)
    run.report.expected_shares, run.report.observed_counts, run.report.p_value = exp.tolist(), counts.tolist(), p
    run.out("\nMixture (expected from the config's weights vs observed from the loader):")
    widths = [max(8, *(len(s.name) for s in run.sources)), 8, 8, 9, 9, 7]
    run.out(fmt_row(["dataset", "weight", "frames", "expected", "observed", "count"], widths))
    for i, s in enumerate(run.sources):
        w = 1.0 if run.weights is None else run.weights[i]
        run.out(fmt_row([s.name, f"{w:g}", sizes[i], f"{exp[i]:.4f}", f"{obs_share[i]:.4f}", int(counts[i])], widths))
    n = int(counts.sum())
    short = too_few_samples(exp, n, [s.name for s in run.sources])
    if short is not None:
        run.add("mixture", False, f"{short} (chi-square {stat:.2f}, p-value {p:.4g} not trusted)")
    else:
        run.add("mixture", p >= run.alpha, f"chi-square {stat:.2f}, p-value {p:.4g} "
                f"({'>=' if p >= run.alpha else '<'} alpha {run.alpha:g}) over {n} samples; "
                f"{sample_size_note(exp, n, run.alpha)}")
    return exp, obs_share, p


def _check_kept(run: _Run, mixture: Any) -> None:
    """No drawn frame is one the config's frame filters drop (the loader's (dataset, episode, frame) of every
    sample against `Mixture.is_kept`)."""
    kept = ", ".join(f"{s.name} {int(mixture.kept_sizes[i]):,}/{len(s):,}" for i, s in enumerate(run.sources))
    if not run.drawn:
        run.add("frame filters", False, f"kept frames {kept}; the loader's batches carry no episode/frame "
                "indices to check the draws against")
        return
    d = np.concatenate([t[0] for t in run.drawn])
    ep, fr = np.concatenate([t[1] for t in run.drawn]), np.concatenate([t[2] for t in run.drawn])
    bad = []
    for i, s in enumerate(run.sources):
        sel = np.flatnonzero(d == i)
        out = sel[~mixture.is_kept(i, ep[sel], fr[sel])]
        bad += [f"{s.name} episode {int(ep[j])} frame {int(fr[j])}" for j in out[:3]]
    run.add("frame filters", not bad, f"kept frames {kept}; none of the {d.size} draws is a filtered-out frame"
            if not bad else f"draws of filtered-out frames: {'; '.join(bad)}")


def _check_prompts(run: _Run) -> None:
    run.out("\nPrompts seen per dataset:")
    from_task = bool(run.data_config.prompt_from_task)
    wrong = []
    for s, c in zip(run.sources, run.prompts, strict=True):
        run.out(f"  {s.name}: " + ("; ".join(f"{p!r} x{n}" for p, n in c.most_common(3)) or "(none)"))
        if from_task:
            wrong += [f"{s.name}: {p!r}" for p in c if p not in set(s.tasks.values())]
    if not from_task:
        run.add("prompts", True, "prompt_from_task is off: prompts come from the transforms")
        return
    unseen = [s.name for s, c, n in zip(run.sources, run.prompts, run.counts, strict=True) if n > 0 and not c]
    ok = not wrong and not unseen
    run.add("prompts", ok, "every prompt is a task of its dataset" if ok else
            f"prompts not among their dataset's tasks: {wrong[:5]}; no prompt for {unseen}")


def _check_plot(run: _Run, path: pathlib.Path, exp: np.ndarray, obs_share: np.ndarray, p: float) -> None:
    try:
        plot_shares(path, [s.name for s in run.sources], exp, obs_share, f"{run.config.name}: p = {p:.3g}")
        run.report.plot_path = path
        run.add("plot", True, f"wrote {path}")
    except Exception as e:  # noqa: BLE001
        run.add("plot", False, f"{type(e).__name__}: {e}")


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
    run = _Run(config, num_samples, alpha, out, Report(config.name),
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
    if not _check_datasets(run):
        return finish(run.report, out)
    _check_compatibility(run)
    _check_finite_data(run)
    normalize = _check_norm_stats(run)
    if not _check_loading(run, normalize):
        return finish(run.report, out)
    _check_statistics(run)
    _check_transforms(run)
    exp, obs_share, p = _check_mixture(run)
    _check_prompts(run)
    path = pathlib.Path(plot_path) if plot_path is not None else pathlib.Path(f"verify_{config.name}.png")
    _check_plot(run, path, exp, obs_share, p)
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
