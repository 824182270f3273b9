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
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix._args import check_int, check_optional_int
from fastmix.errors import ConfigError, FastmixError
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
    """fastmix's registry (after loading the user's modules), else openpi's own registry when importable."""
    try:
        return user_configs.lookup(config_name, cli_entries)
    except ConfigError as e:
        try:
            import openpi.training.config as _openpi_config
        except ImportError:
            raise e from None
        try:
            return _openpi_config.get_config(config_name)
        except ValueError:
            raise ConfigError(f"{e} (not in openpi's registry either)") from None


def run(args: argparse.Namespace) -> int:
    try:
        config = lookup_config(args.config_name, getattr(args, "configs", None))
        path = compute_norm_stats(config, max_frames=args.max_frames, batch_size=args.batch_size, seed=args.seed,
                                  workers=args.workers)
    except FastmixError as e:
        print(f"fastmix compute-norm-stats: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
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
) -> pathlib.Path:
    """Compute state/actions statistics over a config's whole mixture and save them; returns the file path.

    `batch_size`: frames per statistics batch (default `config.batch_size`). `open_sources(data_config)` gives
    the datasets (default: `fastmix.openpi.data_loader.open_sources`; picklable when `workers` > 1).
    `workers`: processes (default `norm_stats_pass.default_workers()`; 1 runs here), started with `mp_context`
    (default `norm_stats_pass.default_context()`: "fork" on Linux).
    Raises DatasetFormatError (nothing written) when a value reaching the statistics is NaN or inf."""
    batch_size = check_int(getattr(config, "batch_size", 32) if batch_size is None else batch_size, "batch_size",
                           minimum=1)
    max_frames = check_optional_int(max_frames, "max_frames", minimum=2)
    workers = check_int(_pass.default_workers() if workers is None else workers, "workers", minimum=1)
    if mp_context is not None and mp_context not in MP_CONTEXTS:
        raise ConfigError(f"mp_context must be one of {MP_CONTEXTS}, got mp_context={mp_context!r}")
    data_config = config.data.create(config.assets_dirs, config.model)
    out_dir = norm_stats_dir(config, data_config)  # a config without an asset id fails before any reading
    spec = _pass.PassSpec(_pass.for_workers(data_config), int(config.model.action_horizon),
                          open_sources or _dl._default_open_sources, batch_size)
    reader = _pass.FrameStatsReader(spec)  # opens the datasets once here: the frame count, early errors
    total = reader.total
    order = None
    if max_frames is not None and max_frames < total:
        order = np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False)).astype(np.int64)
    count = total if order is None else len(order)
    if count < 2:
        raise ConfigError(f"Cannot compute statistics for less than 2 vectors (the mixture has {count} frame(s))")
    spec = dataclasses.replace(spec, num_frames=count, order=order)
    say = (lambda msg: print(f"compute-norm-stats: {msg}", file=sys.stderr)) if progress else None
    reduced = _pass.reduce_all(spec, workers=workers, mp_context=mp_context, progress=say, reader=reader)
    norm_stats = {k: NormStats(mean=r.mean, std=r.std, q01=r.quantile(0.01), q99=r.quantile(0.99))
                  for k, r in reduced.items()}
    return save(out_dir, norm_stats)


__all__ = ["STATS_KEYS", "add_arguments", "compute_norm_stats", "lookup_config", "run"]
