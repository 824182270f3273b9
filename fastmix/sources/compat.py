"""`check_compatible(sources)`: can these datasets be mixed into one batch? `check_mixture(sources)`: the
mixture-level rules every loader applies where sources are combined (no dataset twice; the fps rule).

Every camera key must exist in each dataset with the same decoded (H, W, C) (video and image storage mix
freely: both decode to uint8 HWC); every low-dim key with the same dtype and shape; and, unless
`check_fps=False`, the same fps. A failure lists every difference of every dataset in one table.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from fastmix.errors import ConfigError, IncompatibleDatasetsError, MixedFpsWarning

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


def check_distinct(sources: Sequence[Any]) -> None:
    """Raise ConfigError when two sources are one dataset on disk: the same root directory reached through a
    symlink, a second repo id or a bind mount (same device and inode after resolving symlinks), which would
    count its frames twice. Sources without a `root` (in-memory fakes) are skipped."""
    seen: dict[tuple[int, int], Any] = {}
    for src in sources:
        root = getattr(src, "root", None)
        if root is None:
            continue
        try:
            st = os.stat(root)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        first = seen.setdefault(key, src)
        if first is not src:
            raise ConfigError(
                f"datasets '{first.name}' (root {first.root}) and '{src.name}' (root {src.root}) are the same "
                f"dataset on disk ({os.path.realpath(src.root)}): it would be counted twice in the mixture. "
                f"Keep one of them and raise its weight instead")


def fps_rule(sources: Sequence[Any], *, strict: bool = False) -> str | None:
    """The mixed-fps rule. Datasets of different fps may be mixed: delta_timestamps (the action chunk) are
    built per dataset, so a chunk of H steps spans H / fps seconds of its own dataset and every sample stays
    internally consistent; but chunks then cover different durations, so a MixedFpsWarning says so (or,
    with `strict`, IncompatibleDatasetsError). Returns the message, or None when all fps agree."""
    fps = {s.name: int(s.fps) for s in sources}
    if len(set(fps.values())) <= 1:
        return None
    msg = (f"the datasets of the mixture have different fps ({', '.join(f'{n!r}: {f}' for n, f in fps.items())}); "
           f"each action chunk is built at its own dataset's fps, so a chunk of H steps spans H/fps seconds and "
           f"chunks of different datasets cover different durations. Resample the datasets to one fps if the "
           f"policy must see one time step")
    if strict:
        raise IncompatibleDatasetsError(msg)
    warnings.warn(msg, MixedFpsWarning, stacklevel=3)
    return msg


def check_mixture(sources: Sequence[Any], *, strict_fps: bool = False) -> None:
    """Mixture-level checks of sources about to be combined: `check_distinct`, then `fps_rule` (a
    MixedFpsWarning, or IncompatibleDatasetsError with `strict_fps`). Keys/shapes are the loader's
    `check_compatible` / plan check."""
    check_distinct(sources)
    fps_rule(sources, strict=strict_fps)
