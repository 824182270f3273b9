"""Configs: openpi field names and semantics, the reference's weight errors, the registry and tyro CLI."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import pytest

import fastmix.demo.configs  # noqa: F401  (registers the demo configs)
from fastmix.errors import ConfigError
from fastmix.openpi import config as C
from fastmix.openpi import norm_stats as ns
from fastmix.openpi import registry as R
from fastmix.openpi import transforms as T


def _multi(**kw) -> C.MultiDatasetLiberoDataConfig:
    kw.setdefault("repo_ids", ["dataset1", "dataset2", "dataset3"])
    return C.MultiDatasetLiberoDataConfig(**kw)


# --------------------------------------------------------------------------------------- reference errors


def test_weights_length_mismatch_error_names_lengths_and_values():
    with pytest.raises(ConfigError, match=r"dataset_weights length \(2\) must match repo_ids length \(3\)") as e:
        _multi(dataset_weights=[1.0, 2.0])
    assert "dataset_weights=[1.0, 2.0]" in str(e.value) and "'dataset3'" in str(e.value)
    assert isinstance(e.value, ValueError)  # the reference raised ValueError


def test_negative_weight_error_names_index_value_and_repo():
    with pytest.raises(ConfigError, match="dataset_weights must be non-negative") as e:
        _multi(dataset_weights=[1.0, -0.5, 1.0])
    assert "dataset_weights[1]=-0.5" in str(e.value) and "'dataset2'" in str(e.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weight_error(bad):
    with pytest.raises(ConfigError, match=rf"must be finite, got dataset_weights\[2\]={bad}"):
        _multi(dataset_weights=[1.0, 1.0, bad])


def test_all_zero_weights_and_non_number_errors():
    with pytest.raises(ConfigError, match=r"must not all be zero, got dataset_weights=\[0.0, 0, 0.0\]"):
        _multi(dataset_weights=[0.0, 0, 0.0])
    with pytest.raises(ConfigError, match=r"dataset_weights must be numbers, got dataset_weights\[0\]='1' for repo_ids\[0\]='dataset1'"):
        _multi(dataset_weights=["1", 1, 1])
    _multi(dataset_weights=[0.0, 1.0, np.float32(2.0)])  # one zero weight is allowed


def test_repo_ids_errors():
    with pytest.raises(ConfigError, match="duplicate entry 'a'"):
        _multi(repo_ids=["a", "b", "a"])
    with pytest.raises(ConfigError, match="got the string 'abc'"):
        _multi(repo_ids="abc")
    with pytest.raises(ConfigError, match="needs repo_ids"):
        _multi(repo_ids=[]).create(pathlib.Path("/tmp"), C.Pi0Config())
    with pytest.raises(ConfigError, match="weighting='uniform'"):
        _multi(weighting="uniform")


# ------------------------------------------------------------------------------------------- semantics


def test_issue_example_config_builds_like_openpi(tmp_path):
    cfg = C.TrainConfig(
        name="my_cotraining_config",
        model=C.Pi0Config(pi05=True, action_horizon=10),
        data=C.MultiDatasetLiberoDataConfig(
            repo_ids=["dataset1", "dataset2", "dataset3"],
            dataset_weights=[1.0, 2.0, 1.0],
            base_config=C.DataConfig(prompt_from_task=True),
            extra_delta_transform=False,
            assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets/my_config"), asset_id="shared_norm_stats"),
        ),
    )
    dc = cfg.data.create(cfg.assets_dirs, cfg.model)
    assert dc.repo_ids == ("dataset1", "dataset2", "dataset3") and dc.repo_id == "dataset1"
    assert dc.dataset_weights == (1.0, 2.0, 1.0)
    assert dc.asset_id == "shared_norm_stats" and dc.norm_stats is None
    assert dc.prompt_from_task and dc.use_quantile_norm and dc.action_sequence_keys == ("actions",)
    assert [type(t) for t in dc.repack_transforms.inputs] == [T.RepackTransform]
    assert [type(t) for t in dc.data_transforms.inputs] == [T.LiberoInputs]
    assert [type(t) for t in dc.model_transforms.inputs] == [T.InjectDefaultPrompt, T.ResizeImages, T.PadStatesAndActions]
    assert dc.model_transforms.inputs[-1].model_action_dim == 32
    assert cfg.assets_dirs == (pathlib.Path("./assets") / "my_cotraining_config").resolve()


def test_asset_id_falls_back_to_first_repo_id_and_loads_norm_stats(tmp_path):
    stats = {"state": ns.NormStats(mean=[1.0], std=[2.0], q01=[0.0], q99=[3.0])}
    ns.save(tmp_path / "dataset1", stats)
    dc = _multi(assets=C.AssetsConfig(assets_dir=str(tmp_path))).create(pathlib.Path("/unused"), C.Pi0Config())
    assert dc.asset_id == "dataset1"
    assert dc.norm_stats["state"].std.tolist() == [2.0]
    # assets_dir None: the train config's assets_dirs is used
    dc2 = _multi().create(tmp_path, C.Pi0Config())
    assert dc2.norm_stats is not None


@pytest.mark.parametrize(
    "model, quantile",
    [(C.Pi0Config(), False), (C.Pi0Config(pi05=True), True), (C.Pi0FASTConfig(), True)],
)
def test_quantile_norm_for_all_but_pi0(model, quantile):
    assert _multi().create(pathlib.Path("/tmp"), model).use_quantile_norm is quantile


def test_pi0_config_defaults_like_openpi():
    assert C.Pi0Config().max_token_len == 48 and C.Pi0Config(pi05=True).max_token_len == 200
    assert C.Pi0Config(pi05=True).discrete_state_input is True
    assert C.Pi0Config().model_type is C.ModelType.PI0 and C.Pi0Config(pi05=True).model_type is C.ModelType.PI05
    assert (C.Pi0Config().action_dim, C.Pi0Config().action_horizon) == (32, 50)
    with pytest.raises(ConfigError, match="action_horizon=0"):
        C.Pi0Config(action_horizon=0)


def test_extra_delta_transform_and_fast_model_inputs():
    dc = C.LeRobotLiberoDataConfig(repo_id="r", extra_delta_transform=True).create(pathlib.Path("/tmp"), C.Pi0Config())
    delta = dc.data_transforms.inputs[-1]
    assert isinstance(delta, T.DeltaActions) and tuple(delta.mask) == (True,) * 6 + (False,)
    assert isinstance(dc.data_transforms.outputs[0], T.AbsoluteActions)
    fast = C.LeRobotLiberoDataConfig(repo_id="r").create(pathlib.Path("/tmp"), C.Pi0FASTConfig())
    assert not any(isinstance(t, T.PadStatesAndActions) for t in fast.model_transforms.inputs)
    assert fast.data_transforms.inputs[0].model_type is C.ModelType.PI0_FAST


def test_model_transform_factory_tokenizer_position_and_native_resolution():
    def tok(d):
        return d

    g = C.ModelTransformFactory(default_prompt="p", tokenizer=tok)(C.Pi0Config())
    assert [getattr(t, "__name__", type(t).__name__) for t in g.inputs] == [
        "InjectDefaultPrompt", "ResizeImages", "tok", "PadStatesAndActions"
    ]
    g2 = C.ModelTransformFactory(image_resolution=None)(C.Pi0Config())
    assert not any(isinstance(t, T.ResizeImages) for t in g2.inputs)


def test_train_config_validation():
    with pytest.raises(ConfigError, match="batch_size=0"):
        C.TrainConfig(name="x", batch_size=0)
    with pytest.raises(ConfigError, match="num_workers=-1"):
        C.TrainConfig(name="x", num_workers=-1)
    with pytest.raises(ConfigError, match="exp_name"):
        _ = C.TrainConfig(name="x").checkpoint_dir


def test_factory_lerobot_home_reaches_data_config(tmp_path):
    dc = _multi(lerobot_home=str(tmp_path)).create(tmp_path, C.Pi0Config())
    assert dc.lerobot_home == str(tmp_path) and dc.weighting == "per_sample"


# ---------------------------------------------------------------------------------------------- registry


def test_demo_configs_registered_from_spec(monkeypatch, tmp_path):
    from fastmix.demo import spec

    monkeypatch.setenv("FASTMIX_HOME", str(tmp_path))
    assert {"fastmix_demo", "fastmix_demo_native", "fastmix_demo_pi0"} <= set(R.list_configs())
    cfg = R.get_config("fastmix_demo")
    assert list(cfg.data.repo_ids) == [d.repo_id for d in spec.DEMO_DATASETS]
    assert tuple(cfg.data.dataset_weights) == spec.DEMO_WEIGHTS
    assert cfg.data.lerobot_home == str(tmp_path / "lerobot")
    assert cfg.data.assets.assets_dir == str(tmp_path / "assets")
    assert cfg.model.action_horizon == spec.DEMO_ACTION_HORIZON and cfg.model.pi05
    assert not R.get_config("fastmix_demo_pi0").data.create(tmp_path, R.get_config("fastmix_demo_pi0").model).use_quantile_norm


def test_get_config_unknown_suggests_closest():
    with pytest.raises(ConfigError, match="Config 'fastmix_dmeo' not found. Did you mean 'fastmix_demo'?"):
        R.get_config("fastmix_dmeo")


def test_register_unregister_and_duplicates():
    cfg = C.TrainConfig(name="test_cfg_register", data=_multi())
    R.register(cfg)
    try:
        assert R.get_config("test_cfg_register") is cfg and "test_cfg_register" in R.list_configs()
        with pytest.raises(ConfigError, match="'test_cfg_register' is already registered"):
            R.register(cfg)
        other = dataclasses.replace(cfg, batch_size=4)
        R.register(other, overwrite=True)
        assert R.get_config("test_cfg_register").batch_size == 4
        with pytest.raises(ConfigError, match="'fastmix_demo' is already registered"):
            R.register(dataclasses.replace(cfg, name="fastmix_demo"))
    finally:
        R.unregister("test_cfg_register")
    with pytest.raises(ConfigError, match="no registered config named 'test_cfg_register'"):
        R.unregister("test_cfg_register")


def test_tyro_cli_overrides_fields():
    pytest.importorskip("tyro")
    cfg = R.cli(["fastmix_demo", "--batch-size", "8", "--data.dataset-weights", "1", "1", "5", "--seed", "3"])
    assert (cfg.name, cfg.batch_size, cfg.seed) == ("fastmix_demo", 8, 3)
    assert list(cfg.data.dataset_weights) == [1.0, 1.0, 5.0]
    with pytest.raises(SystemExit):
        R.cli(["fastmix_demo", "--data.dataset-weights", "1", "-1", "1"])
