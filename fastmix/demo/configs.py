"""The demo's registered configs: the embedded mixture (`fastmix.demo.spec`) in openpi's pi05 and pi0 pipelines,
built from the current environment at each lookup (a registry provider: `$FASTMIX_HOME` is read then)."""

from __future__ import annotations

from typing import Any

from fastmix.demo import spec
from fastmix.openpi.config import (
    AssetsConfig,
    DataConfig,
    ModelTransformFactory,
    MultiDatasetLiberoDataConfig,
    Pi0Config,
    TrainConfig,
)
from fastmix.openpi.registry import add_provider


def demo_configs() -> list[TrainConfig]:
    """The configs of the embedded demo mixture (`fastmix.demo.spec`), built from the current environment."""

    repo_ids = [d.repo_id for d in spec.DEMO_DATASETS]

    def make(name: str, model: Any, image_resolution: tuple[int, int] | None) -> TrainConfig:
        return TrainConfig(
            name=name,
            model=model,
            data=MultiDatasetLiberoDataConfig(
                repo_ids=repo_ids,
                dataset_weights=list(spec.DEMO_WEIGHTS),
                base_config=DataConfig(prompt_from_task=True),
                assets=AssetsConfig(assets_dir=str(spec.demo_assets_dir()), asset_id="fastmix_demo"),
                lerobot_home=str(spec.demo_home()),
                model_transforms=ModelTransformFactory(image_resolution=image_resolution),
            ),
            batch_size=32,
            num_workers=2,
            seed=0,
            exp_name="demo",
            wandb_enabled=False,
        )

    h = spec.DEMO_ACTION_HORIZON
    return [
        # openpi's pi05 pipeline: quantile norm, 224x224 images, state/actions padded to 32.
        make("fastmix_demo", Pi0Config(pi05=True, action_horizon=h), (224, 224)),
        # The same at the cameras' own resolution (what the demo's small policy trains on).
        make("fastmix_demo_native", Pi0Config(pi05=True, action_horizon=h, action_dim=spec.DEMO_ACTION_DIM), None),
        # pi0 pipeline: z-score normalization.
        make("fastmix_demo_pi0", Pi0Config(action_horizon=h), (224, 224)),
    ]


add_provider(demo_configs)

__all__ = ["demo_configs"]
