"""Normalization statistics (a leaf module: no fastmix import but the errors and the stats kernel): openpi's
`NormStats`, `RunningStats`, the `norm_stats.json` format (serialize, load, save) and where a config keeps the file.
The `fastmix compute-norm-stats` command that computes them is `fastmix.tools.compute_norm_stats`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fastmix.errors import ConfigError, DatasetFormatError, MissingFileError
from fastmix.kernels.stats import NUM_BINS, StatsAccumulator

NORM_STATS_FILE = "norm_stats.json"


@dataclasses.dataclass
class NormStats:
    """Per-dimension statistics of one key: mean, std and the 1st/99th percentiles."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if self.q01 is not None:
            self.q01 = np.asarray(self.q01, dtype=np.float64)
        if self.q99 is not None:
            self.q99 = np.asarray(self.q99, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        def lst(a: np.ndarray | None) -> list | None:
            return None if a is None else a.tolist()

        return {"mean": lst(self.mean), "std": lst(self.std), "q01": lst(self.q01), "q99": lst(self.q99)}


class RunningStats:
    """Running mean/std and histogram-based q01/q99 of vectors, computed as openpi computes them.

    Mean and mean of squares are updated batch by batch; std = sqrt(max(0, E[x^2] - E[x]^2)). Each dimension
    keeps a 5000-bin histogram over [min, max]; when a new batch widens the range the counts are moved to
    the new bins (each old bin's count placed at its left edge). A quantile q is the left edge of the first
    bin whose cumulative count reaches q * count. The histogram work is batched and vectorized over all
    dimensions (`fastmix.kernels.stats.StatsAccumulator`: the same numbers, bit for bit).
    """

    NUM_BINS = NUM_BINS

    def __init__(self) -> None:
        self._acc = StatsAccumulator(num_bins=self.NUM_BINS)

    @property
    def count(self) -> int:
        return self._acc.count

    def update(self, batch: np.ndarray) -> None:
        """Add vectors: every axis of `batch` but the last is a batch axis."""
        try:
            self._acc.update(batch)
        except ValueError as e:
            raise DatasetFormatError(str(e)) from None

    def get_statistics(self) -> NormStats:
        """The statistics so far; needs at least 2 vectors."""
        if self._acc.count < 2:
            raise ConfigError(f"Cannot compute statistics for less than 2 vectors (got {self._acc.count}).")
        r = self._acc.result()
        return NormStats(mean=r.mean, std=r.std, q01=r.quantile(0.01), q99=r.quantile(0.99))


def serialize_json(norm_stats: Mapping[str, NormStats]) -> str:
    """openpi's `norm_stats.json` text: `{"norm_stats": {key: {"mean", "std", "q01", "q99"}}}`, indent 2."""
    return json.dumps({"norm_stats": {k: _as_norm_stats(v).to_json() for k, v in norm_stats.items()}}, indent=2)


def deserialize_json(text: str) -> dict[str, NormStats]:
    """Parse openpi's `norm_stats.json` text (DatasetFormatError, a ValueError, when it is not that format)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DatasetFormatError(f"norm stats are not JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("norm_stats"), dict):
        raise DatasetFormatError('norm stats JSON must be an object with a "norm_stats" object')
    out = {}
    for k, v in data["norm_stats"].items():
        missing = [f for f in ("mean", "std") if not isinstance(v, dict) or f not in v]
        if missing:
            raise DatasetFormatError(f"norm stats for key {k!r} lack {missing}")
        out[k] = NormStats(mean=v["mean"], std=v["std"], q01=v.get("q01"), q99=v.get("q99"))
    return out


def _as_norm_stats(v: Any) -> NormStats:
    if isinstance(v, NormStats):
        return v
    return NormStats(mean=v.mean, std=v.std, q01=getattr(v, "q01", None), q99=getattr(v, "q99", None))


def save(directory: pathlib.Path | str, norm_stats: Mapping[str, NormStats]) -> pathlib.Path:
    """Write `directory/norm_stats.json`; returns its path."""
    path = pathlib.Path(directory) / NORM_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # one per writer
    try:
        tmp.write_text(serialize_json(norm_stats))
        tmp.replace(path)  # atomic: a concurrent writer's file or this one, never a mix
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(directory: pathlib.Path | str) -> dict[str, NormStats]:
    """Read `directory/norm_stats.json` (MissingFileError, a FileNotFoundError, naming the path when absent;
    DatasetFormatError, a ValueError, naming it when malformed)."""
    path = pathlib.Path(directory) / NORM_STATS_FILE
    if not path.exists():
        raise MissingFileError(f"Norm stats file not found at: {path}")
    try:
        return deserialize_json(path.read_text())
    except (ValueError, TypeError) as e:
        raise DatasetFormatError(f"malformed norm stats file {path}: {e}. Recompute it with "
                                 f"`fastmix compute-norm-stats CONFIG_NAME`.") from e


def _unknown_origin_command(command: str, config_name: str) -> str:
    return (f"`fastmix {command} {config_name}` (add --configs <your module>: the module or .py file that "
            f"registers '{config_name}')")


# `command_for(command, config_name) -> "`fastmix ...`"`: set by `fastmix.openpi.registry` when it is imported
# (it knows where each registered config came from); without it no config is registered by name.
_COMMAND_FOR: list[Callable[[str, str], str]] = [_unknown_origin_command]


def set_command_for(command_for: Callable[[str, str], str]) -> None:
    """Install the function that writes a runnable `fastmix COMMAND ... CONFIG_NAME` for a config name."""
    _COMMAND_FOR[0] = command_for


def missing_norm_stats_message(config_name: str, path: pathlib.Path | str | None) -> str:
    """The reference's "Normalization stats not found" error text, with the fastmix command to run: runnable
    as printed (`--configs MODULE_OR_FILE` included for a config that is not fastmix's own; "add --configs
    <your module>" when that module is not known; `fastmix.openpi.registry.command_for`)."""
    where = f" at {path}" if path is not None else ""
    return (
        f"Normalization stats not found{where} (config '{config_name}'). "
        f"Make sure to run {_COMMAND_FOR[0]('compute-norm-stats', config_name)}."
    )


def norm_stats_dir(config: Any, data_config: Any) -> pathlib.Path:
    """Where a config's norm stats live: `(assets.assets_dir or config.assets_dirs) / asset_id`."""
    assets = getattr(config.data, "assets", None)
    base = getattr(assets, "assets_dir", None) or config.assets_dirs
    asset_id = data_config.asset_id
    if asset_id is None:
        raise ConfigError(f"config '{config.name}' has no asset_id (set assets.asset_id or repo_ids)")
    return pathlib.Path(base) / asset_id


__all__ = [
    "NORM_STATS_FILE",
    "NormStats",
    "RunningStats",
    "deserialize_json",
    "load",
    "missing_norm_stats_message",
    "norm_stats_dir",
    "save",
    "serialize_json",
    "set_command_for",
]
