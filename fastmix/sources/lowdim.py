"""Low-dim columns of a LeRobot dataset loaded once into contiguous numpy arrays.

Rows are ordered as LeRobotDataset orders them (data files sorted by path, rows in file order, filtered to the
selected episodes), so row position r here is `LeRobotDataset(...)[r]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastmix.errors import ConfigError, DatasetFormatError, MissingFileError
from fastmix.sources.meta import INDEX_KEYS, DatasetMeta, column_to_numpy


@dataclass(frozen=True)
class LowDimTable:
    """Columns (N rows) of the selected episodes.

    values[key]: (N, *shape) for every low-dim key and the INDEX_KEYS ((N,) for scalars; timestamp float32,
    indices int64). data_files: absolute parquet paths; file_id int32 (N,) / file_row int64 (N,): where each
    row lives (image features are read from there). ep_pos int64 (N,): row of the episode in meta.episodes.
    """

    values: dict[str, np.ndarray]
    data_files: list[str]
    file_id: np.ndarray
    file_row: np.ndarray
    ep_pos: np.ndarray
    sorted_index: np.ndarray  # the "index" column, sorted
    sorted_pos: np.ndarray  # row positions in that sorted order

    @property
    def num_rows(self) -> int:
        return len(self.file_id)

    def positions_of(self, absolute: np.ndarray, dataset: str) -> np.ndarray:
        """Row positions of absolute frame indices ("index" column values); absent ones raise."""
        k = np.searchsorted(self.sorted_index, absolute)
        k = np.minimum(k, max(len(self.sorted_index) - 1, 0))
        if len(self.sorted_index) == 0 or np.any(self.sorted_index[k] != absolute):
            bad = absolute if len(self.sorted_index) == 0 else absolute[self.sorted_index[k] != absolute]
            raise DatasetFormatError(
                f"dataset '{dataset}': frame index(es) {np.unique(bad).tolist()[:10]} lie inside a loaded episode "
                f"according to meta/ but are absent from its data files")
        return self.sorted_pos[k]


def _read_file(path: Path, columns: list[str], selected: np.ndarray | None,
               dataset: str) -> tuple[pa.Table, np.ndarray]:
    """`columns` of one data parquet, filtered to the episodes `selected` (None: all), and their row numbers."""
    if not path.is_file():
        raise MissingFileError(f"dataset '{dataset}': data file {path} is missing")
    try:
        missing = sorted(set(columns) - set(pq.read_schema(path).names))
        if missing:
            raise DatasetFormatError(f"dataset '{dataset}': data file {path} lacks column(s) {missing}")
        table = pq.read_table(path, columns=columns, memory_map=True)
    except (OSError, pa.ArrowException) as e:
        raise DatasetFormatError(f"dataset '{dataset}': cannot read data file {path}: {e}") from e
    rows = np.arange(table.num_rows, dtype=np.int64)
    if selected is not None:
        mask = pc.is_in(table.column("episode_index"), value_set=pa.array(selected)).to_numpy(zero_copy_only=False)
        table, rows = table.filter(mask), rows[mask]
    return table, rows


def load_lowdim(meta: DatasetMeta, ep_positions: np.ndarray) -> LowDimTable:
    """Load the low-dim and index columns of the episodes at `ep_positions` (rows of meta.episodes)."""
    eps = meta.episodes
    dataset = meta.name
    if len(ep_positions) == 0:
        raise ConfigError(f"dataset '{dataset}' at {meta.root} is empty: no episode is selected "
                          f"(it has {len(eps)} episodes); select at least one episode or drop it from the mixture")
    selected_eps = eps.episode_index[ep_positions]
    filter_eps = None if len(ep_positions) == len(eps) else selected_eps
    files = sorted(set(eps.data_file[ep_positions].tolist()))
    keys = list(dict.fromkeys([*meta.lowdim_keys, *INDEX_KEYS]))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    file_ids, file_rows = [], []
    for fid, rel in enumerate(files):
        path = meta.root / rel
        table, rows = _read_file(path, keys, filter_eps, dataset)
        for k in keys:
            shape = meta.features[k]["shape"] if k in meta.features else (1,)
            parts[k].append(column_to_numpy(table.column(k), shape, k, path, dataset))
        file_ids.append(np.full(len(rows), fid, dtype=np.int32))
        file_rows.append(rows)
    values = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        values[k] = values[k].astype(np.int64, copy=False)
    values["timestamp"] = values["timestamp"].astype(np.float32, copy=False)
    ep_pos = eps.positions(values["episode_index"], dataset)
    index = values["index"]
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    if len(sorted_index) > 1 and np.any(sorted_index[1:] == sorted_index[:-1]):
        dup = sorted_index[1:][sorted_index[1:] == sorted_index[:-1]]
        raise DatasetFormatError(f"dataset '{dataset}': frame index(es) {np.unique(dup).tolist()[:10]} "
                                 f"appear more than once in its data files")
    expected = int(eps.length[ep_positions].sum())
    if len(index) != expected:
        raise DatasetFormatError(f"dataset '{dataset}': data files hold {len(index)} frames of the selected "
                                 f"episodes but meta/ lists {expected}")
    return LowDimTable(values, [str(meta.root / f) for f in files],
                       np.concatenate(file_ids) if file_ids else np.zeros(0, np.int32),
                       np.concatenate(file_rows) if file_rows else np.zeros(0, np.int64),
                       ep_pos, sorted_index, order.astype(np.int64))
