"""Reliability catalogue, mixtures of data configs (issue 22, `MixtureDataConfig`): entries that cannot share one
batch, entries that are not LeRobot data, filters and inner weightings the mixture cannot express. Each raises
one error naming the entry (its index, type and datasets), the key and both values, before or at the first
batch, and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import types

import pytest

from fastmix import FrameFilter, MixtureDataConfig
from fastmix.errors import ConfigError
from fastmix.loader.loader import MixtureLoader
from fastmix.loader.options import WorkerOptions
from fastmix.openpi.config import (
    DataConfig,
    DataConfigFactory,
    LeRobotLiberoDataConfig,
    ModelTransformFactory,
    MultiDatasetLiberoDataConfig,
    Pi0Config,
    TrainConfig,
)
from fastmix.openpi.data_loader import create_data_loader
from fastmix.testing.fakes import FakeReader, FakeSource

pytestmark = pytest.mark.timeout(60)

SOURCES = {"arm": dict(camera_shape=(12, 16, 3)), "other_arm": dict(camera_shape=(12, 16, 3)),
           "wide_arm": dict(camera_shape=(10, 20, 3)), "big_arm": dict(state_dim=40, action_dim=40)}


def open_fakes(data_config) -> list:
    ids = list(getattr(data_config, "repo_ids", None) or [data_config.repo_id])
    return [FakeSource(r, num_episodes=2, episode_length=6, **SOURCES[r]) for r in ids]


def fake_loader(sources, **kw):
    return MixtureLoader(sources, workers=WorkerOptions(reader_factory=FakeReader), **kw)


def first_batch(data, batch_size=4):
    cfg = TrainConfig(name="mix", model=Pi0Config(action_dim=32, action_horizon=3), data=data, batch_size=batch_size,
                      num_workers=0)
    with create_data_loader(cfg, shuffle=True, num_batches=1, skip_norm_stats=True, open_sources=open_fakes,
                            loader_factory=fake_loader) as dl:
        return next(iter(dl.batches()))


def libero(repo, **kw):
    return LeRobotLiberoDataConfig(repo_id=repo, base_config=DataConfig(prompt_from_task=True), **kw)


@dataclasses.dataclass(frozen=True)
class ExtraKey:
    def __call__(self, d):
        return {**d, "extra": d["state"][..., :1]}


@dataclasses.dataclass(frozen=True)
class WithExtraKey(LeRobotLiberoDataConfig):
    def create(self, assets_dirs, model_config):
        dc = super().create(assets_dirs, model_config)
        return dataclasses.replace(dc, data_transforms=dc.data_transforms.push(inputs=[ExtraKey()]))


@dataclasses.dataclass(frozen=True)
class RldsConfig(DataConfigFactory):
    def create(self, assets_dirs, model_config):
        return types.SimpleNamespace(repo_id="droid", rlds_data_dir="/data/rlds")  # openpi's RLDS DataConfig


def test_two_entries_of_one_schema_mix(no_leaks):
    batch = first_batch(MixtureDataConfig(datasets=[libero("arm"), libero("other_arm")]), batch_size=8)
    assert batch["state"].shape == (8, 32)


def test_entries_whose_transforms_give_different_keys(no_leaks):
    data = MixtureDataConfig(datasets=[libero("arm"), WithExtraKey(repo_id="other_arm", base_config=DataConfig(prompt_from_task=True))])
    with pytest.raises(ValueError, match=r"entry 0 \(LeRobotLiberoDataConfig: arm\) gives .* entry 1 "
                                         r"\(WithExtraKey: other_arm\) gives .*'extra'"):
        first_batch(data, batch_size=12)


def test_images_of_different_sizes_without_a_resize(no_leaks):
    keep = ModelTransformFactory(image_resolution=None)
    data = MixtureDataConfig(datasets=[libero("arm", model_transforms=keep), libero("wide_arm", model_transforms=keep)])
    with pytest.raises(ValueError, match=r"key 'image/base_0_rgb' has different shapes .*entry 0 .*\(12, 16, 3\).*"
                                         r"entry 1 .*\(10, 20, 3\)"):
        first_batch(data, batch_size=12)


def test_state_larger_than_the_models_action_dim(no_leaks):
    data = MixtureDataConfig(datasets=[libero("arm"), libero("big_arm")])
    with pytest.raises(ValueError, match=r"entry 1 \(LeRobotLiberoDataConfig: big_arm\): state has 40 dims, more "
                                         r"than the model's action_dim=32"):
        first_batch(data, batch_size=12)


def test_an_rlds_entry_is_refused(no_leaks):
    cfg = TrainConfig(name="mix", model=Pi0Config(), data=MixtureDataConfig(datasets=[libero("arm"), RldsConfig()]))
    with pytest.raises(ConfigError, match=r"datasets\[1\] \(RldsConfig\) creates an RLDS data config"):
        cfg.data.create(cfg.assets_dirs, cfg.model)


def test_frame_filters_naming_an_unknown_dataset(no_leaks):
    data = MixtureDataConfig(datasets=[libero("arm"), libero("other_arm")],
                             frame_filters={"nobody": FrameFilter(trim_start=1)})
    with pytest.raises(ConfigError, match=r"frame_filters names datasets \['nobody'\] that no entry has"):
        first_batch(data)


def test_a_nested_entry_with_its_own_per_dataset_weighting(no_leaks):
    nested = MultiDatasetLiberoDataConfig(repo_ids=["arm", "other_arm"], weighting="per_dataset",
                                          base_config=DataConfig(prompt_from_task=True))
    data = MixtureDataConfig(datasets=[nested, libero("wide_arm")])
    with pytest.raises(ConfigError, match=r"entry 0 \(MultiDatasetLiberoDataConfig: arm, other_arm\) weights its "
                                          r"datasets 'per_dataset'"):
        first_batch(data)
