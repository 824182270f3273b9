"""`MixtureDataConfig`: a weighted mixture of data configs — co-training across robots.

    from fastmix import MixtureDataConfig
    data = MixtureDataConfig(
        datasets=[LeRobotLiberoDataConfig(repo_id="libero", assets=AssetsConfig(asset_id="libero")),
                  LeRobotDROIDDataConfig(repo_id="droid", ...), LeRobotAlohaDataConfig(repo_id="aloha", ...)],
        dataset_weights=[1.0, 2.0, 1.0], weighting="per_dataset")
    TrainConfig(name="cotrain", model=..., data=data)       # fastmix's or openpi's TrainConfig

Each entry of `datasets` is any LeRobot data config factory (fastmix's, openpi's after `fastmix.openpi.install()`,
a multi-dataset one, a user's own). What stays per entry is everything its own `create()` gives: its datasets
(repo ids) with their schema, repack and data transforms, action keys, `prompt_from_task`, norm stats (its asset
id; entries may share one) and the action chunk of `model.action_horizon` steps at the entry's own fps. What is
shared: the model (`action_dim`, `action_horizon`), the sampling (one weighted stream over every dataset of every
entry: exact shares, resume, determinism as a single mixture), and the padding of `state` / `actions` to the
model's `action_dim` (done once, when the entries' rows are merged into one batch in sampled order). Each
entry's model transforms (default prompt, resize, tokenization) run on its rows as its own pipeline would.

Weights (`dataset_weights`, one per entry, default all 1) and `weighting` are those of `MixtureLoader`:
"per_sample" (a frame of entry i is drawn with probability ∝ w_i), "per_dataset" (entry i's share is
w_i / Σw) or "per_episode" (share ∝ w_i, each episode of an entry's dataset equally likely). An entry with
several datasets keeps its own `dataset_weights` inside (they must be "per_sample" weights): under "per_sample"
a frame of its dataset d weighs w_i·v_d; otherwise entry i's share is split over its datasets ∝ v_d·M_d (M_d:
the frames of d that its frame filter keeps, all N_d without one).
`frame_filters`: one `FrameFilter` (or None) per entry (applied to each of its datasets), or a dict repo id ->
`FrameFilter`.

`create()` returns a `MixtureData` (the entries' created data configs and the mixture settings), which
`fastmix.openpi.data_loader.create_data_loader` (and, after `install()`, openpi's) turns into one loader.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastmix._args import check_weights
from fastmix.errors import ConfigError
from fastmix.openpi.config import DataConfigFactory, Suppress  # Suppress: tyro's marker, not a CLI field

WEIGHTINGS = ("per_sample", "per_dataset", "per_episode")


@dataclasses.dataclass(frozen=True)
class MixtureData:
    """What `MixtureDataConfig.create` returns: the entries' own data configs and the mixture settings.

    entries: each entry's created data config (openpi's `DataConfig`, fastmix's, or a subclass).
    names: a label per entry for messages ("entry 1 (LeRobotDROIDDataConfig: droid)").
    dataset_weights: (E,) float per entry. weighting, frame_filters, float_dtype: see `MixtureDataConfig`.
    `repo_id`, `asset_id`, `norm_stats` are None (openpi's checkpointing saves no single asset for a
    mixture); `repo_ids` lists every dataset; `model_transforms` are the first entry's (openpi's policy code
    reads them); `prompt_from_task` is True so that the loader keeps the tasks (each entry decides)."""

    entries: tuple[Any, ...]
    names: tuple[str, ...]
    dataset_weights: tuple[float, ...]
    weighting: str = "per_sample"
    frame_filters: Any = None
    float_dtype: str | None = "float32"
    repo_id: str | None = None
    asset_id: str | None = None
    norm_stats: Any = None
    prompt_from_task: bool = True
    rlds_data_dir: str | None = None

    @property
    def repo_ids(self) -> list[str]:
        return [r for e in self.entries for r in entry_repo_ids(e)]

    @property
    def model_transforms(self) -> Any:
        return self.entries[0].model_transforms

    @property
    def use_quantile_norm(self) -> bool:
        return bool(getattr(self.entries[0], "use_quantile_norm", False))

    def entry_of(self) -> list[int]:
        """The entry of each dataset of `repo_ids` (entry order, then each entry's own order)."""
        return [i for i, e in enumerate(self.entries) for _ in entry_repo_ids(e)]


def entry_repo_ids(data_config: Any) -> list[str]:
    """A created entry's datasets: `repo_ids` when set, else `[repo_id]`."""
    ids = getattr(data_config, "repo_ids", None)
    if ids:
        return list(ids)
    rid = getattr(data_config, "repo_id", None)
    return [rid] if rid is not None else []


@dataclasses.dataclass(frozen=True)
class MixtureDataConfig(DataConfigFactory):
    """A mixture of data configs, one per robot or dataset group (module docstring). Usable as
    `TrainConfig.data` of fastmix and, after `fastmix.openpi.install()`, of openpi (fork and upstream): with an
    entry of openpi's own classes it is built as `OpenpiMixtureDataConfig`, the same class also typed as openpi's
    `DataConfigFactory` (made from the running openpi's class on first use; `import fastmix` imports no openpi).

    datasets: the entries, each a data config factory with `create(assets_dirs, model_config)`.
    dataset_weights: one per entry (None: all 1). weighting: "per_sample" | "per_dataset" | "per_episode".
    frame_filters: None, one `FrameFilter` or None per entry, or a dict repo id -> `FrameFilter`.
    float_dtype: the dtype of every floating array of a batch ("float32", the dtype openpi's models consume), the
    same in every batch whichever entries its rows come from (an entry whose own pipeline gives float64, as
    openpi's `AlohaInputs` does, has its values rounded once); None: the widest dtype of the batch's own rows
    (a batch's dtype then depends on which entries it holds, and a JAX step may compile again).
    The inherited `repo_id` must stay None (the entries name their datasets); `assets`, `base_config` and
    `lerobot_home` are the entries' own.
    """

    datasets: Suppress[Sequence[Any]] = ()
    dataset_weights: Sequence[float] | None = None
    weighting: str = "per_sample"
    frame_filters: Suppress[Any] = None
    float_dtype: str | None = "float32"

    def __new__(cls, *args: Any, **kwargs: Any) -> MixtureDataConfig:
        if cls is MixtureDataConfig and _has_openpi_entry(kwargs.get("datasets")):
            cls = _openpi_twin()
        return object.__new__(cls)

    def __post_init__(self) -> None:
        if self.repo_id is not None:
            raise ConfigError(f"MixtureDataConfig takes its entries as datasets=[<data config>, ...], got "
                              f"repo_id={self.repo_id!r} (set each entry's repo_id)")
        if isinstance(self.datasets, str | bytes) or not isinstance(self.datasets, Sequence) or not self.datasets:
            raise ConfigError("MixtureDataConfig needs datasets=[<data config>, ...] (one data config factory per "
                              f"entry), got datasets={self.datasets!r}")
        for i, entry in enumerate(self.datasets):
            if not callable(getattr(entry, "create", None)):
                raise ConfigError(f"MixtureDataConfig.datasets[{i}] is not a data config factory (no create("
                                  f"assets_dirs, model_config)): got {type(entry).__module__}.{type(entry).__name__}")
            if isinstance(entry, MixtureDataConfig):
                raise ConfigError(f"MixtureDataConfig.datasets[{i}] is itself a MixtureDataConfig; list its "
                                  "entries in this one instead")
        labels = [type(e).__name__ for e in self.datasets]
        check_weights(self.dataset_weights, labels, names_what="datasets")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"MixtureDataConfig.weighting must be one of {WEIGHTINGS}, got "
                              f"weighting={self.weighting!r}")
        if self.float_dtype is not None and not _is_float_dtype(self.float_dtype):
            raise ConfigError(f"MixtureDataConfig.float_dtype must be a floating dtype name such as 'float32' or "
                              f"None, got float_dtype={self.float_dtype!r}")
        ff = self.frame_filters
        if ff is not None and not isinstance(ff, Mapping) and (
                isinstance(ff, str) or not isinstance(ff, Sequence) or len(ff) != len(self.datasets)):
            raise ConfigError(f"MixtureDataConfig.frame_filters must be one FrameFilter or None per entry "
                              f"({len(self.datasets)}) or a dict repo id -> FrameFilter, got frame_filters={ff!r}")

    def create(self, assets_dirs: pathlib.Path, model_config: Any) -> MixtureData:
        """Each entry's own `create(assets_dirs, model_config)` (its transforms, action keys, norm stats)."""
        entries, names, seen = [], [], {}
        for i, factory in enumerate(self.datasets):
            created = factory.create(assets_dirs, model_config)
            if getattr(created, "rlds_data_dir", None) is not None:
                raise ConfigError(f"MixtureDataConfig.datasets[{i}] ({type(factory).__name__}) creates an RLDS data "
                                  "config; a mixture of data configs mixes LeRobot datasets only")
            repos = entry_repo_ids(created)
            if not repos or getattr(created, "repo_id", None) == "fake":
                raise ConfigError(f"MixtureDataConfig.datasets[{i}] ({type(factory).__name__}) has no LeRobot "
                                  f"dataset (repo_id={getattr(created, 'repo_id', None)!r}); set its repo_id")
            for r in repos:
                if r in seen:
                    raise ConfigError(f"dataset {r!r} is in MixtureDataConfig.datasets[{seen[r]}] and datasets[{i}]; "
                                      "each dataset may appear once (raise its entry's weight instead)")
                seen[r] = i
            entries.append(created)
            names.append(f"entry {i} ({type(factory).__name__}: {', '.join(repos)})")
        weights = (1.0,) * len(entries) if self.dataset_weights is None else \
            tuple(float(w) for w in self.dataset_weights)
        return MixtureData(entries=tuple(entries), names=tuple(names), dataset_weights=weights,
                           weighting=self.weighting, frame_filters=self.frame_filters,
                           float_dtype=self.float_dtype)


def _is_float_dtype(name: Any) -> bool:
    try:
        return isinstance(name, str) and np.issubdtype(np.dtype(name), np.floating)
    except TypeError:
        return False


def flat_weights(data: MixtureData, sources: Sequence[Any]) -> tuple[list[float], str]:
    """(weight per dataset of `data.repo_ids`, weighting) for `MixtureLoader`: the entries' weights, with each
    multi-dataset entry's own per-sample weights inside (module docstring). `sources`: the opened datasets in
    `data.repo_ids` order; under per_dataset / per_episode a multi-dataset entry's share is split over its
    datasets ∝ v_d·M_d, M_d = frames its frame filter keeps (N_d without one)."""
    entry_of = data.entry_of()
    inner: list[float] = []
    for i, e in enumerate(data.entries):
        repos = entry_repo_ids(e)
        v = getattr(e, "dataset_weights", None)
        if len(repos) > 1 and getattr(e, "weighting", "per_sample") != "per_sample":
            raise ConfigError(f"{data.names[i]} weights its datasets {e.weighting!r}; inside a mixture entry only "
                              "'per_sample' weights are supported (set the weighting on the MixtureDataConfig)")
        inner += [1.0] * len(repos) if v is None else [float(x) for x in v]
    w = np.asarray(data.dataset_weights, dtype=np.float64)[entry_of]
    v = np.asarray(inner, dtype=np.float64)
    if all(len(entry_repo_ids(e)) == 1 for e in data.entries):
        return w.tolist(), data.weighting
    if data.weighting == "per_sample":
        return (w * v).tolist(), "per_sample"
    mass = v * np.asarray(kept_sizes(data, sources), dtype=np.float64)
    per_entry = np.bincount(entry_of, weights=mass, minlength=len(data.entries))
    return (w * mass / per_entry[entry_of]).tolist(), data.weighting


def kept_sizes(data: MixtureData, sources: Sequence[Any]) -> list[int]:
    """Frames per dataset of `sources` (in `data.repo_ids` order) that the config's frame filters keep."""
    from fastmix.core.episodes import EpisodeRuns
    from fastmix.core.filters import kept_frames

    filters = flat_frame_filters(data) or {}
    out = []
    for s in sources:
        flt = filters.get(s.name)
        if flt is None:
            out.append(len(s))
            continue
        runs = EpisodeRuns.from_rows(*s.frame_positions(), name=s.name)
        out.append(kept_frames(flt, runs, where=f"frame_filters (dataset {s.name!r})").num_kept)
    return out


def flat_frame_filters(data: MixtureData) -> dict[str, Any] | None:
    """`frame_filters` as a dict repo id -> FrameFilter (what `MixtureLoader` takes), or None."""
    ff = data.frame_filters
    if ff is None:
        return None
    if isinstance(ff, Mapping):
        unknown = [k for k in ff if k not in data.repo_ids]
        if unknown:
            raise ConfigError(f"MixtureDataConfig.frame_filters names datasets {unknown} that no entry has; the "
                              f"entries' datasets are {data.repo_ids}")
        return dict(ff)
    return {r: f for e, f in zip(data.entries, ff, strict=True) if f is not None for r in entry_repo_ids(e)}


def _has_openpi_entry(datasets: Any) -> bool:
    """Whether an entry is an instance of a class of openpi's own package."""
    if isinstance(datasets, str | bytes) or not isinstance(datasets, Sequence):
        return False
    return any(type(e).__module__.split(".")[0] == "openpi" for e in datasets)


@functools.cache
def _openpi_twin() -> type:
    """`OpenpiMixtureDataConfig`: `MixtureDataConfig` that is also openpi's `DataConfigFactory` (so openpi's
    `TrainConfig(data=...)` and its command line take it as one of theirs), built from the running openpi."""
    oc = importlib.import_module("openpi.training.config")

    @dataclasses.dataclass(frozen=True)
    class OpenpiMixtureDataConfig(MixtureDataConfig, oc.DataConfigFactory):
        """`MixtureDataConfig` typed as openpi's `DataConfigFactory` (entries of openpi's own classes)."""

    OpenpiMixtureDataConfig.__module__ = __name__
    OpenpiMixtureDataConfig.__qualname__ = "OpenpiMixtureDataConfig"
    return OpenpiMixtureDataConfig


def __getattr__(name: str) -> Any:
    if name == "OpenpiMixtureDataConfig":  # built on first use (pickle finds it here by name)
        return _openpi_twin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MixtureData", "MixtureDataConfig", "entry_repo_ids", "flat_frame_filters", "flat_weights", "kept_sizes"]
