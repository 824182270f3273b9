"""The `fastmix compute-norm-stats CONFIG_NAME [--workers N] [--batch-size N] [--max-frames N] [--configs
MODULE_OR_FILE]` command.

CONFIG_NAME is a config of fastmix's registry (a user's own loaded with `--configs` or `$FASTMIX_CONFIGS`:
`fastmix.tools.user_configs`), else of openpi's own registry (`openpi.training.config.get_config`) when openpi
is importable: upstream's and the fork's TrainConfigs, whose data factory is any LeRobot data config of openpi
(`LeRobotLiberoDataConfig`, `LeRobotAlohaDataConfig`, `LeRobotDROIDDataConfig`, ...) or fastmix's
`MultiDatasetLeRobotConfig`.

It computes what openpi's `scripts/compute_norm_stats.py` computes: `state` and `actions` after the config's
repack and data transforms (delta actions counted as the model sees them), fed to openpi's RunningStats in
batches of the config's `batch_size` frames in dataset order (mean, std, and q01/q99 from its 5000-bin
histograms with their rebinning), and writes `norm_stats.json` in openpi's format where training reads it:
`(assets.assets_dir or assets_dirs) / asset_id` (openpi's script writes `assets_dirs / repo_id`, the same folder
for a config that sets neither). Differences from openpi's script: every frame is counted (openpi drops the last
`len % batch_size` frames), sums are float64 (openpi's are float32 for float32 data), and `--max-frames` draws
frames uniformly without replacement (openpi shuffles whole batches).

Only the low-dimensional columns are read: cameras are never decoded (the data transforms see 1x1 placeholder
images). `--workers N` processes (default: the CPU count, at most 8) read contiguous shares of the batches; the
exact two-pass reduction of `fastmix.tools.norm_stats_pass` makes the file the same, bit for bit, whatever N.
A NaN or inf reaching the statistics is an error naming the dataset, episode, frame and key; nothing is
written then.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix._args import check_int, check_optional_int
from fastmix.errors import ConfigError, DatasetFormatError, FastmixError
from fastmix.openpi import data_loader as _dl
from fastmix.openpi.norm_stats import NormStats, norm_stats_dir, save
from fastmix.tools import norm_stats_pass as _pass
from fastmix.tools import user_configs

STATS_KEYS = _pass.STATS_KEYS
MP_CONTEXTS = ("spawn", "forkserver", "fork")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config_name", metavar="CONFIG_NAME",
                        help="a registered config: fastmix's own, one from --configs, FILE.py:NAME / MODULE:NAME, "
                             "or one of openpi's registry")
    user_configs.add_argument(parser)
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many frames (uniform draw)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="frames per statistics batch (default: the config's batch_size, as openpi's script)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes reading the data (default: the CPU count, at most {_pass.MAX_WORKERS}); "
                             "the result is the same for any number")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-frames draw")


def lookup_config(config_name: str, cli_entries: Any = None) -> Any:
    """fastmix's registry (after loading the user's modules), else openpi's own registry when importable: a
    config of openpi's config.py, or one a `--configs` module (or `FILE.py:NAME`) put there with
    `fastmix.openpi.register_openpi_configs`."""
    try:
        return user_configs.lookup(config_name, cli_entries)
    except ConfigError as e:
        error = e
    try:
        import openpi.training.config as _openpi_config
    except ImportError:
        raise error from None
    head, sep, tail = str(config_name).rpartition(":")
    name = tail if sep and head else str(config_name)
    try:
        return _openpi_config.get_config(name)
    except ValueError:
        raise ConfigError(f"{error} (not in openpi's registry either)") from None


def run(args: argparse.Namespace) -> int:
    try:
        config = lookup_config(args.config_name, getattr(args, "configs", None))
        path = compute_norm_stats(config, max_frames=args.max_frames, batch_size=args.batch_size, seed=args.seed,
                                  workers=args.workers)
    except FastmixError as e:
        print(f"fastmix compute-norm-stats: error: {e}", file=sys.stderr)
        return 2
    for p in path if isinstance(path, list) else [path]:
        print(f"Wrote {p}")
    return 0


def compute_norm_stats(
    config: Any,
    *,
    max_frames: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    open_sources: Callable[[Any], list] | None = None,
    workers: int | None = None,
    mp_context: str | None = None,
) -> pathlib.Path | list[pathlib.Path]:
    """Compute state/actions statistics over a config's whole mixture and save them; returns the file path (for
    a `MixtureDataConfig`: the list of paths, one per asset).

    `batch_size`: frames per statistics batch (default `config.batch_size`). `open_sources(data_config)` gives
    the datasets (default: `fastmix.openpi.data_loader.open_sources`; picklable for spawned workers).
    `workers`: processes (default `norm_stats_pass.default_workers()`; 1 runs here), started with `mp_context`
    (default `norm_stats_pass.default_context()`: "fork" on Linux). Frame filters of the config (the data
    config's `frame_filters`, a mixture's per entry) are respected: only kept frames are counted.

    A `MixtureDataConfig`: each entry's frames go through that entry's own repack and data transforms; entries
    with the same norm-stats folder (`(assets.assets_dir or assets_dirs) / asset_id`) are pooled (their batches
    in entry order), the others get their own file. `max_frames` applies per asset.
    Raises DatasetFormatError (nothing written) when a value reaching the statistics is NaN or inf."""
    batch_size = check_int(getattr(config, "batch_size", 32) if batch_size is None else batch_size, "batch_size",
                           minimum=1)
    max_frames = check_optional_int(max_frames, "max_frames", minimum=2)
    workers = check_int(_pass.default_workers() if workers is None else workers, "workers", minimum=1)
    if mp_context is not None and mp_context not in MP_CONTEXTS:
        raise ConfigError(f"mp_context must be one of {MP_CONTEXTS}, got mp_context={mp_context!r}")
    data_config = config.data.create(config.assets_dirs, config.model)
    groups = _asset_groups(config, data_config)  # a config without an asset id fails before any reading
    say = (lambda msg: print(f"compute-norm-stats: {msg}", file=sys.stderr)) if progress else None
    results = []
    for out_dir, entries in groups:
        specs, readers = [], []
        for _label, entry, filters in entries:
            spec = _pass.PassSpec(_pass.for_workers(entry), int(config.model.action_horizon),
                                  open_sources or _dl._default_open_sources, batch_size)
            reader = _pass.FrameStatsReader(spec)  # opens the datasets once here: frame counts, early errors
            specs.append(spec)
            readers.append((reader, _kept_order(reader, filters)))
        specs = _frames_to_count(specs, readers, max_frames, seed, out_dir)
        label = f"{out_dir.name}: " if len(groups) > 1 else ""
        try:
            reduced = _pass.reduce_all(specs, workers=workers, mp_context=mp_context, progress=say,
                                       readers=[r for r, _ in readers], label=label)
        except DatasetFormatError as e:
            if len(entries) == 1:
                raise
            raise DatasetFormatError(f"norm stats {out_dir} pool {', '.join(e_[0] for e_ in entries)}: {e}") from e
        results.append((out_dir, {k: NormStats(mean=r.mean, std=r.std, q01=r.quantile(0.01), q99=r.quantile(0.99))
                                  for k, r in reduced.items()}))
    paths = [save(d, stats) for d, stats in results]  # written once every asset is computed
    return paths if _is_mixture(data_config) else paths[0]


def _is_mixture(data_config: Any) -> bool:
    """A `MixtureDataConfig`'s created `MixtureData` (entries with their own data configs)."""
    return hasattr(data_config, "entries") and hasattr(data_config, "names")


def _asset_groups(config: Any, data_config: Any) -> list[tuple[pathlib.Path, list[tuple[str, Any, Any]]]]:
    """[(norm-stats folder, [(entry label, its created data config, its frame filters), ...]), ...]: one
    entry for a plain config; a mixture's entries grouped by folder, in entry order."""
    if not _is_mixture(data_config):
        return [(norm_stats_dir(config, data_config), [(config.name, data_config,
                                                        getattr(data_config, "frame_filters", None))])]
    from fastmix.openpi.mixture_config import entry_repo_ids, flat_frame_filters

    mixture_filters = flat_frame_filters(data_config) or {}
    groups: dict[pathlib.Path, list] = {}
    for factory, entry, name in zip(config.data.datasets, data_config.entries, data_config.names, strict=True):
        where = types.SimpleNamespace(data=factory, assets_dirs=config.assets_dirs, name=f"{config.name} {name}")
        filters = getattr(entry, "frame_filters", None)
        repos = entry_repo_ids(entry)
        if any(r in mixture_filters for r in repos):
            filters = {r: mixture_filters[r] for r in repos if r in mixture_filters}
        groups.setdefault(norm_stats_dir(where, entry), []).append((name, entry, filters))
    return list(groups.items())


def _kept_order(reader: _pass.FrameStatsReader, frame_filters: Any) -> np.ndarray | None:
    """Global indices (int64, ascending) of the frames `frame_filters` keeps in the reader's datasets (a list per
    dataset or a dict repo id -> FrameFilter, as the loader takes them); None when nothing is filtered."""
    from fastmix.core.episodes import EpisodeRuns
    from fastmix.core.filters import kept_frames
    from fastmix.loader.loader import resolve_frame_filters

    filters = resolve_frame_filters(frame_filters, reader.sources)
    if not filters or all(f is None for f in filters):
        return None
    offsets = reader.planner.index_map.offsets
    parts = []
    for d, src in enumerate(reader.sources):
        flt = filters[d] if d < len(filters) else None
        if flt is None:
            parts.append(np.arange(len(src), dtype=np.int64) + offsets[d])
            continue
        runs = EpisodeRuns.from_rows(*src.frame_positions(), name=src.name)
        kept = kept_frames(flt, runs, where=f"frame_filters[{d}] (dataset {src.name!r})")
        parts.append(np.asarray(kept.local_indices(), dtype=np.int64) + offsets[d])
    return np.concatenate(parts)


def _frames_to_count(specs: list, readers: list, max_frames: int | None, seed: int,
                     out_dir: pathlib.Path) -> list:
    """Each spec with its counted frames: every kept frame, or `max_frames` drawn uniformly without replacement
    from the pool's kept frames (ascending within each entry)."""
    kept = [np.arange(r.total, dtype=np.int64) if order is None else order for r, order in readers]
    counts = [len(k) for k in kept]
    total = sum(counts)
    if total < 2:
        raise ConfigError(f"Cannot compute statistics for less than 2 vectors (norm stats {out_dir}: {total} "
                          f"frame(s) kept)")
    if max_frames is not None and max_frames < total:
        q = np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))
        bounds = np.cumsum([0, *counts])
        kept = [k[q[(q >= a) & (q < b)] - a] for k, a, b in zip(kept, bounds[:-1], bounds[1:], strict=True)]
    elif all(order is None for _, order in readers):
        return [dataclasses.replace(s, num_frames=n, order=None) for s, n in zip(specs, counts, strict=True)]
    return [dataclasses.replace(s, num_frames=len(k), order=k) for s, k in zip(specs, kept, strict=True)]


__all__ = ["STATS_KEYS", "add_arguments", "compute_norm_stats", "lookup_config", "run"]
