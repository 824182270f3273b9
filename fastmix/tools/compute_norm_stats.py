"""The `fastmix compute-norm-stats CONFIG_NAME [--max-frames N] [--configs MODULE_OR_FILE]` command (a config of
the user's own is loaded with `--configs` or `$FASTMIX_CONFIGS`: `fastmix.tools.user_configs`).

Computes the statistics of `state` and `actions` after the config's repack and data transforms (so delta actions
are counted as the model sees them) over the whole mixture, every frame of every dataset once (or `--max-frames`
frames drawn uniformly), and writes `assets_dir/asset_id/norm_stats.json` (format: `fastmix.openpi.norm_stats`).
Only the low-dimensional columns are read: cameras are never decoded (the data transforms see 1x1 placeholder
images). A NaN or inf reaching the statistics is an error naming the dataset, episode, frame and key; nothing is
written then.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastmix._args import check_int, check_optional_int
from fastmix.errors import ConfigError, DatasetFormatError, FastmixError
from fastmix.openpi import data_loader as _dl
from fastmix.openpi import transforms as _t
from fastmix.openpi.norm_stats import RunningStats, norm_stats_dir, save
from fastmix.tools import user_configs

STATS_KEYS = ("state", "actions")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config_name", metavar="CONFIG_NAME",
                        help="a registered config: fastmix's own, one from --configs, or FILE.py:NAME / MODULE:NAME")
    user_configs.add_argument(parser)
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many frames (uniform draw)")
    parser.add_argument("--batch-size", type=int, default=256, help="frames read per step (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-frames draw")


def run(args: argparse.Namespace) -> int:
    try:
        config = user_configs.lookup(args.config_name, getattr(args, "configs", None))
        path = compute_norm_stats(config, max_frames=args.max_frames, batch_size=args.batch_size, seed=args.seed)
    except FastmixError as e:
        print(f"fastmix compute-norm-stats: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
    return 0


def _first_non_finite(batch: dict[str, Any], out: dict[str, Any], key: str, sources: Sequence[Any]) -> str:
    """Where the first non-finite value of transformed `out[key]` comes from: dataset, episode, frame, and the raw
    numeric features that hold a NaN/inf there (an action chunk's bad step names the frame it was read from)."""
    n = len(batch["dataset_index"])
    bad_rows = ~np.isfinite(np.asarray(out[key], dtype=np.float64).reshape(n, -1)).all(axis=1)
    row = int(np.flatnonzero(bad_rows)[0])
    d = int(batch["dataset_index"][row])
    episode = batch["episode_index"][row] if "episode_index" in batch else "?"
    frame = batch["frame_index"][row] if "frame_index" in batch else None
    raw, steps = [], []
    for k, v in batch.items():
        if not (isinstance(v, np.ndarray) and v.dtype.kind == "f") or np.isfinite(v[row]).all():
            continue
        step = 0
        if v.ndim == 3:  # an action chunk (n, horizon, dim): its first bad step is the frame that holds the value
            step = int(np.flatnonzero(~np.isfinite(v[row]).all(axis=1))[0])
        raw.append(repr(k) + (f" (action chunk step {step} of frame {frame})" if step else ""))
        steps.append(step)
    at = "?" if frame is None else int(frame) + min(steps, default=0)
    cause = f"raw feature(s) {', '.join(raw)} hold NaN/inf" if raw else "the transforms produced it"
    return (f"dataset '{sources[d].name}', episode {episode}, frame {at}: key {key!r} is not finite ({cause}). "
            f"Fix or drop that episode: norm stats would be NaN; nothing was written.")


def compute_norm_stats(
    config: Any,
    *,
    max_frames: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    open_sources: Callable[[Any], list] | None = None,
) -> pathlib.Path:
    """Compute state/actions statistics over a config's whole mixture and save them; returns the file path.

    `open_sources(data_config)` gives the datasets (default: `fastmix.openpi.data_loader.open_sources`). Raises
    DatasetFormatError (nothing written) when a value reaching the statistics is NaN or inf."""
    import tqdm

    batch_size = check_int(batch_size, "batch_size", minimum=1)
    max_frames = check_optional_int(max_frames, "max_frames", minimum=2)
    data_config = config.data.create(config.assets_dirs, config.model)
    sources = (open_sources or _dl.open_sources)(data_config)
    planner = _dl.lowdim_planner(sources, data_config, config.model.action_horizon)
    total = planner.index_map.total
    if max_frames is not None and max_frames < total:
        rng = np.random.default_rng(seed)
        order = np.sort(rng.choice(total, size=max_frames, replace=False)).astype(np.int64)
    else:
        order = np.arange(total, dtype=np.int64)
    pipeline = [
        *data_config.repack_transforms.inputs,
        *data_config.data_transforms.inputs,
        _t.RemoveStrings(),
    ]
    stats = {k: RunningStats() for k in STATS_KEYS}
    steps = math.ceil(len(order) / batch_size)
    for step in tqdm.tqdm(range(steps), desc="Computing stats", unit="batch", disable=not progress):
        chunk = order[step * batch_size : (step + 1) * batch_size]
        batch = _dl.lowdim_batch(planner, chunk, data_config)
        out = _t.apply_batch(pipeline, dict(batch))
        for k in STATS_KEYS:
            if k not in out:
                raise ConfigError(f"key {k!r} is not in the transformed data; keys: {sorted(_t.flatten_dict(out))}")
            values = np.asarray(out[k])
            if not np.isfinite(values).all():
                raise DatasetFormatError(_first_non_finite(batch, out, k, sources))
            stats[k].update(values)
    norm_stats = {k: s.get_statistics() for k, s in stats.items()}
    return save(norm_stats_dir(config, data_config), norm_stats)


__all__ = ["STATS_KEYS", "add_arguments", "compute_norm_stats", "run"]
