"""fastmix's multi-dataset LeRobot config in openpi's own types: for upstream openpi, which has no way to mix
LeRobot datasets, and for the co-training fork alike.

- `MultiDatasetLeRobotConfig`: a subclass of openpi's `DataConfigFactory`, so openpi's own
  `TrainConfig(data=...)`, its registry and its train scripts take it. It mixes the LeRobot datasets `repo_ids`
  (one weight each, `dataset_weights`; `weighting` as in `fastmix.openpi.config`), all in the format of
  `dataset_config`, any single-dataset LeRobot data config of openpi (`LeRobotLiberoDataConfig`,
  `LeRobotAlohaDataConfig`, `LeRobotDROIDDataConfig`, a user's own), which gives the transforms, the action keys
  and the norm stats (from `assets`, the asset id defaulting to `repo_ids[0]`).
- `MultiDatasetDataConfig`: what it creates, openpi's `DataConfig` plus `repo_ids`, `dataset_weights` and
  `weighting` (`repo_id` None), read by `fastmix.openpi.install()`'s loader.
- `register_openpi_configs(*train_configs)`: adds openpi `TrainConfig`s to openpi's registry
  (`openpi.training.config._CONFIGS_DICT`), where `get_config`, `cli()` and so `scripts/train.py NAME` find them.

    import openpi.models.pi0_config as pi0_config
    import openpi.training.config as _config
    from fastmix.openpi import MultiDatasetLeRobotConfig, register_openpi_configs

    register_openpi_configs(_config.TrainConfig(
        name="pi05_libero_cotrain",
        model=pi0_config.Pi0Config(pi05=True, action_horizon=10),
        data=MultiDatasetLeRobotConfig(
            repo_ids=["physical-intelligence/libero", "my_interpolations"],
            dataset_weights=[1.0, 3.0],
            assets=_config.AssetsConfig(asset_id="physical-intelligence/libero"),
            dataset_config=_config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True)),
        ),
    ))

The two classes are built from the openpi classes of the running process on first use (`import fastmix` never
imports openpi) and live in this module by name, so they pickle. openpi's own loader would read one dataset
(upstream) or ignore the weights (the fork), so `create()` refuses when openpi's un-patched data loader calls
it (without `fastmix.openpi.install()`); any other caller gets the data config.
"""

# No `from __future__ import annotations`: the classes built in `_classes` need their field types evaluated
# there (tyro reads them, and their names are local to that function).
import dataclasses
import functools
import importlib
import sys
from collections.abc import Sequence
from typing import Any, Literal

from fastmix.errors import ConfigError
from fastmix.openpi.adapter import TARGET_MODULE
from fastmix.openpi.config import _validate_repo_ids, validate_dataset_weights

CONFIG_MODULE = "openpi.training.config"
_CLASSES = ("MultiDatasetDataConfig", "MultiDatasetLeRobotConfig")
WEIGHTINGS = ("per_sample", "per_dataset", "per_episode")


def _openpi_config() -> Any:
    try:
        return importlib.import_module(CONFIG_MODULE)
    except ImportError as e:
        raise ImportError(f"fastmix's openpi configs are built on {CONFIG_MODULE}, which is not importable "
                          f"here ({e}); install openpi in this environment") from e


def _check_factory(cfg: Any, oc: Any) -> None:
    """`MultiDatasetLeRobotConfig.__post_init__`: every field checked, each error naming the field and value."""
    import tyro  # openpi's dependency

    name = type(cfg).__name__
    if cfg.repo_id is not None:
        raise ConfigError(f"{name} takes its datasets from repo_ids, got repo_id={cfg.repo_id!r} "
                          f"(put it in repo_ids)")
    if not cfg.repo_ids:
        raise ConfigError(f"{name} needs repo_ids (one LeRobot repo id per dataset of the mixture), got "
                          f"repo_ids={cfg.repo_ids!r}")
    _validate_repo_ids(cfg.repo_ids)
    validate_dataset_weights(cfg.repo_ids, cfg.dataset_weights)
    if cfg.weighting not in WEIGHTINGS:
        raise ConfigError(f"{name}.weighting must be one of {WEIGHTINGS}, got weighting={cfg.weighting!r}")
    inner = cfg.dataset_config
    if not isinstance(inner, oc.DataConfigFactory):
        raise ConfigError(f"{name} needs dataset_config=<a single-dataset LeRobot data config of openpi>, e.g. "
                          f"LeRobotLiberoDataConfig(...); got dataset_config={inner!r}")
    kind = type(inner).__name__
    if isinstance(inner, type(cfg)) or "repo_ids" in {f.name for f in dataclasses.fields(inner)}:
        raise ConfigError(f"{name}.dataset_config must be a single-dataset config, got the multi-dataset {kind}")
    if isinstance(inner, oc.FakeDataConfig):
        raise ConfigError(f"{name}.dataset_config is {kind}: fake data has no LeRobot datasets to mix")
    if getattr(inner, "rlds_data_dir", None) is not None:
        raise ConfigError(f"{name}.dataset_config is the RLDS config {kind}; fastmix mixes LeRobot datasets only")
    own = getattr(inner, "repo_id", None)
    if own is not None and own is not tyro.MISSING:
        raise ConfigError(f"{name}.dataset_config has repo_id={own!r}; leave it unset, the datasets are "
                          f"repo_ids={list(cfg.repo_ids)}")
    if cfg.assets != oc.AssetsConfig() and inner.assets != oc.AssetsConfig():
        raise ConfigError(f"{name}: assets is set both on the config ({cfg.assets}) and on its dataset_config "
                          f"{kind} ({inner.assets}); set one")
    if cfg.base_config is not None and inner.base_config is not None:
        raise ConfigError(f"{name}: base_config is set both on the config and on its dataset_config {kind}; "
                          f"set one")


def _require_fastmix_loader(cfg: Any, depth: int = 12) -> None:
    """Refuse when openpi's own, un-patched data loader is what asks (a caller within `depth` frames lives in
    openpi's data loader module and `install()` has not patched it). Other callers (fastmix's tools, openpi's
    policy serving, which only needs the transforms) are served."""
    module = sys.modules.get(TARGET_MODULE)
    if module is None or getattr(module, "_fastmix_installed", False):
        return
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return
        if frame.f_globals.get("__name__") == TARGET_MODULE:
            raise ConfigError(
                f"{type(cfg).__name__}(repo_ids={list(cfg.repo_ids)}) loads through fastmix, but openpi's own "
                f"data loader ({TARGET_MODULE}) asks for it: call fastmix.openpi.install() before openpi builds "
                f"its loader, or start the script with `python -m fastmix.openpi.launch SCRIPT ...` (openpi's "
                f"loader would read one dataset or ignore dataset_weights)"
            )
        frame = frame.f_back


def _create(cfg: Any, assets_dirs: Any, model_config: Any, oc: Any, data_config_cls: type) -> Any:
    """`MultiDatasetLeRobotConfig.create`: the dataset config's own `create` for the first repo id (its
    transforms, action keys, norm stats), carried over into a `MultiDatasetDataConfig` of all the repo ids."""
    _require_fastmix_loader(cfg)
    inner = cfg.dataset_config
    inner = dataclasses.replace(
        inner,
        repo_id=cfg.repo_ids[0],
        assets=cfg.assets if cfg.assets != oc.AssetsConfig() else inner.assets,
        base_config=cfg.base_config if cfg.base_config is not None else inner.base_config,
    )
    created = inner.create(assets_dirs, model_config)
    kind = type(cfg.dataset_config).__name__
    if getattr(created, "rlds_data_dir", None) is not None:
        raise ConfigError(f"{type(cfg).__name__}.dataset_config {kind} creates an RLDS data config "
                          f"(rlds_data_dir={created.rlds_data_dir!r}); fastmix mixes LeRobot datasets only")
    base_fields = {f.name for f in dataclasses.fields(oc.DataConfig)}
    extra = sorted({f.name for f in dataclasses.fields(created)} - base_fields)
    if extra:
        raise ConfigError(f"{type(cfg).__name__}.dataset_config {kind} creates a {type(created).__name__} with "
                          f"fields {extra} that a mixture's DataConfig does not carry")
    values = {f.name: getattr(created, f.name) for f in dataclasses.fields(oc.DataConfig) if f.init}
    values.update(
        repo_id=None,
        repo_ids=tuple(cfg.repo_ids),
        dataset_weights=None if cfg.dataset_weights is None else tuple(float(w) for w in cfg.dataset_weights),
        weighting=cfg.weighting,
    )
    return data_config_cls(**values)


@functools.cache
def _classes() -> dict[str, type]:
    """The two classes, built once from the openpi classes of this process."""
    oc = _openpi_config()
    import tyro  # openpi's dependency

    suppress = tyro.conf.Suppress

    @dataclasses.dataclass(frozen=True)
    class MultiDatasetDataConfig(oc.DataConfig):
        """openpi's `DataConfig` of a mixture: `repo_ids` (with `repo_id` None), one weight per repo id (None:
        all 1) and the weighting ("per_sample": a frame's probability ∝ its dataset's weight; "per_dataset":
        dataset i's share ∝ w_i)."""

        repo_ids: Sequence[str] | None = None
        dataset_weights: Sequence[float] | None = None
        weighting: str = "per_sample"

    @dataclasses.dataclass(frozen=True)
    class MultiDatasetLeRobotConfig(oc.DataConfigFactory):
        """Mixes the LeRobot datasets `repo_ids`, all in the format of `dataset_config` (a single-dataset openpi
        LeRobot data config giving transforms, action keys and norm stats; its asset id defaults to
        `repo_ids[0]`). `dataset_weights`: one per repo id (None: all 1); `weighting`: "per_sample" (a frame of
        dataset i is drawn with probability ∝ w_i, so its share is w_i·N_i / Σ w_j·N_j) or "per_dataset"
        (share ∝ w_i). `assets` / `base_config` may be set here or on `dataset_config`, not on both."""

        repo_id: str | None = None  # type: ignore[assignment]
        repo_ids: Sequence[str] = ()
        dataset_weights: Sequence[float] | None = None
        weighting: Literal["per_sample", "per_dataset", "per_episode"] = "per_sample"
        dataset_config: suppress[oc.DataConfigFactory | None] = None

        def __post_init__(self) -> None:
            _check_factory(self, oc)

        def create(self, assets_dirs: Any, model_config: Any) -> Any:
            return _create(self, assets_dirs, model_config, oc, MultiDatasetDataConfig)

    classes = {"MultiDatasetDataConfig": MultiDatasetDataConfig, "MultiDatasetLeRobotConfig": MultiDatasetLeRobotConfig}
    for cls in classes.values():
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return classes


def register_openpi_configs(*configs: Any, overwrite: bool = False) -> list[str]:
    """Add openpi `TrainConfig`s to openpi's registry (`openpi.training.config._CONFIGS_DICT`), where
    `get_config(name)`, `cli()` and the train scripts find them; returns their names. A name already there is a
    ConfigError naming it (unless `overwrite`, or it is the same config object)."""
    oc = _openpi_config()
    registry = getattr(oc, "_CONFIGS_DICT", None)
    if not isinstance(registry, dict):
        raise ConfigError(f"{CONFIG_MODULE} has no _CONFIGS_DICT registry; this openpi version is not supported "
                          f"by register_openpi_configs")
    names = []
    for config in configs:
        if not isinstance(config, oc.TrainConfig):
            raise ConfigError(f"register_openpi_configs() takes openpi TrainConfigs ({CONFIG_MODULE}.TrainConfig), "
                              f"got {type(config).__module__}.{type(config).__name__}")
        if config.name in names:
            raise ConfigError(f"register_openpi_configs(): the name '{config.name}' is given twice")
        known = registry.get(config.name)
        if known is not None and known is not config and not overwrite:
            raise ConfigError(f"openpi's registry already has a config named '{config.name}' "
                              f"(pass overwrite=True to replace it)")
        names.append(config.name)
    for config in configs:
        registry[config.name] = config
    return names


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_CLASSES, "register_openpi_configs"]
