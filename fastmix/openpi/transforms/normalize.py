"""openpi's `Normalize` / `Unnormalize`: z-score or quantile normalization of the keys named in norm stats."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmix.errors import ConfigError
from fastmix.openpi.transforms.base import DataDict, Transform, _map_with_path, flatten_dict
from fastmix.openpi.transforms.common import pad_to_dim
from fastmix.openpi.transforms.effects import PixelEffect

if TYPE_CHECKING:  # only named in annotations: transforms stay a leaf
    from fastmix.openpi.norm_stats import NormStats


def _check_quantile_stats(norm_stats: Mapping[str, Any]) -> None:
    for k, v in flatten_dict(dict(norm_stats)).items():
        if getattr(v, "q01", None) is None or getattr(v, "q99", None) is None:
            raise ConfigError(
                f"quantile stats must be provided if use_quantile_norm is True. Key {k} is missing q01 or q99."
            )


def _flat_stats(norm_stats: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a (possibly nested) dict of NormStats-like leaves (anything with .mean/.std)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for k, v in node.items():
            key = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                walk(key, v)
            else:
                out[key] = v

    walk("", norm_stats)
    return out


def _as_float(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _apply_stats(data: DataDict, stats: dict[str, Any], fn: Callable, strict: bool) -> DataDict:
    if strict:
        present = set(flatten_dict(data))
        missing = [k for k in stats if k not in present]
        if missing:
            raise KeyError(f"norm stats keys {missing} are not in the data; data keys: {sorted(present)}")

    def leaf(path: str, v: Any) -> Any:
        if path not in stats:
            return v
        x = _as_float(v)
        return fn(x, stats[path]).astype(x.dtype, copy=False)

    return _map_with_path(data, leaf)


@dataclasses.dataclass(frozen=True)
class _StatsTransform(Transform):
    """Shared body of Normalize / Unnormalize: applies `_zscore` or `_quantile` to every key in `norm_stats`
    (None: identity); `_require_all_keys` says whether a stats key missing from the data is an error."""

    norm_stats: Mapping[str, NormStats] | None
    use_quantiles: bool = False

    def __post_init__(self) -> None:
        if self.norm_stats is not None and self.use_quantiles:
            _check_quantile_stats(self.norm_stats)

    @property
    def _require_all_keys(self) -> bool:
        return True

    def __call__(self, data: DataDict) -> DataDict:
        if self.norm_stats is None:
            return data
        fn = self._quantile if self.use_quantiles else self._zscore
        return _apply_stats(data, _flat_stats(self.norm_stats), fn, self._require_all_keys)

    def pixel_effect(self) -> PixelEffect:
        """"keep" unless a key of `norm_stats` ('/'-flattened) lies under `image` (the model's cameras after
        the data transforms), whose pixels it would then rescale: "change"."""
        if any(k.split("/")[0] == "image" for k in flatten_dict(dict(self.norm_stats or {}))):
            return PixelEffect.CHANGE
        return PixelEffect.KEEP

    @staticmethod
    def _zscore(x: np.ndarray, s: NormStats) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _quantile(x: np.ndarray, s: NormStats) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Normalize(_StatsTransform):
    """Normalizes the keys named in `norm_stats` (openpi's math; output keeps the input's float dtype).

    z-score: `(x - mean) / (std + 1e-6)`; quantile: `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1` (q01 -> -1,
    q99 -> 1). Stats longer than the data's last dimension are truncated to it. strict: a stats key missing
    from the data raises KeyError.
    """

    strict: bool = False

    @property
    def _require_all_keys(self) -> bool:
        return self.strict

    @staticmethod
    def _zscore(x: np.ndarray, s: NormStats) -> np.ndarray:
        d = x.shape[-1]
        mean, std = np.asarray(s.mean)[..., :d], np.asarray(s.std)[..., :d]
        return (x - mean) / (std + 1e-6)

    @staticmethod
    def _quantile(x: np.ndarray, s: NormStats) -> np.ndarray:
        d = x.shape[-1]
        q01, q99 = np.asarray(s.q01)[..., :d], np.asarray(s.q99)[..., :d]
        return (x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0


@dataclasses.dataclass(frozen=True)
class Unnormalize(_StatsTransform):
    """Inverse of `Normalize`; data dimensions beyond the stats' length pass through (mean 0, std 1). Every
    stats key must be in the data (openpi's behaviour)."""

    @staticmethod
    def _zscore(x: np.ndarray, s: NormStats) -> np.ndarray:
        mean = pad_to_dim(np.asarray(s.mean), x.shape[-1], axis=-1, value=0.0)
        std = pad_to_dim(np.asarray(s.std), x.shape[-1], axis=-1, value=1.0)
        return x * (std + 1e-6) + mean

    @staticmethod
    def _quantile(x: np.ndarray, s: NormStats) -> np.ndarray:
        q01, q99 = np.asarray(s.q01), np.asarray(s.q99)
        d = q01.shape[-1]
        head = (x[..., :d] + 1.0) / 2.0 * (q99 - q01 + 1e-6) + q01
        if d < x.shape[-1]:
            return np.concatenate([head, x[..., d:]], axis=-1)
        return head


__all__ = ["Normalize", "Unnormalize"]
