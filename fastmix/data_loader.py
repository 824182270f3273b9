"""`create_data_loader`: openpi's data loader semantics on fastmix's weighted mixture loader.

    from fastmix.data_loader import create_data_loader
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

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from fastmix import transforms as _t
from fastmix.errors import ConfigError
from fastmix.norm_stats import NORM_STATS_FILE, missing_norm_stats_message, norm_stats_dir

logger = logging.getLogger("fastmix")

META_KEYS = ("dataset_index", "index", "episode_index", "frame_index", "task")
STAGES = ("repack", "data", "normalize", "model")
Trace = Callable[[str, int, Any, dict, dict], None]


# -------------------------------------------------------------------------------------------- Observation


@dataclasses.dataclass
class Observation:
    """openpi's `Observation` (used when openpi is not importable): images, masks, state, tokenized prompt.

    `from_dict` converts uint8 images to float32 in [-1, 1] exactly as openpi does (torch uint8 images are
    also permuted to (B, C, H, W), as openpi's PyTorch path does).
    """

    images: dict[str, Any]
    image_masks: dict[str, Any]
    state: Any
    tokenized_prompt: Any = None
    tokenized_prompt_mask: Any = None
    token_ar_mask: Any = None
    token_loss_mask: Any = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observation:
        if ("tokenized_prompt" in data) != ("tokenized_prompt_mask" in data):
            raise ValueError("tokenized_prompt and tokenized_prompt_mask must be provided together.")
        images = dict(data["image"])
        for key, img in images.items():
            if isinstance(img, np.ndarray) and img.dtype == np.uint8:
                images[key] = img.astype(np.float32) / 255.0 * 2.0 - 1.0
            elif _is_torch_uint8(img):
                import torch

                images[key] = img.to(torch.float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0
        data["image"] = images
        return cls(
            images=images,
            image_masks=data["image_mask"],
            state=data["state"],
            tokenized_prompt=data.get("tokenized_prompt"),
            tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
            token_ar_mask=data.get("token_ar_mask"),
            token_loss_mask=data.get("token_loss_mask"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image"] = d.pop("images")
        d["image_mask"] = d.pop("image_masks")
        return d


def _is_torch_uint8(x: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, torch.Tensor) and x.dtype == torch.uint8


def observation_class() -> type:
    """openpi's `Observation` when openpi is importable, else fastmix's stand-in."""
    try:
        from openpi.models.model import Observation as OpenpiObservation
    except ImportError:
        return Observation
    return OpenpiObservation


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


def action_delta_timestamps(source: Any, keys: Sequence[str], horizon: int) -> dict[str, list[float]]:
    """openpi's action chunk: `{key: [t / fps for t in range(horizon)]}` for each action key."""
    missing = [k for k in keys if k not in source.lowdim_keys]
    if missing:
        raise ConfigError(
            f"action_sequence_keys {missing} are not features of dataset '{source.name}' "
            f"(its numeric features: {source.lowdim_keys})"
        )
    return {k: [t / source.fps for t in range(horizon)] for k in keys}


def lowdim_batch(
    sources: Sequence[Any], d_idx: np.ndarray, l_idx: np.ndarray, data_config: Any, horizon: int
) -> dict[str, Any]:
    """A raw batch of low-dimensional data for (dataset, local row) pairs, cameras as 1x1 black placeholders.

    Same keys as the loader's batches (action chunks of `horizon` steps, `<key>_is_pad`, indices, "task",
    "prompt" when `prompt_from_task`); used where images are not needed (norm stats).
    """
    n = int(d_idx.size)
    keys = tuple(getattr(data_config, "action_sequence_keys", ("actions",)))
    out: dict[str, Any] = {}
    tasks: list[str] = [""] * n
    for d in np.unique(d_idx):
        src = sources[int(d)]
        pos = np.flatnonzero(d_idx == d)
        part = src.gather_lowdim(l_idx[pos].astype(np.int64), action_delta_timestamps(src, keys, horizon))
        for k, v in part.items():
            v = np.asarray(v)
            if k not in out:
                out[k] = np.zeros((n, *v.shape[1:]), dtype=v.dtype)
            elif out[k].shape[1:] != v.shape[1:]:
                raise ConfigError(
                    f"key {k!r} has shape {v.shape[1:]} in dataset '{src.name}' but {out[k].shape[1:]} in "
                    f"another dataset of the mixture"
                )
            out[k][pos] = v
        for p, task in zip(pos, src.tasks_of(l_idx[pos]), strict=True):
            tasks[p] = task
    for key in sources[0].camera_keys:
        out[key] = np.zeros((n, 1, 1, 3), dtype=np.uint8)
    out["dataset_index"] = d_idx.astype(np.int64)
    out["task"] = tasks
    if getattr(data_config, "prompt_from_task", False):
        out["prompt"] = list(tasks)
    return out


def transform_stages(data_config: Any, *, skip_norm_stats: bool = False) -> list[tuple[str, list]]:
    """openpi's transform order as named stages: repack, data, normalize, model."""
    norm_stats = None if skip_norm_stats else data_config.norm_stats
    return [
        ("repack", list(data_config.repack_transforms.inputs)),
        ("data", list(data_config.data_transforms.inputs)),
        ("normalize", [_t.Normalize(norm_stats, use_quantiles=bool(data_config.use_quantile_norm))]),
        ("model", list(data_config.model_transforms.inputs)),
    ]


def require_norm_stats(config: Any, data_config: Any) -> None:
    """The reference's "Normalization stats not found" error (with the command to run) when stats are absent."""
    if data_config.norm_stats is not None or getattr(data_config, "repo_id", None) == "fake":
        return
    try:
        path = norm_stats_dir(config, data_config) / NORM_STATS_FILE
    except ValueError:
        path = None
    raise ConfigError(missing_norm_stats_message(config.name, path))


def _to_numpy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


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
    return x


# --------------------------------------------------------------------------------------------- the loader


class DataLoader:
    """openpi's `DataLoader` over a fastmix `MixtureLoader`: iterating yields `(Observation, actions)`.

    `batches(with_meta=True)` yields the collated batch dicts themselves (with a meta dict of
    `dataset_index`, `index`, `episode_index`, `frame_index`, `task`), `trace` (if set) is called as
    `trace(stage, i, transform, before, after)` after every transform.
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
    ) -> None:
        self._data_config = data_config
        self._loader = loader
        self.stages = stages
        self.framework = framework
        self.num_batches = num_batches
        self.sharding = sharding
        self.sources = list(sources)
        self.trace: Trace | None = None

    # openpi's protocol
    def data_config(self) -> Any:
        return self._data_config

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        obs_cls = observation_class()
        for batch in self.batches():
            yield obs_cls.from_dict(batch), batch["actions"]

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

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (its own draw order) at its first batch; a no-op for the current epoch."""
        self._loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out (epoch, batch, sampler stream)."""
        return self._loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batch `state` was taken at."""
        self._loader.load_state_dict(state)

    def close(self) -> None:
        self._loader.close()

    def __enter__(self) -> DataLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def transform(self, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the stages on one raw loader batch; returns (batch in the framework's arrays, meta)."""
        raw = _to_numpy(raw)
        meta = {k: raw[k] for k in META_KEYS if k in raw}
        data = dict(raw)
        if not getattr(self._data_config, "prompt_from_task", False):
            data.pop("prompt", None)  # as LeRobotDataset items: a prompt only via PromptFromLeRobotTask
        elif "prompt" not in data and "task" in data:
            data["prompt"] = list(data["task"])
        for stage, transforms in self.stages:
            trace = None
            if self.trace is not None:
                user = self.trace

                def trace(i, t, before, after, _stage=stage, _user=user):
                    _user(_stage, i, t, before, after)

            data = _t.apply_batch(transforms, data, trace=trace)
        return _to_framework(data, self.framework, self.sharding), meta

    def _raw_batches(self) -> Iterator[dict[str, Any]]:
        """The loader's batches, epoch after epoch (each with its own order), until `num_batches`."""
        produced = 0
        while self.num_batches is None or produced < self.num_batches:
            empty = True
            for raw in self._loader:  # one (rest of an) epoch; the loader then moves to the next epoch
                empty = False
                yield raw
                produced += 1
                if self.num_batches is not None and produced >= self.num_batches:
                    return
            if empty:
                raise RuntimeError("the mixture loader produced no batch in a whole epoch")

    def batches(self, *, with_meta: bool = False) -> Iterator[Any]:
        """Collated, transformed batch dicts (openpi's `_collate_fn` output), optionally with their meta."""
        for raw in self._raw_batches():
            batch, meta = self.transform(raw)
            yield (batch, meta) if with_meta else batch


def _world(framework: str) -> tuple[int, int]:
    """(rank, world size) of this process for the framework."""
    if framework == "pytorch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    try:
        import jax
    except ImportError:
        return 0, 1
    return jax.process_index(), jax.process_count()


def make_mixture_loader(sources: Sequence[Any], **kwargs: Any) -> Any:
    """Build the `MixtureLoader` (a seam for tests and the verify command's sabotage check)."""
    from fastmix.loader.mixture_loader import MixtureLoader

    return MixtureLoader(sources, **kwargs)


def create_data_loader(
    config: Any,
    *,
    shuffle: bool = False,
    num_batches: int | None = None,
    skip_norm_stats: bool = False,
    framework: Literal["jax", "pytorch"] = "pytorch",
    sharding: Any = None,
) -> DataLoader:
    """Create the training data loader of `config` (a fastmix or openpi `TrainConfig`).

    Args:
        config: the train config; `config.data.create(config.assets_dirs, config.model)` gives the pipeline.
        shuffle: draw in weighted random order (the training setting); False: sequential order.
        num_batches: batches to yield, looping over the data as needed; None: forever.
        skip_norm_stats: do not normalize (and do not require norm stats).
        framework: "pytorch" yields torch tensors, "jax" numpy arrays (jax arrays when `sharding` is given).
        sharding: a jax sharding for the batches (framework "jax" only).
    """
    if framework not in ("pytorch", "jax"):
        raise ConfigError(f"framework must be 'pytorch' or 'jax', got framework={framework!r}")
    if num_batches is not None and (isinstance(num_batches, bool) or int(num_batches) < 0):
        raise ConfigError(f"num_batches must be a non-negative integer or None, got num_batches={num_batches!r}")
    data_config = config.data.create(config.assets_dirs, config.model)
    logger.info("data_config: %s", data_config)
    if not skip_norm_stats:
        require_norm_stats(config, data_config)
    sources = open_sources(data_config)
    total = int(sum(len(s) for s in sources))
    rank, world = _world(framework)
    local_batch_size = int(config.batch_size) // world
    if local_batch_size < 1:
        raise ConfigError(f"batch_size ({config.batch_size}) is smaller than the world size ({world})")
    if total < local_batch_size:
        sizes = ", ".join(f"{s.name}={len(s)}" for s in sources)
        raise ConfigError(
            f"Local batch size ({local_batch_size}) is larger than the dataset size ({total}). "
            f"(config '{config.name}': batch_size={config.batch_size}, world size {world}; frames: {sizes})"
        )
    keys = tuple(getattr(data_config, "action_sequence_keys", ("actions",)))
    horizon = int(config.model.action_horizon)
    for s in sources:
        action_delta_timestamps(s, keys, horizon)  # checks the action keys, naming the dataset
    loader = make_mixture_loader(
        sources,
        dataset_weights=None if data_config.dataset_weights is None else list(data_config.dataset_weights),
        weighting=getattr(data_config, "weighting", "per_sample"),
        batch_size=local_batch_size,
        action_horizon=horizon,
        action_keys=list(keys),
        num_workers=int(config.num_workers),
        seed=int(config.seed),
        shuffle=bool(shuffle),
        drop_last=True,
        rank=rank if world > 1 else None,
        world_size=world if world > 1 else None,
    )
    logger.info("local_batch_size: %d", local_batch_size)
    return DataLoader(
        data_config,
        loader,
        transform_stages(data_config, skip_norm_stats=skip_norm_stats),
        framework=framework,
        num_batches=num_batches,
        sharding=sharding if framework == "jax" else None,
        sources=sources,
    )


# ------------------------------------------------------------------------------ openpi dataset functions


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
        probe = LeRobotSource(repo_id, root=resolve_root(repo_id, home))
        src = LeRobotSource(
            repo_id, root=probe.root, delta_timestamps=action_delta_timestamps(probe, keys, action_horizon)
        )
        parts.append(SourceDataset(src, bool(getattr(data_config, "prompt_from_task", False))))
    return torch.utils.data.ConcatDataset(parts)


__all__ = [
    "DataLoader",
    "Observation",
    "SourceDataset",
    "create_data_loader",
    "create_torch_dataset",
    "lowdim_batch",
    "make_mixture_loader",
    "observation_class",
    "open_sources",
    "repo_ids_of",
    "require_norm_stats",
    "transform_stages",
]
