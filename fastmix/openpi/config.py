"""openpi-compatible configs: `DataConfig`, `AssetsConfig`, the data config factories (LIBERO, multi-dataset
LIBERO), `Pi0Config`, `TrainConfig`. The registry of named configs is `fastmix.openpi.registry`.

Field names and semantics follow openpi (`openpi.training.config`, `openpi.models.pi0_config`) and the
co-training fork's `MultiDatasetLiberoDataConfig`, so a config written for them runs on fastmix with only
the import changed:

    from fastmix.openpi.config import AssetsConfig, DataConfig, MultiDatasetLiberoDataConfig, Pi0Config, TrainConfig

fastmix-only fields (all optional): `lerobot_home` (a root dir holding `<repo_id>/` datasets; None resolves
like lerobot: `$HF_LEROBOT_HOME/<repo_id>`), `weighting` ("per_sample", the reference's semantics,
"per_dataset" or "per_episode"), `frame_filters` (one `fastmix.FrameFilter` or None per repo id, or a dict repo id
-> filter), and on the LIBERO factories `model_transforms` (to add e.g. a tokenizer transform or change
the image resolution).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from fastmix._args import check_int, check_weights
from fastmix.errors import ConfigError
from fastmix.openpi import norm_stats as _normalize  # the leaf: NormStats, load
from fastmix.openpi import transforms as _transforms

if TYPE_CHECKING:  # tyro is optional at run time (a test/CLI dependency)
    Suppress = Any
else:
    try:
        from tyro.conf import Suppress
    except ImportError:  # pragma: no cover - exercised only without tyro

        class Suppress:
            def __class_getitem__(cls, item: Any) -> Any:
                return item


logger = logging.getLogger("fastmix")

Weighting = Literal["per_sample", "per_dataset", "per_episode"]
WEIGHTINGS = ("per_sample", "per_dataset", "per_episode")


class ModelType(enum.Enum):
    """openpi's model types; quantile normalization is used for all but PI0."""

    PI0 = "pi0"
    PI0_FAST = "pi0_fast"
    PI05 = "pi05"


# ------------------------------------------------------------------------------------------------- models


def _check_action_dims(model_config: Any) -> None:
    check_int(model_config.action_dim, "action_dim", minimum=1)
    check_int(model_config.action_horizon, "action_horizon", minimum=1)


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """openpi's pi0 / pi05 model config (the fields the data pipeline reads, named as openpi names them).

    `max_token_len` defaults to 200 for pi05 and 48 for pi0; `discrete_state_input` defaults to `pi05`.
    """

    dtype: str = "bfloat16"
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = None  # type: ignore[assignment]
    pi05: bool = False
    discrete_state_input: bool = None  # type: ignore[assignment]
    pytorch_compile_mode: str | None = "max-autotune"

    def __post_init__(self) -> None:
        if self.max_token_len is None:
            object.__setattr__(self, "max_token_len", 200 if self.pi05 else 48)
        if self.discrete_state_input is None:
            object.__setattr__(self, "discrete_state_input", self.pi05)
        _check_action_dims(self)

    @property
    def model_type(self) -> ModelType:
        return ModelType.PI05 if self.pi05 else ModelType.PI0


@dataclasses.dataclass(frozen=True)
class Pi0FASTConfig:
    """openpi's pi0-FAST model config (data-pipeline fields)."""

    dtype: str = "bfloat16"
    paligemma_variant: str = "gemma_2b"
    action_dim: int = 32
    action_horizon: int = 32
    max_token_len: int = 250

    def __post_init__(self) -> None:
        _check_action_dims(self)

    @property
    def model_type(self) -> ModelType:
        return ModelType.PI0_FAST


def _model_type(model_config: Any) -> ModelType:
    mt = model_config.model_type
    return mt if isinstance(mt, ModelType) else ModelType(getattr(mt, "value", mt))


# ------------------------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class AssetsConfig:
    """Where the data assets (norm stats) are: `assets_dir/asset_id/norm_stats.json`.

    `assets_dir` None: the train config's `assets_dirs`; `asset_id` None: the repo id (first of `repo_ids`).
    """

    assets_dir: str | None = None
    asset_id: str | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A fully built data pipeline description (what `DataConfigFactory.create` returns)."""

    # LeRobot repo id (single dataset).
    repo_id: str | None = None
    # LeRobot repo ids of a mixture (co-training); when set, `repo_id` is its first entry.
    repo_ids: Sequence[str] | None = None
    # One weight per repo id (None: all 1); see `weighting`.
    dataset_weights: Sequence[float] | None = None
    # Directory within the assets directory containing the data assets.
    asset_id: str | None = None
    # Precomputed normalization stats; None: not found (the loader then asks for compute-norm-stats).
    norm_stats: dict[str, _normalize.NormStats] | None = None
    # Dataset-specific key remapping, then robot-specific transforms, then (after Normalize) model transforms.
    repack_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    data_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    model_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    # Quantile normalization instead of z-score.
    use_quantile_norm: bool = False
    # Keys loaded as action chunks of `action_horizon` steps.
    action_sequence_keys: Sequence[str] = ("actions",)
    # Use each dataset's LeRobot task as the prompt.
    prompt_from_task: bool = False
    # fastmix: root dir holding `<repo_id>/` (None: $HF_LEROBOT_HOME/<repo_id>).
    lerobot_home: str | None = None
    # fastmix: "per_sample" (a frame's probability ∝ its dataset's weight), "per_dataset" (share ∝ weight) or
    # "per_episode" (share ∝ weight, each episode of a dataset equally likely).
    weighting: Weighting = "per_sample"
    # fastmix: frames never drawn: one `fastmix.FrameFilter` (or None) per repo id, or a dict repo id -> filter.
    frame_filters: Suppress[Any] = None

    @property
    def all_repo_ids(self) -> list[str]:
        """`repo_ids` when set, else `[repo_id]` (empty when neither is set)."""
        if self.repo_ids:
            return list(self.repo_ids)
        return [self.repo_id] if self.repo_id is not None else []


def validate_dataset_weights(repo_ids: Sequence[str], dataset_weights: Sequence[float] | None) -> None:
    """The reference's weight checks (`fastmix._args.check_weights`), each error naming the offending value."""
    check_weights(dataset_weights, list(repo_ids))


def _validate_repo_ids(repo_ids: Sequence[str]) -> None:
    if isinstance(repo_ids, str):
        raise ConfigError(f"repo_ids must be a list of repo ids, got the string {repo_ids!r}")
    seen: set[str] = set()
    for r in repo_ids:
        if not isinstance(r, str) or not r:
            raise ConfigError(f"repo_ids entries must be non-empty strings, got {r!r} in {list(repo_ids)}")
        if r in seen:
            raise ConfigError(f"repo_ids has the duplicate entry {r!r}: {list(repo_ids)}")
        seen.add(r)


@dataclasses.dataclass(frozen=True)
class ModelTransformFactory:
    """Model transforms of openpi's pi0/pi05/pi0-FAST: default prompt, resize to 224x224, (tokenize), pad.

    fastmix cannot ship openpi's PaliGemma/FAST tokenizers; pass `tokenizer` (any per-sample openpi-style
    transform, e.g. openpi's `TokenizePrompt(...)`) to tokenize at openpi's position. Without it the batch
    keeps `prompt` as `list[str]`. `image_resolution=None` keeps the cameras' own size.
    """

    default_prompt: str | None = None
    image_resolution: tuple[int, int] | None = (224, 224)
    tokenizer: Suppress[Callable[[dict], dict] | None] = None

    def __call__(self, model_config: Any) -> _transforms.Group:
        inputs: list = [_transforms.InjectDefaultPrompt(self.default_prompt)]
        if self.image_resolution is not None:
            inputs.append(_transforms.ResizeImages(*self.image_resolution))
        if self.tokenizer is not None:
            inputs.append(self.tokenizer)
        if _model_type(model_config) != ModelType.PI0_FAST:
            inputs.append(_transforms.PadStatesAndActions(model_config.action_dim))
        return _transforms.Group(inputs=inputs)


@dataclasses.dataclass(frozen=True)
class DataConfigFactory(abc.ABC):
    """Builds a `DataConfig` for a model config (openpi's `DataConfigFactory`)."""

    # The LeRobot repo id.
    repo_id: str | None = None
    # Determines how the assets (norm stats) will be loaded.
    assets: AssetsConfig = dataclasses.field(default_factory=AssetsConfig)
    # Base config that will be updated by the factory.
    base_config: Suppress[DataConfig | None] = None
    # fastmix: root dir holding `<repo_id>/` datasets (None: $HF_LEROBOT_HOME/<repo_id>).
    lerobot_home: str | None = None

    @abc.abstractmethod
    def create(self, assets_dirs: pathlib.Path, model_config: Any) -> DataConfig:
        """Create a data config."""

    def _repo_ids(self) -> list[str]:
        return [self.repo_id] if self.repo_id is not None else []

    def create_base_config(self, assets_dirs: pathlib.Path | str, model_config: Any) -> DataConfig:
        """`base_config` with repo id, asset id, loaded norm stats and the model's normalization kind."""
        repo_ids = self._repo_ids()
        repo_id = repo_ids[0] if repo_ids else None
        asset_id = self.assets.asset_id or repo_id
        base = self.base_config or DataConfig()
        return dataclasses.replace(
            base,
            repo_id=repo_id,
            asset_id=asset_id,
            norm_stats=self._load_norm_stats(pathlib.Path(self.assets.assets_dir or assets_dirs), asset_id),
            use_quantile_norm=_model_type(model_config) != ModelType.PI0,
            lerobot_home=self.lerobot_home if self.lerobot_home is not None else base.lerobot_home,
        )

    @staticmethod
    def _load_norm_stats(assets_dir: pathlib.Path, asset_id: str | None) -> dict[str, _normalize.NormStats] | None:
        if asset_id is None:
            return None
        directory = assets_dir / asset_id
        try:
            stats = _normalize.load(directory)
        except FileNotFoundError:
            logger.info("Norm stats not found in %s, skipping.", directory)
            return None
        logger.info("Loaded norm stats from %s", directory)
        return stats


@dataclasses.dataclass(frozen=True)
class FakeDataConfig(DataConfigFactory):
    """openpi's fake data config (repo id "fake"); kept so configs naming it still build."""

    repo_id: str | None = "fake"

    def create(self, assets_dirs: pathlib.Path, model_config: Any) -> DataConfig:
        return DataConfig(repo_id=self.repo_id)


LIBERO_REPACK = {
    "observation/image": "image",
    "observation/wrist_image": "wrist_image",
    "observation/state": "state",
    "actions": "actions",
    "prompt": "prompt",
}


@dataclasses.dataclass(frozen=True)
class LeRobotLiberoDataConfig(DataConfigFactory):
    """openpi's LIBERO data config: repack LeRobot keys, `LiberoInputs`, optional extra delta transform."""

    # Convert the first 6 action dims to deltas w.r.t. the state (old pi0 LIBERO checkpoints used this).
    extra_delta_transform: bool = False
    # fastmix: model transforms (default: openpi's, without tokenization; see ModelTransformFactory).
    model_transforms: Suppress[Callable[[Any], _transforms.Group]] = dataclasses.field(
        default_factory=ModelTransformFactory
    )

    def create(self, assets_dirs: pathlib.Path, model_config: Any) -> DataConfig:
        repack = _transforms.Group(inputs=[_transforms.RepackTransform(dict(LIBERO_REPACK))])
        data_transforms = _transforms.Group(
            inputs=[_transforms.LiberoInputs(model_type=_model_type(model_config))],
            outputs=[_transforms.LiberoOutputs()],
        )
        if self.extra_delta_transform:
            mask = _transforms.make_bool_mask(6, -1)
            data_transforms = data_transforms.push(
                inputs=[_transforms.DeltaActions(mask)], outputs=[_transforms.AbsoluteActions(mask)]
            )
        return dataclasses.replace(
            self.create_base_config(assets_dirs, model_config),
            repack_transforms=repack,
            data_transforms=data_transforms,
            model_transforms=self.model_transforms(model_config),
        )


@dataclasses.dataclass(frozen=True)
class MultiDatasetLiberoDataConfig(LeRobotLiberoDataConfig):
    """Co-training on several LIBERO-format datasets with shared transforms and norm stats.

    Each repo id is one LeRobot dataset; `dataset_weights` (one per repo, default all 1) weight the draw:
    with the default "per_sample" weighting a frame of dataset i is drawn with probability ∝ w_i, so dataset
    i's share is w_i·N_i / Σ w_j·N_j (the reference's `WeightedRandomSampler` semantics). The asset id falls
    back to `repo_ids[0]`.
    """

    repo_ids: Sequence[str] = ()
    dataset_weights: Sequence[float] | None = None
    # fastmix: "per_sample" (reference semantics), "per_dataset" (share ∝ w_i) or "per_episode" (share ∝ w_i,
    # each episode of a dataset equally likely).
    weighting: Weighting = "per_sample"
    # fastmix: one `fastmix.FrameFilter` (or None) per repo id, or a dict repo id -> FrameFilter.
    frame_filters: Suppress[Any] = None

    def __post_init__(self) -> None:
        _validate_repo_ids(self.repo_ids)
        validate_dataset_weights(self.repo_ids, self.dataset_weights)
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got weighting={self.weighting!r}")

    def _repo_ids(self) -> list[str]:
        if not self.repo_ids:
            raise ConfigError("MultiDatasetLiberoDataConfig needs repo_ids (got an empty list)")
        return list(self.repo_ids)

    def create(self, assets_dirs: pathlib.Path, model_config: Any) -> DataConfig:
        base = super().create(assets_dirs, model_config)
        return dataclasses.replace(
            base,
            repo_ids=tuple(self.repo_ids),
            dataset_weights=None if self.dataset_weights is None else tuple(float(w) for w in self.dataset_weights),
            weighting=self.weighting,
            frame_filters=self.frame_filters,
        )


# ------------------------------------------------------------------------------------------------- train


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """openpi's `TrainConfig`: the fields the data pipeline uses plus openpi's common training fields."""

    # Name of the config; unique in the registry.
    name: Suppress[str]
    project_name: str = "openpi"
    exp_name: str = ""
    model: Pi0Config | Pi0FASTConfig = dataclasses.field(default_factory=Pi0Config)
    data: DataConfigFactory = dataclasses.field(default_factory=FakeDataConfig)
    # Base directory for config assets (norm stats): `assets_base_dir/name`.
    assets_base_dir: str = "./assets"
    checkpoint_base_dir: str = "./checkpoints"
    seed: int = 42
    # Global batch size (split evenly over the ranks).
    batch_size: int = 32
    num_workers: int = 2
    num_train_steps: int = 30_000
    log_interval: int = 100
    save_interval: int = 1000
    keep_period: int | None = 5000
    overwrite: bool = False
    resume: bool = False
    wandb_enabled: bool = True
    fsdp_devices: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"TrainConfig.name must be a non-empty string, got {self.name!r}")
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.num_workers, "num_workers", minimum=0)
        if self.resume and self.overwrite:
            raise ConfigError("Cannot resume and overwrite at the same time.")

    @property
    def assets_dirs(self) -> pathlib.Path:
        """The assets directory of this config: `assets_base_dir/name`."""
        return (pathlib.Path(self.assets_base_dir) / self.name).resolve()

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        if not self.exp_name:
            raise ConfigError("--exp_name must be set")
        return (pathlib.Path(self.checkpoint_base_dir) / self.name / self.exp_name).resolve()


__all__ = [
    "AssetsConfig",
    "DataConfig",
    "DataConfigFactory",
    "FakeDataConfig",
    "LeRobotLiberoDataConfig",
    "ModelTransformFactory",
    "ModelType",
    "MultiDatasetLiberoDataConfig",
    "Pi0Config",
    "Pi0FASTConfig",
    "TrainConfig",
    "validate_dataset_weights",
]
