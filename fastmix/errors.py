"""Exception types shared by every stage. Each message names the dataset, file, key, episode or index at fault."""

from __future__ import annotations


class FastmixError(Exception):
    """Base class of every error fastmix raises on purpose."""


class ConfigError(FastmixError, ValueError):
    """A configuration value is invalid (weights, batch size, keys, repo ids)."""


class DatasetFormatError(FastmixError, ValueError):
    """A dataset's metadata or data files do not match the LeRobot format they claim."""


class MissingFileError(FastmixError, FileNotFoundError):
    """A file the dataset's metadata points to is absent (e.g. a partial download)."""


class DecodeError(FastmixError, RuntimeError):
    """A frame could not be decoded (corrupt or truncated file, timestamp out of range)."""


class WorkerError(FastmixError, RuntimeError):
    """A decode worker raised or died; the message carries where (dataset, episode, file, timestamp)."""


class IncompatibleDatasetsError(FastmixError, ValueError):
    """Datasets of one mixture differ in keys, shapes, dtypes or fps; the message holds a table of differences."""


class MixedFpsWarning(UserWarning):
    """Datasets of one mixture have different fps (allowed: delta_timestamps are per dataset, so an action
    chunk of H steps spans H / fps seconds of its own dataset)."""


__all__ = [
    "ConfigError",
    "DatasetFormatError",
    "DecodeError",
    "FastmixError",
    "IncompatibleDatasetsError",
    "MissingFileError",
    "MixedFpsWarning",
    "WorkerError",
]
