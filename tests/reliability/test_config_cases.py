"""Reliability catalogue, configuration cases: each bad value raises ConfigError naming the offending
entry (index, repo id, key, sizes), and nothing is started (no worker, no /dev/shm segment)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastmix.core.sampler import MixtureSampler
from fastmix.errors import ConfigError, FastmixError, MissingFileError
from fastmix.loader.loader import MixtureLoader
from fastmix.openpi import config as C
from fastmix.openpi import data_loader as DL
from fastmix.testing.fakes import FakeReader, FakeSource
from tests.loader_args import grouped

pytestmark = pytest.mark.timeout(60)


def fakes():
    return [FakeSource("ds_a", num_episodes=2, episode_length=5), FakeSource("ds_b", num_episodes=1, episode_length=4)]


def loader(**kw):
    args = dict(batch_size=4, num_workers=0, reader_factory=FakeReader)
    args.update(kw)
    return MixtureLoader(kw.pop("sources", None) or fakes(), **grouped(**{k: v for k, v in args.items() if k != "sources"}))


def data_cfg(repo_ids=("fake/a", "fake/b"), weights=None):
    return C.MultiDatasetLiberoDataConfig(repo_ids=list(repo_ids), dataset_weights=weights)


def train_cfg(tmp_path, repo_ids=("fake/a", "fake/b"), *, name="rel_cfg", batch_size=4, horizon=3, keys=None):
    base = C.DataConfig(prompt_from_task=True) if keys is None else \
        C.DataConfig(prompt_from_task=True, action_sequence_keys=tuple(keys))
    return C.TrainConfig(
        name=name, model=C.Pi0Config(pi05=True, action_horizon=horizon),
        data=C.MultiDatasetLiberoDataConfig(
            repo_ids=list(repo_ids), base_config=base,
            assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets"), asset_id="shared"),
            model_transforms=C.ModelTransformFactory(image_resolution=None)),
        batch_size=batch_size, num_workers=0, seed=0)


# ------------------------------------------------------------------------------------------- weights
def test_weights_length_mismatch(no_leaks):
    with pytest.raises(ConfigError, match=r"dataset_weights length \(3\) must match datasets length \(2\)") as e:
        loader(dataset_weights=[1.0, 2.0, 3.0])
    assert "ds_a" in str(e.value) and "ds_b" in str(e.value)
    with pytest.raises(ConfigError, match=r"dataset_weights length \(3\) must match"):
        MixtureSampler([5, 4], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match=r"dataset_weights length \(1\) must match repo_ids length \(2\).*'fake/b'"):
        data_cfg(weights=[1.0])


@pytest.mark.parametrize("bad, idx, word", [
    ([1.0, -0.5], 1, "negative"),
    ([math.nan, 1.0], 0, "finite"),
    ([1.0, math.inf], 1, "finite"),
])
def test_invalid_weight_names_index(bad, idx, word, no_leaks):
    with pytest.raises(ConfigError, match=word) as e:
        MixtureSampler([5, 4], bad)
    assert f"[{idx}]" in str(e.value)
    with pytest.raises(ConfigError, match=word) as e:
        loader(dataset_weights=bad)
    assert f"[{idx}]" in str(e.value)
    with pytest.raises(ConfigError, match=word) as e:
        data_cfg(weights=bad)
    assert f"dataset_weights[{idx}]" in str(e.value) and ("fake/a" if idx == 0 else "fake/b") in str(e.value)


def test_all_zero_weights(no_leaks):
    with pytest.raises(ConfigError, match="must not all be zero"):
        MixtureSampler([5, 4], [0.0, 0.0])
    with pytest.raises(ConfigError, match="must not all be zero"):
        loader(dataset_weights=[0, 0])
    with pytest.raises(ConfigError, match="must not all be zero"):
        data_cfg(weights=[0.0, 0.0])


def test_zero_weight_dataset_never_drawn_and_stated(no_leaks):
    s = MixtureSampler([50, 40], [1.0, 0.0], seed=3)
    g = s.next_indices(2000)
    assert g.max() < 50, "a dataset of weight 0 was drawn"
    table = s.mixture.format_table(["ds_a", "ds_b"])
    line_b = [ln for ln in table.splitlines() if "ds_b" in ln][0]
    assert "never drawn" in line_b and "0.000%" in line_b
    assert "never drawn" not in [ln for ln in table.splitlines() if "ds_a" in ln][0]
    with loader(dataset_weights=[1.0, 0.0], num_batches=5) as ld:
        assert "never drawn" in ld.mixture.format_table(["ds_a", "ds_b"])
        for b in ld:
            assert (b["dataset_index"].numpy() == 0).all()


# ------------------------------------------------------------------------------------------- repos / roots
def test_unknown_repo_id_or_missing_root(tmp_path, no_leaks):
    with pytest.raises(ConfigError, match="no dataset root exists") as e:
        MixtureLoader(["nobody/unknown_repo"], batch_size=2, num_workers=0)
    assert "nobody/unknown_repo" in str(e.value)
    from fastmix.sources.meta import load_meta

    missing = tmp_path / "not_there"
    with pytest.raises(MissingFileError, match="does not exist") as e:
        load_meta(missing, "nobody/unknown_repo")
    assert "nobody/unknown_repo" in str(e.value) and str(missing) in str(e.value)


def test_unknown_repo_id_lerobot_source(tmp_path, no_leaks):
    from fastmix.sources.lerobot_source import LeRobotSource

    missing = tmp_path / "nobody" / "unknown_repo"
    with pytest.raises(FastmixError) as e:
        LeRobotSource("nobody/unknown_repo", root=missing)
    assert isinstance(e.value, (MissingFileError, ConfigError))
    assert "nobody/unknown_repo" in str(e.value) and str(missing) in str(e.value)


def test_duplicate_repo_ids(no_leaks):
    with pytest.raises(ConfigError, match="duplicate") as e:
        data_cfg(repo_ids=("fake/a", "fake/b", "fake/a"))
    assert "'fake/a'" in str(e.value)
    with pytest.raises(ConfigError, match="duplicate") as e:
        MixtureLoader([FakeSource("ds_a"), FakeSource("ds_a")], batch_size=2, num_workers=0)
    assert "ds_a" in str(e.value)


# ------------------------------------------------------------------------------------------- data loader
def test_missing_norm_stats(tmp_path, no_leaks):
    cfg = train_cfg(tmp_path, name="rel_no_stats")
    with pytest.raises(ConfigError, match="Normalization stats not found") as e:
        DL.create_data_loader(cfg)
    msg = str(e.value)
    assert str(tmp_path / "assets" / "shared" / "norm_stats.json") in msg
    assert "compute-norm-stats rel_no_stats" in msg


def test_batch_larger_than_mixture(tmp_path, fake_sources, no_leaks):
    with pytest.raises(ConfigError, match=r"Local batch size \(15\) is larger than the dataset size \(14\)") as e:
        DL.create_data_loader(train_cfg(tmp_path, batch_size=15), skip_norm_stats=True)
    assert "fake/a=10" in str(e.value) and "fake/b=4" in str(e.value)
    with pytest.raises(ConfigError, match=r"batch_size=15 is larger than the mixture") as e:
        loader(batch_size=15)
    assert "'ds_a': 10" in str(e.value) and "'ds_b': 4" in str(e.value)


def test_action_horizon_longer_than_episode_pads(no_leaks):
    # episodes of 4 and 5 frames, horizon 8: every chunk runs past its episode end → padded, no error
    with loader(action_horizon=8, num_batches=4, shuffle=False, seed=0) as ld:
        seen = 0
        for b in ld:
            pad = b["actions_is_pad"].numpy()
            assert pad.shape == (4, 8) and b["actions"].shape == (4, 8, 7)
            fi = b["frame_index"].numpy()
            ds = b["dataset_index"].numpy()
            ep_len = np.where(ds == 0, 5, 4)
            expect = np.arange(8)[None, :] + fi[:, None] >= ep_len[:, None]
            np.testing.assert_array_equal(pad, expect)
            assert pad[:, -1].all()  # horizon 8 > any episode: last step always padding
            seen += 1
        assert seen == 4


def test_unknown_action_key(tmp_path, fake_sources, no_leaks):
    with pytest.raises(ConfigError, match=r"action_sequence_keys \['action'\] are not features of dataset 'fake/a'"):
        DL.create_data_loader(train_cfg(tmp_path, keys=("action",)), skip_norm_stats=True)
    with pytest.raises(ConfigError) as e:
        loader(action_horizon=3, action_keys=["joint_vel"])
    assert "joint_vel" in str(e.value) and "ds_a" in str(e.value)
