"""Low-dim columns of a LeRobot dataset as contiguous numpy arrays, mapped from the node's low-dim store.

Rows are ordered as LeRobotDataset orders them (data files sorted by path, rows in file order, filtered to the
selected episodes), so row position r here is `LeRobotDataset(...)[r]`.

`load_lowdim` reads the data parquet files once (in a thread pool, in record batches of 64k rows, each column
written straight to its place) into the store of `fastmix.sources.store`, then maps the store's files; later
opens (other ranks, workers, runs) only stat the files and map. Only the requested keys, the action keys and
the INDEX_KEYS are materialized; another key is added to the store the first time it is read. When the store
cannot be written the same reader fills in-memory arrays instead (with a warning). A damaged store file is
reported and rebuilt; entries of another user are never read; the cache's size bound, file modes and temporary
files follow `fastmix.sources.cache_dir`.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastmix.errors import ConfigError, DatasetFormatError, FastmixError, MissingFileError
from fastmix.sources import cache_dir, store
from fastmix.sources.column_values import ColumnValues
from fastmix.sources.meta import INDEX_KEYS, DatasetMeta, column_to_numpy

ACTION_KEY_NAMES: tuple[str, ...] = ("action", "actions")
BATCH_ROWS = 1 << 16  # rows per record batch read from a parquet file
_DERIVED = ("file_id", "file_row", "ep_pos")


@dataclass(frozen=True)
class LowDimTable:
    """Columns (N rows) of the selected episodes.

    values[key]: (N, *shape) for every low-dim key and the INDEX_KEYS ((N,) for scalars; timestamp float32,
    indices int64). data_files: absolute parquet paths; file_id int32 (N,) / file_row int64 (N,): where each
    row lives (image features are read from there). ep_pos int64 (N,): row of the episode in meta.episodes.
    Arrays are read-only maps of the low-dim store (or in-memory arrays when it is unavailable).
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

    def __reduce__(self) -> tuple:
        """A store-backed table pickles as the arguments that reopen it (the receiver maps the same files)."""
        origin = getattr(self.values, "origin", None)
        if origin is not None:
            return (load_lowdim, origin)
        return (LowDimTable, (dict(self.values), self.data_files, self.file_id, self.file_row, self.ep_pos,
                              self.sorted_index, self.sorted_pos))


# -- what to read ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """The data files of a selection and where each file's rows go. expected/offsets: int64 (F,) / (F+1,)
    rows per file according to meta/ and their first row; selected: sorted episode indices to keep, or None
    (all rows)."""

    meta: DatasetMeta
    ep_positions: np.ndarray
    files: list[str]
    expected: np.ndarray
    offsets: np.ndarray
    selected: np.ndarray | None

    @property
    def dataset(self) -> str:
        return self.meta.name

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def path(self, fid: int) -> Path:
        return self.meta.root / self.files[fid]


def _data_paths(plan: _Plan) -> list[str]:
    base = os.fspath(plan.meta.root)
    return [os.path.join(base, f) for f in plan.files]


def _make_plan(meta: DatasetMeta, ep_positions: np.ndarray) -> _Plan:
    eps = meta.episodes
    ep_positions = np.asarray(ep_positions, dtype=np.int64)
    files, inverse = np.unique(eps.data_file[ep_positions].astype(object), return_inverse=True)
    expected = np.bincount(inverse.ravel(), weights=eps.length[ep_positions], minlength=len(files)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(expected)]).astype(np.int64)
    selected = None if len(ep_positions) == len(eps) else np.sort(eps.episode_index[ep_positions])
    return _Plan(meta, ep_positions, [str(f) for f in files], expected, offsets, selected)


def _wanted_keys(meta: DatasetMeta, keys: Sequence[str] | None) -> list[str]:
    """Keys to materialize: `keys` (None: every low-dim key), the action keys and the INDEX_KEYS."""
    lowdim = meta.lowdim_keys
    if keys is None:
        return list(dict.fromkeys([*lowdim, *INDEX_KEYS]))
    unknown = [k for k in keys if k not in lowdim and k not in INDEX_KEYS]
    if unknown:
        raise ConfigError(f"dataset '{meta.name}' at {meta.root}: low-dim key(s) {unknown} are not numeric features "
                          f"of it; its low-dim keys: {lowdim}")
    actions = [k for k in lowdim if k in ACTION_KEY_NAMES]
    return list(dict.fromkeys([*keys, *actions, *INDEX_KEYS]))


def _row_shape(meta: DatasetMeta, key: str) -> tuple[int, ...]:
    if key in INDEX_KEYS:
        return ()
    shape = tuple(meta.features[key]["shape"])
    return () if shape == (1,) else shape


def _column_dtypes(plan: _Plan, keys: Sequence[str]) -> dict[str, np.dtype]:
    """Stored dtype of each key: timestamp float32, the other INDEX_KEYS int64, features as in the first file."""
    out = {k: np.dtype(np.float32 if k == "timestamp" else np.int64) for k in keys if k in INDEX_KEYS}
    rest = [k for k in keys if k not in INDEX_KEYS]
    if rest:
        path = plan.path(0)
        if not path.is_file():
            raise MissingFileError(f"dataset '{plan.dataset}': data file {path} is missing")
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as e:
            raise DatasetFormatError(f"dataset '{plan.dataset}': cannot read data file {path}: {e}") from e
        missing = [k for k in rest if k not in schema.names]
        if missing:
            raise DatasetFormatError(f"dataset '{plan.dataset}': data file {path} lacks column(s) {missing}")
        for k in rest:
            t = schema.field(k).type
            while (isinstance(t, pa.ExtensionType) or pa.types.is_list(t) or pa.types.is_fixed_size_list(t)
                   or pa.types.is_large_list(t)):  # HF Array2D etc. are extension types over nested lists
                t = t.storage_type if isinstance(t, pa.ExtensionType) else t.value_type
            try:
                out[k] = np.dtype(t.to_pandas_dtype())
            except (NotImplementedError, TypeError) as e:
                raise DatasetFormatError(f"dataset '{plan.dataset}': column {k!r} of {path} has non-numeric "
                                         f"type {schema.field(k).type}") from e
    return out


# -- reading -----------------------------------------------------------------------------------------------
def _batches(plan: _Plan, fid: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` of data file `fid`; unreadable files and absent columns raise naming them."""
    path, dataset = plan.path(fid), plan.dataset
    if not path.is_file():
        raise MissingFileError(f"dataset '{dataset}': data file {path} is missing")
    try:
        with pq.ParquetFile(path) as pf:
            missing = sorted(set(columns) - set(pf.schema_arrow.names))
            if missing:
                raise DatasetFormatError(f"dataset '{dataset}': data file {path} lacks column(s) {missing}")
            yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise DatasetFormatError(f"dataset '{dataset}': cannot read data file {path}: {e}") from e


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[pos] == values


def _fill_file(plan: _Plan, fid: int, keys: list[str], dtypes: dict[str, np.dtype], cols: dict[str, Any],
               derived: bool) -> int:
    """Write the selected rows of data file `fid` into `cols` at the file's offset; returns the rows it holds
    (when that differs from meta/'s count nothing beyond the file's share is written and the caller raises)."""
    path, dataset = plan.path(fid), plan.dataset
    columns = list(dict.fromkeys([*keys, "episode_index"])) if plan.selected is not None or derived else keys
    start, limit = int(plan.offsets[fid]), int(plan.expected[fid])
    seen = written = 0
    for batch in _batches(plan, fid, columns):
        n = batch.num_rows
        mask = ep = None
        if plan.selected is not None or derived:
            ep = batch.column("episode_index").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if plan.selected is not None:
            mask = _isin_sorted(ep, plan.selected)
            ep = ep[mask]
        m = n if mask is None else int(mask.sum())
        if written + m <= limit:
            for k in keys:
                arr = column_to_numpy(batch.column(k), (1,) if k in INDEX_KEYS else plan.meta.features[k]["shape"],
                                      k, path, dataset)
                if mask is not None:
                    arr = arr[mask]
                target = dtypes[k]
                if arr.dtype != target:
                    if k not in INDEX_KEYS and not np.can_cast(arr.dtype, target, "safe"):
                        raise DatasetFormatError(
                            f"dataset '{dataset}': column {k!r} of {path} is {arr.dtype} but {plan.path(0)} holds "
                            f"it as {target}; rewrite the file with one dtype per feature")
                    arr = arr.astype(target)
                cols[k].write(start + written, arr)
            if derived:
                rows = np.arange(seen, seen + n, dtype=np.int64)
                cols["file_row"].write(start + written, rows if mask is None else rows[mask])
                cols["file_id"].write(start + written, np.full(m, fid, dtype=np.int32))
                cols["ep_pos"].write(start + written, plan.meta.episodes.positions(ep, dataset))
        written += m
        seen += n
        del batch
    return written


def _threads(num_files: int) -> int:
    env = os.environ.get("FASTMIX_STORE_THREADS")
    n = int(env) if env else min(8, os.cpu_count() or 1)
    return max(1, min(n, num_files))


def _fill(plan: _Plan, keys: list[str], cols: dict[str, Any], derived: bool) -> None:
    """Read every data file of the plan into `cols` (thread pool: parquet decoding and pwrite release the GIL);
    a row count that disagrees with meta/ raises naming the first file at fault."""
    dtypes = _column_dtypes(plan, keys)

    def one(fid: int) -> int:
        return _fill_file(plan, fid, keys, dtypes, cols, derived)

    n = _threads(len(plan.files))
    try:
        if n == 1:
            counts = [one(f) for f in range(len(plan.files))]
        else:
            with ThreadPoolExecutor(n, thread_name_prefix="fastmix-lowdim") as pool:
                counts = list(pool.map(one, range(len(plan.files))))
    finally:
        pa.default_memory_pool().release_unused()
    got = np.asarray(counts, dtype=np.int64)
    if not np.array_equal(got, plan.expected):
        bad = int(np.flatnonzero(got != plan.expected)[0])
        raise DatasetFormatError(
            f"dataset '{plan.dataset}': data files hold {int(got.sum())} frames of the selected episodes but "
            f"meta/ lists {plan.total} (first mismatch: {plan.path(bad)} holds {int(got[bad])} rows of its "
            f"episodes, meta/ lists {int(plan.expected[bad])})")


def _sort_order(index: np.ndarray, dataset: str) -> np.ndarray | None:
    """None when `index` is strictly ascending (the usual case), else the stable argsort of it; repeated
    values raise."""
    step, last = 1 << 22, len(index) - 1
    if all(np.all(index[i + 1:min(i + step, last) + 1] > index[i:min(i + step, last)])
           for i in range(0, max(last, 0), step)):
        return None
    order = np.argsort(index, kind="stable")
    s = index[order]
    if np.any(s[1:] == s[:-1]):
        dup = s[1:][s[1:] == s[:-1]]
        raise DatasetFormatError(f"dataset '{dataset}': frame index(es) {np.unique(dup).tolist()[:10]} "
                                 f"appear more than once in its data files")
    return order.astype(np.int64)


def _new_columns(plan: _Plan, keys: list[str], make: Callable[[str, np.dtype, tuple[int, ...]], Any],
                 derived: bool) -> dict[str, Any]:
    dtypes = _column_dtypes(plan, keys)
    n = plan.total
    cols = {k: make(k, dtypes[k], (n, *_row_shape(plan.meta, k))) for k in keys}
    if derived:
        cols["file_id"] = make("file_id", np.dtype(np.int32), (n,))
        cols["file_row"] = make("file_row", np.dtype(np.int64), (n,))
        cols["ep_pos"] = make("ep_pos", np.dtype(np.int64), (n,))
    return cols


def _close(cols: dict[str, Any]) -> None:
    for c in cols.values():
        c.close()


# -- in memory ---------------------------------------------------------------------------------------------
def _load_memory(plan: _Plan, keys: list[str]) -> dict[str, np.ndarray]:
    cols = _new_columns(plan, keys, lambda _k, dt, shape: store.MemoryColumn(dt, shape), derived=False)
    _fill(plan, keys, cols, derived=False)
    return {k: c.array for k, c in cols.items()}


def _table_in_memory(plan: _Plan, keys: list[str]) -> LowDimTable:
    cols = _new_columns(plan, keys, lambda _k, dt, shape: store.MemoryColumn(dt, shape), derived=True)
    _fill(plan, keys, cols, derived=True)
    arrays = {k: c.array for k, c in cols.items()}
    index = arrays["index"]
    order = _sort_order(index, plan.dataset)
    sorted_pos = np.arange(len(index), dtype=np.int64) if order is None else order
    sorted_index = index if order is None else index[order]
    values = ColumnValues({k: arrays[k] for k in keys}, plan.meta.lowdim_keys,
                          lambda ks: _load_memory(plan, ks), None)
    return LowDimTable(values, _data_paths(plan), arrays["file_id"],
                       arrays["file_row"], arrays["ep_pos"], sorted_index, sorted_pos)


# -- in the store ------------------------------------------------------------------------------------------
def _derived_file(name: str) -> str:
    return f"{name}.npy"


def _build(plan: _Plan, keys: list[str], entry: Path, fp_dir: Path) -> None:
    """Build the fingerprint directory `fp_dir` (caller holds the entry lock)."""
    if fp_dir.exists():  # incomplete (no meta.json): never read, safe to replace under the lock
        shutil.rmtree(fp_dir)
    tmp = store.new_temp_dir(fp_dir)
    cols: dict[str, Any] = {}
    try:
        def make(k: str, dt: np.dtype, shape: tuple[int, ...]) -> store.FileColumn:
            name = _derived_file(k) if k in _DERIVED else store.column_file(k)
            return store.FileColumn(tmp / name, dt, shape)

        cols = _new_columns(plan, keys, make, derived=True)
        _fill(plan, keys, cols, derived=True)
        _close(cols)
        order = _sort_order(store.map_npy(tmp / store.column_file("index")), plan.dataset)
        pos = store.FileColumn(tmp / _derived_file("sorted_pos"), np.dtype(np.int64), (plan.total,))
        step = 1 << 22
        try:
            if order is None:
                for i in range(0, plan.total, step):
                    pos.write(i, np.arange(i, min(i + step, plan.total), dtype=np.int64))
            else:
                pos.write(0, order)
                index = store.map_npy(tmp / store.column_file("index"))
                si = store.FileColumn(tmp / _derived_file("sorted_index"), np.dtype(np.int64), (plan.total,))
                try:
                    si.write(0, index[order])
                finally:
                    si.close()
        finally:
            pos.close()
        store.write_json_atomic(tmp / store._META, {
            "format": store.STORE_FORMAT, "dataset": plan.dataset, "root": os.path.realpath(plan.meta.root),
            "rows": plan.total, "files": plan.files, "index_ascending": order is None})
        store.publish_dir(tmp, fp_dir)
    except BaseException:
        _close(cols)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store.write_json_atomic(entry / "source.json", {"root": os.path.realpath(plan.meta.root), "dataset": plan.dataset})
    store.remove_stale(entry, keep=fp_dir.name)


def _extend(plan: _Plan, keys: list[str], entry: Path, fp_dir: Path) -> None:
    """Add the columns `keys` to the complete store `fp_dir` (under the entry lock; racing extenders of the
    same key both write the same bytes, and each file appears whole through os.replace)."""
    with store.locked(entry):
        keys = [k for k in keys if not (fp_dir / store.column_file(k)).is_file()]
        if not keys:
            return
        suffix = f".tmp-{os.getpid()}-{threading.get_ident()}"
        tmps = {k: fp_dir / (store.column_file(k) + suffix) for k in keys}
        cols: dict[str, Any] = {}
        try:
            cols = _new_columns(plan, keys, lambda k, dt, shape: store.FileColumn(tmps[k], dt, shape), derived=False)
            _fill(plan, keys, cols, derived=False)
            _close(cols)
            for k in keys:
                os.replace(tmps[k], fp_dir / store.column_file(k))
        except BaseException:
            _close(cols)
            for p in tmps.values():
                p.unlink(missing_ok=True)
            raise
    cache_dir.enforce_bound(keep=entry)


def _mapped_table(plan: _Plan, keys: list[str], entry: Path, fp_dir: Path) -> LowDimTable:
    cache_dir.check_owner(fp_dir)
    info = store.read_meta(fp_dir)
    if info is None:
        with store.locked(entry):
            if store.read_meta(fp_dir) is None:
                _build(plan, keys, entry, fp_dir)
        cache_dir.enforce_bound(keep=entry)
        info = store.read_meta(fp_dir)
        if info is None:
            raise OSError(f"low-dim store {fp_dir} was not built")
    missing = [k for k in keys if not (fp_dir / store.column_file(k)).is_file()]
    if missing:
        _extend(plan, missing, entry, fp_dir)
    rows = int(info.get("rows", -1))

    def load(ks: list[str]) -> dict[str, np.ndarray]:
        absent = [k for k in ks if not (fp_dir / store.column_file(k)).is_file()]
        try:
            if absent:
                _extend(plan, absent, entry, fp_dir)
            return {k: store.map_npy(fp_dir / store.column_file(k), rows) for k in ks}
        except OSError as e:
            if isinstance(e, FastmixError):
                raise
            if isinstance(e, store.DamagedFileError):  # the next open rewrites it
                with store.locked(entry):
                    Path(e.path).unlink(missing_ok=True)
            _warn(plan, fp_dir, e)
            return _load_memory(plan, ks)

    def mapped(name: str) -> np.ndarray:
        return store.map_npy(fp_dir / name, rows)

    values = ColumnValues({k: mapped(store.column_file(k)) for k in keys}, plan.meta.lowdim_keys, load,
                          (plan.meta, plan.ep_positions, keys))
    sorted_index = values["index"] if info.get("index_ascending") else mapped(_derived_file("sorted_index"))
    return LowDimTable(values, _data_paths(plan), mapped(_derived_file("file_id")), mapped(_derived_file("file_row")),
                       mapped(_derived_file("ep_pos")), sorted_index, mapped(_derived_file("sorted_pos")))


def _open_entry(plan: _Plan, keys: list[str], entry: Path, fp_dir: Path) -> LowDimTable:
    """The table of store entry `entry` (this process is registered as its user while the table lives); a
    damaged file is reported and the fingerprint directory rebuilt."""
    release = cache_dir.use(entry)
    try:
        cache_dir.remove_dead_temps(entry, fp_dir)
        try:
            table = _mapped_table(plan, keys, entry, fp_dir)
        except store.DamagedFileError as e:
            warnings.warn(f"fastmix: {e} (dataset '{plan.dataset}'); rebuilding it", RuntimeWarning, stacklevel=4)
            with store.locked(entry):
                _build(plan, keys, entry, fp_dir)
            table = _mapped_table(plan, keys, entry, fp_dir)
    except BaseException:
        release()
        raise
    weakref.finalize(table, release)
    return table


def _table_from_store(plan: _Plan, keys: list[str]) -> LowDimTable:
    meta = plan.meta
    entry = store.entry_dir(meta.root, meta.episodes.episode_index[plan.ep_positions], meta.name)
    fp_name = store.fingerprint(meta.root, plan.files, meta.name)[:16]
    try:
        return _open_entry(plan, keys, entry, entry / fp_name)
    except cache_dir.ForeignEntryError as e:  # another user's files are never read
        own = cache_dir.private_entry(entry)
        cache_dir.warn_foreign(e, plan.dataset, own)
        return _open_entry(plan, keys, own, own / fp_name)


def _warn(plan: _Plan, where: Path, e: OSError) -> None:
    warnings.warn(f"fastmix: the low-dim store at {where} cannot be used ({e}); loading dataset "
                  f"'{plan.dataset}' into memory instead (each process then holds its own copy). Set "
                  f"FASTMIX_CACHE to a writable directory to share one copy per node.", RuntimeWarning,
                  stacklevel=3)


def load_lowdim(meta: DatasetMeta, ep_positions: np.ndarray, keys: Sequence[str] | None = None) -> LowDimTable:
    """Low-dim and index columns of the episodes at `ep_positions` (rows of meta.episodes), mapped from the
    low-dim store (built on first use, see `fastmix.sources.store`).

    keys: low-dim keys to materialize now (None: all); action keys and INDEX_KEYS are always included, and
    any other low-dim key is materialized when first read from `values`.
    """
    eps = meta.episodes
    if len(ep_positions) == 0:
        raise ConfigError(f"dataset '{meta.name}' at {meta.root} is empty: no episode is selected "
                          f"(it has {len(eps)} episodes); select at least one episode or drop it from the mixture")
    wanted = _wanted_keys(meta, keys)
    plan = _make_plan(meta, ep_positions)
    if store.store_enabled():
        try:
            return _table_from_store(plan, wanted)
        except OSError as e:
            if isinstance(e, FastmixError):
                raise
            _warn(plan, store.cache_root(), e)
    return _table_in_memory(plan, wanted)
