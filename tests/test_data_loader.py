"""create_data_loader: openpi's semantics and error texts, batches Observation.from_dict accepts, weighting,
epochs, resume, and parity with per-sample openpi-style transforms on real generated datasets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fastmix import config as C
from fastmix import data_loader as DL
from fastmix import norm_stats as ns
from fastmix.errors import ConfigError


def _cfg(tmp_path, repo_ids=("fake/a", "fake/b"), *, name="dl_cfg", batch_size=4, horizon=3, weights=None, **kw):
    return C.TrainConfig(
        name=name,
        model=C.Pi0Config(pi05=True, action_horizon=horizon),
        data=C.MultiDatasetLiberoDataConfig(
            repo_ids=list(repo_ids),
            dataset_weights=weights,
            base_config=C.DataConfig(prompt_from_task=True),
            assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets"), asset_id="shared"),
            model_transforms=C.ModelTransformFactory(image_resolution=None),
            **kw,
        ),
        batch_size=batch_size,
        num_workers=0,
        seed=0,
    )


# ----------------------------------------------------------------------------------------------- errors


def test_missing_norm_stats_error_has_reference_text_path_and_command(tmp_path):
    cfg = _cfg(tmp_path, name="no_stats_cfg")
    with pytest.raises(ConfigError, match="Normalization stats not found") as e:
        DL.create_data_loader(cfg)
    msg = str(e.value)
    assert str(tmp_path / "assets" / "shared" / "norm_stats.json") in msg
    assert "`fastmix compute-norm-stats no_stats_cfg`" in msg


def test_local_batch_size_larger_than_dataset_error_names_sizes(tmp_path, fake_sources):
    cfg = _cfg(tmp_path, batch_size=15)  # 10 + 4 frames
    with pytest.raises(ConfigError, match=r"Local batch size \(15\) is larger than the dataset size \(14\)\.") as e:
        DL.create_data_loader(cfg, skip_norm_stats=True)
    assert "fake/a=10" in str(e.value) and "fake/b=4" in str(e.value)


def test_unknown_action_key_names_dataset(tmp_path, fake_sources):
    cfg = _cfg(tmp_path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, base_config=C.DataConfig(action_sequence_keys=("action",))))
    with pytest.raises(ConfigError, match=r"action_sequence_keys \['action'\] are not features of dataset 'fake/a'"):
        DL.create_data_loader(cfg, skip_norm_stats=True)


def test_argument_errors_name_values(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="framework='tf'"):
        DL.create_data_loader(cfg, framework="tf")
    with pytest.raises(ConfigError, match="num_batches=-1"):
        DL.create_data_loader(cfg, num_batches=-1)


def test_repo_id_not_set_error():
    with pytest.raises(ConfigError, match="Repo ID is not set"):
        DL.repo_ids_of(C.DataConfig())


# ------------------------------------------------------------------------------------ low-dim batch path


def test_lowdim_batch_matches_sources_and_prompts(tmp_path, fake_sources):
    cfg = _cfg(tmp_path)
    dc = cfg.data.create(cfg.assets_dirs, cfg.model)
    d = np.array([1, 0, 1, 0])
    rows = np.array([3, 9, 0, 4])
    b = DL.lowdim_batch(fake_sources, d, rows, dc, horizon=3)
    np.testing.assert_array_equal(b["state"][0], fake_sources[1].value("state", np.array([3]))[0])
    np.testing.assert_array_equal(b["state"][1], fake_sources[0].value("state", np.array([9]))[0])
    assert b["actions"].shape == (4, 3, 7) and b["actions_is_pad"][0].tolist() == [False, True, True]
    assert b["prompt"] == [fake_sources[1].tasks[0], fake_sources[0].tasks[1], fake_sources[1].tasks[0], fake_sources[0].tasks[0]]
    assert b["image"].shape == (4, 1, 1, 3) and b["dataset_index"].tolist() == [1, 0, 1, 0]


def test_observation_from_dict_like_openpi():
    import torch

    batch = {
        "image": {"base_0_rgb": np.full((2, 4, 4, 3), 255, np.uint8)},
        "image_mask": {"base_0_rgb": np.ones(2, bool)},
        "state": np.zeros((2, 8), np.float32),
    }
    obs = DL.Observation.from_dict(batch)
    assert obs.images["base_0_rgb"].dtype == np.float32 and np.all(obs.images["base_0_rgb"] == 1.0)
    assert obs.tokenized_prompt is None
    tb = {**batch, "image": {"base_0_rgb": torch.zeros((2, 4, 5, 3), dtype=torch.uint8)}}
    tobs = DL.Observation.from_dict(tb)
    assert tuple(tobs.images["base_0_rgb"].shape) == (2, 3, 4, 5) and float(tobs.images["base_0_rgb"].min()) == -1.0
    with pytest.raises(ValueError, match="must be provided together"):
        DL.Observation.from_dict({**batch, "tokenized_prompt": np.zeros((2, 3))})


# ------------------------------------------------------------------ whole loader on in-memory fake sources


@pytest.fixture
def fake_loader(monkeypatch, fake_sources):
    """create_data_loader over FakeSources (synthetic frames decoded in-process by FakeReader)."""
    from fastmix.loader.mixture_loader import MixtureLoader
    from fastmix.testing.fakes import FakeReader

    made = []

    def make(sources, **kw):
        loader = MixtureLoader(sources, reader_factory=FakeReader, **kw)
        made.append(kw)
        return loader

    monkeypatch.setattr(DL, "make_mixture_loader", make)
    return made


def _with_stats(tmp_path, **kw):
    cfg = _cfg(tmp_path, **kw)
    ns.compute_norm_stats(cfg, progress=False)
    return cfg


def test_yields_openpi_observation_and_actions_looping_over_epochs(tmp_path, fake_loader):
    import torch

    cfg = _with_stats(tmp_path, batch_size=4)
    loader = DL.create_data_loader(cfg, shuffle=True, num_batches=5)  # 14 frames -> 3 batches/epoch: loops
    assert len(loader) == 5 and loader.data_config().repo_ids == ("fake/a", "fake/b")
    items = list(loader)
    assert len(items) == 5
    obs, actions = items[0]
    assert isinstance(obs, DL.Observation)
    assert set(obs.images) == {"base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"}
    img = obs.images["base_0_rgb"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and tuple(img.shape) == (4, 3, 8, 8)
    assert float(img.min()) >= -1.0 and float(img.max()) <= 1.0
    assert obs.image_masks["right_wrist_0_rgb"].tolist() == [False] * 4
    assert tuple(obs.state.shape) == (4, 32) and tuple(actions.shape) == (4, 3, 32)
    assert not actions[..., 7:].any() and float(actions[..., :7].abs().max()) < 5  # quantile-normalized
    assert loader.state_dict()["epoch"] == 1
    assert fake_loader[0]["batch_size"] == 4 and fake_loader[0]["drop_last"] is True
    loader.close()


def test_jax_framework_yields_numpy(tmp_path, fake_loader):
    cfg = _with_stats(tmp_path)
    with DL.create_data_loader(cfg, num_batches=1, framework="jax") as loader:
        obs, actions = next(iter(loader))
    assert isinstance(actions, np.ndarray) and isinstance(obs.state, np.ndarray)
    assert obs.images["base_0_rgb"].shape == (4, 8, 8, 3)  # numpy images stay HWC, as in openpi


def test_weighted_sampling_follows_declared_weights(tmp_path, fake_loader):
    from fastmix.verify import chi_square, expected_shares

    cfg = _with_stats(tmp_path, weights=[1.0, 6.0], batch_size=8)
    counts = np.zeros(2, dtype=np.int64)
    with DL.create_data_loader(cfg, shuffle=True, num_batches=150, framework="jax") as loader:
        for _, meta in loader.batches(with_meta=True):
            counts += np.bincount(meta["dataset_index"], minlength=2)
    exp = expected_shares([10, 4], [1.0, 6.0], "per_sample")  # 10 : 24
    assert exp.tolist() == pytest.approx([10 / 34, 24 / 34])
    assert chi_square(counts, exp)[1] > 1e-3
    assert fake_loader[0]["dataset_weights"] == [1.0, 6.0] and fake_loader[0]["weighting"] == "per_sample"


def test_sequential_without_shuffle_and_set_epoch(tmp_path, fake_loader):
    cfg = _with_stats(tmp_path)
    with DL.create_data_loader(cfg, num_batches=3, framework="jax") as loader:
        metas = [m for _, m in loader.batches(with_meta=True)]
    seq = [(int(d), int(i)) for m in metas for d, i in zip(m["dataset_index"], m["index"], strict=True)]
    assert seq == [(0, i) for i in range(10)] + [(1, i) for i in range(2)]  # p -> p mod N, concatenated order
    with DL.create_data_loader(cfg, shuffle=True, num_batches=2, framework="jax") as loader:
        first = [m["index"].tolist() for _, m in loader.batches(with_meta=True)]
        loader.set_epoch(5)
        fifth = [m["index"].tolist() for _, m in loader.batches(with_meta=True)]
    assert first != fifth


def test_state_dict_resume_continues_the_stream(tmp_path, fake_loader):
    cfg = _with_stats(tmp_path)
    with DL.create_data_loader(cfg, shuffle=True, num_batches=6, framework="jax") as loader:
        it = loader.batches(with_meta=True)
        for _ in range(4):
            next(it)
        state = loader.state_dict()
        rest = [m["index"].tolist() for _, m in it]
    with DL.create_data_loader(cfg, shuffle=True, num_batches=2, framework="jax") as loader:
        loader.load_state_dict(state)
        resumed = [m["index"].tolist() for _, m in loader.batches(with_meta=True)]
    assert resumed == rest and len(rest) == 2


def test_ranks_split_one_global_weighted_stream(tmp_path, fake_loader, monkeypatch):
    cfg = _with_stats(tmp_path, weights=[1.0, 3.0], batch_size=8)

    def draws(rank, world):
        monkeypatch.setattr(DL, "_world", lambda framework: (rank, world))
        with DL.create_data_loader(cfg, shuffle=True, num_batches=2, framework="jax") as loader:
            return [(int(d), int(i)) for _, m in loader.batches(with_meta=True)
                    for d, i in zip(m["dataset_index"], m["index"], strict=True)]

    single = draws(0, 1)
    r0, r1 = draws(0, 2), draws(1, 2)
    assert len(r0) == len(r1) == 8  # local batch = 8 // 2, two batches each
    assert r0 != r1  # the reference's WeightedRandomSampler gave every rank the same draws
    assert sorted(r0 + r1) == sorted(single)
    assert fake_loader[-1]["rank"] == 1 and fake_loader[-1]["world_size"] == 2


def test_batch_transforms_equal_openpi_per_sample_pipeline(tmp_path, fake_loader, fake_sources):
    """For the same samples, the batched pipeline gives what openpi's per-sample transforms give."""
    from fastmix import transforms as T
    from fastmix.testing.fakes import fake_frame

    cfg = _with_stats(tmp_path, extra_delta_transform=True)
    with DL.create_data_loader(cfg, shuffle=True, num_batches=2, framework="jax") as loader:
        pairs = list(loader.batches(with_meta=True))
        dc = loader.data_config()
    per_sample = T.compose([t for _, ts in DL.transform_stages(dc) for t in ts])
    for batch, meta in pairs:
        for j, (d, i) in enumerate(zip(meta["dataset_index"], meta["index"], strict=True)):
            src = fake_sources[int(d)]
            low = src.gather_lowdim(np.array([i]), {"actions": [t / src.fps for t in range(3)]})
            item = {  # a LeRobotDataset item: float32 CHW images in [0, 1], the task as prompt
                "image": np.moveaxis(fake_frame(src.name, "image", int(i), (8, 8, 3)), -1, 0).astype(np.float32) / 255,
                "wrist_image": np.moveaxis(fake_frame(src.name, "wrist_image", int(i), (8, 8, 3)), -1, 0).astype(np.float32) / 255,
                "state": low["state"][0], "actions": low["actions"][0], "prompt": src.tasks_of(np.array([i]))[0],
            }
            ref = per_sample(item)
            np.testing.assert_allclose(batch["state"][j], ref["state"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(batch["actions"][j], ref["actions"], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(batch["image"]["base_0_rgb"][j], ref["image"]["base_0_rgb"])
            assert batch["prompt"][j] == ref["prompt"]


# ------------------------------------------------------------------------- real LeRobot datasets (v3.0)


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    pytest.importorskip("fastmix.sources.lerobot_source", reason="LeRobotSource not available")
    from fastmix.testing.synth import make_dataset

    home = tmp_path_factory.mktemp("lerobot_home")
    make_dataset(home / "t/video", "t/video", num_episodes=2, episode_length=9, camera_shape=(24, 32, 3),
                 tasks=("pick", "place"))
    make_dataset(home / "t/images", "t/images", num_episodes=2, episode_length=6, camera_shape=(24, 32, 3),
                 use_videos=False, tasks=("open",), seed=1)
    return home


def test_real_datasets_batches_equal_openpi_per_sample_path(real_home, tmp_path):
    """fastmix's batches == openpi's path: LeRobotDataset item -> PromptFromLeRobotTask -> per-sample transforms."""
    from fastmix import transforms as T
    from fastmix.sources.lerobot_source import LeRobotSource

    cfg = _cfg(tmp_path, ("t/video", "t/images"), name="real_cfg", lerobot_home=str(real_home), weights=[1.0, 2.0],
               extra_delta_transform=True)
    cfg = dataclasses.replace(cfg, num_workers=1)
    ns.compute_norm_stats(cfg, progress=False)
    with DL.create_data_loader(cfg, shuffle=True, num_batches=3, framework="jax") as loader:
        pairs = list(loader.batches(with_meta=True))
        dc = loader.data_config()
    stages = [t for _, ts in DL.transform_stages(dc) for t in ts]
    delta = {"actions": [t / 10 for t in range(3)]}
    sources = [LeRobotSource(r, root=real_home / r, delta_timestamps=delta) for r in ("t/video", "t/images")]
    seen = set()
    for batch, meta in pairs:
        assert batch["image"]["base_0_rgb"].shape == (4, 24, 32, 3)
        for j, (d, i) in enumerate(zip(meta["dataset_index"], meta["index"], strict=True)):
            src = sources[int(d)]
            item = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in src[int(i)].items()}
            ref = T.compose([T.PromptFromLeRobotTask(src.tasks), *stages])(item)
            np.testing.assert_allclose(batch["state"][j], ref["state"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(batch["actions"][j], ref["actions"], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(batch["image"]["base_0_rgb"][j], ref["image"]["base_0_rgb"])
            np.testing.assert_array_equal(batch["image"]["left_wrist_0_rgb"][j], ref["image"]["left_wrist_0_rgb"])
            assert batch["prompt"][j] == ref["prompt"]
            seen.add(int(d))
    assert seen == {0, 1}


def test_create_torch_dataset_is_concat_of_lerobot_like_items(real_home, tmp_path):
    import torch

    cfg = _cfg(tmp_path, ("t/video", "t/images"), name="real_cfg2", lerobot_home=str(real_home))
    dc = cfg.data.create(cfg.assets_dirs, cfg.model)
    ds = DL.create_torch_dataset(dc, 3, cfg.model)
    assert isinstance(ds, torch.utils.data.ConcatDataset) and [len(d) for d in ds.datasets] == [18, 12]
    item = ds[18 + 5]  # last frame of the image dataset's first episode
    assert item["prompt"] == "open" and tuple(item["actions"].shape) == (3, 7)
    assert item["actions_is_pad"].tolist() == [False, True, True]
