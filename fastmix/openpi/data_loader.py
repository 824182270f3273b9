"""`create_data_loader`: openpi's data loader semantics on fastmix's weighted mixture loader.

    from fastmix.openpi.data_loader import create_data_loader
    loader = create_data_loader(config, shuffle=True, num_batches=1000, framework="pytorch")
    for observation, actions in loader:    # openpi's DataLoaderImpl output: (Observation.from_dict(batch), actions)
        ...

Semantics kept from openpi (`openpi.training.data_loader`): full batches only (drop_last); `num_batches`
loops over the data (None: forever); the local batch is `batch_size // world_size`; a local batch larger than
the data is the reference's "Local batch size (X) is larger than the dataset size (Y)." error; missing norm
stats are the reference's "Normalization stats not found" error; transforms run in openpi's order (repack,
data, Normalize, model). Unlike the reference, weighted sampling works with both frameworks and under
torch.distributed (each rank takes disjoint positions of one global weighted stream), and the loader has
`set_epoch`, `state_dict` and `load_state_dict`.
"""

from __future__ import annotations

import collections
import logging
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from fastmix._args import check_optional_int
from fastmix.distributed import state_for_world
from fastmix.errors import ConfigError
from fastmix.loader.plan import resolve_delta_timestamps
from fastmix.loader.prefetch import Prefetcher
from fastmix.openpi import transforms as _t
from fastmix.openpi.mixture_pipeline import is_mixture, meta_in_order, mixture_loader_parts
from fastmix.openpi.norm_stats import NORM_STATS_FILE, missing_norm_stats_message, norm_stats_dir
from fastmix.openpi.observation import Observation, ObservationBuilder, observation_class, observation_float
from fastmix.openpi.transforms.batched import batched

logger = logging.getLogger("fastmix")

META_KEYS = ("dataset_index", "index", "episode_index", "frame_index", "task")
STAGES = ("repack", "data", "normalize", "model")
Trace = Callable[[str, int, Any, dict, dict], None]


# ------------------------------------------------------------------------------------------- data access


def repo_ids_of(data_config: Any) -> list[str]:
    """A data config's repo ids: `repo_ids` when set, else `[repo_id]`."""
    ids = getattr(data_config, "repo_ids", None)
    if ids:
        return list(ids)
    rid = getattr(data_config, "repo_id", None)
    if rid is None:
        raise ConfigError("Repo ID is not set. Cannot create dataset. (data config has neither repo_id nor repo_ids)")
    return [rid]


def resolve_root(repo_id: str, lerobot_home: str | os.PathLike | None) -> pathlib.Path:
    """Where a repo id's dataset lives: `lerobot_home/repo_id`, else lerobot's dataset home
    (`fastmix.sources.meta.lerobot_home()`, as `LeRobotSource` resolves it) / repo_id."""
    from fastmix.sources.meta import lerobot_home as default_home

    home = default_home() if lerobot_home is None else pathlib.Path(lerobot_home).expanduser()
    return home / repo_id


def open_sources(data_config: Any) -> list:
    """One `LeRobotSource` per repo id, rooted at `lerobot_home/<repo_id>` (or lerobot's default home)."""
    from fastmix.sources.lerobot_source import LeRobotSource

    home = getattr(data_config, "lerobot_home", None)
    return [LeRobotSource(r, root=resolve_root(r, home)) for r in repo_ids_of(data_config)]


def _default_open_sources(data_config: Any) -> list:
    """`open_sources`, looked up when called (so a replaced module attribute is what runs)."""
    return open_sources(data_config)


def action_delta_timestamps(sources: Sequence[Any], keys: Sequence[str], horizon: int) -> list[dict[str, list[float]]]:
    """openpi's action chunk of each source, `{key: [t / fps for t in range(horizon)]}` for each action key
    (`fastmix.loader.plan.resolve_delta_timestamps`); a key a dataset lacks is an error naming the dataset."""
    for source in sources:
        missing = [k for k in keys if k not in source.lowdim_keys]
        if missing:
            raise ConfigError(
                f"action_sequence_keys {missing} are not features of dataset '{source.name}' "
                f"(its numeric features: {source.lowdim_keys})"
            )
    return resolve_delta_timestamps(sources, action_horizon=horizon, delta_timestamps=None, action_keys=list(keys))


def transform_stages(data_config: Any, *, skip_norm_stats: bool = False) -> list[tuple[str, list]]:
    """openpi's transform order as named stages: repack, data, normalize, model. openpi transforms of known
    types become their batched equivalents (`fastmix.openpi.batched.batched`: same bytes, no per-sample
    split and stack); the rest run per sample."""
    norm_stats = None if skip_norm_stats else data_config.norm_stats
    return [
        ("repack", [batched(t) for t in data_config.repack_transforms.inputs]),
        ("data", [batched(t) for t in data_config.data_transforms.inputs]),
        ("normalize", [_t.Normalize(norm_stats, use_quantiles=bool(data_config.use_quantile_norm))]),
        ("model", [batched(t) for t in data_config.model_transforms.inputs]),
    ]


def raw_image_dtype(stages: Sequence[tuple[str, Sequence[Any]]]) -> str:
    """The loader's camera format for the raw batch of `stages` (`transform_stages`' list).

    "float32": (B, C, H, W) in [0, 1], LeRobotDataset's own item format, when a transform that runs per
    sample (not a fastmix `Transform`) is in the repack or data stage, the stages that read the dataset's own
    format: openpi-style policy transforms are written for LeRobotDataset items (openpi's `AlohaInputs`
    transposes (C, H, W) to (H, W, C) unconditionally). Else "uint8" (B, H, W, C), the format fastmix's
    batched transforms take directly; openpi's `LiberoInputs`, `DroidInputs` and `AlohaInputs` are among
    those (`fastmix.openpi.transforms.batched`), so their data configs get uint8 frames.
    """
    for stage, transforms in stages:
        if stage in ("repack", "data") and any(not isinstance(t, _t.Transform) for t in transforms):
            return "float32"
    return "uint8"


def require_norm_stats(config: Any, data_config: Any) -> None:
    """The reference's "Normalization stats not found" error (with the command to run) when stats are absent."""
    if data_config.norm_stats is not None or getattr(data_config, "repo_id", None) == "fake":
        return
    try:
        path = norm_stats_dir(config, data_config) / NORM_STATS_FILE
    except ValueError:
        path = None
    raise ConfigError(missing_norm_stats_message(config.name, path))


def _to_framework(x: Any, framework: str, sharding: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_framework(v, framework, sharding) for k, v in x.items()}
    if not isinstance(x, np.ndarray | np.generic):
        return x  # strings (list[str]) and anything already converted
    if framework == "pytorch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(x))
    if sharding is not None:
        import jax

        return jax.make_array_from_process_local_data(sharding, x)
    return x if x.flags.writeable else np.array(x)  # e.g. LiberoInputs' zero-stride absent camera


# --------------------------------------------------------------------------------------------- the loader


class DataLoader:
    """openpi's `DataLoader` over a fastmix `MixtureLoader`: iterating yields `(Observation, actions)`.

    `batches(with_meta=True)` yields the collated batch dicts themselves (with a meta dict of
    `dataset_index`, `index`, `episode_index`, `frame_index`, `task`), `trace` (if set) is called as
    `trace(stage, i, transform, before, after)` after every transform.

    The loader hands out numpy arrays; the transforms run on them, and the result is converted once to the
    framework's arrays (torch tensors sharing the memory, or jax arrays). The transforms (and, when iterating for
    Observations, the uint8 → float32 image conversion openpi's `Observation.from_dict` would do) run on a
    `Prefetcher` thread `prefetch` batches ahead (0: on the caller's thread). Each batch carries the loader
    position after it; handing a batch out records that position in the `MixtureLoader`'s cursor, so
    `state_dict()` is the position after the last batch handed out, whatever was prefetched, and stopping early
    or an error leaves it there (nothing to rewind).
    """

    def __init__(
        self,
        data_config: Any,
        loader: Any,
        stages: list[tuple[str, list]],
        *,
        framework: str,
        num_batches: int | None,
        sharding: Any = None,
        sources: Sequence[Any] = (),
        prefetch: int = 2,
    ) -> None:
        self._data_config = data_config
        self._loader = loader
        self.stages = stages
        self.framework = framework
        self.num_batches = num_batches
        self.sharding = sharding
        self.sources = list(sources)
        self.trace: Trace | None = None
        self.prefetch = check_optional_int(prefetch, "prefetch", minimum=0) or 0
        self.handed_out = 0  # batches of the stream handed out (with a resumed run's: `load_state_dict`)
        # (handed_out, loader position) after the last batches handed out (`fastmix.openpi.resume.state_after`)
        self.recent: collections.deque = collections.deque([(0, loader.position)], maxlen=8)

    # openpi's protocol
    def data_config(self) -> Any:
        return self._data_config

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """`(Observation, actions)` pairs; the Observation (openpi's, with its type checks) is built on the
        prefetch thread with the rest of the batch, so the training thread only pops it."""
        yield from self._iterate(float_images=True, with_meta=False, observations=True)

    def __len__(self) -> int:
        """Batches one iteration yields: `num_batches`, else the batches of one epoch (iteration then loops)."""
        return self.num_batches if self.num_batches is not None else len(self._loader)

    # fastmix additions
    @property
    def mixture(self) -> Any:
        return self._loader.mixture

    @property
    def loader(self) -> Any:
        """The underlying `MixtureLoader`."""
        return self._loader

    def stats(self) -> dict[str, int]:
        """Counters of remote reads since the loader was made (`MixtureLoader.stats()`: requests, bytes, retries
        by cause, failures, byte-cache hits and misses); {} for local datasets."""
        return self._loader.stats()

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (its own draw order) at its first batch; a no-op for the current epoch."""
        before = self._loader.position
        self._loader.set_epoch(epoch)
        if self._loader.position is not before:
            self._restart_count(None)

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out (epoch, batch, sampler stream)."""
        return self._loader.state_dict()

    def load_state_dict(self, state: dict[str, Any], allow_mixture_change: bool = False, *,
                        handed_out: int | None = None) -> None:
        """Continue exactly after the batch `state` was taken at (ends a running iteration); `handed_out`: the
        batches of the stream before that position (`handed_out` counts on from it; default: unchanged). A state
        saved by another number of processes with the same global batch continues the one stream.
        `allow_mixture_change=True`: a state saved under other weights, weighting or frame filters continues
        from its position with this loader's mixture (`MixtureLoader.load_state_dict`)."""
        world = getattr(getattr(self._loader, "sampler", None), "world_size", None)
        if world is not None:
            state = state_for_world(state, self._loader.batch_size, world)
        self._loader.load_state_dict(state, allow_mixture_change=allow_mixture_change)
        self._restart_count(handed_out)

    def _restart_count(self, handed_out: int | None) -> None:
        self.handed_out = self.handed_out if handed_out is None else int(handed_out)
        self.recent.clear()
        self.recent.append((self.handed_out, self._loader.position))

    def close(self) -> None:
        self._loader.close()

    def __enter__(self) -> DataLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def transform(self, raw: dict[str, Any], *, float_images: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the stages on one raw loader batch (numpy arrays); returns (batch in the framework's arrays,
        meta). `float_images`: see `batches`. A transform that lets `StopIteration` escape raises a
        RuntimeError naming it (a StopIteration would otherwise end an iteration silently)."""
        return self._transform(raw, float_images, "")

    def _transform(self, raw: dict[str, Any], float_images: bool, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        meta = {k: raw[k] for k in META_KEYS if k in raw}
        if "group_index" in raw:  # a mixture of data configs: per-entry fields back in batch order
            meta.update(meta_in_order(raw, ("index", "episode_index", "frame_index")))
        data = dict(raw)
        if not getattr(self._data_config, "prompt_from_task", False):
            data.pop("prompt", None)  # as LeRobotDataset items: a prompt only via PromptFromLeRobotTask
        elif "prompt" not in data and "task" in data:
            data["prompt"] = list(data["task"])
        for stage, transforms in self.stages:
            for i, t in enumerate(transforms):
                trace = None
                if self.trace is not None:
                    user = self.trace

                    def trace(_j, fn, before, after, _stage=stage, _i=i, _user=user):
                        _user(_stage, _i, fn, before, after)

                try:
                    data = _t.apply_batch([t], data, trace=trace)
                except StopIteration as stop:
                    raise RuntimeError(f"transform {_callable_name(t)} (stage {stage!r}, #{i}) raised StopIteration"
                                       f"{where}; a transform must not let StopIteration escape (it would end "
                                       "the iteration silently)") from stop
        if float_images and isinstance(data.get("image"), dict):
            data["image"] = {k: observation_float(v, self.framework) for k, v in data["image"].items()}
        return _to_framework(data, self.framework, self.sharding), meta

    def _produce(self, stream: Any, start: Any, float_images: bool,
                 observations: bool) -> Iterator[tuple[Any, dict, Any]]:
        """(batch, meta, loader position after it): transformed and finished, ready to hand out. With
        `observations`, the batch is openpi's `(Observation.from_dict(batch), batch["actions"])`. `start`: the
        loader position of the stream's first batch (errors name the batch)."""
        build = ObservationBuilder(observation_class()) if observations else None
        at = start
        for raw, position in stream:
            where = f" on batch {at.batch} of epoch {at.epoch}"
            try:
                batch, meta = self._transform(raw, float_images, where)
                if build is not None:
                    batch = (build(batch), batch["actions"])
            except Exception as exc:
                exc.add_note(f"(raised by the DataLoader's transforms{where}; that batch was not handed out: "
                             "iterating again continues with it)")
                raise
            yield batch, meta, position
            at = position

    def batches(self, *, with_meta: bool = False, float_images: bool = False) -> Iterator[Any]:
        """Collated, transformed batch dicts (openpi's `_collate_fn` output), optionally with their meta.

        `float_images`: images as openpi's `Observation.from_dict` makes them (float32 in [-1, 1]; (B, C, H, W)
        for framework "pytorch", (B, H, W, C) for "jax"), computed with the same float32 operations.
        """
        return self._iterate(float_images=float_images, with_meta=with_meta, observations=False)

    def _iterate(self, *, float_images: bool, with_meta: bool, observations: bool) -> Iterator[Any]:
        stream = self._loader.stream(self.num_batches, output="numpy")
        produced = self._produce(stream, self._loader.position, float_images, observations)
        ahead = Prefetcher(lambda stop: produced, depth=self.prefetch, name="fastmix-transforms") \
            if self.prefetch else None
        try:
            for batch, meta, position in (ahead if ahead is not None else produced):
                if stream.closed:  # superseded (a newer iteration, load_state_dict, set_epoch, close)
                    return
                self._loader.hand_out(position)
                self.handed_out += 1
                self.recent.append((self.handed_out, position))
                yield (batch, meta) if with_meta else batch
        finally:
            # this iteration's own stream and thread only (a newer iteration has its own)
            if ahead is not None:
                ahead.stop(timeout=0)
            stream.close()
            if ahead is not None:
                ahead.stop()
            else:
                produced.close()


def _callable_name(fn: Any) -> str:
    """`fn`'s qualified name (its class's for a transform object), for messages."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{name}" if module and module != "builtins" else name


def log_mixture(loader: Any, sources: Sequence[Any], what: str) -> None:
    """Log (INFO, logger "fastmix") the effective mixture of `loader`: datasets, frames, weights, weighting and
    the resulting expected shares (`Mixture.format_table`)."""
    mixture = getattr(loader, "mixture", None)
    if mixture is not None:
        logger.info("effective mixture (%s):\n%s", what, mixture.format_table([s.name for s in sources]))


def make_mixture_loader(sources: Sequence[Any], **kwargs: Any) -> Any:
    """The default `loader_factory` of `create_data_loader`: `MixtureLoader(sources, **kwargs)`."""
    from fastmix.loader.loader import MixtureLoader

    return MixtureLoader(sources, **kwargs)


def _local_batch(config: Any, sources: Sequence[Any], framework: str,
                 rank_world: tuple[int, int] | None) -> tuple[int, int, int]:
    """(rank, world size, local batch size): `config.batch_size` split over the ranks, with the reference's
    "Local batch size (X) is larger than the dataset size (Y)." error."""
    if rank_world is None:
        from fastmix.distributed import rank_world as _rank_world

        rank_world = _rank_world(framework)
    rank, world = rank_world
    local_batch_size = int(config.batch_size) // world
    if local_batch_size < 1:
        raise ConfigError(f"batch_size ({config.batch_size}) is smaller than the world size ({world})")
    total = int(sum(len(s) for s in sources))
    if total < local_batch_size:
        sizes = ", ".join(f"{s.name}={len(s)}" for s in sources)
        raise ConfigError(
            f"Local batch size ({local_batch_size}) is larger than the dataset size ({total}). "
            f"(config '{config.name}': batch_size={config.batch_size}, world size {world}; frames: {sizes})"
        )
    return rank, world, local_batch_size


def _single_parts(config: Any, data_config: Any, skip_norm_stats: bool,
                  opener: Callable[[Any], list]) -> tuple[list, dict[str, Any], list[tuple[str, list]]]:
    """(sources, MixtureLoader keyword arguments, stages) of a data config of one schema."""
    if not skip_norm_stats:
        require_norm_stats(config, data_config)
    sources = opener(data_config)
    keys = tuple(getattr(data_config, "action_sequence_keys", ("actions",)))
    action_delta_timestamps(sources, keys, int(config.model.action_horizon))  # checks the keys, naming the dataset
    stages = transform_stages(data_config, skip_norm_stats=skip_norm_stats)
    extra: dict[str, Any] = {} if (size := _t.decode_size(stages)) is None else {"resize_images": size}
    if raw_image_dtype(stages) != "uint8":
        extra["image_dtype"] = raw_image_dtype(stages)
    weights = getattr(data_config, "dataset_weights", None)  # upstream openpi's DataConfig has no such field
    extra.update(dataset_weights=None if weights is None else list(weights), action_keys=list(keys),
                 weighting=getattr(data_config, "weighting", "per_sample"))
    if getattr(data_config, "frame_filters", None) is not None:
        extra["frame_filters"] = data_config.frame_filters
    return sources, extra, stages


def create_data_loader(
    config: Any,
    *,
    shuffle: bool = False,
    num_batches: int | None = None,
    skip_norm_stats: bool = False,
    framework: Literal["jax", "pytorch"] = "pytorch",
    sharding: Any = None,
    open_sources: Callable[[Any], list] | None = None,
    loader_factory: Callable[..., Any] | None = None,
    rank_world: tuple[int, int] | None = None,
) -> DataLoader:
    """Create the training data loader of `config` (a fastmix or openpi `TrainConfig`).

    Args:
        config: the train config; `config.data.create(config.assets_dirs, config.model)` gives the pipeline.
        shuffle: draw in weighted random order (the training setting); False: sequential order.
        num_batches: batches to yield, looping over the data as needed; None: forever.
        skip_norm_stats: do not normalize (and do not require norm stats).
        framework: "pytorch" yields torch tensors, "jax" numpy arrays (jax arrays when `sharding` is given).
        sharding: a jax sharding for the batches (framework "jax" only).
        open_sources: `open_sources(data_config) -> list of sources` (default: this module's `open_sources`,
            LeRobotSource per repo id).
        loader_factory: `loader_factory(sources, **loader_kwargs)` builds the mixture loader (default:
            `make_mixture_loader`, i.e. `MixtureLoader`).
        rank_world: (rank, world size) of this process (default: `fastmix.distributed.rank_world(framework)`).
    """
    if framework not in ("pytorch", "jax"):
        raise ConfigError(f"framework must be 'pytorch' or 'jax', got framework={framework!r}")
    num_batches = check_optional_int(num_batches, "num_batches", minimum=0)
    data_config = config.data.create(config.assets_dirs, config.model)
    logger.info("data_config: %s", data_config)
    opener = open_sources or _default_open_sources
    if is_mixture(data_config):  # a MixtureDataConfig: each entry a group with its own transforms
        sources, extra, mixture = mixture_loader_parts(
            config, data_config, skip_norm_stats=skip_norm_stats, open_sources=opener, stages_of=transform_stages,
            image_dtype_of=raw_image_dtype, chunks_of=action_delta_timestamps)
        stages: list[tuple[str, list]] = [("mixture", [mixture])]
    else:
        sources, extra, stages = _single_parts(config, data_config, skip_norm_stats, opener)
    rank, world, local_batch_size = _local_batch(config, sources, framework, rank_world)
    loader = (loader_factory or make_mixture_loader)(
        sources,
        batch_size=local_batch_size,
        action_horizon=int(config.model.action_horizon),
        num_workers=int(config.num_workers),
        seed=int(config.seed),
        shuffle=bool(shuffle),
        drop_last=True,
        rank=rank if world > 1 else None,
        world_size=world if world > 1 else None,
        **extra,
    )
    logger.info("local_batch_size: %d", local_batch_size)
    if rank == 0:  # once per loader, on one rank: the expected shares of the draws
        log_mixture(loader, sources, f"config '{config.name}'" + (f", {world} ranks" if world > 1 else ""))
    return DataLoader(
        data_config,
        loader,
        stages,
        framework=framework,
        num_batches=num_batches,
        sharding=sharding if framework == "jax" else None,
        sources=sources,
    )


__all__ = [
    "DataLoader",
    "Observation",
    "create_data_loader",
    "log_mixture",
    "make_mixture_loader",
    "observation_class",
    "open_sources",
    "raw_image_dtype",
    "repo_ids_of",
    "require_norm_stats",
    "resolve_root",
    "transform_stages",
]
