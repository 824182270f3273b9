"""openpi's `create_torch_dataset` on fastmix's reader: one LeRobot dataset per repo id as a map-style torch
dataset (items exactly as `LeRobotDataset[i]`, plus `prompt`), concatenated."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastmix.openpi.data_loader import action_delta_timestamps, repo_ids_of, resolve_root


class SourceDataset:
    """One LeRobot dataset as a map-style torch dataset (items as `LeRobotDataset[i]`, plus `prompt`)."""

    def __init__(self, source: Any, prompt_from_task: bool) -> None:
        self.source = source
        self.prompt_from_task = prompt_from_task

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.source[int(index)]
        if self.prompt_from_task:
            item = {**item, "prompt": self.source.tasks_of(np.array([int(index)], dtype=np.int64))[0]}
        return item


def create_torch_dataset(data_config: Any, action_horizon: int, model_config: Any = None) -> Any:
    """openpi's `create_torch_dataset` for one or many repo ids: a `torch.utils.data.ConcatDataset` of
    per-dataset map-style datasets (action chunks of `action_horizon` steps, prompts from tasks)."""
    import torch.utils.data

    from fastmix.sources.lerobot_source import LeRobotSource

    keys = tuple(getattr(data_config, "action_sequence_keys", ("actions",)))
    home = getattr(data_config, "lerobot_home", None)
    parts = []
    for repo_id in repo_ids_of(data_config):
        src = LeRobotSource(repo_id, root=resolve_root(repo_id, home))  # opened once; the chunk needs its fps
        src = src.with_delta_timestamps(action_delta_timestamps([src], keys, action_horizon)[0])
        parts.append(SourceDataset(src, bool(getattr(data_config, "prompt_from_task", False))))
    return torch.utils.data.ConcatDataset(parts)



__all__ = ["SourceDataset", "create_torch_dataset"]
