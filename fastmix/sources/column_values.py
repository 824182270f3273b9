"""`LowDimTable.values`: a dict of the materialized low-dim columns that loads any other low-dim key of the
dataset on first access (used by `fastmix.sources.lowdim`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


class ColumnValues(dict):
    """`LowDimTable.values`: the materialized columns; a low-dim key of the dataset that is not materialized
    yet is loaded (and added to the store) on first access, so `key in values` holds for every low-dim key."""

    def __init__(self, arrays: dict[str, np.ndarray], loadable: Iterable[str],
                 loader: Callable[[list[str]], dict[str, np.ndarray]], origin: tuple | None) -> None:
        super().__init__(arrays)
        self.loadable = frozenset(loadable)
        self.origin = origin
        self._loader = loader
        self._lock = threading.Lock()

    def __missing__(self, key: str) -> np.ndarray:
        if key not in self.loadable:
            raise KeyError(key)
        with self._lock:
            if not dict.__contains__(self, key):
                self.update(self._loader([key]))
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self.loadable

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __reduce__(self) -> tuple:
        return (dict, (dict(self),))
