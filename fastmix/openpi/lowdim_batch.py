"""The low-dimensional part of a batch without its cameras: openpi's action chunks gathered as the loader gathers
them, for the passes that never decode an image (norm stats)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastmix.loader.plan import BatchPlanner
from fastmix.openpi.data_loader import action_delta_timestamps


def lowdim_planner(sources: Sequence[Any], data_config: Any, horizon: int) -> BatchPlanner:
    """The loader's `BatchPlanner` over `sources` with openpi's action chunks of `horizon` steps."""
    keys = tuple(getattr(data_config, "action_sequence_keys", ("actions",)))
    return BatchPlanner(sources, action_delta_timestamps(sources, keys, horizon))


def lowdim_batch(planner: BatchPlanner, global_index: np.ndarray, data_config: Any) -> dict[str, Any]:
    """A raw batch of the low-dimensional data of `global_index` (n,) (global indices of the planner's mixture),
    gathered as the loader gathers it (`BatchPlanner.plan`: same keys, dtypes, action chunks, `<key>_is_pad`,
    indices), plus "task", "prompt" when `prompt_from_task`, and cameras as 1x1 black placeholders.
    Used where images are not needed (norm stats)."""
    global_index = np.asarray(global_index, dtype=np.int64)
    n = int(global_index.size)
    out: dict[str, Any] = {k: np.zeros((n, *planner.fields[k][0]), dtype=planner.fields[k][1])
                           for k in planner.lowdim_fields}
    plan = planner.plan(0, global_index, out)
    for key in planner.camera_keys:
        out[key] = np.zeros((n, 1, 1, 3), dtype=np.uint8)
    out["task"] = list(plan.tasks)
    if getattr(data_config, "prompt_from_task", False):
        out["prompt"] = list(plan.tasks)
    return out
