"""`delta_timestamps` → frame offsets, clamped per episode, with `<key>_is_pad`, exactly as LeRobotDataset does.

LeRobotDataset checks that every delta is a multiple of 1/fps within `tolerance_s`
(|d·fps − round(d·fps)| / fps ≤ tolerance_s, else ValueError), turns each into round(d·fps) frames, clamps
`index + offset` into the episode's [from, to) and flags the clamped ones as padding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fastmix.errors import ConfigError


def check_delta_timestamps(delta_timestamps: Mapping[str, Sequence[float]], fps: int, tolerance_s: float,
                           dataset: str) -> None:
    """Raise ConfigError (a ValueError) listing every non-finite delta, or every delta that is not a multiple
    of 1/fps ± tolerance_s."""
    nonfinite = {key: [float(d) for d in deltas if not math.isfinite(d)] for key, deltas in delta_timestamps.items()}
    nonfinite = {k: v for k, v in nonfinite.items() if v}
    if nonfinite:
        raise ConfigError(f"dataset '{dataset}': delta_timestamps must be finite seconds (multiples of 1/{fps}), "
                          f"but got {nonfinite}")
    outside = {}
    for key, deltas in delta_timestamps.items():
        bad = [float(d) for d in deltas if abs(d * fps - round(d * fps)) / fps > tolerance_s]
        if bad:
            outside[key] = bad
    if outside:
        raise ConfigError(
            f"dataset '{dataset}': delta_timestamps outside tolerance: these are not multiples of 1/{fps} s "
            f"± tolerance_s={tolerance_s}: {outside}")


def delta_indices(delta_timestamps: Mapping[str, Sequence[float]], fps: int) -> dict[str, np.ndarray]:
    """{key: int64 (H,) frame offsets round(d·fps)} (Python's round, half to even, like lerobot)."""
    return {key: np.array([round(d * fps) for d in deltas], dtype=np.int64)
            for key, deltas in delta_timestamps.items()}


def chunk_indices(index: np.ndarray, ep_from: np.ndarray, ep_to: np.ndarray,
                  offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute frame indices of a chunk, clamped into the episode, and the padding mask.

    Args:
        index: int64 (B,) absolute frame index of each sample.
        ep_from, ep_to: int64 (B,) the sample's episode range [from, to) in absolute indices.
        offsets: int64 (H,) frame offsets.
    Returns:
        (query int64 (B, H) clamped to [from, to - 1], is_pad bool (B, H) where index + offset left the episode).
    """
    raw = index[:, None] + offsets[None, :]
    lo, hi = ep_from[:, None], ep_to[:, None]
    is_pad = (raw < lo) | (raw >= hi)
    return np.clip(raw, lo, hi - 1), is_pad
