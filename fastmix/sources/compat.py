"""`check_compatible(sources)`: can these datasets be mixed into one batch?

Every camera key must exist in each dataset with the same decoded (H, W, C) (video and image storage mix
freely: both decode to uint8 HWC); every low-dim key with the same dtype and shape; and, unless
`check_fps=False`, the same fps. A failure lists every difference of every dataset in one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastmix.errors import ConfigError, IncompatibleDatasetsError

MISSING = "missing"


def signature(source: Any, key: str) -> str:
    """How `key` looks in `source`: "camera HxWxC", "<dtype> (shape)" or "missing"."""
    if key in source.camera_keys:
        return "camera " + "x".join(str(d) for d in source.camera_shape(key))
    if key in source.lowdim_keys:
        ft = source.features[key]
        return f"{ft['dtype']} {tuple(int(d) for d in ft['shape'])}"
    return MISSING


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def compatibility_table(sources: Sequence[Any], keys: Sequence[str] | None = None, *,
                        only_differences: bool = False, check_fps: bool = True) -> tuple[str, int]:
    """(table, number of differing rows): one row per key (and fps), one column per dataset."""
    if keys is None:
        keys = list(dict.fromkeys(k for s in sources for k in [*s.camera_keys, *s.lowdim_keys]))
    header = ["key", *[s.name for s in sources]]
    rows, differing = [], 0
    for key in keys:
        sigs = [signature(s, key) for s in sources]
        differs = len(set(sigs)) > 1
        differing += differs
        if differs or not only_differences:
            rows.append([key, *sigs])
    fps = [str(s.fps) for s in sources]
    fps_differs = check_fps and len(set(fps)) > 1
    differing += fps_differs
    if fps_differs or not only_differences:
        rows.append(["fps", *fps])
    return _table(header, rows), differing


def check_compatible(sources: Sequence[Any], keys: Sequence[str] | None = None, *, check_fps: bool = True) -> str:
    """Raise IncompatibleDatasetsError with a table of every difference (keys, shapes, dtypes, fps) between
    `sources` (LeRobotSource-like); return the full table when they agree.

    Args:
        sources: the datasets of one mixture.
        keys: the keys that must agree (default: every camera and low-dim key of any source).
        check_fps: also require one fps (delta_timestamps are per dataset, so differing fps can be allowed).
    """
    if not sources:
        raise ConfigError("check_compatible needs at least one source, but got none")
    table, differing = compatibility_table(sources, keys, only_differences=True, check_fps=check_fps)
    if differing:
        raise IncompatibleDatasetsError(
            f"{differing} difference(s) between the datasets of the mixture "
            f"({', '.join(repr(s.name) for s in sources)}):\n{table}")
    return compatibility_table(sources, keys, check_fps=check_fps)[0]
