"""lerobot internals the tests compare against, wherever the installed lerobot keeps them (tested: 0.4.4, 0.6.1).

0.6 moved `check_delta_timestamps` and `get_delta_indices` from `lerobot.datasets.utils` to
`lerobot.datasets.feature_utils`; the other helpers the tests import (`LeRobotDataset`, `aggregate_stats`,
`decode_video_frames`) kept their modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_DELTA_MODULES = ("lerobot.datasets.feature_utils", "lerobot.datasets.utils")  # newest first


def lerobot_attr(name: str, modules: tuple[str, ...] = _DELTA_MODULES) -> Any:
    """`name` from the first of `modules` that has it (ImportError naming all the places tried otherwise)."""
    for module in modules:
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(found, name):
            return getattr(found, name)
    raise ImportError(f"lerobot has no {name} in any of {modules}: a lerobot version the tests do not know")


def check_delta_timestamps(*args: Any, **kwargs: Any) -> Any:
    """lerobot's own `check_delta_timestamps`."""
    return lerobot_attr("check_delta_timestamps")(*args, **kwargs)


def get_delta_indices(*args: Any, **kwargs: Any) -> Any:
    """lerobot's own `get_delta_indices`."""
    return lerobot_attr("get_delta_indices")(*args, **kwargs)
